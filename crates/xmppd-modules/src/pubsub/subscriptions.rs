//! A subscription's state (XEP-0060 §4.2: none, pending, subscribed) and how it changes: a
//! subscribe request (§6.1), an owner's answer to a request for approval (§8.6). Pure, so
//! the rules are tested without a server.

use super::node::{may_access, AccessModel, Affiliation, Denied, NodeConfig, Relation};
use crate::forms::{Field, Form, FormError, FormKind};

pub const AUTHORIZATION_NS: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

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
