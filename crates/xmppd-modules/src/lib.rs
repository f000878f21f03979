//! Feature modules, one file (or folder) per protocol feature, named by what it implements
//! (see the table in `docs/architecture.md`). Each registers what it handles through
//! xmppd-server's [`Registry`]; the core knows none of them. Adding a XEP is adding a
//! module here and one line in [`standard`].

pub mod carbons;
pub mod csi;
pub mod disco;
pub mod forms;
pub mod last;
pub mod muc;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod privacy;
pub mod private;
pub mod pubsub;
pub mod register;
pub mod roster;
pub mod rsm;
pub mod subscription;
pub mod time;
pub mod vcard;
pub mod version;

use serde::Deserialize;
use xmppd_core::{BareJid, StanzaError, StanzaErrorCondition};
use xmppd_server::registry::Registry;

/// Loads every module the server ships, each on unless its `[modules.NAME]` section says
/// `enabled = false`: pass it to `xmppd_server::start`.
pub fn standard(r: &mut Registry) {
    r.load::<disco::Disco>()
        .load::<ping::Ping>()
        .load::<version::Version>()
        .load::<time::Time>()
        .load::<roster::Roster>()
        .load::<presence::Presence>()
        .load::<offline::Offline>()
        .load::<vcard::VCard>()
        .load::<private::Private>()
        .load::<last::LastActivity>()
        .load::<register::Register>()
        .load::<privacy::Privacy>()
        .load::<carbons::Carbons>()
        .load::<csi::Csi>()
        .load::<muc::Muc>()
        .load::<pubsub::PubSub>();
}

/// The settings of a module that has none besides `enabled`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

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
