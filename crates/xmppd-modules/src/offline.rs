//! Offline messages (XEP-0160) with their delay stamp (XEP-0203): stores what no session
//! took, delivers it on the next initial presence of non-negative priority.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use xmppd_core::{ns, BareJid, Element, Stanza, StanzaErrorCondition};
use xmppd_storage::{OfflineMessage, Storage};

use super::{account_parts, NoConfig};
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, Handled, Module, Registry, Spec,
};
use xmppd_server::router::{IqRequests, Push, SessionHandle};
use xmppd_server::time::{iso8601, unix_now};

pub struct Offline {
    /// Accounts whose stored messages are being delivered now, each with the lock that
    /// makes its deliveries take turns.
    delivering: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Module for Offline {
    const NAME: &'static str = "offline";
    const SPECS: &'static [Spec] = &[
        Spec::xep("XEP-0160", "1.0.1"),
        Spec::xep("XEP-0203", "2.0").note("stored messages carry their delay"),
    ];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        let module = Arc::new(Offline {
            delivering: Arc::default(),
        });
        // Last in the chain of what happens to an undelivered message.
        r.on(EventKind::Undelivered, 0, module.clone());
        r.on(EventKind::InitialPresence, 0, module);
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
                let (storage, requests) = (cx.storage().clone(), cx.requests().clone());
                self.start_delivery(storage, requests, (*session).clone());
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

/// Messages read from storage per round of delivery.
const BATCH: usize = 100;
/// How long a delivery waits for room in a session's queue before it stops (the rest stays
/// stored for the next login).
const PATIENCE: Duration = Duration::from_secs(60);

impl Offline {
    /// Starts delivering stored messages to a session that just became available. One
    /// delivery per account at a time (XEP-0160: they go to one resource): a second session
    /// waits for the first delivery to end and then gets what is left, if anything.
    fn start_delivery(
        &self,
        storage: Storage,
        requests: Arc<IqRequests>,
        session: Arc<SessionHandle>,
    ) {
        let user = session.jid.to_bare().to_string();
        let turn = {
            let mut delivering = self.delivering.lock().unwrap_or_else(|e| e.into_inner());
            delivering.entry(user.clone()).or_default().clone()
        };
        let delivering = self.delivering.clone();
        // Its own task: it waits for the client to read, which the session's own task must
        // be free to let it do.
        tokio::spawn(async move {
            {
                let _turn = turn.lock().await;
                deliver(&storage, &requests, &session).await;
            }
            let mut delivering = delivering.lock().unwrap_or_else(|e| e.into_inner());
            // The map's own reference and ours: nobody else waits, forget the account.
            if Arc::strong_count(&turn) <= 2 {
                delivering.remove(&user);
            }
        });
    }
}

/// Delivers stored messages oldest first, paced by the client's reading: a batch is queued
/// as room frees up, followed by a ping (XEP-0199). The client answers it only after it has
/// read the whole batch (RFC 6120 §8.2.3: every iq get is answered, even if with an error),
/// and only then does the batch leave storage. A session that ends before that leaves the
/// batch stored, and the next login gets it again: at least once, never lost.
async fn deliver(storage: &Storage, requests: &IqRequests, session: &Arc<SessionHandle>) {
    let user = session.jid.to_bare();
    let (username, domain) = account_parts(&user);
    loop {
        let batch = match storage.offline.oldest(username, domain, BATCH).await {
            Ok(batch) => batch,
            Err(e) => return tracing::error!(error = %e, "reading offline messages failed"),
        };
        let Some((last, _)) = batch.last() else {
            return;
        };
        let last = *last;
        for (_, message) in batch {
            let data = Bytes::from(message.stanza.into_bytes());
            match session.outbox().push_patiently(data, PATIENCE).await {
                Push::Queued => {}
                Push::Full | Push::Closed => return,
            }
        }
        let ping = Element::new("ping", ns::PING);
        if requests.get(session, ping, PATIENCE).await.is_none() {
            return;
        }
        if let Err(e) = storage.offline.remove_through(username, domain, last).await {
            return tracing::error!(error = %e, "removing delivered offline messages failed");
        }
    }
}
