//! The router: the one place that decides where a stanza goes (RFC 6120 §10, RFC 6121 §8).
//!
//! Destinations: a local account (its sessions, or the server answering on its behalf), the
//! server domain, a host served by a module (MUC, pubsub, components) or a remote domain
//! (the [`RemoteDomains`] seam, s2s). Everything a feature does happens in the modules it
//! calls through the frozen registry ([`Hooks`]): filters on the way out and in, iq
//! handlers, interceptors (presence), and events (a message nobody took, a session closing).
//! The router itself knows routing rules only.

mod locks;
mod outbox;
mod requests;
pub mod sessions;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use xmppd_core::{
    ns, BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind,
};
use xmppd_storage::Storage;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{
    Ctx, Effect, Event, Hooks, Host, Intercept, IqTarget, Point, ServerHandle, Verdict, Via,
};
pub use locks::AccountLocks;
pub use outbox::{Outbox, Push};
pub use requests::IqRequests;
pub use sessions::{Kick, SessionHandle, SessionTable};

/// Stanzas for domains this server does not host: federation and external components.
pub trait RemoteDomains: Send + Sync {
    /// Takes a stanza for a remote domain, or hands it back with why it cannot be delivered.
    fn route(&self, router: &Router, stanza: Stanza) -> Result<(), Box<(Stanza, StanzaError)>>;
}

/// Federation switched off: every remote domain is unreachable.
pub struct NoFederation;

impl RemoteDomains for NoFederation {
    fn route(&self, _: &Router, stanza: Stanza) -> Result<(), Box<(Stanza, StanzaError)>> {
        let error = StanzaError::new(StanzaErrorCondition::RemoteServerNotFound);
        Err(Box::new((stanza, error)))
    }
}

/// How many stanzas one stanza may cause to be routed (presence broadcasts, auto-replies)
/// before the router suspects a loop between modules and stops.
const MAX_EFFECTS: usize = 100_000;

pub struct Router {
    domains: HashSet<String>,
    config: Config,
    started: std::time::Instant,
    sessions: SessionTable,
    storage: Storage,
    hooks: Hooks,
    remote: Arc<dyn RemoteDomains>,
    account_locks: AccountLocks,
    requests: Arc<IqRequests>,
    metrics: Arc<Metrics>,
    /// The state that owns this router, for tasks modules start ([`ServerHandle`]).
    server: OnceLock<Weak<crate::ServerState>>,
}

/// Serialises a stanza once for every client stream (whose default namespace is jabber:client).
pub fn encode(el: &Element) -> Bytes {
    let mut out = Vec::with_capacity(256);
    el.write_to(&mut out, ns::CLIENT);
    Bytes::from(out)
}

impl Router {
    pub fn new(
        config: &Config,
        storage: Storage,
        hooks: Hooks,
        metrics: Arc<Metrics>,
        remote: Arc<dyn RemoteDomains>,
    ) -> Self {
        Router {
            domains: config.server.domains.iter().cloned().collect(),
            config: config.clone(),
            started: std::time::Instant::now(),
            sessions: SessionTable::default(),
            storage,
            hooks,
            remote,
            account_locks: AccountLocks::default(),
            requests: Arc::default(),
            metrics,
            server: OnceLock::new(),
        }
    }

    /// Records the state that owns this router (once, when the server starts).
    pub(crate) fn set_server(&self, state: Weak<crate::ServerState>) {
        let _ = self.server.set(state);
    }

