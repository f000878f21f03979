//! The outgoing server-to-server profile (RFC 6120 as the initiating server): we send the
//! header, secure the stream with STARTTLS (or TLS first, XEP-0368), then authenticate with
//! SASL EXTERNAL where the peer offers it (it verified our certificate, XEP-0178), else with
//! dialback (XEP-0220). The same profile makes the short connections that ask an
//! authoritative server to verify a dialback key (XEP-0220 §2.1.3).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::sync::oneshot;
use tokio::time::Instant;
use xmppd_core::{ns, Element, StanzaErrorCondition};
use xmppd_xml::StreamHeader;

use super::dialback::{self, Outcome};
use super::incoming::FEATURES_DIALBACK;
use super::Link;
use crate::router::SessionHandle;
use crate::stream::{Driver, Flow, Framing, Profile, Stream, TcpFraming};
use crate::ServerState;

/// What the connection is for.
enum Purpose {
    /// Carry stanzas from `link.local` to `link.remote`.
    Link(Arc<Link>),
    /// Ask the authoritative server whether `key` is its key for stream `id`.
    Verify {
        id: String,
        key: String,
        answer: Option<oneshot::Sender<Outcome>>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Negotiating,
    /// SASL EXTERNAL succeeded; the features after the restart finish it.
    Authenticated,
    Ready,
}

pub struct S2sOut {
    server: Arc<ServerState>,
    purpose: Purpose,
    local: String,
    remote: String,
    direct_tls: bool,
    deadline: Instant,
    /// The `id` of the peer's stream header (the dialback key covers it).
    peer_id: String,
    peer_verified: bool,
    dialback_offered: bool,
    /// We asked for bidirectionality (XEP-0288): the peer may send its stanzas back here.
    bidi: bool,
    step: Step,
    /// Why the link failed, when it did so for a reason we know.
    failure: Option<StanzaErrorCondition>,
}

/// Connects a link and runs it until it ends; stanzas that never left bounce.
pub async fn run_link(server: Arc<ServerState>, link: Arc<Link>) {
    let fed = &server.federation;
    let deadline = Instant::now() + fed.connect_timeout();
    let Some(_open) = fed.admit() else {
        return link
            .close(&server, StanzaErrorCondition::ResourceConstraint)
            .await;
    };
    let connected = tokio::time::timeout_at(deadline, fed.resolver.connect(&link.remote)).await;
    let (tcp, direct_tls) = match connected {
        Ok(Some(c)) => c,
        Ok(None) => {
            return link
                .close(&server, StanzaErrorCondition::RemoteServerNotFound)
                .await
        }
        Err(_) => {
            return link
                .close(&server, StanzaErrorCondition::RemoteServerTimeout)
                .await
        }
    };
    let profile = S2sOut::new(
        server.clone(),
        Purpose::Link(link.clone()),
        &link.local,
        &link.remote,
        direct_tls,
        deadline,
    );
    drive(server.clone(), tcp, profile).await;
}

/// Asks `originating`'s authoritative server whether `key` is valid for the stream `id`
/// it opened to us as `receiving` (XEP-0220 §2.1.3 and §2.2).
pub async fn verify(
    server: &Arc<ServerState>,
    receiving: &str,
    originating: &str,
    id: &str,
    key: &str,
) -> Outcome {
    let fed = &server.federation;
    let deadline = Instant::now() + fed.connect_timeout();
    let Some(_open) = fed.admit() else {
        return Outcome::Error(StanzaErrorCondition::ResourceConstraint);
    };
    let connected = tokio::time::timeout_at(deadline, fed.resolver.connect(originating)).await;
    let Ok(Some((tcp, direct_tls))) = connected else {
        return Outcome::Error(StanzaErrorCondition::RemoteServerNotFound);
    };
    let (tx, rx) = oneshot::channel();
    let purpose = Purpose::Verify {
        id: id.to_string(),
        key: key.to_string(),
        answer: Some(tx),
    };
    let profile = S2sOut::new(
        server.clone(),
        purpose,
        receiving,
        originating,
        direct_tls,
        deadline,
    );
    drive(server.clone(), tcp, profile).await;
    rx.await
        .unwrap_or(Outcome::Error(StanzaErrorCondition::RemoteServerTimeout))
}

async fn drive(server: Arc<ServerState>, tcp: tokio::net::TcpStream, profile: S2sOut) {
    let Ok(peer) = tcp.peer_addr() else {
        return;
    };
    let mut stream = Stream::new(TcpFraming::new(tcp), peer, &server, ns::SERVER);
    stream.domain = profile.local.clone();
    Driver::new(server, stream, profile).run(false).await;
}

impl S2sOut {
    fn new(
        server: Arc<ServerState>,
        purpose: Purpose,
        local: &str,
        remote: &str,
        direct_tls: bool,
        deadline: Instant,
    ) -> Self {
        S2sOut {
            server,
            purpose,
            local: local.to_string(),
            remote: remote.to_string(),
            direct_tls,
            deadline,
            peer_id: String::new(),
            peer_verified: false,
            dialback_offered: false,
            bidi: false,
            step: Step::Negotiating,
            failure: None,
        }
    }

