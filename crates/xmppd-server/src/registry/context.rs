//! What a module's handler sees of the server: storage, the session table, configuration,
//! queues of local sessions, and a list of effects (stanzas to route, replies) that the
//! router applies once the handler has returned.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use xmppd_core::{BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaKind};
use xmppd_storage::Storage;

use super::{Event, Handled, Hooks, Point, Verdict};
use crate::config::{Config, ImConfig};
use crate::router::{AccountLocks, IqRequests, Router, SessionHandle, SessionTable};

/// A deferred action, applied by the router after the handler that asked for it.
pub enum Effect {
    /// Route a stanza as if a sender had sent it (filters included).
    Route(Stanza),
    /// Route a stanza without the [`Point::Outbound`] filters.
    RoutePastSenderLists(Stanza),
    /// Deliver a reply the server generated (errors, results), bypassing filters.
    Reply(Element),
}

/// An owned way back into the server for work that outlives a handler (a MUC room's task,
/// a delivery task). It does not keep the server alive: `upgrade` fails once it has stopped.
/// With the state, `state.router.context()` gives a [`Ctx`] and `state.router.apply(cx)`
/// applies what it recorded.
#[derive(Clone)]
pub struct ServerHandle(pub(crate) Weak<crate::ServerState>);

impl ServerHandle {
    pub fn upgrade(&self) -> Option<Arc<crate::ServerState>> {
        self.0.upgrade()
    }
}

