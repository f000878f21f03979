//! The incoming server-to-server profile (RFC 6120 §4–§9 as the receiving server).
//!
//! A peer secures the stream (STARTTLS, or direct TLS, XEP-0368), then authenticates each
//! (remote domain, local domain) pair it wants to send for: SASL EXTERNAL when its
//! certificate verifies for the domain in its header (XEP-0178), or dialback (XEP-0220),
//! which we check by asking the remote domain's authoritative server. Stanzas are accepted
//! only for authenticated pairs: RFC 6120 §4.9.3 names the stream error for each violation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;
use xmppd_core::{ns, Element, FullJid, Jid, Stanza, StanzaErrorCondition, StreamError};
use xmppd_xml::StreamHeader;

use super::dialback::{self, Outcome};
use crate::router::SessionHandle;
use crate::stream::{Driver, Flow, Framing, Profile, Stream, TcpFraming};
use crate::tls::TlsContext;
use crate::ServerState;

/// Dialback verifications one stream may have in flight.
const MAX_PENDING_DIALBACK: usize = 10;
pub const FEATURES_DIALBACK: &str = "urn:xmpp:features:dialback";

/// (remote domain, local domain) pairs a stream may carry stanzas for.
type Pairs = Arc<Mutex<HashSet<(String, String)>>>;

pub async fn serve(server: Arc<ServerState>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let stream = Stream::new(TcpFraming::new(tcp), peer, &server, ns::SERVER);
    let Some(profile) = S2sIn::new(server.clone(), peer) else {
        return;
    };
    Driver::new(server, stream, profile).run(direct_tls).await;
}

pub struct S2sIn {
    server: Arc<ServerState>,
    peer: SocketAddr,
    /// Answers that come later (dialback results) are queued here for the stream.
    handle: Arc<SessionHandle>,
    authenticated: Pairs,
    /// The `from` of the peer's header, once it sent one.
    header_from: Option<String>,
    /// The domain the peer's certificate verified for (its header's `from`).
    certified: Option<String>,
    sasl_done: bool,
    /// The `id` of our last stream header: dialback keys cover it.
    stream_id: String,
    deadline: Instant,
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the peer asked for bidirectionality (XEP-0288): our stanzas for the pairs
    /// it authenticates go back over this stream, as the links in it.
    bidi: Arc<Bidi>,
}

/// The links to the peer that ride on this stream (XEP-0288), ended with it.
#[derive(Default)]
struct Bidi {
    on: std::sync::atomic::AtomicBool,
    links: Mutex<Vec<Arc<super::Link>>>,
}

impl Bidi {
    /// With bidirectionality on: `(remote, local)` authenticated means we may send from
    /// `local` to `remote` here (XEP-0288 §2: the inverse of the pair).
    fn attach(&self, server: &ServerState, handle: &Arc<SessionHandle>, remote: &str, local: &str) {
        if !self.on.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if let Some(link) = server.federation.attach(local, remote, handle) {
            tracing::debug!(%local, %remote, "sending over the incoming stream (bidi)");
            self.links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(link);
        }
    }
}

impl S2sIn {
    fn new(server: Arc<ServerState>, peer: SocketAddr) -> Option<S2sIn> {
        let jid = FullJid::new(&format!("{}/s2s-in", server.config.server.domains[0])).ok()?;
        let timeout = server.federation.config().connect_timeout_secs.max(10) * 2;
        Some(S2sIn {
            handle: SessionHandle::new(jid, server.federation.config().queue_size),
            server,
            peer,
            authenticated: Pairs::default(),
            header_from: None,
            certified: None,
            sasl_done: false,
            stream_id: String::new(),
            deadline: Instant::now() + Duration::from_secs(timeout),
            pending: Arc::default(),
            bidi: Arc::default(),
        })
    }

    fn serves(&self, domain: &str) -> bool {
        serves(&self.server, domain)
    }

    fn is_authenticated(&self) -> bool {
        !self
            .authenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn pair_authenticated(&self, remote: &str, local: &str) -> bool {
        self.authenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(remote.to_string(), local.to_string()))
    }

    fn authenticate(&self, remote: &str, local: &str, method: &'static str) {
        tracing::info!(peer = %self.peer, %remote, %local, method, "incoming server link authenticated");
        self.server.metrics.s2s_authenticated("in", method);
        self.authenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((remote.to_string(), local.to_string()));
        self.bidi.attach(&self.server, &self.handle, remote, local);
    }