    /// Ends the attempt: `why` is what queued stanzas bounce with.
    async fn fail(
        &mut self,
        s: &mut Stream<TcpFraming>,
        why: StanzaErrorCondition,
        log: &str,
    ) -> Flow {
        tracing::info!(local = %self.local, remote = %self.remote, peer = %s.peer, "outgoing server link failed: {log}");
        self.failure = Some(why);
        s.send_raw(b"</stream:stream>");
        s.flush().await;
        Flow::Close
    }

    async fn secure(&mut self, s: &mut Stream<TcpFraming>) -> bool {
        let fed = &self.server.federation;
        let Some(connector) = fed.tls.connector(&self.local) else {
            return false;
        };
        if !s.io.connect_tls(connector, &self.remote).await {
            return false;
        }
        let chain =
            s.io.channel_bindings()
                .map(|b| b.peer_chain.as_slice())
                .unwrap_or_default();
        self.peer_verified = fed.tls.verify(chain, &self.remote);
        true
    }

    fn dialback_allowed(&self) -> bool {
        self.server.federation.dialback_allowed(&self.remote)
    }

    fn send_dialback(&self, s: &mut Stream<TcpFraming>) {
        let key = dialback::key(
            &self.server.secret,
            &self.remote,
            &self.local,
            &self.peer_id,
        );
        s.send_raw(&dialback::request(
            "result",
            &self.local,
            &self.remote,
            None,
            &key,
        ));
    }

    fn ready(&mut self, method: &'static str) {
        self.step = Step::Ready;
        if let Purpose::Link(link) = &self.purpose {
            tracing::info!(local = %self.local, remote = %self.remote, method, "outgoing server link authenticated");
            self.server.metrics.s2s_authenticated("out", method);
            self.server.federation.succeeded(&self.remote);
            link.ready();
        }
    }

    async fn on_features(&mut self, s: &mut Stream<TcpFraming>, features: &Element) -> Flow {
        if !s.io.is_secure() {
            if features.has_child("starttls", ns::TLS) {
                s.send_element(&Element::new("starttls", ns::TLS));
                return s.flush_flow().await;
            }
            if self.server.federation.config().require_tls {
                return self
                    .fail(
                        s,
                        StanzaErrorCondition::RemoteServerNotFound,
                        "the peer offers no TLS",
                    )
                    .await;
            }
        }
        if let Purpose::Verify { id, key, .. } = &self.purpose {
            s.send_raw(&dialback::request(
                "verify",
                &self.local,
                &self.remote,
                Some(id),
                key,
            ));
            return s.flush_flow().await;
        }
        if self.step == Step::Authenticated {
            self.ready("sasl-external");
            return Flow::Continue;
        }
        // XEP-0288 §2: after TLS, before authenticating.
        let offered = features.has_child("bidi", super::FEATURES_BIDI);
        if offered && !self.bidi && self.server.federation.config().bidi {
            s.send_element(&Element::new("bidi", super::NS_BIDI));
            self.bidi = true;
        }
        if !self.peer_verified && !self.dialback_allowed() {
            return self
                .fail(
                    s,
                    StanzaErrorCondition::RemoteServerNotFound,
                    "its certificate does not verify",
                )
                .await;
        }
        self.dialback_offered = features.has_child("dialback", FEATURES_DIALBACK);
        let external = features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
            m.children()
                .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
        });
        if external && s.io.is_secure() {
            let auth = Element::new("auth", ns::SASL)
                .with_attr("mechanism", "EXTERNAL")
                .with_text(B64.encode(&self.local));
            s.send_element(&auth);
            return s.flush_flow().await;
        }
        if self.dialback_allowed() {
            self.send_dialback(s);
            return s.flush_flow().await;
        }
        self.fail(
            s,
            StanzaErrorCondition::RemoteServerNotFound,
            "no way to authenticate",
        )
        .await
    }
}

impl Profile<TcpFraming> for S2sOut {
    const KIND: &'static str = "s2s-out";

    async fn on_start(&mut self, s: &mut Stream<TcpFraming>) -> Flow {
        if self.direct_tls && !self.secure(s).await {
            self.failure = Some(StanzaErrorCondition::RemoteServerNotFound);
            return Flow::Close;
        }
        s.send_initial_header(&self.remote.clone());
        Flow::Continue
    }

