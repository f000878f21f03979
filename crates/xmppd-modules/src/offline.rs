//! Offline messages (XEP-0160) with their delay stamp (XEP-0203): stores what no session
//! took, delivers it on the next initial presence of non-negative priority.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xmppd_core::{ns, BareJid, Element, Stanza, StanzaErrorCondition};
use xmppd_storage::OfflineMessage;

use super::{account_parts, NoConfig};
use xmppd_server::registry::{Ctx, Event, EventHandler, EventKind, Handled, Module, Registry};
use xmppd_server::router::SessionHandle;
use xmppd_server::time::{iso8601, unix_now};

pub struct Offline;

impl Module for Offline {
    const NAME: &'static str = "offline";
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        // Last in the chain of what happens to an undelivered message.
        r.on(EventKind::Undelivered, 0, Arc::new(Offline));
        r.on(EventKind::InitialPresence, 0, Arc::new(Offline));
        Ok(())
    }
}

#[async_trait]
impl EventHandler for Offline {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        match event {
            Event::Undelivered { stanza, user } => {
                store(cx, stanza, user).await;
                Handled::Stop
            }
            Event::InitialPresence(session) => {
                deliver(cx, session).await;
                Handled::Continue
            }
            _ => Handled::Continue,
        }
    }
}

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
async fn store(cx: &mut Ctx<'_>, stanza: &Stanza, user: &BareJid) -> bool {
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
    let limit = cx.limits().max_offline_messages;
    match cx
        .storage()
        .offline
        .push(username, domain, &message, limit)
        .await
    {
        Ok(true) => true,
        Ok(false) => {
            // XEP-0160 §3: a full store refuses the message rather than dropping silently.
            cx.bounce(
                stanza,
                xmppd_core::StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
                    .with_text("the recipient's offline storage is full"),
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "offline storage failed");
            cx.bounce(stanza, StanzaErrorCondition::InternalServerError.into());
            false
        }
    }
}

/// Delivers and deletes stored messages, oldest first, on initial presence.
async fn deliver(cx: &Ctx<'_>, session: &Arc<SessionHandle>) {
    let user = session.jid.to_bare();
    let (username, domain) = account_parts(&user);
    match cx.storage().offline.take_all(username, domain).await {
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