    /// `<bidi/>` (XEP-0288 §2): from now on, every pair the peer authenticates (and each
    /// it already did) also carries our stanzas to it.
    fn enable_bidi(&self) {
        self.bidi
            .on
            .store(true, std::sync::atomic::Ordering::Release);
        let pairs: Vec<(String, String)> = self
            .authenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for (remote, local) in pairs {
            self.bidi
                .attach(&self.server, &self.handle, &remote, &local);
        }
    }

    fn tls_required_now<F: Framing>(&self, s: &Stream<F>) -> bool {
        !s.io.is_secure() && self.server.federation.config().require_tls
    }

    fn features<F: Framing>(&self, s: &Stream<F>) -> Vec<Element> {
        let mut features = Vec::new();
        if s.io.can_start_tls() {
            let mut starttls = Element::new("starttls", ns::TLS);
            if self.tls_required_now(s) {
                starttls.push_child(Element::new("required", ns::TLS));
            }
            features.push(starttls);
        }
        // XEP-0288 §2: offered before and after TLS (enabled only after it, if TLS is used).
        if self.server.federation.config().bidi {
            features.push(Element::new("bidi", super::FEATURES_BIDI));
        }
        if self.tls_required_now(s) {
            return features;
        }
        // XEP-0178 §3 step 4: EXTERNAL only once the certificate verified for the domain.
        if !self.sasl_done && self.certified.is_some() {
            features.push(
                Element::new("mechanisms", ns::SASL)
                    .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
            );
        }
        if self.server.federation.config().dialback {
            features.push(
                Element::new("dialback", FEATURES_DIALBACK)
                    .with_child(Element::new("errors", FEATURES_DIALBACK)),
            );
        }
        features
    }

