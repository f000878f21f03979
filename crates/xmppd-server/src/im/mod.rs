//! Instant messaging and presence (RFC 6121) and the per-account services around it:
//! roster, subscriptions, presence, offline messages (XEP-0160), vCards (XEP-0054/0153),
//! private XML (XEP-0049), last activity (XEP-0012) and account management (XEP-0077).

pub mod last;
pub mod offline;
pub mod presence;
pub mod privacy;
pub mod private;
pub mod register;
pub mod roster;
pub mod subscription;
pub mod vcard;

use xmppd_core::{BareJid, StanzaError, StanzaErrorCondition};

/// `(username, domain)` of a local account's bare JID.
pub fn account_parts(jid: &BareJid) -> (&str, &str) {
    (
        jid.node().map(|n| n.as_str()).unwrap_or_default(),
        jid.domain().as_str(),
    )
}

/// A storage failure as the stanza error a client sees (details go to the log only).
pub fn storage_error(e: xmppd_storage::StorageError) -> StanzaError {
    tracing::error!(error = %e, "storage failure");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

/// Whether the iq comes from the account it is addressed to.
pub fn from_owner(iq: &xmppd_core::Stanza, owner: &BareJid) -> bool {
    iq.from.as_ref().is_some_and(|f| f.to_bare() == *owner)
}
