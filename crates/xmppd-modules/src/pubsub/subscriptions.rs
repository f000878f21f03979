//! A subscription's state (XEP-0060 §4.2: none, pending, subscribed) and how it changes: a
//! subscribe request (§6.1), an owner's answer to a request for approval (§8.6); and its
//! options (§6.3, §16.4.3 `pubsub#subscribe_options`). Pure, so the rules are tested without
//! a server.

use super::node::{may_access, AccessModel, Affiliation, Denied, NodeConfig, Relation};
use crate::forms::{Field, Form, FormError, FormKind};

pub const AUTHORIZATION_NS: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";
pub const OPTIONS_NS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubState {
    #[default]
    None,
    /// Waiting for an owner's approval (the authorize access model).
    Pending,
    Subscribed,
}

impl SubState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubState::None => "none",
            SubState::Pending => "pending",
            SubState::Subscribed => "subscribed",
        }
    }

    /// A stored state; anything else reads as none.
    pub fn parse(s: &str) -> SubState {
        match s {
            "pending" => SubState::Pending,
            "subscribed" => SubState::Subscribed,
            _ => SubState::None,
        }
    }

    /// What a subscribe request of an entity in this state comes to (§6.1).
    pub fn subscribe(self, config: &NodeConfig, who: &Relation) -> Result<SubState, Denied> {
        if who.affiliation == Some(Affiliation::Outcast) {
            return Err(Denied::Outcast);
        }
        match self {
            SubState::Subscribed => return Ok(SubState::Subscribed),
            // §6.1.3.7: asking again does not ask the owners again.
            SubState::Pending => return Err(Denied::Pending),
            SubState::None => {}
        }
        // §6.1.2.2: owners approve everyone but affiliates (our policy lets members and
        // publishers in at once).
        let affiliate = who.affiliation.unwrap_or(Affiliation::None) >= Affiliation::Member;
        if config.access_model == AccessModel::Authorize && !affiliate {
            return Ok(SubState::Pending);
        }
        may_access(config, who).map(|()| SubState::Subscribed)
    }

    /// An owner's answer (§8.6); `None` when nothing is pending any more (another owner
    /// answered first, or the request was withdrawn).
    pub fn decide(self, allow: bool) -> Option<SubState> {
        match (self, allow) {
            (SubState::Pending, true) => Some(SubState::Subscribed),
            (SubState::Pending, false) => Some(SubState::None),
            _ => None,
        }
    }
}

/// A subscription's options (§6.3). Digests, expiry and presence-based delivery
/// (`pubsub#show-values`) are not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubOptions {
    /// `pubsub#deliver`: false keeps the subscription but sends no notifications.
    pub deliver: bool,
}

impl Default for SubOptions {
    fn default() -> Self {
        SubOptions { deliver: true }
    }
}

impl SubOptions {
    /// The options form (§6.3.2), `form` to fill in or `result` to show.
    pub fn to_form(self, kind: FormKind) -> Form {
        Form::new(kind).field(Field::form_type(OPTIONS_NS)).field(
            Field::new("pubsub#deliver", "boolean")
                .label("Enable delivery?")
                .boolean_value(self.deliver),
        )
    }

    /// These options with a submitted form applied (§6.3.5). Anything this service does
    /// not do is an error (§6.3.6), except asking for what it does anyway: no digests, no
    /// body (clients send the form of the §6.3.5 example).
    pub fn apply(self, form: &Form) -> Result<SubOptions, FormError> {
        if form.form_type().is_some_and(|t| t != OPTIONS_NS) {
            return Err(FormError(format!("FORM_TYPE must be {OPTIONS_NS}")));
        }
        let mut o = self;
        for field in &form.fields {
            let var = field.var.as_str();
            match var {
                "FORM_TYPE" => {}
                "pubsub#deliver" => o.deliver = form.boolean(var)?.unwrap_or(o.deliver),
                "pubsub#digest" | "pubsub#include_body" if form.boolean(var)? != Some(true) => {}
                _ => return Err(FormError(format!("{var} is not an option of this service"))),
            }
        }
        Ok(o)
    }

    /// The stored form of these options: empty for the defaults, the common case.
    pub fn to_text(self) -> String {
        if self == SubOptions::default() {
            return String::new();
        }
        self.to_form(FormKind::Result).to_element().to_xml()
    }

    /// Reads what [`SubOptions::to_text`] wrote.
    pub fn from_text(text: &str) -> SubOptions {
        if text.is_empty() {
            return SubOptions::default();
        }
        xmppd_xml::parse_fragment(text, crate::forms::NS)
            .and_then(|x| Form::parse(&x).ok())
            .and_then(|f| SubOptions::default().apply(&f).ok())
            .unwrap_or_default()
    }
}

/// The form an owner gets to approve `jid`'s subscription to `node` (§8.6, §16.4.2). No
/// `pubsub#subid`: an entity has at most one subscription per node here.
pub fn authorization_form(node: &str, jid: &str) -> Form {
    Form::new(FormKind::Form)
        .title("PubSub subscriber request")
        .instructions(
            "To approve this entity's subscription request, set allow and submit the form. \
             To deny it, submit the form with allow unset.",
        )
        .field(Field::form_type(AUTHORIZATION_NS))
        .field(
            Field::new("pubsub#node", "text-single")
                .label("Node ID")
                .value(node),
        )
        .field(
            Field::new("pubsub#subscriber_jid", "jid-single")
                .label("Subscriber Address")
                .value(jid),
        )
        .field(
            Field::new("pubsub#allow", "boolean")
                .label("Allow this JID to subscribe to this pubsub node?")
                .boolean_value(false),
        )
}

