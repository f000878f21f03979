//! The account lifecycle the core owns, whatever modules are loaded: deletion, from an
//! in-band request (XEP-0077 §3.2) or from `xmppd user del` through the admin socket.

use xmppd_core::{BareJid, StanzaError, StanzaErrorCondition};

use crate::registry::{Ctx, Event};
use crate::router::Kick;

/// Deletes an account and everything stored for it. The modules clean up first, while the
/// data is still there (the roster module unsubscribes the contacts); then the data goes,
/// the modules forget what they cached, and the sessions end with `<not-authorized/>`.
pub async fn delete(cx: &mut Ctx<'_>, user: &BareJid) -> Result<(), StanzaError> {
    let (Some(node), domain) = (user.node(), user.domain().as_str()) else {
        return Err(StanzaErrorCondition::BadRequest.into());
    };
    cx.fire(Event::AccountRemoving(user)).await;
    cx.storage()
        .accounts
        .delete(node.as_str(), domain)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "storage failure deleting an account");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        })?;
    cx.fire(Event::AccountRemoved(user)).await;
    for session in cx.sessions().resources(user.as_str()) {
        session.kick(Kick::AccountRemoved);
    }
    Ok(())
}
