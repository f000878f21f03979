//! Iq requests the server sends to a session and waits for the answer to (RFC 6120 §8.2.3:
//! every iq get or set is answered with a result or an error, so any answer proves the
//! client has read everything sent before the request, TCP and stanza order being kept).
//! Offline delivery uses it to learn what a client really received; entity-capabilities
//! queries use it for local resources and, through the router, for remote ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use xmppd_core::{ns, Element, FullJid, Stanza};

use super::{encode, Push, SessionHandle};
use crate::stream::random_id;

/// Most requests waiting at once, server-wide: a bound, not a target.
const MAX_WAITING: usize = 100_000;

#[derive(Default)]
pub struct IqRequests {
    waiting: Mutex<HashMap<String, (FullJid, oneshot::Sender<Stanza>)>>,
}

/// Removes a request that stopped waiting (answered, timed out or dropped).
struct Registration<'a> {
    requests: &'a IqRequests,
    id: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

impl IqRequests {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (FullJid, oneshot::Sender<Stanza>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `<iq type=get>` with `payload` from the session's domain to the session and
    /// waits up to `timeout` for the answer; `None` if none came (or the session ended).
    pub async fn get(
        &self,
        session: &SessionHandle,
        payload: Element,
        timeout: Duration,
    ) -> Option<Stanza> {
        let id = format!("xmppd-{}", random_id(16));
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.lock();
            if waiting.len() >= MAX_WAITING {
                return None;
            }
            waiting.insert(id.clone(), (session.jid.clone(), tx));
        }
        let _registered = Registration {
            requests: self,
            id: id.clone(),
        };
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id)
            .with_attr("from", session.jid.domain().as_str())
            .with_attr("to", session.jid.as_str())
            .with_child(payload);
        if session.outbox().push(encode(&iq)) != Push::Queued {
            return None;
        }
        tokio::select! {
            answer = tokio::time::timeout(timeout, rx) => answer.ok()?.ok(),
            _ = session.outbox().closed() => None,
        }
    }

    /// Sends `<iq type=get>` with `payload` from `from` (a local domain) to `to`, which may
    /// be on another server, through the router, and waits up to `timeout` for the answer.
    pub async fn get_routed(
        &self,
        router: &super::Router,
        from: &str,
        to: &FullJid,
        payload: Element,
        timeout: Duration,
    ) -> Option<Stanza> {
        let id = format!("xmppd-{}", random_id(16));
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.lock();
            if waiting.len() >= MAX_WAITING {
                return None;
            }
            waiting.insert(id.clone(), (to.clone(), tx));
        }
        let _registered = Registration {
            requests: self,
            id: id.clone(),
        };
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id)
            .with_attr("from", from)
            .with_attr("to", to.as_str())
            .with_child(payload);
        let stanza = Stanza::parse(iq).ok()?;
        Box::pin(router.route(stanza)).await;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Takes an iq result or error that answers one of our requests; hands it back if it
    /// answers none (or comes from someone else than the one asked).
    pub fn answer(&self, response: Stanza) -> Option<Stanza> {
        let id = response.id().unwrap_or_default();
        let mut waiting = self.lock();
        let ours = waiting.get(id).is_some_and(|(from, _)| {
            response
                .from
                .as_ref()
                .is_some_and(|f| f.as_str() == from.as_str())
        });
        if !ours {
            return Some(response);
        }
        let (_, (_, tx)) = waiting.remove_entry(id).expect("checked");
        drop(waiting);
        let _ = tx.send(response);
        None
    }
}
