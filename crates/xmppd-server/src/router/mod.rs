//! The router: the one place that decides where a stanza goes (RFC 6120 §10, RFC 6121 §8).
//!
//! Destinations: a local account (its sessions, or the server answering on its behalf), the
//! server domain (modules), a local service host (MUC, pubsub, XEP-0114 components: the
//! [`Service`] seam) or a remote domain (the [`RemoteDomains`] seam, s2s). Privacy lists and
//! blocking are the filter stage ([`im::privacy::Privacy`]), consulted once on the way out of
//! a local sender and once on the way into a local recipient.

mod locks;
mod outbox;
pub mod sessions;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use xmppd_core::{
    ns, BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind,
};
use xmppd_storage::Storage;

use crate::config::{Config, ImConfig};
use crate::im;
use crate::metrics::Metrics;
use crate::modules::{IqTarget, Modules};
pub use locks::AccountLocks;
pub use sessions::{Kick, SessionHandle, SessionTable};

/// Stanzas for domains this server does not host.
pub trait RemoteDomains: Send + Sync {
    /// Takes a stanza for a remote domain, or hands it back with why it cannot be delivered.
    fn route(&self, stanza: Stanza) -> Result<(), Box<(Stanza, StanzaError)>>;
}

/// Federation switched off: every remote domain is unreachable.
pub struct NoFederation;

impl RemoteDomains for NoFederation {
    fn route(&self, stanza: Stanza) -> Result<(), Box<(Stanza, StanzaError)>> {
        let error = StanzaError::new(StanzaErrorCondition::RemoteServerNotFound);
        Err(Box::new((stanza, error)))
    }
}

/// A local service host such as `conference.example.org`.
#[async_trait]
pub trait Service: Send + Sync {
    async fn handle(&self, router: &Router, stanza: Stanza);
}

/// What a filter decides about one stanza.
#[derive(Debug)]
pub enum Verdict {
    Allow,
    /// Drop without a word (e.g. a blocked contact's presence).
    Drop,
    /// Refuse with an error to the sender.
    Reject(StanzaError),
}

pub struct Router {
    domains: HashSet<String>,
    config: Config,
    started: std::time::Instant,
    sessions: SessionTable,
    storage: Storage,
    modules: Modules,
    services: RwLock<HashMap<String, Arc<dyn Service>>>,
    remote: Arc<dyn RemoteDomains>,
    privacy: im::privacy::Privacy,
    avatars: im::vcard::AvatarHashes,
    account_locks: AccountLocks,
    metrics: Arc<Metrics>,
}

/// Serialises a stanza once for every client stream (whose default namespace is jabber:client).
pub fn encode(el: &Element) -> Bytes {
    let mut out = Vec::with_capacity(256);
    el.write_to(&mut out, ns::CLIENT);
    Bytes::from(out)
}

