//! Server dialback (XEP-0220): keys and the `db:` elements.
//!
//! Keys follow XEP-0185: `HMAC-SHA256(hex(SHA256(secret)), receiving ' ' originating ' '
//! stream-id)` in hex, so only this server can make them and it can check one without
//! remembering it. Elements are written with the `db:` prefix our stream headers declare,
//! since some deployments accept no other (XEP-0220 §2.1 note).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use xmppd_core::StanzaErrorCondition;
use xmppd_xml::escape_attr;

/// The dialback key for a stream `stream_id` from `originating` to `receiving`.
pub fn key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed = hex(&Sha256::digest(secret));
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(hashed.as_bytes()).expect("any key length");
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `offered` is the key we would have made (in constant time).
pub fn is_valid(
    secret: &[u8],
    receiving: &str,
    originating: &str,
    stream_id: &str,
    offered: &str,
) -> bool {
    let expected = key(secret, receiving, originating, stream_id);
    expected.as_bytes().ct_eq(offered.trim().as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outcome of a `db:result` or `db:verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    Invalid,
    /// `type='error'` with this condition (XEP-0220 §2.4).
    Error(StanzaErrorCondition),
}

/// `<db:NAME from to [id]>key</db:NAME>`: a request (`result` or `verify`).
pub fn request(name: &str, from: &str, to: &str, id: Option<&str>, key: &str) -> Vec<u8> {
    let mut out = open(name, from, to, id);
    out.push(b'>');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"</db:");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    out
}

/// `<db:NAME from to [id] type/>`: the answer to a request.
pub fn answer(name: &str, from: &str, to: &str, id: Option<&str>, outcome: Outcome) -> Vec<u8> {
    let mut out = open(name, from, to, id);
    match outcome {
        Outcome::Valid => out.extend_from_slice(b" type='valid'/>"),
        Outcome::Invalid => out.extend_from_slice(b" type='invalid'/>"),
        Outcome::Error(condition) => {
            let kind = match condition {
                StanzaErrorCondition::RemoteServerTimeout
                | StanzaErrorCondition::RemoteServerNotFound => "wait",
                _ => "cancel",
            };
            out.extend_from_slice(b" type='error'><error type='");
            out.extend_from_slice(kind.as_bytes());
            out.extend_from_slice(b"'><");
            out.extend_from_slice(condition.as_str().as_bytes());
            out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:");
            out.extend_from_slice(name.as_bytes());
            out.push(b'>');
        }
    }
    out
}

fn open(name: &str, from: &str, to: &str, id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"<db:");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b" from='");
    escape_attr(&mut out, from);
    out.extend_from_slice(b"' to='");
    escape_attr(&mut out, to);
    out.push(b'\'');
    if let Some(id) = id {
        out.extend_from_slice(b" id='");
        escape_attr(&mut out, id);
        out.push(b'\'');
    }
    out
}

/// The outcome an answer element carries.
pub fn outcome_of(el: &xmppd_core::Element) -> Outcome {
    match el.attr("type") {
        Some("valid") => Outcome::Valid,
        Some("invalid") => Outcome::Invalid,
        _ => {
            let condition = el
                .children()
                .find(|c| c.name() == "error")
                .and_then(|e| e.children().next().map(|c| c.name().to_string()))
                .and_then(|name| StanzaErrorCondition::parse(&name))
                .unwrap_or(StanzaErrorCondition::RemoteServerTimeout);
            Outcome::Error(condition)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_input_and_check_in_constant_time() {
        let k = key(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F",
        );
        assert_eq!(k.len(), 64);
        assert!(is_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F",
            &k
        ));
        assert!(!is_valid(
            b"other",
            "example.net",
            "example.com",
            "D60000229F",
            &k
        ));
        assert!(!is_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.org",
            "example.com",
            "D60000229F",
            &k
        ));
        assert!(!is_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "other",
            &k
        ));
        assert!(!is_valid(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F",
            ""
        ));
    }

    #[test]
    fn answers_parse_back_to_their_outcome() {
        for outcome in [
            Outcome::Valid,
            Outcome::Invalid,
            Outcome::Error(StanzaErrorCondition::ItemNotFound),
        ] {
            let xml = answer("result", "a.example", "b.example", None, outcome);
            let wrapped = format!(
                "<x xmlns:db='jabber:server:dialback'>{}</x>",
                String::from_utf8(xml).unwrap()
            );
            let x = xmppd_xml::parse_fragment(&wrapped, "jabber:server").unwrap();
            let el = x.children().next().unwrap();
            assert!(el.is("result", xmppd_core::ns::DIALBACK));
            assert_eq!(outcome_of(el), outcome);
        }
    }
}
