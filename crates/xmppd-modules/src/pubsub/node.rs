//! A node's configuration (XEP-0060 §16.4.4 `pubsub#node_config`) and who may do what with
//! it (§4.5 access models, §4.1 affiliations): pure, so the rules are tested without a server.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use xmppd_storage::CacheMap;

use crate::forms::{Field, Form, FormError, FormKind};

pub const CONFIG_NS: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const PUBLISH_OPTIONS_NS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// §4.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    /// Owners approve each subscriber; only subscribers see items.
    Authorize,
    Whitelist,
}

/// Who may publish (`pubsub#publish_model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PublishModel {
    Publishers,
    Subscribers,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

/// §4.1 affiliations (publish-only is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Publisher,
    Owner,
}

macro_rules! choices {
    ($t:ty { $($v:ident => $s:literal),+ }) => {
        impl $t {
            pub const ALL: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(<$t>::$v),)+ _ => None }
            }
        }
    };
}

choices!(AccessModel { Open => "open", Presence => "presence", Roster => "roster", Authorize => "authorize", Whitelist => "whitelist" });
choices!(PublishModel { Publishers => "publishers", Subscribers => "subscribers", Open => "open" });
choices!(SendLast { Never => "never", OnSub => "on_sub", OnSubAndPresence => "on_sub_and_presence" });

impl Affiliation {
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "publisher" => Affiliation::Publisher,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// `pubsub#max_items`: a number, or `max` (the server's cap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaxItems {
    Count(usize),
    Max,
}

