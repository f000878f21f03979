//! Federation (RFC 6120 server-to-server streams) and XEP-0114 components: the router's
//! [`RemoteDomains`], so everything addressed to a domain we do not serve comes here.
//!
//! - Outgoing: one link per (local domain, remote domain) ([`Link`]). Stanzas wait in a
//!   bounded queue while it resolves ([`resolve`]), connects, secures and authenticates
//!   ([`outgoing`]); when that fails they bounce with `remote-server-not-found`, or
//!   `remote-server-timeout` when no authenticated link came within the connect timeout,
//!   and the domain is not tried again for a backoff period. Idle links are closed.
//! - Incoming: [`incoming`] accepts links per remote domain, authenticated by SASL EXTERNAL
//!   with a certificate ([`certs`], XEP-0178) or by dialback ([`dialback`], XEP-0220).
//! - Components ([`component`]): a connected component takes its domain's stanzas.

pub mod certs;
pub mod component;
pub mod dialback;
pub mod incoming;
pub mod outgoing;
pub mod resolve;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::time::Instant;
use xmppd_core::{ns, Element, FullJid, Stanza, StanzaError, StanzaErrorCondition};

use crate::config::{ComponentConfig, Config, S2sConfig};
use crate::router::{Kick, Push, RemoteDomains, Router, SessionHandle};
use crate::ServerState;

/// Serialises a stanza the server holds (in `jabber:client`) for a stream whose content
/// namespace is `stream_ns`.
pub fn encode_for(el: &Element, stream_ns: &str) -> Bytes {
    let mut out = Vec::with_capacity(256);
    el.write_as(&mut out, ns::CLIENT, stream_ns);
    Bytes::from(out)
}

fn refuse(
    stanza: Stanza,
    condition: StanzaErrorCondition,
) -> Result<(), Box<(Stanza, StanzaError)>> {
    Err(Box::new((stanza, StanzaError::new(condition))))
}

/// One outgoing link's queue and state.
pub struct Link {
    pub local: String,
    pub remote: String,
    /// The queue the link's stream writes out, and its kick.
    pub handle: Arc<SessionHandle>,
    state: Mutex<LinkState>,
    last_used: Mutex<Instant>,
}

enum LinkState {
    /// Not authenticated yet: stanzas wait here, at most `s2s.queue_size`.
    Connecting(VecDeque<Stanza>),
    Ready,
    Closed,
}

/// XEP-0288: what the initiating server sends, and what the receiving server offers.
pub const NS_BIDI: &str = "urn:xmpp:bidi";
pub const FEATURES_BIDI: &str = "urn:xmpp:features:bidi";

impl Link {
    /// A link over a stream the peer opened with bidirectionality (XEP-0288): ready at
    /// once, its stanzas written by that stream.
    fn over(local: &str, remote: &str, handle: Arc<SessionHandle>) -> Arc<Link> {
        Arc::new(Link {
            local: local.to_string(),
            remote: remote.to_string(),
            handle,
            state: Mutex::new(LinkState::Ready),
            last_used: Mutex::new(Instant::now()),
        })
    }

    fn new(local: &str, remote: &str, capacity: usize) -> Option<Arc<Link>> {
        // The handle names the link; it is never in the session table.
        let jid = FullJid::new(&format!("{remote}/{local}")).ok()?;
        Some(Arc::new(Link {
            local: local.to_string(),
            remote: remote.to_string(),
            handle: SessionHandle::new(jid, capacity),
            state: Mutex::new(LinkState::Connecting(VecDeque::new())),
            last_used: Mutex::new(Instant::now()),
        }))
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a stanza; the error when the link cannot take it.
    fn send(&self, stanza: Stanza, queue_size: usize) -> Result<(), Box<(Stanza, StanzaError)>> {
        self.touch();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            LinkState::Connecting(queue) if queue.len() >= queue_size => {
                refuse(stanza, StanzaErrorCondition::ResourceConstraint)
            }
            LinkState::Connecting(queue) => {
                queue.push_back(stanza);
                Ok(())
            }
            LinkState::Ready => match self
                .handle
                .outbox()
                .push(encode_for(stanza.element(), ns::SERVER))
            {
                Push::Queued => Ok(()),
                Push::Full => refuse(stanza, StanzaErrorCondition::ResourceConstraint),
                Push::Closed => refuse(stanza, StanzaErrorCondition::RemoteServerNotFound),
            },
            LinkState::Closed => refuse(stanza, StanzaErrorCondition::RemoteServerNotFound),
        }
    }