    async fn on_header(&mut self, s: &mut Stream<TcpFraming>, header: StreamHeader) -> Flow {
        if header.default_ns.as_deref() != Some(ns::SERVER) {
            return self
                .fail(
                    s,
                    StanzaErrorCondition::RemoteServerNotFound,
                    "not a server stream",
                )
                .await;
        }
        self.peer_id = header.attr("id").unwrap_or_default().to_string();
        Flow::Continue
    }

    async fn on_element(&mut self, s: &mut Stream<TcpFraming>, el: Element) -> Flow {
        match (el.ns(), el.name()) {
            (ns::STREAM, "features") => self.on_features(s, &el).await,
            (ns::TLS, "proceed") => {
                if !self.secure(s).await {
                    self.failure = Some(StanzaErrorCondition::RemoteServerNotFound);
                    return Flow::Close;
                }
                s.send_initial_header(&self.remote.clone());
                match s.flush().await {
                    true => Flow::Restart,
                    false => Flow::Close,
                }
            }
            (ns::SASL, "success") => {
                self.step = Step::Authenticated;
                s.send_initial_header(&self.remote.clone());
                match s.flush().await {
                    true => Flow::Restart,
                    false => Flow::Close,
                }
            }
            (ns::SASL, "failure") if self.dialback_allowed() => {
                self.send_dialback(s);
                s.flush_flow().await
            }
            (ns::SERVER, "message" | "presence" | "iq")
                if self.bidi && self.step == Step::Ready =>
            {
                // The pair we authenticated, the other way (XEP-0288 §2).
                let server = self.server.clone();
                let (local, remote) = (self.local.clone(), self.remote.clone());
                super::incoming::accept_stanza(&server, s, el, |from, to| {
                    from == remote && to == local
                })
                .await
            }
            (ns::DIALBACK, "result") if self.bidi && el.attr("type").is_none() => {
                // The peer piggybacking another of its domains on our stream: we do not
                // verify on initiated streams, and say so (XEP-0220 §2.4 errors).
                let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
                    return Flow::Continue;
                };
                s.send_raw(&dialback::answer(
                    "result",
                    to,
                    from,
                    None,
                    Outcome::Error(StanzaErrorCondition::PolicyViolation),
                ));
                s.flush_flow().await
            }
            (ns::DIALBACK, "result") => match dialback::outcome_of(&el) {
                Outcome::Valid => {
                    self.ready("dialback");
                    Flow::Continue
                }
                // XEP-0220 §2.1.2: invalid means internal-server-error for what waited,
                // a dialback error means a timeout.
                Outcome::Invalid => {
                    self.fail(
                        s,
                        StanzaErrorCondition::InternalServerError,
                        "dialback key refused",
                    )
                    .await
                }
                Outcome::Error(condition) => {
                    tracing::debug!(condition = condition.as_str(), "dialback error");
                    self.fail(
                        s,
                        StanzaErrorCondition::RemoteServerTimeout,
                        "dialback error",
                    )
                    .await
                }
            },
            (ns::DIALBACK, "verify") => {
                if let Purpose::Verify { answer, id, .. } = &mut self.purpose {
                    if el.attr("id") == Some(id.as_str()) {
                        if let Some(answer) = answer.take() {
                            let _ = answer.send(dialback::outcome_of(&el));
                        }
                    }
                }
                s.send_raw(b"</stream:stream>");
                s.flush().await;
                Flow::Close
            }
            (ns::STREAM, "error") | (ns::TLS, "failure") | (ns::SASL, "failure") => {
                let why = el
                    .children()
                    .next()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default();
                self.fail(
                    s,
                    StanzaErrorCondition::RemoteServerNotFound,
                    &format!("the peer refused: {why}"),
                )
                .await
            }
            // Stanzas without bidirectionality: the peer should use its own link.
            _ => Flow::Continue,
        }
    }

    fn session(&self) -> Option<&Arc<SessionHandle>> {
        match (&self.purpose, self.step) {
            (Purpose::Link(link), Step::Ready) => Some(&link.handle),
            _ => None,
        }
    }

    fn login_deadline(&self) -> Option<Instant> {
        (self.step != Step::Ready).then_some(self.deadline)
    }

    fn eviction(&self) -> Option<Arc<crate::limits::Eviction>> {
        None
    }

    fn keepalive(&self, _: &Stream<TcpFraming>) -> Option<Element> {
        None
    }

    async fn close(&mut self) {
        match &mut self.purpose {
            Purpose::Link(link) => {
                let why = match self.failure {
                    Some(why) => why,
                    None if Instant::now() >= self.deadline => {
                        StanzaErrorCondition::RemoteServerTimeout
                    }
                    None => StanzaErrorCondition::RemoteServerNotFound,
                };
                link.clone().close(&self.server, why).await;
            }
            Purpose::Verify { answer, .. } => {
                if let Some(answer) = answer.take() {
                    let _ = answer.send(Outcome::Error(StanzaErrorCondition::RemoteServerNotFound));
                }
            }
        }
    }
}