impl Router {
    pub fn new(config: &Config, storage: Storage, modules: Modules, metrics: Arc<Metrics>) -> Self {
        Router {
            domains: config.server.domains.iter().cloned().collect(),
            config: config.clone(),
            started: std::time::Instant::now(),
            sessions: SessionTable::default(),
            storage,
            modules,
            services: RwLock::new(HashMap::new()),
            remote: Arc::new(NoFederation),
            privacy: im::privacy::Privacy::default(),
            avatars: im::vcard::AvatarHashes::default(),
            account_locks: AccountLocks::default(),
            metrics,
        }
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The privacy filter stage (XEP-0016/XEP-0191).
    pub fn privacy(&self) -> &im::privacy::Privacy {
        &self.privacy
    }

    /// The vCard avatar hash of each account (XEP-0153), cached.
    pub fn avatars(&self) -> &im::vcard::AvatarHashes {
        &self.avatars
    }

    /// Serialises changes to each account's stored state (see [`AccountLocks`]).
    pub fn account_locks(&self) -> &AccountLocks {
        &self.account_locks
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Per-account limits of the IM services.
    pub fn limits(&self) -> &ImConfig {
        &self.config.im
    }

    pub fn scram_iterations(&self) -> u32 {
        self.config.sasl.scram_iterations
    }

    pub fn uptime_secs(&self) -> i64 {
        self.started.elapsed().as_secs() as i64
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    /// Registers a service host (MUC, pubsub, a component) for `domain`.
    pub fn add_service(&self, domain: &str, service: Arc<dyn Service>) {
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        services.insert(domain.to_string(), service);
    }

    fn service(&self, domain: &str) -> Option<Arc<dyn Service>> {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        services.get(domain).cloned()
    }

    /// [`Router::route`] for callers inside the routing path (presence handling that routes
    /// again), where the future must be boxed to be recursive.
    pub async fn route_boxed(&self, stanza: Stanza) {
        Box::pin(self.route(stanza)).await
    }

    /// Routes a stanza whose `from` has already been checked and stamped by its stream.
    pub async fn route(&self, stanza: Stanza) {
        match self.privacy.outbound(self, &stanza).await {
            Verdict::Allow => {}
            Verdict::Drop => return,
            Verdict::Reject(e) => return self.bounce(&stanza, e),
        }
        // RFC 6120 §10.3: no 'to' means the sender's own account.
        let to = match (&stanza.to, &stanza.from) {
            (Some(to), _) => to.clone(),
            (None, Some(from)) => Jid::from(from.to_bare()),
            (None, None) => return,
        };
        let domain = to.domain().as_str();
        if self.is_local_domain(domain) {
            match to.node() {
                None => self.to_server(stanza, domain).await,
                Some(_) => self.to_account(stanza, &to).await,
            }
        } else if let Some(service) = self.service(domain) {
            service.handle(self, stanza).await;
        } else {
            if let Err(failed) = self.remote.route(stanza) {
                let (original, error) = *failed;
                self.bounce(&original, error);
            }
        }
    }

    /// Stanzas to the server domain itself (RFC 6120 §10.4).
    async fn to_server(&self, stanza: Stanza, domain: &str) {
        match stanza.kind {
            StanzaKind::Iq if stanza.is_iq_request() => {
                self.answer_iq(&stanza, IqTarget::Server(domain)).await
            }
            // Results and errors to the server, and presence, end here.
            StanzaKind::Iq | StanzaKind::Presence => {}
            // The server has no chat of its own: RFC 6120 §10.4.1 lets it answer an error.
            StanzaKind::Message => {
                self.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
            }
        }
    }

    /// Calls the module that answers the iq's payload namespace, and replies.
    async fn answer_iq(&self, iq: &Stanza, target: IqTarget<'_>) {
        let payload_ns = iq.iq_payload().map(|p| p.ns()).unwrap_or_default();
        let result = match self.modules.for_iq(target, payload_ns) {
            Some(module) => module.handle_iq(self, target, iq).await,
            // RFC 6120 §8.4: an unknown payload namespace gets service-unavailable.
            None => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        };
        match result {
            Ok(payload) => self.deliver_reply(iq.iq_result(payload)),
            Err(e) => self.bounce(iq, e),
        }
    }

    /// Stanzas to a local account (RFC 6121 §8.5).
    async fn to_account(&self, stanza: Stanza, to: &Jid) {
        match self.privacy.inbound(self, &stanza, to).await {
            Verdict::Allow => {}
            Verdict::Drop => return,
            Verdict::Reject(e) => return self.bounce(&stanza, e),
        }
        if stanza.kind == StanzaKind::Presence {
            return im::presence::inbound(self, stanza, to).await;
        }
        if let Ok(full) = to.try_as_full() {
            if let Some(session) = self.sessions.get(full) {
                self.deliver_element(&session, stanza.element());
                return;
            }
            match stanza.kind {
                // §8.5.3.2.3: an iq to a resource that is not there gets an error.
                StanzaKind::Iq => {
                    return self.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
                }
                StanzaKind::Presence => return,
                // §8.5.3.2.1: a message falls back to the bare JID, except groupchat.
                StanzaKind::Message if stanza.stanza_type() == "groupchat" => {
                    return self.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into())
                }
                StanzaKind::Message => {}
            }
        }
        self.to_bare(stanza, &to.to_bare()).await
    }

    async fn to_bare(&self, stanza: Stanza, bare: &BareJid) {
        if stanza.kind == StanzaKind::Iq {
            if stanza.is_iq_request() {
                // §8.5.1: an account that does not exist answers service-unavailable.
                if !self.account_exists(bare).await {
                    return self.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into());
                }
                self.answer_iq(&stanza, IqTarget::Account(bare)).await;
            }
            return;
        }
        let resources = self.sessions.resources(bare.as_str());
        let available: Vec<_> = resources.iter().filter(|s| s.is_available()).collect();
        match stanza.kind {
            StanzaKind::Message => {
                let kind = stanza.stanza_type();
                if kind == "error" {
                    return;
                }
                // §8.5.2.1.1: the available resources of highest non-negative priority; for a
                // headline every non-negative resource. Ties all receive it.
                let best = available
                    .iter()
                    .map(|s| s.priority())
                    .filter(|p| *p >= 0)
                    .max();
                let candidates: Vec<_> = match (kind, best) {
                    (_, None) => Vec::new(),
                    ("headline", Some(_)) => {
                        available.iter().filter(|s| s.priority() >= 0).collect()
                    }
                    (_, Some(best)) => available.iter().filter(|s| s.priority() == best).collect(),
                };
                // A session's own active privacy list may refuse what the account accepts.
                let mut targets = Vec::with_capacity(candidates.len());
                for session in candidates {
                    if self.privacy.session_accepts(self, &stanza, session).await {
                        targets.push(session);
                    }
                }
                if !targets.is_empty() && kind != "groupchat" {
                    let data = encode(stanza.element());
                    for session in targets {
                        self.deliver_bytes(session, data.clone());
                    }
                    return;
                }
                // §8.5.1: no such account: an error (headlines and groupchat vanish silently).
                if !self.account_exists(bare).await {
                    if kind != "headline" && kind != "groupchat" {
                        self.bounce(&stanza, StanzaErrorCondition::ServiceUnavailable.into());
                    }
                    return;
                }
                // What no session took meets the account's default list (the sessions' own
                // lists may have decided above instead, see `Privacy::inbound`).
                match self.privacy.inbound_for_account(self, &stanza, bare).await {
                    Verdict::Allow => {}
                    Verdict::Drop => return,
                    Verdict::Reject(e) => return self.bounce(&stanza, e),
                }
                // §8.5.2.2.1: no session can take it now: keep it for later (XEP-0160).
                im::offline::store(self, &stanza, bare).await;
            }
            StanzaKind::Presence | StanzaKind::Iq => {}
        }
    }

    pub async fn account_exists(&self, bare: &BareJid) -> bool {
        let Some(node) = bare.node() else {
            return false;
        };
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

    /// Queues an element for one session.
    pub fn deliver_element(&self, session: &SessionHandle, el: &Element) {
        self.deliver_bytes(session, encode(el));
    }

    /// Queues serialised bytes for one session (never blocking; a full queue kicks it).
    pub fn deliver_bytes(&self, session: &SessionHandle, data: Bytes) {
        if session.send(data) {
            Metrics::inc(&self.metrics.stanzas_out);
        } else {
            Metrics::inc(&self.metrics.queue_overflows);
        }
    }

    /// Sends the error reply for `stanza` back to its sender (never for an error stanza).
    pub fn bounce(&self, stanza: &Stanza, error: StanzaError) {
        if let Some(reply) = stanza.error_reply(&error) {
            self.deliver_reply(reply);
        }
    }

    /// Delivers a reply the server generated: to a local session, or out to a remote domain.
    pub fn deliver_reply(&self, reply: Element) {
        let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        if self.is_local_domain(to.domain().as_str()) {
            if let Ok(full) = FullJid::try_from(to) {
                if let Some(session) = self.sessions.get(&full) {
                    self.deliver_element(&session, &reply);
                }
            }
            return;
        }
        if let Ok(stanza) = Stanza::parse(reply) {
            // A reply that cannot leave is dropped: errors are never answered with errors.
            let _ = self.remote.route(stanza);
        }
    }
}