    pub fn server_handle(&self) -> ServerHandle {
        ServerHandle(self.server.get().cloned().unwrap_or_default())
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Serialises changes to each account's stored state (see [`AccountLocks`]).
    pub fn account_locks(&self) -> &AccountLocks {
        &self.account_locks
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Iq requests the server sent to sessions, waiting for their answers.
    pub fn requests(&self) -> &Arc<IqRequests> {
        &self.requests
    }

    pub fn uptime_secs(&self) -> i64 {
        self.started.elapsed().as_secs() as i64
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    /// A handler context for work outside a stanza's routing (the admin socket, streams).
    /// Hand it back to [`Router::apply`] when done.
    pub fn context(&self) -> Ctx<'_> {
        Ctx::new(self)
    }

    /// Applies the effects a context collected, and those they cause, in order.
    pub async fn apply(&self, mut cx: Ctx<'_>) {
        let mut queue: VecDeque<Effect> = cx.take_effects().into();
        let mut applied = 0;
        while let Some(effect) = queue.pop_front() {
            applied += 1;
            if applied > MAX_EFFECTS {
                tracing::error!("a stanza caused too many others; dropping the rest");
                return;
            }
            match effect {
                Effect::Route(stanza) => {
                    let mut cx = Ctx::new(self);
                    Box::pin(self.route_one(&mut cx, stanza, true)).await;
                    queue.extend(cx.take_effects());
                }
                Effect::RoutePastSenderLists(stanza) => {
                    let mut cx = Ctx::new(self);
                    Box::pin(self.route_one(&mut cx, stanza, false)).await;
                    queue.extend(cx.take_effects());
                }
                Effect::Reply(reply) => match self.reply_host(&reply) {
                    Some(host) => {
                        let Ok(stanza) = Stanza::parse(reply) else {
                            continue;
                        };
                        let mut cx = Ctx::new(self);
                        Box::pin(host.handle(&mut cx, stanza)).await;
                        queue.extend(cx.take_effects());
                    }
                    None => self.deliver_reply(reply),
                },
            }
        }
    }

    /// Routes a stanza whose `from` has already been checked and stamped by its stream.
    pub async fn route(&self, stanza: Stanza) {
        let mut cx = Ctx::new(self);
        self.route_one(&mut cx, stanza, true).await;
        self.apply(cx).await;
    }

    /// A stanza from another server or a component, whose addresses its stream checked:
    /// routed to its destination without the sender-side filters (the sender is not ours).
    pub async fn route_inbound(&self, stanza: Stanza) {
        let mut cx = Ctx::new(self);
        self.route_one(&mut cx, stanza, false).await;
        self.apply(cx).await;
    }

    /// A stanza a bound session sent: an interceptor's (presence), else routed.
    pub async fn from_session(&self, session: &Arc<SessionHandle>, stanza: Stanza) {
        match self.hooks.intercept(Intercept::FromSession, stanza.kind) {
            Some(handler) => {
                let mut cx = Ctx::new(self);
                handler.handle(&mut cx, stanza, Via::Session(session)).await;
                self.apply(cx).await;
            }
            None => self.route(stanza).await,
        }
    }

    /// Tells the modules a session was bound.
    pub async fn session_bound(&self, session: &Arc<SessionHandle>) {
        let mut cx = Ctx::new(self);
        cx.fire(Event::SessionBound(session)).await;
        self.apply(cx).await;
    }

    /// Tells the modules a session is closing (presence goes unavailable, RFC 6121 §4.5),
    /// then removes it from the table.
    pub async fn session_closing(&self, session: &Arc<SessionHandle>) {
        let mut cx = Ctx::new(self);
        cx.fire(Event::SessionClosing(session)).await;
        self.apply(cx).await;
        self.sessions.unbind(session);
        session.outbox().close();
    }

    /// Routes one stanza; `outbound` runs the sender-side filters first.
    async fn route_one(&self, cx: &mut Ctx<'_>, stanza: Stanza, outbound: bool) {
        // An answer to a request the server sent goes to whoever waits for it.
        let stanza = match stanza.kind {
            StanzaKind::Iq if !stanza.is_iq_request() => match self.requests.answer(stanza) {
                None => return,
                Some(other) => other,
            },
            _ => stanza,
        };
        // RFC 6120 §10.3: no 'to' means the sender's own account.
        let to = match (&stanza.to, &stanza.from) {
            (Some(to), _) => to.clone(),
            (None, Some(from)) => Jid::from(from.to_bare()),
            (None, None) => return,
        };
        if outbound && !self.passes(cx, Point::Outbound, &stanza, &to).await {
            return;
        }
        let domain = to.domain().as_str();
        if self.is_local_domain(domain) {
            match to.node() {
                None => self.to_server(cx, stanza, domain).await,
                Some(_) => self.to_account(cx, stanza, &to).await,
            }
        } else if let Some(host) = self.hooks.host(domain) {
            host.handle(cx, stanza).await;
        } else if let Err(failed) = self.remote.route(self, stanza) {
            let (original, error) = *failed;
            cx.bounce(&original, error);
        }
    }

    /// Runs the filters of `point`; false (after bouncing where a filter says so) if one
    /// of them stopped the stanza.
    pub(crate) async fn passes(
        &self,
        cx: &mut Ctx<'_>,
        point: Point,
        stanza: &Stanza,
        to: &Jid,
    ) -> bool {
        for filter in self.hooks.filters(point) {
            match filter.check(cx, stanza, to, point, None).await {
                Verdict::Allow => {}
                Verdict::Drop | Verdict::Held => return false,
                Verdict::Reject(e) => {
                    cx.bounce(stanza, e);
                    return false;
                }
            }
        }
        true
    }

    /// Stanzas to the server domain itself (RFC 6120 §10.4).
    async fn to_server(&self, cx: &mut Ctx<'_>, stanza: Stanza, domain: &str) {
        match stanza.kind {
            StanzaKind::Iq if stanza.is_iq_request() => {
                self.answer_iq(cx, &stanza, IqTarget::Server(domain)).await
            }
            // Results and errors to the server, and presence, end here.
            StanzaKind::Iq | StanzaKind::Presence => {}
            // The server has no chat of its own: RFC 6120 §10.4.1 lets it answer an error.
            StanzaKind::Message => {
                cx.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
            }
        }
    }

    /// Calls the handler registered for the iq's payload, and replies.
    async fn answer_iq(&self, cx: &mut Ctx<'_>, iq: &Stanza, target: IqTarget<'_>) {
        let handler = iq
            .iq_payload()
            .and_then(|p| self.hooks.iq(target.on(), p.ns(), p.name()));
        let result = match handler {
            Some(handler) => handler.handle(cx, target, iq).await,
            // RFC 6120 §8.4: an unknown payload namespace gets service-unavailable.
            None => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        };
        match result {
            Ok(payload) => cx.reply(iq.iq_result(payload)),
            Err(e) => cx.bounce(iq, e),
        }
    }

    /// Stanzas to a local account (RFC 6121 §8.5).
    async fn to_account(&self, cx: &mut Ctx<'_>, stanza: Stanza, to: &Jid) {
        if !self.passes(cx, Point::Inbound, &stanza, to).await {
            return;
        }
        if let Some(handler) = self.hooks.intercept(Intercept::ToAccount, stanza.kind) {
            return handler.handle(cx, stanza, Via::Account(to)).await;
        }
        if let Ok(full) = to.try_as_full() {
            if let Some(session) = self.sessions.get(full) {
                if cx.deliver(&session, &stanza, to).await && stanza.kind == StanzaKind::Message {
                    let user = full.to_bare();
                    let sessions = [session];
                    cx.fire(Event::Delivered {
                        stanza: &stanza,
                        user: &user,
                        sessions: &sessions,
                    })
                    .await;
                }
                return;
            }
            match (stanza.kind, stanza.stanza_type()) {
                // §8.5.3.2.3: an iq to a resource that is not there gets an error.
                (StanzaKind::Iq, _) if stanza.is_iq_request() => {
                    return cx.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
                }
                // §8.5.3.2.1: a chat message falls back to the bare JID…
                (StanzaKind::Message, "chat") => {}
                // …normal and groupchat are refused rather than shown to another resource…
                (StanzaKind::Message, "" | "normal" | "groupchat") => {
                    return cx.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
                }
                // …and headlines, errors, iq responses and presence vanish.
                _ => return,
            }
        }
        self.to_bare(cx, stanza, &to.to_bare()).await
    }

    async fn to_bare(&self, cx: &mut Ctx<'_>, stanza: Stanza, bare: &BareJid) {
        match stanza.kind {
            StanzaKind::Iq if stanza.is_iq_request() => {
                // §8.5.1: an account that does not exist answers service-unavailable.
                if !self.account_exists(bare).await {
                    return cx.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into());
                }
                self.answer_iq(cx, &stanza, IqTarget::Account(bare)).await;
            }
            StanzaKind::Message => self.message_to_bare(cx, stanza, bare).await,
            StanzaKind::Iq | StanzaKind::Presence => {}
        }
    }

    /// RFC 6121 §8.5.2: a message to an account's bare JID.
    async fn message_to_bare(&self, cx: &mut Ctx<'_>, stanza: Stanza, bare: &BareJid) {
        let kind = stanza.stanza_type();
        match kind {
            "error" => return,
            // §8.5.2.1.1 and §8.5.2.2.1: groupchat to a bare JID is an error.
            "groupchat" => {
                return cx.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
            }
            _ => {}
        }
        let resources = self.sessions.resources(bare.as_str());
        // §8.5.2.1.1: the available resources of highest non-negative priority; for a
        // headline every non-negative resource. Ties all receive it.
        let available = resources
            .iter()
            .filter(|s| s.is_available() && s.priority() >= 0);
        let best = available.clone().map(|s| s.priority()).max();
        let to = Jid::from(bare.clone());
        let mut delivered = Vec::new();
        let mut data = None;
        for session in available {
            if kind != "headline" && Some(session.priority()) != best {
                continue;
            }
            let data = data.get_or_insert_with(|| encode(stanza.element()));
            if cx.deliver_encoded(session, &stanza, &to, Some(data)).await {
                delivered.push(session.clone());
            }
        }
        if !delivered.is_empty() {
            cx.fire(Event::Delivered {
                stanza: &stanza,
                user: bare,
                sessions: &delivered,
            })
            .await;
            return;
        }
        // §8.5.1: no such account: an error (headlines vanish silently).
        if !self.account_exists(bare).await {
            if kind != "headline" {
                cx.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into());
            }
            return;
        }
        // §8.5.2.2.1: no session can take it now: the modules decide (privacy's default
        // list, then offline storage).
        cx.fire(Event::Undelivered {
            stanza: &stanza,
            user: bare,
        })
        .await;
    }

