//! Core XMPP types shared by every layer of xmppd.

pub mod error;
pub mod ns;
pub mod stanza;

pub use error::{ErrorType, StanzaError, StanzaErrorCondition, StreamError};
pub use jid::{BareJid, FullJid, Jid};

/// The bare part of a JID as a slice of it, without allocating a [`BareJid`] (which
/// `Jid::to_bare` does). Neither localpart nor domain may contain '/' (RFC 7622 §3), so the
/// first one starts the resource.
pub fn bare_str(jid: &Jid) -> &str {
    let s = jid.as_str();
    s.split_once('/').map_or(s, |(bare, _)| bare)
}
pub use stanza::{Stanza, StanzaKind};
pub use xmppd_xml::{Element, Node};