    /// SASL EXTERNAL (XEP-0178 §3): the authorization identity, if any, must be the domain
    /// the certificate verified for.
    async fn sasl_external<F: Framing>(&mut self, s: &mut Stream<F>, el: &Element) -> Flow {
        let failure = |condition: &str| {
            Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL))
        };
        let Some(domain) = self.certified.clone().filter(|_| !self.sasl_done) else {
            s.send_element(&failure("not-authorized"));
            return s.flush_flow().await;
        };
        if el.attr("mechanism") != Some("EXTERNAL") {
            s.send_element(&failure("invalid-mechanism"));
            return s.flush_flow().await;
        }
        let text = el.text();
        let authzid = match text.trim() {
            "" | "=" => Some(domain.clone()),
            encoded => B64
                .decode(encoded)
                .ok()
                .and_then(|b| String::from_utf8(b).ok()),
        };
        if authzid.as_deref() != Some(domain.as_str()) {
            s.send_element(&failure("invalid-authzid"));
            return s.flush_flow().await;
        }
        self.authenticate(&domain, &s.domain, "sasl-external");
        self.sasl_done = true;
        s.send_element(&Element::new("success", ns::SASL));
        match s.flush().await {
            true => Flow::Restart,
            false => Flow::Close,
        }
    }

    /// `<db:result>` from the initiating server (XEP-0220 §2.1.2): checked with the
    /// authoritative server of its domain, answered on this stream when that is known.
    async fn dialback_result<F: Framing>(&mut self, s: &mut Stream<F>, el: &Element) -> Flow {
        let (Some(remote), Some(local)) = (el.attr("from"), el.attr("to")) else {
            return s
                .stream_error(
                    StreamError::ImproperAddressing,
                    Some("db:result needs from and to"),
                )
                .await;
        };
        let (remote, local) = (remote.to_ascii_lowercase(), local.to_ascii_lowercase());
        let answer =
            |outcome| Bytes::from(dialback::answer("result", &local, &remote, None, outcome));
        let error = |condition| answer(Outcome::Error(condition));
        let immediate = if self.tls_required_now(s) {
            Some(error(StanzaErrorCondition::PolicyViolation))
        } else if !self.serves(&local) {
            Some(error(StanzaErrorCondition::ItemNotFound))
        } else if !is_domain(&remote) || self.serves(&remote) {
            Some(error(StanzaErrorCondition::Forbidden))
        } else if self.pair_authenticated(&remote, &local) {
            Some(answer(Outcome::Valid))
        } else if self.certificate_covers(s, &remote) {
            // XEP-0344 §2.4: a certificate that verifies for the domain settles it.
            self.authenticate(&remote, &local, "certificate");
            Some(answer(Outcome::Valid))
        } else if !self.server.federation.dialback_allowed(&remote) {
            Some(error(StanzaErrorCondition::NotAuthorized))
        } else if self.pending.load(std::sync::atomic::Ordering::Acquire) >= MAX_PENDING_DIALBACK {
            Some(error(StanzaErrorCondition::ResourceConstraint))
        } else {
            None
        };
        if let Some(answer) = immediate {
            s.send_raw(&answer);
            return s.flush_flow().await;
        }
        let key = el.text();
        let stream_id = self.stream_id.clone();
        let server = self.server.clone();
        let handle = self.handle.clone();
        let authenticated = self.authenticated.clone();
        let pending = self.pending.clone();
        let bidi = self.bidi.clone();
        let peer = self.peer;
        pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tokio::spawn(async move {
            let outcome = super::outgoing::verify(&server, &local, &remote, &stream_id, &key).await;
            match outcome {
                Outcome::Valid => {
                    tracing::info!(%peer, %remote, %local, method = "dialback", "incoming server link authenticated");
                    server.metrics.s2s_authenticated("in", "dialback");
                    authenticated
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((remote.clone(), local.clone()));
                    bidi.attach(&server, &handle, &remote, &local);
                }
                other => {
                    tracing::info!(%peer, %remote, %local, outcome = ?other, "dialback refused");
                }
            }
            let _ = handle.outbox().push(Bytes::from(dialback::answer(
                "result", &local, &remote, None, outcome,
            )));
            pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
        Flow::Continue
    }

    fn certificate_covers<F: Framing>(&self, s: &Stream<F>, domain: &str) -> bool {
        if self.certified.as_deref() == Some(domain) {
            return true;
        }
        s.io.channel_bindings()
            .is_some_and(|b| self.server.federation.tls.verify(&b.peer_chain, domain))
    }

    /// `<db:verify>` (XEP-0220 §2.2): we are the authoritative server for `to`; the key is
    /// valid if we would have made it for that stream.
    async fn dialback_verify<F: Framing>(&mut self, s: &mut Stream<F>, el: &Element) -> Flow {
        let (Some(receiving), Some(originating), Some(id)) =
            (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return s
                .stream_error(
                    StreamError::ImproperAddressing,
                    Some("db:verify needs from, to and id"),
                )
                .await;
        };
        let outcome = if !self.serves(originating) {
            Outcome::Error(StanzaErrorCondition::ItemNotFound)
        } else if dialback::is_valid(&self.server.secret, receiving, originating, id, &el.text()) {
            Outcome::Valid
        } else {
            Outcome::Invalid
        };
        s.send_raw(&dialback::answer(
            "verify",
            originating,
            receiving,
            Some(id),
            outcome,
        ));
        s.flush_flow().await
    }

    /// A stanza from the peer (RFC 6120 §8.1.1.2), for a pair it authenticated.
    async fn stanza<F: Framing>(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        if !self.is_authenticated() {
            return s
                .stream_error(
                    StreamError::NotAuthorized,
                    Some("authenticate before sending stanzas"),
                )
                .await;
        }
        let server = self.server.clone();
        accept_stanza(&server, s, el, |remote, local| {
            self.pair_authenticated(remote, local)
        })
        .await
    }
}

/// Whether `domain` is ours to receive for: a served domain, a host (MUC, pubsub) or a
/// configured component (a gateway reachable from other servers).
fn serves(server: &ServerState, domain: &str) -> bool {
    let router = &server.router;
    router.is_local_domain(domain)
        || router.hooks().host(domain).is_some()
        || server.federation.component_secret(domain).is_some()
}

/// A stanza a peer server sent (on its stream, or back on ours with XEP-0288): addressed
/// from a remote domain it may send for (`may(remote, local)`) to one of ours (RFC 6120
/// §8.1.1.2 and §4.9.3 name the stream error for each violation), then routed like any
/// other.
pub(super) async fn accept_stanza<F: Framing>(
    server: &ServerState,
    s: &mut Stream<F>,
    mut el: Element,
    may: impl Fn(&str, &str) -> bool,
) -> Flow {
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return s
            .stream_error(
                StreamError::ImproperAddressing,
                Some("stanzas between servers need from and to"),
            )
            .await;
    };
    let Ok(from) = Jid::new(from) else {
        return s
            .stream_error(StreamError::InvalidFrom, Some("malformed from"))
            .await;
    };
    let Ok(to) = Jid::new(to) else {
        return s
            .stream_error(StreamError::ImproperAddressing, Some("malformed to"))
            .await;
    };
    let (remote, local) = (from.domain().as_str(), to.domain().as_str());
    if !serves(server, local) {
        return s
            .stream_error(
                StreamError::HostUnknown,
                Some("we do not serve that domain"),
            )
            .await;
    }
    if !may(remote, local) {
        return s
            .stream_error(
                StreamError::InvalidFrom,
                Some("that domain is not authenticated on this stream"),
            )
            .await;
    }
    el.rename_ns(ns::SERVER, ns::CLIENT);
    match Stanza::parse(el) {
        Ok(stanza) => server.router.route_inbound(stanza).await,
        Err(failed) => {
            let (el, error) = *failed;
            if let Some(reply) = xmppd_core::stanza::error_reply(&el, &error) {
                server.router.deliver_reply(reply);
            }
        }
    }
    Flow::Continue
}