    pub async fn account_exists(&self, bare: &BareJid) -> bool {
        let Some(node) = bare.node() else {
            return false;
        };
        // A bound session proves the account without a query: an account's own iqs to its
        // bare JID (PEP publishes, roster, vCard) are most of what asks.
        if self.sessions.is_online(bare.as_str()) {
            return true;
        }
        match self
            .storage
            .accounts
            .exists(node.as_str(), bare.domain().as_str())
            .await
        {
            Ok(exists) => exists,
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed while routing");
                false
            }
        }
    }

    /// Queues serialised bytes for one session (never blocking; a full queue kicks it).
    pub fn deliver_bytes(&self, session: &SessionHandle, data: Bytes) {
        if session.send(data) {
            self.metrics.stanzas_out.inc();
        } else {
            self.metrics.queue_overflows.inc();
        }
    }

    /// Delivers a reply the server generated: to a local session, or out to a remote domain.
    /// The host a reply is for when it is one of the server's own (a MUC room that
    /// forwarded an iq, the pubsub service): theirs to handle, not a session's.
    fn reply_host(&self, reply: &Element) -> Option<&Arc<dyn Host>> {
        let to = Jid::new(reply.attr("to")?).ok()?;
        self.hooks.host(to.domain().as_str())
    }

    pub fn deliver_reply(&self, reply: Element) {
        let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        if self.is_local_domain(to.domain().as_str()) {
            if let Ok(full) = FullJid::try_from(to) {
                if let Some(session) = self.sessions.get(&full) {
                    self.deliver_bytes(&session, encode(&reply));
                }
            }
            return;
        }
        if let Ok(stanza) = Stanza::parse(reply) {
            // A reply that cannot leave is dropped: errors are never answered with errors.
            let _ = self.remote.route(self, stanza);
        }
    }
}