impl MaxItems {
    /// How many items are kept under the server's cap.
    pub fn keep(self, cap: usize) -> usize {
        match self {
            MaxItems::Count(n) => n.min(cap),
            MaxItems::Max => cap,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    pub publish_model: PublishModel,
    pub max_items: MaxItems,
    pub persist_items: bool,
    pub deliver_payloads: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub notify_config: bool,
    pub send_last_published_item: SendLast,
    pub title: String,
    /// `pubsub#type`: the payload namespace, informational.
    pub node_type: String,
    /// For the roster access model: the owner's roster groups allowed in.
    pub roster_groups_allowed: Vec<String>,
}

impl NodeConfig {
    /// XEP-0163 §4.3: a PEP node's defaults (presence access, last item on presence).
    pub fn pep_default() -> NodeConfig {
        NodeConfig {
            access_model: AccessModel::Presence,
            publish_model: PublishModel::Publishers,
            max_items: MaxItems::Count(1),
            persist_items: true,
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
            notify_config: false,
            send_last_published_item: SendLast::OnSubAndPresence,
            title: String::new(),
            node_type: String::new(),
            roster_groups_allowed: Vec::new(),
        }
    }

    /// A node of the generic service: open, last item on subscription.
    pub fn service_default() -> NodeConfig {
        NodeConfig {
            access_model: AccessModel::Open,
            send_last_published_item: SendLast::OnSub,
            max_items: MaxItems::Count(10),
            ..NodeConfig::pep_default()
        }
    }

    /// The configuration form (§8.2.1), `form` to fill in or `result` to store.
    pub fn to_form(&self, kind: FormKind) -> Form {
        let list = |var: &str, value: &str, all: &[&str]| {
            all.iter()
                .fold(Field::new(var, "list-single").value(value), |f, choice| {
                    f.option(None, *choice)
                })
        };
        let max = match self.max_items {
            MaxItems::Count(n) => n.to_string(),
            MaxItems::Max => "max".into(),
        };
        Form::new(kind)
            .field(Field::form_type(CONFIG_NS))
            .field(list(
                "pubsub#access_model",
                self.access_model.as_str(),
                AccessModel::ALL,
            ))
            .field(list(
                "pubsub#publish_model",
                self.publish_model.as_str(),
                PublishModel::ALL,
            ))
            .field(Field::new("pubsub#max_items", "text-single").value(max))
            .field(Field::new("pubsub#persist_items", "boolean").boolean_value(self.persist_items))
            .field(
                Field::new("pubsub#deliver_payloads", "boolean")
                    .boolean_value(self.deliver_payloads),
            )
            .field(
                Field::new("pubsub#notify_retract", "boolean").boolean_value(self.notify_retract),
            )
            .field(Field::new("pubsub#notify_delete", "boolean").boolean_value(self.notify_delete))
            .field(Field::new("pubsub#notify_config", "boolean").boolean_value(self.notify_config))
            .field(list(
                "pubsub#send_last_published_item",
                self.send_last_published_item.as_str(),
                SendLast::ALL,
            ))
            .field(Field::new("pubsub#title", "text-single").value(self.title.clone()))
            .field(Field::new("pubsub#type", "text-single").value(self.node_type.clone()))
            .field(
                Field::new("pubsub#roster_groups_allowed", "list-multi")
                    .values(self.roster_groups_allowed.iter().cloned()),
            )
    }

    /// This configuration with the fields of a submitted form applied (§8.2.4). A value of
    /// the wrong type, an unknown field or `max_items` above `cap` is an error: a client
    /// must not believe a setting took that did not.
    pub fn apply(&self, form: &Form, form_type: &str, cap: usize) -> Result<NodeConfig, FormError> {
        if form.form_type().is_some_and(|t| t != form_type) {
            return Err(FormError(format!("FORM_TYPE must be {form_type}")));
        }
        let mut c = self.clone();
        for field in &form.fields {
            let var = field.var.as_str();
            let bool_of = |var: &str| form.boolean(var).map(|b| b.unwrap_or_default());
            let choice = |all: &[&str]| form.choice(var, all).map(|c| c.unwrap_or_default());
            match var {
                "FORM_TYPE" => {}
                "pubsub#access_model" => {
                    c.access_model = AccessModel::parse(choice(AccessModel::ALL)?)
                        .ok_or_else(|| FormError(format!("{var} needs a value")))?
                }
                "pubsub#publish_model" => {
                    c.publish_model = PublishModel::parse(choice(PublishModel::ALL)?)
                        .ok_or_else(|| FormError(format!("{var} needs a value")))?
                }
                "pubsub#send_last_published_item" => {
                    c.send_last_published_item = SendLast::parse(choice(SendLast::ALL)?)
                        .ok_or_else(|| FormError(format!("{var} needs a value")))?
                }
                "pubsub#max_items" => {
                    c.max_items = match form.single(var).map(str::trim) {
                        Some("max") => MaxItems::Max,
                        _ => match form.unsigned(var)? {
                            Some(n) if n as usize <= cap => MaxItems::Count(n as usize),
                            Some(n) => return Err(FormError(format!("{var}: {n} is above {cap}"))),
                            None => return Err(FormError(format!("{var} needs a value"))),
                        },
                    }
                }
                "pubsub#persist_items" => c.persist_items = bool_of(var)?,
                "pubsub#deliver_payloads" => c.deliver_payloads = bool_of(var)?,
                "pubsub#notify_retract" => c.notify_retract = bool_of(var)?,
                "pubsub#notify_delete" => c.notify_delete = bool_of(var)?,
                "pubsub#notify_config" => c.notify_config = bool_of(var)?,
                "pubsub#title" => c.title = form.single(var).unwrap_or_default().to_string(),
                "pubsub#type" => c.node_type = form.single(var).unwrap_or_default().to_string(),
                "pubsub#roster_groups_allowed" => c.roster_groups_allowed = field.values.clone(),
                _ => return Err(FormError(format!("{var} is not a setting of this service"))),
            }
        }
        Ok(c)
    }

    /// §7.1.5: whether publish-options hold for this node. Fields the node does not know,
    /// or values it does not have, are preconditions that are not met.
    pub fn satisfies(&self, options: &Form, cap: usize) -> bool {
        self.apply(options, PUBLISH_OPTIONS_NS, cap)
            .is_ok_and(|wanted| wanted == *self)
    }

    /// How many items the node keeps: at least the last one, for last-published delivery.
    pub fn keep(&self, cap: usize) -> usize {
        if self.persist_items {
            self.max_items.keep(cap).max(1)
        } else {
            1
        }
    }

    /// The stored form of this configuration.
    pub fn to_text(&self) -> String {
        self.to_form(FormKind::Result).to_element().to_xml()
    }

    /// Reads what [`NodeConfig::to_text`] wrote, over `base` (the defaults of its service).
    pub fn from_text(text: &str, base: &NodeConfig) -> NodeConfig {
        xmppd_xml::parse_fragment(text, crate::forms::NS)
            .and_then(|x| Form::parse(&x).ok())
            .and_then(|f| base.apply(&f, CONFIG_NS, usize::MAX).ok())
            .unwrap_or_else(|| base.clone())
    }
}

/// Configurations both as stored ([`NodeConfig::to_text`]) and as used, converted once per
/// distinct configuration: every PEP publish reads its node's configuration and every first
/// publish writes one, nearly all nodes share a handful of them, and parsing and writing
/// the form was 8% of the server's CPU in the PEP benchmark. Keyed by hash, and a hit is
/// compared in full, so a collision costs only a conversion.
pub struct ConfigTexts {
    parsed: CacheMap<u64, Arc<(String, NodeConfig, NodeConfig)>>,
    written: CacheMap<u64, Arc<(NodeConfig, String)>>,
    hasher: RandomState,
}

/// Distinct configurations kept each way.
const CONFIG_TEXTS: usize = 256;

impl Default for ConfigTexts {
    fn default() -> Self {
        ConfigTexts {
            parsed: CacheMap::new(CONFIG_TEXTS),
            written: CacheMap::new(CONFIG_TEXTS),
            hasher: RandomState::new(),
        }
    }
}

impl ConfigTexts {
    /// [`NodeConfig::from_text`].
    pub fn parse(&self, text: &str, base: &NodeConfig) -> NodeConfig {
        let key = self.hasher.hash_one((text, base));
        match self.parsed.lookup(&key) {
            Ok(hit) if hit.0 == text && hit.1 == *base => hit.2.clone(),
            _ => {
                let config = NodeConfig::from_text(text, base);
                let entry = (text.to_string(), base.clone(), config.clone());
                self.parsed.store(key, Arc::new(entry));
                config
            }
        }
    }

    /// [`NodeConfig::to_text`].
    pub fn text(&self, config: &NodeConfig) -> String {
        let key = self.hasher.hash_one(config);
        match self.written.lookup(&key) {
            Ok(hit) if hit.0 == *config => hit.1.clone(),
            _ => {
                let text = config.to_text();
                self.written
                    .store(key, Arc::new((config.clone(), text.clone())));
                text
            }
        }
    }
}

/// What the service knows of a requester (§4.5).
#[derive(Clone, Debug, Default)]
pub struct Relation {
    pub affiliation: Option<Affiliation>,
    /// A PEP contact subscribed to the owner's presence.
    pub presence_subscribed: bool,
    /// The owner's roster groups the requester is in.
    pub groups: Vec<String>,
    /// Subscribed to the node (a pending request is not).
    pub subscribed: bool,
}

/// Why access is refused: each has its own error (§6.1.3, §6.5.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    Outcast,
    PresenceSubscriptionRequired,
    NotInRosterGroup,
    ClosedNode,
    /// An authorize node, and no subscription (a pending one included, §6.5.9.3).
    NotSubscribed,
    /// A subscription request already waits for an owner (§6.1.3.7).
    Pending,
}

/// Whether `who` may subscribe to and retrieve items of a node with `config`.
pub fn may_access(config: &NodeConfig, who: &Relation) -> Result<(), Denied> {
    match who.affiliation.unwrap_or(Affiliation::None) {
        Affiliation::Outcast => return Err(Denied::Outcast),
        Affiliation::Owner | Affiliation::Publisher | Affiliation::Member => return Ok(()),
        Affiliation::None => {}
    }
    match config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence if who.presence_subscribed => Ok(()),
        AccessModel::Presence => Err(Denied::PresenceSubscriptionRequired),
        AccessModel::Roster
            if who
                .groups
                .iter()
                .any(|g| config.roster_groups_allowed.contains(g)) =>
        {
            Ok(())
        }
        AccessModel::Roster => Err(Denied::NotInRosterGroup),
        AccessModel::Authorize if who.subscribed => Ok(()),
        AccessModel::Authorize => Err(Denied::NotSubscribed),
        AccessModel::Whitelist => Err(Denied::ClosedNode),
    }
}

