//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3).

use crate::ns;
use xmppd_xml::Element;

macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The element name of the condition, as defined by RFC 6120.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// The condition named `s`, if RFC 6120 defines it.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

conditions! {
    /// Stream error conditions, RFC 6120 §4.9.3.
    StreamError {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

impl StreamError {
    /// Serialises `<stream:error>` with an optional human-readable text.
    pub fn write_to(self, out: &mut Vec<u8>, text: Option<&str>) {
        out.extend_from_slice(b"<stream:error><");
        out.extend_from_slice(self.as_str().as_bytes());
        out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
        if let Some(text) = text {
            out.extend_from_slice(
                b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>",
            );
            xmppd_xml::escape_text(out, text);
            out.extend_from_slice(b"</text>");
        }
        out.extend_from_slice(b"</stream:error>");
    }
}

/// The `type` attribute of a stanza error, RFC 6120 §8.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

conditions! {
    /// Stanza error conditions, RFC 6120 §8.3.3.
    StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

impl StanzaErrorCondition {
    /// The error type RFC 6120 §8.3.3 gives in the example of each condition.
    pub fn default_type(self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => {
                ErrorType::Modify
            }
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => {
                ErrorType::Auth
            }
            InternalServerError | ResourceConstraint | RecipientUnavailable
            | RemoteServerTimeout | UnexpectedRequest => ErrorType::Wait,
            _ => ErrorType::Cancel,
        }
    }
}

/// A stanza error to put in an error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub error_type: ErrorType,
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition element (e.g. XEP-0191 `<blocked/>`).
    pub app_condition: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: StanzaErrorCondition) -> Self {
        StanzaError {
            error_type: condition.default_type(),
            condition,
            text: None,
            app_condition: None,
        }
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// The `<error/>` element, in the namespace `stanza_ns` of the stream it will be written to.
    pub fn to_element(&self, stanza_ns: &str) -> Element {
        let mut error =
            Element::new("error", stanza_ns).with_attr("type", self.error_type.as_str());
        error.push_child(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(text) = &self.text {
            error.push_child(
                Element::new("text", ns::STANZAS)
                    .with_attr("xml:lang", "en")
                    .with_text(text.clone()),
            );
        }
        if let Some(app) = &self.app_condition {
            error.push_child((**app).clone());
        }
        error
    }
}

impl From<StanzaErrorCondition> for StanzaError {
    fn from(condition: StanzaErrorCondition) -> Self {
        StanzaError::new(condition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_xml() {
        let mut out = Vec::new();
        StreamError::PolicyViolation.write_to(&mut out, Some("too <big>"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>too &lt;big&gt;</text>\
             </stream:error>"
        );
        assert_eq!(
            StreamError::parse("restricted-xml"),
            Some(StreamError::RestrictedXml)
        );
    }

    #[test]
    fn stanza_error_xml() {
        let err = StanzaError::new(StanzaErrorCondition::ServiceUnavailable);
        assert_eq!(
            err.to_element(ns::CLIENT).to_xml(),
            "<error xmlns='jabber:client' type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        );
        assert_eq!(
            StanzaErrorCondition::JidMalformed.default_type(),
            ErrorType::Modify
        );
    }
}