    /// The link is authenticated: what waited goes into its stream's queue.
    fn ready(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let LinkState::Connecting(queue) = std::mem::replace(&mut *state, LinkState::Ready) {
            for stanza in queue {
                let _ = self
                    .handle
                    .outbox()
                    .push(encode_for(stanza.element(), ns::SERVER));
            }
        }
    }

    fn is_ready(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            LinkState::Ready
        )
    }

    /// The link is over: it leaves the pool, and stanzas still waiting bounce with `why`.
    async fn close(self: &Arc<Self>, server: &ServerState, why: StanzaErrorCondition) {
        let waiting = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match std::mem::replace(&mut *state, LinkState::Closed) {
                LinkState::Connecting(queue) => queue,
                _ => VecDeque::new(),
            }
        };
        self.handle.outbox().close();
        server.federation.forget(self, !waiting.is_empty());
        if waiting.is_empty() {
            return;
        }
        tracing::info!(local = %self.local, remote = %self.remote, condition = why.as_str(),
            bounced = waiting.len(), "no link to remote server");
        server.metrics.s2s_bounced.inc_by(waiting.len() as u64);
        let mut cx = server.router.context();
        for stanza in waiting {
            cx.bounce(&stanza, StanzaError::new(why));
        }
        server.router.apply(cx).await;
    }
}

/// When a domain that failed may be tried again.
struct Backoff {
    until: Instant,
    delay: Duration,
}

pub struct Federation {
    config: S2sConfig,
    /// Whether there is an s2s listener (federation is on).
    enabled: bool,
    pub tls: certs::PeerTls,
    resolver: resolve::Resolver,
    links: Mutex<HashMap<(String, String), Arc<Link>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    component_config: BTreeMap<String, ComponentConfig>,
    components: Mutex<HashMap<String, Arc<SessionHandle>>>,
    /// Server-to-server connections open, both directions.
    open: AtomicUsize,
    open_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Federation {
    pub fn new(
        config: &Config,
        resolver: &Arc<crate::tls::CertResolver>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, crate::tls::TlsError> {
        Ok(Federation {
            config: config.s2s.clone(),
            enabled: !config.listen.s2s.is_empty() || !config.listen.s2s_direct_tls.is_empty(),
            tls: certs::PeerTls::new(config, resolver)?,
            resolver: resolve::Resolver::new(config.s2s.routes.clone()),
            links: Mutex::default(),
            backoff: Mutex::default(),
            component_config: config.components.clone(),
            components: Mutex::default(),
            open: AtomicUsize::new(0),
            open_gauge: metrics.s2s_links_open.clone(),
        })
    }

    pub fn config(&self) -> &S2sConfig {
        &self.config
    }

    /// Whether `remote` may authenticate with dialback (else only with a certificate).
    pub fn dialback_allowed(&self, remote: &str) -> bool {
        self.config.dialback && !self.config.require_certificate.iter().any(|d| d == remote)
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.config.connect_timeout_secs)
    }

    /// Takes a place for one more server-to-server connection, if under the cap.
    fn admit(&self) -> Option<OpenLink<'_>> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        self.open_gauge.inc();
        let guard = OpenLink(self);
        (before < self.config.max_links).then_some(guard)
    }

    /// The link for (local, remote), started if there is none.
    fn link(
        &self,
        router: &Router,
        local: &str,
        remote: &str,
    ) -> Result<Arc<Link>, StanzaErrorCondition> {
        let key = (local.to_string(), remote.to_string());
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(&key) {
            return Ok(link.clone());
        }
        let capacity = self
            .config
            .queue_size
            .max(router.config().limits.outbound_queue);
        let link =
            Link::new(local, remote, capacity).ok_or(StanzaErrorCondition::RemoteServerNotFound)?;
        let server = router
            .server_handle()
            .upgrade()
            .ok_or(StanzaErrorCondition::RemoteServerNotFound)?;
        links.insert(key, link.clone());
        tokio::spawn(outgoing::run_link(server, link.clone()));
        Ok(link)
    }

    /// A bidirectional incoming stream authenticated `remote` for `local`: our stanzas
    /// from `local` to `remote` go over it too, unless a link for the pair exists already
    /// (both servers connected at once: each keeps its own). The link, if it was added.
    fn attach(&self, local: &str, remote: &str, handle: &Arc<SessionHandle>) -> Option<Arc<Link>> {
        let key = (local.to_string(), remote.to_string());
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.contains_key(&key) {
            return None;
        }
        let link = Link::over(local, remote, handle.clone());
        links.insert(key, link.clone());
        drop(links);
        self.succeeded(remote);
        Some(link)
    }