/// Whether `name` is a bare domain (no node, no resource).
fn is_domain(name: &str) -> bool {
    jid::BareJid::new(name).is_ok_and(|j| j.node().is_none())
}

impl<F: Framing> Profile<F> for S2sIn {
    const KIND: &'static str = "s2s-in";

    fn acceptor<'a>(&self, tls: &'a TlsContext) -> &'a tokio_rustls::TlsAcceptor {
        &tls.s2s_acceptor
    }

    async fn on_header(&mut self, s: &mut Stream<F>, header: StreamHeader) -> Flow {
        if header.default_ns.as_deref() != Some(ns::SERVER) {
            return s
                .stream_error(
                    StreamError::InvalidNamespace,
                    Some("server streams are jabber:server"),
                )
                .await;
        }
        let Some(to) = header.attr("to").map(str::to_ascii_lowercase) else {
            return s
                .stream_error(StreamError::HostUnknown, Some("the header names no domain"))
                .await;
        };
        if !self.serves(&to) {
            return s
                .stream_error(
                    StreamError::HostUnknown,
                    Some("we do not serve that domain"),
                )
                .await;
        }
        s.domain = to;
        self.header_from = header
            .attr("from")
            .map(str::to_ascii_lowercase)
            .filter(|f| is_domain(f));
        if s.io.is_secure() {
            let chain =
                s.io.channel_bindings()
                    .map(|b| b.peer_chain.as_slice())
                    .unwrap_or_default();
            self.certified = self
                .header_from
                .clone()
                .filter(|from| self.server.federation.tls.verify(chain, from));
        }
        self.stream_id = s.send_header();
        let features = self.features(s);
        s.send_features(features);
        s.flush_flow().await
    }

    async fn on_element(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        match (el.ns(), el.name()) {
            (ns::TLS, "starttls") if s.io.can_start_tls() => {
                s.send_element(&Element::new("proceed", ns::TLS));
                match s.flush().await {
                    true => Flow::StartTls,
                    false => Flow::Close,
                }
            }
            _ if self.tls_required_now(s) => {
                s.stream_error(StreamError::PolicyViolation, Some("use STARTTLS first"))
                    .await
            }
            (super::NS_BIDI, "bidi") if self.server.federation.config().bidi => {
                self.enable_bidi();
                Flow::Continue
            }
            (ns::SASL, "auth") => self.sasl_external(s, &el).await,
            (ns::DIALBACK, "result") => self.dialback_result(s, &el).await,
            (ns::DIALBACK, "verify") => self.dialback_verify(s, &el).await,
            (ns::SERVER, "message" | "presence" | "iq") => self.stanza(s, el).await,
            (ns::STREAM, "error") => Flow::Close,
            _ => {
                s.stream_error(StreamError::UnsupportedStanzaType, Some("unknown element"))
                    .await
            }
        }
    }

    fn session(&self) -> Option<&Arc<SessionHandle>> {
        Some(&self.handle)
    }

    fn login_deadline(&self) -> Option<Instant> {
        (!self.is_authenticated()).then_some(self.deadline)
    }

    fn eviction(&self) -> Option<Arc<crate::limits::Eviction>> {
        None
    }

    fn keepalive(&self, _: &Stream<F>) -> Option<Element> {
        None
    }

    async fn close(&mut self) {
        self.handle.outbox().close();
        let links = std::mem::take(&mut *self.bidi.links.lock().unwrap_or_else(|e| e.into_inner()));
        for link in links {
            link.close(&self.server, StanzaErrorCondition::RemoteServerNotFound)
                .await;
        }
    }
}
