//! Privacy list rules (XEP-0016 §2): parsing, validation and evaluation, as pure code.

use xmppd_core::{Element, Jid, StanzaError, StanzaErrorCondition};

use crate::subscription::Sub;

pub const NS: &str = "jabber:iq:privacy";

/// The stanza kinds a rule can be limited to (XEP-0016 §2.1 child elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Iq,
    /// Inbound presence notifications (no type, or unavailable).
    PresenceIn,
    /// Outbound presence notifications.
    PresenceOut,
    /// Anything else (subscriptions, probes, errors): only rules that block everything apply.
    Other,
}

impl Kind {
    fn bit(self) -> u8 {
        match self {
            Kind::Message => 1,
            Kind::Iq => 2,
            Kind::PresenceIn => 4,
            Kind::PresenceOut => 8,
            Kind::Other => 0,
        }
    }

    const ELEMENTS: [(&'static str, Kind); 4] = [
        ("message", Kind::Message),
        ("iq", Kind::Iq),
        ("presence-in", Kind::PresenceIn),
        ("presence-out", Kind::PresenceOut),
    ];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    Jid(Jid),
    Group(String),
    Subscription(Sub),
    /// No type: the fall-through rule.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub order: u32,
    pub matcher: Matcher,
    pub allow: bool,
    /// Bit set of [`Kind`]s; 0 means every kind.
    kinds: u8,
}

impl Rule {
    /// A rule that denies every kind of stanza to and from `jid`: a blocklist entry.
    pub fn block(jid: Jid, order: u32) -> Rule {
        Rule {
            order,
            matcher: Matcher::Jid(jid),
            allow: false,
            kinds: 0,
        }
    }

    /// The JID of a blocklist entry (deny, by JID, every kind), if this rule is one.
    pub fn blocked_jid(&self) -> Option<&Jid> {
        match &self.matcher {
            Matcher::Jid(j) if !self.allow && self.kinds == 0 => Some(j),
            _ => None,
        }
    }