/// An owner's submitted authorization form.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub node: String,
    pub jid: String,
    pub allow: bool,
}

impl Decision {
    /// Reads a submitted form (§8.6); `None` for a cancelled one, which leaves the request
    /// pending.
    pub fn parse(form: &Form) -> Result<Option<Decision>, FormError> {
        if form.kind == FormKind::Cancel {
            return Ok(None);
        }
        if form.kind != FormKind::Submit || form.form_type() != Some(AUTHORIZATION_NS) {
            return Err(FormError(format!(
                "not a submitted {AUTHORIZATION_NS} form"
            )));
        }
        let required = |var: &str| {
            form.single(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| FormError(format!("{var} is required")))
        };
        Ok(Some(Decision {
            node: required("pubsub#node")?,
            jid: required("pubsub#subscriber_jid")?,
            allow: form
                .boolean("pubsub#allow")?
                .ok_or_else(|| FormError("pubsub#allow is required".into()))?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorize() -> NodeConfig {
        NodeConfig {
            access_model: AccessModel::Authorize,
            ..NodeConfig::service_default()
        }
    }

    fn affiliated(a: Affiliation) -> Relation {
        Relation {
            affiliation: Some(a),
            ..Relation::default()
        }
    }

    #[test]
    fn an_authorize_node_makes_strangers_wait_and_lets_affiliates_in() {
        let config = authorize();
        let stranger = Relation::default();
        assert_eq!(
            SubState::None.subscribe(&config, &stranger),
            Ok(SubState::Pending)
        );
        assert_eq!(
            SubState::Pending.subscribe(&config, &stranger),
            Err(Denied::Pending)
        );
        assert_eq!(
            SubState::Subscribed.subscribe(&config, &stranger),
            Ok(SubState::Subscribed)
        );
        for a in [
            Affiliation::Member,
            Affiliation::Publisher,
            Affiliation::Owner,
        ] {
            assert_eq!(
                SubState::None.subscribe(&config, &affiliated(a)),
                Ok(SubState::Subscribed)
            );
        }
        let outcast = affiliated(Affiliation::Outcast);
        assert_eq!(
            SubState::Subscribed.subscribe(&config, &outcast),
            Err(Denied::Outcast)
        );
    }

    #[test]
    fn other_access_models_subscribe_at_once_or_refuse() {
        let open = NodeConfig::service_default();
        assert_eq!(
            SubState::None.subscribe(&open, &Relation::default()),
            Ok(SubState::Subscribed)
        );
        let whitelist = NodeConfig {
            access_model: AccessModel::Whitelist,
            ..open
        };
        assert_eq!(
            SubState::None.subscribe(&whitelist, &Relation::default()),
            Err(Denied::ClosedNode)
        );
    }

    #[test]
    fn only_a_pending_request_is_decided() {
        assert_eq!(SubState::Pending.decide(true), Some(SubState::Subscribed));
        assert_eq!(SubState::Pending.decide(false), Some(SubState::None));
        assert_eq!(SubState::Subscribed.decide(false), None);
        assert_eq!(SubState::None.decide(true), None);
        for s in [SubState::None, SubState::Pending, SubState::Subscribed] {
            assert_eq!(SubState::parse(s.as_str()), s);
        }
    }

    fn submitted(fields: &[(&str, &str)]) -> Form {
        fields
            .iter()
            .fold(Form::new(FormKind::Submit), |f, (var, value)| {
                f.field(Field::new(*var, "text-single").value(*value))
            })
    }

    #[test]
    fn options_apply_what_is_offered_and_refuse_the_rest() {
        let off = SubOptions::default()
            .apply(&submitted(&[
                ("FORM_TYPE", OPTIONS_NS),
                ("pubsub#deliver", "false"),
                ("pubsub#digest", "0"),
                ("pubsub#include_body", "false"),
            ]))
            .unwrap();
        assert!(!off.deliver);
        assert_eq!(SubOptions::from_text(&off.to_text()), off);
        assert_eq!(SubOptions::default().to_text(), "");
        assert_eq!(SubOptions::from_text(""), SubOptions::default());
        for bad in [
            [("FORM_TYPE", AUTHORIZATION_NS)],
            [("pubsub#deliver", "maybe")],
            [("pubsub#digest", "1")],
            [("pubsub#show-values", "away")],
            [("pubsub#expire", "presence")],
        ] {
            assert!(
                SubOptions::default().apply(&submitted(&bad)).is_err(),
                "{bad:?}"
            );
        }
        let form = SubOptions::default().to_form(FormKind::Form);
        assert_eq!(form.boolean("pubsub#deliver"), Ok(Some(true)));
        assert_eq!(form.form_type(), Some(OPTIONS_NS));
    }

    #[test]
    fn the_authorization_form_submitted_back_is_a_decision() {
        let mut form = authorization_form("n", "b@x");
        form.kind = FormKind::Submit;
        assert_eq!(
            Decision::parse(&form),
            Ok(Some(Decision {
                node: "n".into(),
                jid: "b@x".into(),
                allow: false
            }))
        );
        let allow = form.fields.iter_mut().find(|f| f.var == "pubsub#allow");
        allow.unwrap().values = vec!["true".into()];
        assert!(Decision::parse(&form).unwrap().unwrap().allow);
        assert_eq!(Decision::parse(&Form::new(FormKind::Cancel)), Ok(None));
        // The form as sent is no answer; nor is one without the fields.
        assert!(Decision::parse(&authorization_form("n", "b@x")).is_err());
        let bare = Form::new(FormKind::Submit).field(Field::form_type(AUTHORIZATION_NS));
        assert!(Decision::parse(&bare).is_err());
    }
}