/// A handler's view of the server (see the module docs).
pub struct Ctx<'a> {
    router: &'a Router,
    effects: Vec<Effect>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(router: &'a Router) -> Self {
        Ctx {
            router,
            effects: Vec::new(),
        }
    }

    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// A handle for tasks the handler starts (see [`ServerHandle`]).
    pub fn server_handle(&self) -> ServerHandle {
        self.router.server_handle()
    }

    pub fn storage(&self) -> &'a Storage {
        self.router.storage()
    }

    pub fn sessions(&self) -> &'a SessionTable {
        self.router.sessions()
    }

    pub fn config(&self) -> &'a Config {
        self.router.config()
    }

    /// Per-account limits of the IM services.
    pub fn limits(&self) -> &'a ImConfig {
        &self.router.config().im
    }

    pub fn hooks(&self) -> &'a Hooks {
        self.router.hooks()
    }

    /// Serialises changes to each account's stored state: hold it from load to save.
    pub fn account_locks(&self) -> &'a AccountLocks {
        self.router.account_locks()
    }

    /// Iq requests to sessions whose answers someone awaits (see [`IqRequests`]); an `Arc`
    /// so a task that outlives the handler can keep it.
    pub fn requests(&self) -> &'a Arc<IqRequests> {
        self.router.requests()
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.router.is_local_domain(domain)
    }

    pub fn uptime_secs(&self) -> i64 {
        self.router.uptime_secs()
    }

    pub async fn account_exists(&self, bare: &BareJid) -> bool {
        self.router.account_exists(bare).await
    }

    /// Routes `stanza` once the handler has returned.
    pub fn route(&mut self, stanza: Stanza) {
        self.effects.push(Effect::Route(stanza));
    }

    /// Routes a stanza the server sends on a user's behalf that the user's own lists must
    /// not stop: the unavailable presence a newly blocked contact receives (XEP-0191 §3.3),
    /// routed after the block was saved. The recipient's filters still apply.
    pub fn route_past_sender_lists(&mut self, stanza: Stanza) {
        self.effects.push(Effect::RoutePastSenderLists(stanza));
    }

    /// Routes a server-built element (dropped if it is not a valid stanza).
    pub fn route_element(&mut self, el: Element) {
        if let Ok(stanza) = Stanza::parse(el) {
            self.route(stanza);
        }
    }

    /// Sends the error reply for `stanza` back to its sender (never for an error stanza).
    pub fn bounce(&mut self, stanza: &Stanza, error: StanzaError) {
        if let Some(reply) = stanza.error_reply(&error) {
            self.effects.push(Effect::Reply(reply));
        }
    }

    /// Sends a server-generated reply to its `to`.
    pub fn reply(&mut self, reply: Element) {
        self.effects.push(Effect::Reply(reply));
    }

    /// Queues an element the server generated for one session, without filters: pushes
    /// (roster, privacy) and answers to the session itself.
    pub fn push(&self, session: &SessionHandle, el: &Element) {
        self.router
            .deliver_bytes(session, crate::router::encode(el));
    }

    /// Queues bytes for one session, without filters.
    pub fn push_bytes(&self, session: &SessionHandle, data: Bytes) {
        self.router.deliver_bytes(session, data);
    }

    /// Queues a stanza addressed to `to` (the session's full JID or its account's bare JID)
    /// for one session, after the [`Point::Deliver`] filters (privacy, CSI). Returns
    /// whether it was queued (or held back by a filter for later).
    pub async fn deliver(&self, session: &Arc<SessionHandle>, stanza: &Stanza, to: &Jid) -> bool {
        self.deliver_encoded(session, stanza, to, None).await
    }

    /// [`Ctx::deliver`] with the bytes already serialised, for fan-out to several sessions.
    pub async fn deliver_encoded(
        &self,
        session: &Arc<SessionHandle>,
        stanza: &Stanza,
        to: &Jid,
        data: Option<&Bytes>,
    ) -> bool {
        for filter in self.hooks().filters(Point::Deliver) {
            match filter
                .check(self, stanza, to, Point::Deliver, Some(session))
                .await
            {
                Verdict::Allow => {}
                Verdict::Held => return true,
                Verdict::Drop | Verdict::Reject(_) => return false,
            }
        }
        let data = match data {
            Some(d) => d.clone(),
            None => crate::router::encode(stanza.element()),
        };
        self.router.deliver_bytes(session, data);
        true
    }

    /// Sends `stanza` to each of `recipients` as routing a copy to each would: the sender's
    /// [`Point::Outbound`] filters when `outbound` (a user's stanza, not a room's), the
    /// recipient's [`Point::Inbound`] and [`Point::Deliver`] ones, and [`Event::Delivered`]
    /// for a message; but serialised once, where routing serialises every copy: a local
    /// session's copy is those bytes with its own `to` spliced in after the element's name.
    /// A recipient that is not a local full JID (a bare JID, another server's user) is
    /// routed its copy. No `ToAccount` interceptor sees the copies: a fan-out carries a
    /// service's broadcasts (room presence and messages, PEP notifications), not presence
    /// a user directs. Returns the local full JIDs without a session (a room's ghosts).
    pub async fn fan_out(
        &mut self,
        mut stanza: Stanza,
        recipients: &[Jid],
        outbound: bool,
    ) -> Vec<FullJid> {
        let router = self.router;
        stanza.element_mut().remove_attr("to");
        let head = format!("<{}", stanza.element().name());
        let bytes = crate::router::encode(stanza.element());
        let mut ghosts = Vec::new();
        if !bytes.starts_with(head.as_bytes()) {
            return ghosts;
        }
        for to in recipients {
            stanza.set_to(to.clone());
            if outbound && !router.passes(self, Point::Outbound, &stanza, to).await {
                continue;
            }
            let local = router.is_local_domain(to.domain().as_str());
            let Some(full) = to.try_as_full().ok().filter(|_| local) else {
                // The sender's filters ran (or were not wanted): not again.
                self.effects
                    .push(Effect::RoutePastSenderLists(stanza.clone()));
                continue;
            };
            if !router.passes(self, Point::Inbound, &stanza, to).await {
                continue;
            }
            let Some(session) = router.sessions().get(full) else {
                ghosts.push(full.clone());
                continue;
            };
            let mut data = Vec::with_capacity(bytes.len() + to.as_str().len() + 6);
            data.extend_from_slice(head.as_bytes());
            data.extend_from_slice(b" to='");
            xmppd_xml::escape_attr(&mut data, to.as_str());
            data.push(b'\'');
            data.extend_from_slice(&bytes[head.len()..]);
            let data = Bytes::from(data);
            let delivered = self
                .deliver_encoded(&session, &stanza, to, Some(&data))
                .await;
            // Not for a room's groupchat copies: carbons copy no groupchat (XEP-0280 §6.1),
            // and firing cost allocations per occupant. A user archive that keeps groupchat
            // (XEP-0313 leaves it to the server) will need it here.
            if delivered
                && stanza.kind == StanzaKind::Message
                && stanza.stanza_type() != "groupchat"
            {
                let user = full.to_bare();
                let sessions = [session];
                self.fire(Event::Delivered {
                    stanza: &stanza,
                    user: &user,
                    sessions: &sessions,
                })
                .await;
            }
        }
        ghosts
    }

    /// Runs the handlers of `event` in priority order; `Stop` if one of them stopped it.
    pub async fn fire(&mut self, event: Event<'_>) -> Handled {
        let hooks = self.hooks();
        for handler in hooks.handlers(event.kind()) {
            if handler.on(self, &event).await == Handled::Stop {
                return Handled::Stop;
            }
        }
        Handled::Continue
    }
}
