//! Core XMPP types shared by every layer of xmppd.

pub mod error;
pub mod ns;
pub mod stanza;

pub use error::{ErrorType, StanzaError, StanzaErrorCondition, StreamError};
pub use jid::{BareJid, FullJid, Jid};
pub use stanza::{Stanza, StanzaKind};
pub use xmppd_xml::{Element, Node};