    /// A link ended: it leaves the pool; `failed` starts (or lengthens) the domain's backoff.
    fn forget(&self, link: &Arc<Link>, failed: bool) {
        let key = (link.local.clone(), link.remote.clone());
        {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            if links.get(&key).is_some_and(|l| Arc::ptr_eq(l, link)) {
                links.remove(&key);
            }
        }
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        if !failed {
            return;
        }
        let base = Duration::from_secs(self.config.retry_secs);
        let max = Duration::from_secs(self.config.max_retry_secs.max(self.config.retry_secs));
        let delay = backoff
            .get(&link.remote)
            .map(|b| (b.delay * 2).min(max))
            .unwrap_or(base);
        backoff.insert(
            link.remote.clone(),
            Backoff {
                until: Instant::now() + delay,
                delay,
            },
        );
    }

    /// An authenticated link to `remote`: its backoff is over.
    fn succeeded(&self, remote: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(remote);
    }

    fn backing_off(&self, remote: &str) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(remote)
            .is_some_and(|b| b.until > Instant::now())
    }

    /// Outgoing links open or being set up.
    pub fn link_count(&self) -> usize {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The secret of the component for `domain`, if one is configured.
    pub fn component_secret(&self, domain: &str) -> Option<&str> {
        self.component_config.get(domain).map(|c| c.secret.as_str())
    }

    /// A component authenticated: it takes its domain's stanzas from now on. One that was
    /// connected for the domain before is replaced (it is most likely a dead connection the
    /// component is reconnecting from).
    pub fn component_up(&self, domain: &str, handle: &Arc<SessionHandle>) {
        let old = self
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_string(), handle.clone());
        if let Some(old) = old {
            old.kick(Kick::Conflict);
        }
    }

    pub fn component_down(&self, domain: &str, handle: &Arc<SessionHandle>) {
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        if components
            .get(domain)
            .is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            components.remove(domain);
        }
    }

    /// Closes links nobody used for `s2s.idle_timeout_secs`.
    pub async fn close_idle(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let idle = Duration::from_secs(self.config.idle_timeout_secs.max(1));
        let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = crate::shutting_down(&mut shutdown) => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = Instant::now();
            let links: Vec<_> = self
                .links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|l| l.is_ready() && l.idle_since() + idle <= now)
                .cloned()
                .collect();
            for link in links {
                tracing::debug!(remote = %link.remote, "closing an idle link");
                link.handle.kick(Kick::Idle);
            }
        }
    }
}

/// One open server-to-server connection, counted until dropped.
pub struct OpenLink<'a>(&'a Federation);

impl Drop for OpenLink<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.open_gauge.dec();
    }
}

impl RemoteDomains for Federation {
    fn route(&self, router: &Router, stanza: Stanza) -> Result<(), Box<(Stanza, StanzaError)>> {
        let Some(to) = stanza.to.as_ref() else {
            return Ok(());
        };
        let remote = to.domain().as_str().to_string();
        let component = self
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&remote)
            .cloned();
        if let Some(component) = component {
            return match component
                .outbox()
                .push(encode_for(stanza.element(), ns::COMPONENT))
            {
                Push::Queued => Ok(()),
                _ => refuse(stanza, StanzaErrorCondition::ResourceConstraint),
            };
        }
        if self.component_config.contains_key(&remote) {
            // A configured component that is not connected now.
            return refuse(stanza, StanzaErrorCondition::ServiceUnavailable);
        }
        if !self.enabled {
            return refuse(stanza, StanzaErrorCondition::RemoteServerNotFound);
        }
        // The sending domain of the link: a served domain or one of its hosts (MUC…).
        let Some(local) = stanza
            .from
            .as_ref()
            .map(|f| f.domain().as_str().to_string())
        else {
            return Ok(());
        };
        if self.backing_off(&remote) {
            return refuse(stanza, StanzaErrorCondition::RemoteServerNotFound);
        }
        let link = match self.link(router, &local, &remote) {
            Ok(link) => link,
            Err(condition) => return refuse(stanza, condition),
        };
        link.send(stanza, self.config.queue_size)
    }
}

/// Accepts server-to-server connections (STARTTLS, or TLS first with `direct_tls`).
pub async fn listen(listener: TcpListener, direct_tls: bool, server: Arc<ServerState>) {
    let mut shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::shutting_down(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let server = server.clone();
                    tokio::spawn(async move {
                        let Some(_open) = server.federation.admit() else {
                            tracing::warn!(%peer, "refusing a server-to-server connection: s2s.max_links reached");
                            return;
                        };
                        incoming::serve(server.clone(), tcp, peer, direct_tls).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