    fn applies_to(&self, kind: Kind) -> bool {
        self.kinds == 0 || self.kinds & kind.bit() != 0
    }
}

/// What the user's roster says of the other party.
#[derive(Clone, Debug, Default)]
pub struct Contact {
    pub sub: Sub,
    pub groups: Vec<String>,
}

/// XEP-0016 §2.1 JID matching: full JID, bare JID, domain/resource, then domain.
fn jid_matches(item: &Jid, other: &Jid) -> bool {
    match (item.node(), item.resource()) {
        (Some(_), Some(_)) => item == other,
        (Some(_), None) => item.to_bare() == other.to_bare(),
        (None, Some(res)) => {
            other.node().is_none()
                && other.domain() == item.domain()
                && other.resource() == Some(res)
        }
        (None, None) => other.domain() == item.domain(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivacyList {
    pub name: String,
    /// Sorted by `order`.
    pub rules: Vec<Rule>,
}

impl PrivacyList {
    /// Whether the list needs the roster to be evaluated (group or subscription rules).
    pub fn needs_roster(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.matcher, Matcher::Group(_) | Matcher::Subscription(_)))
    }

    /// The first rule that matches, in ascending order (XEP-0016 §2.2); `None` means the
    /// implicit fall-through, which allows.
    pub fn first_match(&self, kind: Kind, other: &Jid, contact: &Contact) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            rule.applies_to(kind)
                && match &rule.matcher {
                    Matcher::Jid(j) => jid_matches(j, other),
                    Matcher::Group(g) => contact.groups.contains(g),
                    Matcher::Subscription(s) => contact.sub == *s,
                    Matcher::Any => true,
                }
        })
    }

    /// Parses and validates a `<list/>` from a client (XEP-0016 §2.1 rules).
    pub fn parse(list: &Element) -> Result<PrivacyList, StanzaError> {
        let bad = |text: &str| StanzaError::new(StanzaErrorCondition::BadRequest).with_text(text);
        let name = list
            .attr("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("a list needs a name"))?
            .to_string();
        let mut rules = Vec::new();
        for item in list.children().filter(|c| c.is("item", NS)) {
            let order: u32 = item
                .attr("order")
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| bad("order must be a non-negative integer"))?;
            let allow = match item.attr("action") {
                Some("allow") => true,
                Some("deny") => false,
                _ => return Err(bad("action must be allow or deny")),
            };
            let value = item.attr("value");
            let matcher = match (item.attr("type"), value) {
                (None, _) => Matcher::Any,
                (Some("jid"), Some(v)) => Matcher::Jid(
                    Jid::new(v)
                        .map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?,
                ),
                (Some("group"), Some(v)) => Matcher::Group(v.to_string()),
                (Some("subscription"), Some(v @ ("none" | "to" | "from" | "both"))) => {
                    Matcher::Subscription(Sub::parse(v))
                }
                _ => return Err(bad("invalid type or value")),
            };
            let mut kinds = 0;
            for (name, kind) in Kind::ELEMENTS {
                if item.has_child(name, NS) {
                    kinds |= kind.bit();
                }
            }
            rules.push(Rule {
                order,
                matcher,
                allow,
                kinds,
            });
        }
        rules.sort_by_key(|r| r.order);
        if rules.windows(2).any(|w| w[0].order == w[1].order) {
            return Err(bad("order values must be unique"));
        }
        Ok(PrivacyList { name, rules })
    }

    pub fn to_element(&self) -> Element {
        let mut list = Element::new("list", NS).with_attr("name", self.name.clone());
        for rule in &self.rules {
            let mut item = Element::new("item", NS)
                .with_attr("action", if rule.allow { "allow" } else { "deny" })
                .with_attr("order", rule.order.to_string());
            match &rule.matcher {
                Matcher::Jid(j) => {
                    item.set_attr("type", "jid");
                    item.set_attr("value", j.as_str());
                }
                Matcher::Group(g) => {
                    item.set_attr("type", "group");
                    item.set_attr("value", g.clone());
                }
                Matcher::Subscription(s) => {
                    item.set_attr("type", "subscription");
                    item.set_attr("value", s.as_str());
                }
                Matcher::Any => {}
            }
            for (name, kind) in Kind::ELEMENTS {
                if rule.kinds & kind.bit() != 0 {
                    item.push_child(Element::new(name, NS));
                }
            }
            list.push_child(item);
        }
        list
    }

    /// Adds blocklist entries for `jids` ahead of every other rule (XEP-0191 §6: blocked
    /// items come first), renumbering the orders.
    pub fn block(&mut self, jids: &[Jid]) {
        let mut rules: Vec<Rule> = jids
            .iter()
            .filter(|j| !self.rules.iter().any(|r| r.blocked_jid() == Some(j)))
            .map(|j| Rule::block(j.clone(), 0))
            .collect();
        rules.append(&mut self.rules);
        for (i, rule) in rules.iter_mut().enumerate() {
            rule.order = i as u32 + 1;
        }
        self.rules = rules;
    }

    /// Removes blocklist entries for `jids`, or all of them when `jids` is `None`.
    pub fn unblock(&mut self, jids: Option<&[Jid]>) {
        self.rules.retain(|r| match (r.blocked_jid(), jids) {
            (Some(_), None) => false,
            (Some(j), Some(list)) => !list.contains(j),
            (None, _) => true,
        });
    }

    pub fn blocked(&self) -> impl Iterator<Item = &Jid> {
        self.rules.iter().filter_map(Rule::blocked_jid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    fn list(xml: &str) -> PrivacyList {
        let el = xmppd_xml::parse_fragment(xml, NS).unwrap();
        PrivacyList::parse(&el).unwrap()
    }

    fn verdict(l: &PrivacyList, kind: Kind, other: &str, contact: &Contact) -> bool {
        l.first_match(kind, &jid(other), contact)
            .is_none_or(|r| r.allow)
    }

    #[test]
    fn jid_matching_order() {
        let full = jid("a@x/r");
        assert!(jid_matches(&full, &jid("a@x/r")));
        assert!(!jid_matches(&full, &jid("a@x/s")));
        let bare = jid("a@x");
        assert!(jid_matches(&bare, &jid("a@x/any")) && jid_matches(&bare, &jid("a@x")));
        assert!(!jid_matches(&bare, &jid("b@x")));
        let domres = jid("x/r");
        assert!(jid_matches(&domres, &jid("x/r")) && !jid_matches(&domres, &jid("a@x/r")));
        let domain = jid("x");
        assert!(jid_matches(&domain, &jid("a@x/r")) && jid_matches(&domain, &jid("x")));
        assert!(!jid_matches(&domain, &jid("a@y")));
    }

    #[test]
    fn every_item_type_and_ordering() {
        let l = list(
            "<list name='l'>\
             <item type='jid' value='friend@x' action='allow' order='1'/>\
             <item type='group' value='Enemies' action='deny' order='2'/>\
             <item type='subscription' value='none' action='deny' order='3'><message/></item>\
             <item action='allow' order='4'/></list>",
        );
        let stranger = Contact::default();
        let enemy = Contact {
            sub: Sub::Both,
            groups: vec!["Enemies".into()],
        };
        let mate = Contact {
            sub: Sub::Both,
            groups: vec![],
        };
        // Order 1 wins even though the jid is in the denied group.
        assert!(verdict(&l, Kind::Message, "friend@x/r", &enemy));
        assert!(!verdict(&l, Kind::Iq, "foe@x", &enemy));
        // "none" covers strangers, but only for messages.
        assert!(!verdict(&l, Kind::Message, "spam@y", &stranger));
        assert!(verdict(&l, Kind::PresenceIn, "spam@y", &stranger));
        assert!(verdict(&l, Kind::Message, "pal@x", &mate));
    }

    #[test]
    fn stanza_kind_children() {
        let l = list(
            "<list name='l'><item type='jid' value='a@x' action='deny' order='1'><presence-in/><iq/></item></list>",
        );
        let c = Contact::default();
        assert!(!verdict(&l, Kind::PresenceIn, "a@x", &c));
        assert!(!verdict(&l, Kind::Iq, "a@x", &c));
        assert!(verdict(&l, Kind::Message, "a@x", &c));
        assert!(verdict(&l, Kind::PresenceOut, "a@x", &c));
        assert!(
            verdict(&l, Kind::Other, "a@x", &c),
            "subscriptions only by rules without children"
        );
    }

    #[test]
    fn empty_item_blocks_everything() {
        let l = list("<list name='l'><item action='deny' order='5'/></list>");
        for kind in [
            Kind::Message,
            Kind::Iq,
            Kind::PresenceIn,
            Kind::PresenceOut,
            Kind::Other,
        ] {
            assert!(!verdict(&l, kind, "anyone@anywhere", &Contact::default()));
        }
        let empty = list("<list name='e'/>");
        assert!(
            verdict(&empty, Kind::Message, "a@x", &Contact::default()),
            "no rule: allow"
        );
    }

    #[test]
    fn validation() {
        let parse = |x: &str| PrivacyList::parse(&xmppd_xml::parse_fragment(x, NS).unwrap());
        let dup = parse(
            "<list name='l'><item action='deny' order='1'/><item action='allow' order='1'/></list>",
        );
        assert_eq!(dup.unwrap_err().condition, StanzaErrorCondition::BadRequest);
        assert!(parse("<list name='l'><item action='maybe' order='1'/></list>").is_err());
        assert!(parse(
            "<list name='l'><item type='subscription' value='all' action='deny' order='1'/></list>"
        )
        .is_err());
        assert!(parse(
            "<list name='l'><item type='jid' value='a@b@c' action='deny' order='1'/></list>"
        )
        .is_err());
        assert!(parse("<list><item action='deny' order='1'/></list>").is_err());
        let ok = parse("<list name='l'><item type='jid' value='a@x' action='deny' order='3'><message/></item></list>").unwrap();
        assert_eq!(
            PrivacyList::parse(&ok.to_element()).unwrap(),
            ok,
            "round trip"
        );
    }

    #[test]
    fn blocklist_view_of_a_list() {
        let mut l = list("<list name='l'><item type='jid' value='x@y' action='deny' order='1'><message/></item><item action='allow' order='2'/></list>");
        l.block(&[jid("spam@y"), jid("troll@z")]);
        assert_eq!(l.rules[0].order, 1);
        assert_eq!(
            l.blocked().map(|j| j.as_str()).collect::<Vec<_>>(),
            vec!["spam@y", "troll@z"]
        );
        assert!(!verdict(
            &l,
            Kind::PresenceOut,
            "spam@y",
            &Contact::default()
        ));
        l.block(&[jid("spam@y")]);
        assert_eq!(l.blocked().count(), 2, "blocking twice adds nothing");
        l.unblock(Some(&[jid("spam@y")]));
        assert_eq!(
            l.blocked().map(|j| j.as_str()).collect::<Vec<_>>(),
            vec!["troll@z"]
        );
        l.unblock(None);
        assert_eq!(l.blocked().count(), 0);
        assert_eq!(l.rules.len(), 2, "other rules stay");
    }

    /// A rule as generated for the property test below.
    #[derive(Clone, Debug)]
    struct Spec {
        matcher: (u8, usize),
        allow: bool,
        kinds: Vec<usize>,
    }

    const RULE_JIDS: [&str; 5] = ["a@x", "a@x/r", "x", "x/r", "b@y"];
    const OTHERS: [&str; 7] = ["a@x/r", "a@x/s", "a@x", "x", "x/r", "b@y/r", "c@x/q"];
    const GROUPS: [&str; 2] = ["g1", "g2"];
    const SUBS: [Sub; 4] = [Sub::None, Sub::To, Sub::From, Sub::Both];
    const KINDS: [(&str, Kind); 4] = [
        ("message", Kind::Message),
        ("iq", Kind::Iq),
        ("presence-in", Kind::PresenceIn),
        ("presence-out", Kind::PresenceOut),
    ];

    /// XEP-0016 §2.1 matching written from the text: a full JID matches only itself, a bare
    /// JID any of its resources, `domain/resource` only that, a domain everything at it.
    fn reference_jid_match(item: &str, other: &str) -> bool {
        let (item_base, item_res) = item
            .split_once('/')
            .map_or((item, None), |(b, r)| (b, Some(r)));
        let (other_base, other_res) = other
            .split_once('/')
            .map_or((other, None), |(b, r)| (b, Some(r)));
        let other_domain = other_base.rsplit('@').next().unwrap();
        match (item_base.contains('@'), item_res) {
            (true, Some(_)) => item == other,
            (true, None) => item_base == other_base,
            (false, Some(_)) => {
                !other_base.contains('@') && item_base == other_base && item_res == other_res
            }
            (false, None) => item_base == other_domain,
        }
    }

    /// The first rule by order whose kinds and matcher fit decides; none means allow.
    fn reference(
        specs: &[(u32, Spec)],
        kind: Kind,
        other: &str,
        contact: &Contact,
    ) -> Option<bool> {
        let mut sorted = specs.to_vec();
        sorted.sort_by_key(|(order, _)| *order);
        sorted.into_iter().find_map(|(_, spec)| {
            let kind_fits = spec.kinds.is_empty() || spec.kinds.iter().any(|&k| KINDS[k].1 == kind);
            let (kind_of_matcher, index) = spec.matcher;
            let matches = match kind_of_matcher {
                0 => reference_jid_match(RULE_JIDS[index % RULE_JIDS.len()], other),
                1 => contact
                    .groups
                    .iter()
                    .any(|g| g == GROUPS[index % GROUPS.len()]),
                2 => contact.sub == SUBS[index % SUBS.len()],
                _ => true,
            };
            (kind_fits && matches).then_some(spec.allow)
        })
    }

    fn xml_of(specs: &[(u32, Spec)]) -> String {
        let mut xml = String::from("<list name='p'>");
        for (order, spec) in specs {
            let action = if spec.allow { "allow" } else { "deny" };
            let (kind_of_matcher, index) = spec.matcher;
            let typed = match kind_of_matcher {
                0 => format!(" type='jid' value='{}'", RULE_JIDS[index % RULE_JIDS.len()]),
                1 => format!(" type='group' value='{}'", GROUPS[index % GROUPS.len()]),
                2 => format!(
                    " type='subscription' value='{}'",
                    SUBS[index % SUBS.len()].as_str()
                ),
                _ => String::new(),
            };
            xml.push_str(&format!("<item{typed} action='{action}' order='{order}'>"));
            for &k in &spec.kinds {
                xml.push_str(&format!("<{}/>", KINDS[k].0));
            }
            xml.push_str("</item>");
        }
        xml.push_str("</list>");
        xml
    }

    fn specs() -> impl proptest::strategy::Strategy<Value = Vec<(u32, Spec)>> {
        use proptest::prelude::*;
        let spec = (
            0u8..4,
            0usize..8,
            any::<bool>(),
            proptest::collection::btree_set(0usize..4, 0..3),
        )
            .prop_map(|(m, i, allow, kinds)| Spec {
                matcher: (m, i),
                allow,
                kinds: kinds.into_iter().collect(),
            });
        // Distinct orders, written in any sequence.
        proptest::collection::vec(spec, 0..8).prop_flat_map(|specs| {
            let n = specs.len();
            Just(specs).prop_flat_map(move |specs| {
                Just((0..n as u32).map(|i| i * 10).collect::<Vec<_>>())
                    .prop_shuffle()
                    .prop_map(move |orders| orders.into_iter().zip(specs.clone()).collect())
            })
        })
    }

    proptest::proptest! {
        /// Any list, any stanza: the evaluator decides as the reference model does.
        #[test]
        fn evaluation_follows_the_reference_model(
            specs in specs(),
            other in 0usize..OTHERS.len(),
            kind in 0usize..5,
            groups in proptest::collection::btree_set(0usize..2, 0..3),
            sub in 0usize..4,
        ) {
            let parsed = list(&xml_of(&specs));
            let kind = KINDS.get(kind).map_or(Kind::Other, |k| k.1);
            let contact = Contact {
                sub: SUBS[sub],
                groups: groups.into_iter().map(|g| GROUPS[g].to_string()).collect(),
            };
            let other = OTHERS[other];
            let got = parsed.first_match(kind, &jid(other), &contact).map(|r| r.allow);
            proptest::prop_assert_eq!(got, reference(&specs, kind, other, &contact));
        }
    }
}
