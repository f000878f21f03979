//! Offline messages (XEP-0160) with their delay stamp (XEP-0203).

use std::sync::Arc;

use bytes::Bytes;
use xmppd_core::{ns, BareJid, Element, Stanza, StanzaErrorCondition};
use xmppd_storage::OfflineMessage;

use super::account_parts;
use crate::router::{Router, SessionHandle};
use crate::time::{iso8601, unix_now};

const DELAY: &str = "urn:xmpp:delay";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// Whether a message is worth keeping for later: chat or normal with some content beyond a
/// chat state (XEP-0160 §3, XEP-0085 §5.6).
fn worth_storing(stanza: &Stanza) -> bool {
    matches!(stanza.stanza_type(), "" | "normal" | "chat")
        && stanza.element().children().any(|c| c.ns() != CHATSTATES)
}

/// Stores a message for an account with no session to take it. Returns false if it was not
/// stored (and the sender got an error where one is due).
pub async fn store(router: &Router, stanza: &Stanza, user: &BareJid) -> bool {
    if !worth_storing(stanza) {
        return false;
    }
    let stamp = unix_now();
    let mut el = stanza.element().clone();
    el.push_child(
        Element::new("delay", DELAY)
            .with_attr("from", user.domain().as_str())
            .with_attr("stamp", iso8601(stamp))
            .with_text("Offline Storage"),
    );
    let message = OfflineMessage {
        stamp,
        stanza: el.to_xml_in(ns::CLIENT),
    };
    let (username, domain) = account_parts(user);
    let limit = router.limits().max_offline_messages;
    match router
        .storage()
        .offline
        .push(username, domain, &message, limit)
        .await
    {
        Ok(true) => true,
        Ok(false) => {
            // XEP-0160 §3: a full store refuses the message rather than dropping silently.
            router.bounce(
                stanza,
                xmppd_core::StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
                    .with_text("the recipient's offline storage is full"),
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "offline storage failed");
            router.bounce(stanza, StanzaErrorCondition::InternalServerError.into());
            false
        }
    }
}

/// Delivers and deletes stored messages, oldest first, on initial presence.
pub async fn deliver(router: &Router, session: &Arc<SessionHandle>, user: &BareJid) {
    let (username, domain) = account_parts(user);
    match router.storage().offline.take_all(username, domain).await {
        Ok(messages) => {
            for m in messages {
                if !session
                    .send_patiently(Bytes::from(m.stanza.into_bytes()))
                    .await
                {
                    break;
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "reading offline messages failed"),
    }
}