/// Whether `who` may learn that the node exists (disco, §5.2): whoever may access it, and
/// for an authorize node anyone but outcasts, who must find it to ask for a subscription.
pub fn may_discover(config: &NodeConfig, who: &Relation) -> bool {
    matches!(may_access(config, who), Ok(()) | Err(Denied::NotSubscribed))
}

/// Whether `who` may publish to a node with `config` (§7.1.3.1).
pub fn may_publish(config: &NodeConfig, who: &Relation, subscribed: bool) -> bool {
    let affiliation = who.affiliation.unwrap_or(Affiliation::None);
    match config.publish_model {
        _ if affiliation == Affiliation::Outcast => false,
        _ if affiliation >= Affiliation::Publisher => true,
        PublishModel::Publishers => false,
        PublishModel::Subscribers => subscribed || affiliation == Affiliation::Member,
        PublishModel::Open => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> Form {
        fields
            .iter()
            .fold(Form::new(FormKind::Submit), |f, (var, value)| {
                f.field(Field::new(*var, "text-single").value(*value))
            })
    }

    #[test]
    fn a_submitted_form_changes_only_what_it_names() {
        let base = NodeConfig::pep_default();
        let c = base
            .apply(
                &form(&[
                    ("FORM_TYPE", CONFIG_NS),
                    ("pubsub#access_model", "whitelist"),
                    ("pubsub#max_items", "max"),
                    ("pubsub#notify_retract", "false"),
                ]),
                CONFIG_NS,
                100,
            )
            .unwrap();
        assert_eq!(c.access_model, AccessModel::Whitelist);
        assert_eq!(c.max_items, MaxItems::Max);
        assert_eq!(c.keep(100), 100);
        assert!(!c.notify_retract);
        assert_eq!(c.publish_model, base.publish_model);
        assert_eq!(NodeConfig::from_text(&c.to_text(), &base), c);
        // Memoised, the same both ways, and per base.
        let texts = ConfigTexts::default();
        for _ in 0..2 {
            assert_eq!(texts.text(&c), c.to_text());
            assert_eq!(texts.parse(&c.to_text(), &base), c);
            assert_eq!(texts.parse("", &base), base);
            let other = NodeConfig::service_default();
            assert_eq!(texts.parse("", &other), other);
        }
    }

    #[test]
    fn wrong_types_unknown_fields_and_limits_are_refused() {
        let base = NodeConfig::pep_default();
        for bad in [
            ("pubsub#persist_items", "yes"),
            ("pubsub#access_model", "bogus"),
            ("pubsub#max_items", "-1"),
            ("pubsub#max_items", "101"),
            ("pubsub#unknown", "1"),
        ] {
            assert!(
                base.apply(&form(&[bad]), CONFIG_NS, 100).is_err(),
                "{bad:?}"
            );
        }
        let wrong_type = form(&[("FORM_TYPE", PUBLISH_OPTIONS_NS)]);
        assert!(base.apply(&wrong_type, CONFIG_NS, 100).is_err());
    }

    #[test]
    fn publish_options_are_preconditions() {
        let node = NodeConfig::pep_default();
        let same = form(&[
            ("FORM_TYPE", PUBLISH_OPTIONS_NS),
            ("pubsub#access_model", "presence"),
        ]);
        assert!(node.satisfies(&same, 100));
        let open = form(&[("pubsub#access_model", "open")]);
        assert!(!node.satisfies(&open, 100));
        assert!(!node.satisfies(&form(&[("pubsub#bogus", "1")]), 100));
    }

    #[test]
    fn access_models() {
        let mut c = NodeConfig::pep_default();
        let stranger = Relation::default();
        let contact = Relation {
            presence_subscribed: true,
            groups: vec!["Friends".into()],
            ..Relation::default()
        };
        let owner = Relation {
            affiliation: Some(Affiliation::Owner),
            ..Relation::default()
        };
        assert_eq!(
            may_access(&c, &stranger),
            Err(Denied::PresenceSubscriptionRequired)
        );
        assert_eq!(may_access(&c, &contact), Ok(()));
        c.access_model = AccessModel::Roster;
        assert_eq!(may_access(&c, &contact), Err(Denied::NotInRosterGroup));
        c.roster_groups_allowed = vec!["Friends".into()];
        assert_eq!(may_access(&c, &contact), Ok(()));
        c.access_model = AccessModel::Whitelist;
        assert_eq!(may_access(&c, &contact), Err(Denied::ClosedNode));
        assert_eq!(may_access(&c, &owner), Ok(()));
        c.access_model = AccessModel::Authorize;
        assert_eq!(may_access(&c, &contact), Err(Denied::NotSubscribed));
        assert!(may_discover(&c, &contact));
        let subscriber = Relation {
            subscribed: true,
            ..Relation::default()
        };
        assert_eq!(may_access(&c, &subscriber), Ok(()));
        c.access_model = AccessModel::Open;
        assert_eq!(may_access(&c, &stranger), Ok(()));
        let outcast = Relation {
            affiliation: Some(Affiliation::Outcast),
            ..Relation::default()
        };
        assert_eq!(may_access(&c, &outcast), Err(Denied::Outcast));
        c.access_model = AccessModel::Authorize;
        assert!(!may_discover(&c, &outcast));
    }

    #[test]
    fn publish_models() {
        let mut c = NodeConfig::pep_default();
        let owner = Relation {
            affiliation: Some(Affiliation::Owner),
            ..Relation::default()
        };
        assert!(may_publish(&c, &owner, false));
        assert!(!may_publish(&c, &Relation::default(), true));
        c.publish_model = PublishModel::Subscribers;
        assert!(may_publish(&c, &Relation::default(), true));
        assert!(!may_publish(&c, &Relation::default(), false));
        c.publish_model = PublishModel::Open;
        assert!(may_publish(&c, &Relation::default(), false));
    }
}
