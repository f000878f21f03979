//! A stanza: an element plus its parsed addressing (RFC 6120 §8).

use crate::error::{StanzaError, StanzaErrorCondition};
use crate::ns;
use jid::Jid;
use xmppd_xml::Element;

/// The three stanza kinds of RFC 6120 §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// The kind of `el` when it is a stanza in a client or server stream namespace.
    pub fn of(el: &Element) -> Option<Self> {
        if el.ns() != ns::CLIENT && el.ns() != ns::SERVER {
            return None;
        }
        match el.name() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }
}

/// A stanza with `to` and `from` parsed once.
#[derive(Clone, Debug)]
pub struct Stanza {
    pub kind: StanzaKind,
    pub to: Option<Jid>,
    pub from: Option<Jid>,
    el: Element,
}

impl Stanza {
    /// Parses the addressing of `el`. On a malformed address or an invalid iq, returns the
    /// error to send back (RFC 6120 §8.3.3.8 `jid-malformed`, §8.2.3 `bad-request`).
    pub fn parse(el: Element) -> Result<Stanza, Box<(Element, StanzaError)>> {
        let Some(kind) = StanzaKind::of(&el) else {
            let err = StanzaError::new(StanzaErrorCondition::BadRequest);
            return Err(Box::new((el, err)));
        };
        let to = match el.attr("to").map(Jid::new).transpose() {
            Ok(to) => to,
            Err(_) => {
                let err = StanzaError::new(StanzaErrorCondition::JidMalformed);
                return Err(Box::new((el, err)));
            }
        };
        let from = el.attr("from").and_then(|f| Jid::new(f).ok());
        let stanza = Stanza { kind, to, from, el };
        if kind == StanzaKind::Iq && !stanza.iq_is_valid() {
            let err = StanzaError::new(StanzaErrorCondition::BadRequest);
            return Err(Box::new((stanza.el, err)));
        }
        Ok(stanza)
    }

    /// RFC 6120 §8.2.3: an id, a known type, exactly one payload for get and set.
    fn iq_is_valid(&self) -> bool {
        if self.el.attr("id").is_none() {
            return false;
        }
        match self.stanza_type() {
            "get" | "set" => self.el.children().count() == 1,
            "result" => self.el.children().count() <= 1,
            "error" => true,
            _ => false,
        }
    }

    pub fn element(&self) -> &Element {
        &self.el
    }

    pub fn element_mut(&mut self) -> &mut Element {
        &mut self.el
    }

    pub fn into_element(self) -> Element {
        self.el
    }

    pub fn id(&self) -> Option<&str> {
        self.el.attr("id")
    }

    /// The `type` attribute, or the empty string when absent.
    pub fn stanza_type(&self) -> &str {
        self.el.attr("type").unwrap_or("")
    }

    pub fn is_error(&self) -> bool {
        self.stanza_type() == "error"
    }

    /// An iq request (`get` or `set`) that must be answered.
    pub fn is_iq_request(&self) -> bool {
        self.kind == StanzaKind::Iq && matches!(self.stanza_type(), "get" | "set")
    }

    /// The single payload child of an iq.
    pub fn iq_payload(&self) -> Option<&Element> {
        self.el.children().next()
    }

    pub fn set_from(&mut self, from: Jid) {
        self.el.set_attr("from", from.as_str());
        self.from = Some(from);
    }

    pub fn set_to(&mut self, to: Jid) {
        self.el.set_attr("to", to.as_str());
        self.to = Some(to);
    }

    /// The error reply to this stanza, or `None` for an error stanza (which is never answered,
    /// RFC 6120 §8.3.1).
    pub fn error_reply(&self, error: &StanzaError) -> Option<Element> {
        error_reply(&self.el, error)
    }

    /// A `type='result'` reply to this iq, with an optional payload.
    pub fn iq_result(&self, payload: Option<Element>) -> Element {
        let mut reply = self.reply_shell();
        reply.set_attr("type", "result");
        if let Some(p) = payload {
            reply.push_child(p);
        }
        reply
    }

    fn reply_shell(&self) -> Element {
        reply_shell(&self.el)
    }
}

fn reply_shell(el: &Element) -> Element {
    let mut reply = Element::new(el.name(), el.ns());
    if let Some(id) = el.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = el.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = el.attr("to") {
        reply.set_attr("from", to);
    }
    reply
}

/// The error reply to any stanza element; `None` if it is itself an error.
pub fn error_reply(el: &Element, error: &StanzaError) -> Option<Element> {
    if el.attr("type") == Some("error") {
        return None;
    }
    let mut reply = reply_shell(el);
    reply.set_attr("type", "error");
    // RFC 6120 §8.3.1: the original payload MAY be included; it helps a client match a failed
    // message, while an iq reply carries only the error.
    if el.name() != "iq" {
        for child in el.children() {
            reply.push_child(child.clone());
        }
    }
    reply.push_child(error.to_element(el.ns()));
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iq(attrs: &[(&str, &str)], children: usize) -> Element {
        let mut el = Element::new("iq", ns::CLIENT);
        for (k, v) in attrs {
            el.set_attr(*k, *v);
        }
        for _ in 0..children {
            el.push_child(Element::new("ping", ns::PING));
        }
        el
    }

    #[test]
    fn iq_validation() {
        assert!(Stanza::parse(iq(&[("id", "1"), ("type", "get")], 1)).is_ok());
        assert!(Stanza::parse(iq(&[("id", "1"), ("type", "get")], 0)).is_err());
        assert!(Stanza::parse(iq(&[("id", "1"), ("type", "set")], 2)).is_err());
        assert!(Stanza::parse(iq(&[("type", "get")], 1)).is_err());
        assert!(Stanza::parse(iq(&[("id", "1"), ("type", "bogus")], 1)).is_err());
        assert!(Stanza::parse(iq(&[("id", "1"), ("type", "result")], 0)).is_ok());
    }

    #[test]
    fn malformed_to_is_jid_malformed() {
        let el = Element::new("message", ns::CLIENT).with_attr("to", "a@b@c");
        let err = Stanza::parse(el).unwrap_err();
        assert_eq!(err.1.condition, StanzaErrorCondition::JidMalformed);
    }

    #[test]
    fn error_reply_swaps_addresses_and_never_answers_errors() {
        let el = iq(
            &[("id", "7"), ("type", "get"), ("from", "a@x/r"), ("to", "x")],
            1,
        );
        let stanza = Stanza::parse(el).unwrap();
        let reply = stanza
            .error_reply(&StanzaErrorCondition::ServiceUnavailable.into())
            .unwrap();
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("from"), Some("x"));
        assert_eq!(reply.attr("type"), Some("error"));
        assert!(reply.get_child("ping", ns::PING).is_none());
        let error_stanza = Stanza::parse(reply).unwrap();
        assert!(error_stanza
            .error_reply(&StanzaErrorCondition::BadRequest.into())
            .is_none());
    }
}
