//! The client-to-server profile (RFC 6120 §4–§7): what a client's stream header and
//! elements mean. STARTTLS, SASL, pre-auth iq (in-band registration), resource binding,
//! `from` stamping and the stream language, then the session's stanzas to the router and
//! nonzas to the modules that registered them.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::time::{Duration, Instant};
use xmppd_core::{
    bare_str, ns, BareJid, Element, Jid, Stanza, StanzaErrorCondition, StanzaKind, StreamError,
};
use xmppd_xml::StreamHeader;

use crate::limits::Eviction;
use crate::registry::{Stage, StreamInfo};
use crate::router::{Kick, SessionHandle};
use crate::sasl::{self, Exchange, SaslEnv, Step};
use crate::stream::{random_id, Flow, Framing, Profile, Stream};
use crate::ServerState;

use super::Admission;

pub struct C2s {
    server: Arc<ServerState>,
    /// Whether the client declared its stream language (RFC 6120 §4.7.4).
    lang_declared: bool,
    sasl: Option<Exchange>,
    sasl_failures: u32,
    /// The account the current SASL attempt is for, once the client named it.
    attempt: Option<String>,
    /// Its mechanism, as an index into `sasl::KNOWN_MECHANISMS` (a byte: this struct is in
    /// every connection's task).
    mechanism: u8,
    /// The authenticated account's localpart.
    user: Option<String>,
    session: Option<Arc<SessionHandle>>,
    /// Until when the client may take to authenticate and bind.
    login_deadline: Option<Instant>,
    /// Its place under the per-address limits (see [`Admission`]).
    admission: Admission,
}

impl C2s {
    pub fn new(server: Arc<ServerState>, admission: Admission) -> Self {
        let timeout = server.config.limits.unauthenticated_timeout_secs;
        C2s {
            lang_declared: false,
            sasl: None,
            sasl_failures: 0,
            attempt: None,
            mechanism: u8::MAX,
            user: None,
            session: None,
            login_deadline: Some(Instant::now() + Duration::from_secs(timeout)),
            admission,
            server,
        }
    }

    fn tls_required_now<F: Framing>(&self, s: &Stream<F>) -> bool {
        !s.io.is_secure() && self.server.config.tls.require_c2s_encryption
    }

    fn sasl_env<'a, F: Framing>(&'a self, s: &'a Stream<F>) -> SaslEnv<'a> {
        let config = &self.server.config;
        SaslEnv {
            config: &config.sasl,
            domain: &s.domain,
            secure: s.io.is_secure(),
            bindings: s.io.channel_bindings(),
            accounts: &*self.server.router.storage().accounts,
            anonymous: config.sasl.anonymous_domains.contains(&s.domain),
            iterations: config.sasl.scram_iterations,
            secret: &self.server.secret,
        }
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
        let hooks = self.server.router.hooks();
        let info = StreamInfo {
            domain: &s.domain,
            secure: s.io.is_secure(),
            hooks,
        };
        if self.user.is_none() && !self.tls_required_now(s) {
            features.extend(hooks.stream_features(Stage::PreAuth, &info));
            let env = self.sasl_env(s);
            let mut mechanisms = Element::new("mechanisms", ns::SASL);
            for mech in env.offered() {
                mechanisms.push_child(Element::new("mechanism", ns::SASL).with_text(mech));
            }
            features.push(mechanisms);
            // XEP-0440: tell clients which channel-binding types they may use.
            let cb_types = env.channel_binding_types();
            if !cb_types.is_empty() {
                let mut cb = Element::new("sasl-channel-binding", ns::SASL_CB);
                for t in cb_types {
                    cb.push_child(
                        Element::new("channel-binding", ns::SASL_CB).with_attr("type", t),
                    );
                }
                features.push(cb);
            }
        } else if self.user.is_some() {
            features.push(Element::new("bind", ns::BIND));
            // RFC 6121 obsoleted the session step; advertise it as optional for old clients.
            features.push(
                Element::new("session", ns::SESSION)
                    .with_child(Element::new("optional", ns::SESSION)),
            );
            features.extend(hooks.stream_features(Stage::PostAuth, &info));
        }
        features
    }

    /// A top-level element that is not a stanza: one a module registered (after bind).
    async fn on_nonza<F: Framing>(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        let hooks = self.server.router.hooks();
        match (&self.session, hooks.nonza(el.ns(), el.name())) {
            (Some(session), Some(handler)) => {
                handler.handle(&self.server.router.context(), session, &el);
                Flow::Continue
            }
            _ => {
                s.stream_error(StreamError::UnsupportedStanzaType, None)
                    .await
            }
        }
    }

    /// An iq before authentication: only what a module answers there (XEP-0077
    /// registration) is allowed.
    async fn on_pre_auth_iq<F: Framing>(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        let server = self.server.clone();
        let hooks = server.router.hooks();
        let handler = el
            .children()
            .next()
            .and_then(|p| hooks.pre_auth_iq(p.ns(), p.name()));
        let stanza = match (handler, Stanza::parse(el)) {
            (Some(handler), Ok(stanza)) if stanza.is_iq_request() => (handler, stanza),
            _ => {
                return s
                    .stream_error(StreamError::NotAuthorized, Some("authenticate first"))
                    .await
            }
        };
        let (handler, stanza) = stanza;
        let mut cx = server.router.context();
        let ip = s.peer.ip();
        let result = Box::pin(handler.handle(&mut cx, &s.domain, ip, &stanza)).await;
        server.router.apply(cx).await;
        let reply = match result {
            Ok(payload) => stanza.iq_result(payload),
            Err(e) => match stanza.error_reply(&e) {
                Some(reply) => reply,
                None => return Flow::Continue,
            },
        };
        s.send_element(&reply);
        s.flush_flow().await
    }

    async fn on_sasl<F: Framing>(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        if self.tls_required_now(s) {
            // RFC 6120 §6.5.4 encryption-required: no SASL before STARTTLS on this server.
            return self
                .sasl_failure(s, sasl::Failure::EncryptionRequired, false)
                .await;
        }
        let data = match el.text().trim() {
            "" => None,
            "=" => Some(Vec::new()),
            text => match B64.decode(text) {
                Ok(d) => Some(d),
                Err(_) => {
                    return self
                        .sasl_failure(s, sasl::Failure::IncorrectEncoding, false)
                        .await
                }
            },
        };
        let (step, exchange) = match el.name() {
            "auth" => {
                let mechanism = el.attr("mechanism").unwrap_or_default().to_string();
                self.mechanism = sasl::KNOWN_MECHANISMS
                    .iter()
                    .position(|m| *m == mechanism)
                    .map_or(u8::MAX, |i| i as u8);
                self.attempt = data
                    .as_deref()
                    .and_then(|d| sasl::attempted_username(&mechanism, d));
                if self.throttled(s) {
                    return self
                        .sasl_failure(s, sasl::Failure::TemporaryAuthFailure, false)
                        .await;
                }
                Box::pin(sasl::begin(&mechanism, data, &self.sasl_env(s))).await
            }
            "response" => match (self.sasl.take(), data) {
                (Some(exchange), data) => {
                    if let (Exchange::AwaitingInitial(mechanism), Some(d)) = (&exchange, &data) {
                        self.attempt = sasl::attempted_username(mechanism, d);
                        if self.throttled(s) {
                            return self
                                .sasl_failure(s, sasl::Failure::TemporaryAuthFailure, false)
                                .await;
                        }
                    }
                    let env = self.sasl_env(s);
                    Box::pin(sasl::respond(exchange, data.unwrap_or_default(), &env)).await
                }
                (None, _) => (Step::Failure(sasl::Failure::MalformedRequest), None),
            },
            "abort" => {
                self.sasl = None;
                (Step::Failure(sasl::Failure::Aborted), None)
            }
            _ => {
                return s
                    .stream_error(StreamError::UnsupportedStanzaType, None)
                    .await
            }
        };
        self.sasl = exchange;
        match step {
            Step::Challenge(data) => {
                sasl_element(s, "challenge", &data);
                s.flush_flow().await
            }
            Step::Success {
                username,
                additional,
            } => {
                self.server.metrics.auth_success.inc();
                tracing::info!(peer = %s.peer, user = %username, domain = %s.domain, "authenticated");
                sasl_element(s, "success", additional.as_deref().unwrap_or_default());
                self.user = Some(username);
                // Authenticated: no longer one of the address's unauthenticated connections.
                self.admission.pending = None;
                if s.flush().await {
                    Flow::Restart
                } else {
                    Flow::Close
                }
            }
            Step::Failure(f) => self.sasl_failure(s, f, true).await,
        }
    }

    /// Whether the address, or this account from this address, failed too often lately.
    fn throttled<F: Framing>(&self, s: &Stream<F>) -> bool {
        let ip = s.peer.ip();
        let account = self.attempt.as_ref().map(|user| (ip, user.clone()));
        let blocked = self.server.throttle.is_blocked(&ip)
            || account
                .as_ref()
                .is_some_and(|key| self.server.account_throttle.is_blocked(key));
        if blocked {
            self.server.metrics.auth_throttled.inc();
            let account = self.attempt.as_deref().unwrap_or_default();
            tracing::warn!(peer = %s.peer, account, "login refused: too many failures lately");
        }
        blocked
    }

    /// A wrong password (or the like): counted per account and address, and toward the
    /// address's ceiling unless that account is already throttled there (one guessed
    /// account must not lock out everyone behind the address). Then a pause, to slow
    /// guessing down without blocking anyone else.
    async fn record_credential_failure(&self, ip: std::net::IpAddr) {
        match &self.attempt {
            Some(user) => {
                let key = (ip, user.clone());
                if !self.server.account_throttle.is_blocked(&key) {
                    self.server.throttle.record_failure(ip);
                }
                self.server.account_throttle.record_failure(key);
            }
            None => self.server.throttle.record_failure(ip),
        }
        let delay = self.server.config.sasl.failure_delay_ms;
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    async fn sasl_failure<F: Framing>(
        &mut self,
        s: &mut Stream<F>,
        failure: sasl::Failure,
        counts: bool,
    ) -> Flow {
        self.sasl = None;
        let mut el =
            Element::new("failure", ns::SASL).with_child(Element::new(failure.as_str(), ns::SASL));
        if let Some(text) = failure.text() {
            el.push_child(
                Element::new("text", ns::SASL)
                    .with_attr("xml:lang", "en")
                    .with_text(text),
            );
        }
        s.send_element(&el);
        if counts && failure != sasl::Failure::Aborted {
            let mechanism = sasl::KNOWN_MECHANISMS
                .get(usize::from(self.mechanism))
                .copied()
                .unwrap_or("unknown");
            self.server
                .metrics
                .auth_failure(mechanism, failure.as_str());
            let detail = failure.text().unwrap_or_default();
            let account = self.attempt.as_deref().unwrap_or("-");
            tracing::info!(peer = %s.peer, account, reason = failure.as_str(), detail, "authentication failed");
            if failure.is_credential_failure() {
                self.record_credential_failure(s.peer.ip()).await;
            }
            if !failure.is_attempt() {
                return s.flush_flow().await;
            }
            self.sasl_failures += 1;
            // RFC 6120 §6.4.5: after too many retries, close with policy-violation.
            if self.sasl_failures >= self.server.config.sasl.max_attempts_per_stream {
                return s
                    .stream_error(
                        StreamError::PolicyViolation,
                        Some("too many failed authentication attempts"),
                    )
                    .await;
            }
        }
        s.flush_flow().await
    }

    async fn on_stanza<F: Framing>(&mut self, s: &mut Stream<F>, mut el: Element) -> Flow {
        if let Some(kind) = StanzaKind::of(&el) {
            self.server.metrics.stanza_in(kind);
        }
        let Some(session) = self.session.clone() else {
            return self.before_bind(s, el).await;
        };
        let full = &session.jid;
        // RFC 6120 §8.1.2.1: the server stamps the full JID; a different one is a forgery.
        if let Some(from) = el.attr("from") {
            let ok = Jid::new(from)
                .is_ok_and(|j| j.as_str() == full.as_str() || j.as_str() == bare_str(full));
            if !ok {
                return s.stream_error(StreamError::InvalidFrom, None).await;
            }
        }
        el.set_attr("from", full.as_str());
        // RFC 6120 §4.7.4: stanzas without a language carry the stream's on their way.
        if self.lang_declared && el.attr("xml:lang").is_none() {
            el.set_attr("xml:lang", s.lang.clone());
        }
        let mut stanza = match Stanza::parse(el) {
            Ok(stanza) => stanza,
            Err(failed) => {
                let (el, error) = *failed;
                if let Some(mut reply) = xmppd_core::stanza::error_reply(&el, &error) {
                    reply.set_attr("from", s.domain.clone());
                    s.send_element(&reply);
                }
                return s.flush_flow().await;
            }
        };
        if stanza.kind == StanzaKind::Iq && stanza.to.is_none() && stanza.is_iq_request() {
            if let Some(payload) = stanza.iq_payload() {
                if payload.is("session", ns::SESSION) {
                    let reply = stanza.iq_result(None);
                    s.send_element(&reply);
                    return s.flush_flow().await;
                }
            }
            // No 'to': the account itself answers (RFC 6120 §10.3.3).
            stanza.set_to(Jid::from(full.to_bare()));
        }
        // Boxed: the routing future is large, and inline it would sit in every idle
        // connection's task (see the README's memory notes).
        Box::pin(self.server.router.from_session(&session, stanza)).await;
        Flow::Continue
    }

    /// Before a resource is bound only bind (and the legacy session request) are allowed.
    async fn before_bind<F: Framing>(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        let is_bind = el.name() == "iq"
            && el.attr("type") == Some("set")
            && el.get_child("bind", ns::BIND).is_some();
        if !is_bind {
            return s
                .stream_error(StreamError::NotAuthorized, Some("bind a resource first"))
                .await;
        }
        let Ok(stanza) = Stanza::parse(el) else {
            return s
                .stream_error(StreamError::BadFormat, Some("invalid bind request"))
                .await;
        };
        let mut resources = stanza
            .iq_payload()
            .into_iter()
            .flat_map(|b| b.children())
            .filter(|c| c.is("resource", ns::BIND));
        let (first, second) = (resources.next(), resources.next());
        let requested = first
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("xmppd-{}", random_id(12)));
        let user = self.user.clone().unwrap_or_default();
        let full = BareJid::new(&format!("{user}@{}", s.domain))
            .and_then(|bare| bare.with_resource_str(&requested));
        let full = match (full, second) {
            (Ok(full), None) => full,
            // RFC 6120 §7.7.2.1: a resource that cannot be processed, or more than one, is
            // a bad request.
            _ => {
                let error = StanzaErrorCondition::BadRequest.into();
                if let Some(reply) = stanza.error_reply(&error) {
                    s.send_element(&reply);
                }
                return s.flush_flow().await;
            }
        };
        let max = self.server.config.limits.max_resources_per_account as usize;
        let sessions = self.server.router.sessions().resources(bare_str(&full));
        if max > 0 && sessions.len() >= max && !sessions.iter().any(|h| h.jid == full) {
            // RFC 6120 §7.6.2.1: the account has reached its limit of connected resources.
            let error = xmppd_core::StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_text("too many sessions of this account are connected");
            if let Some(reply) = stanza.error_reply(&error) {
                s.send_element(&reply);
            }
            return s.flush_flow().await;
        }
        let handle = SessionHandle::new(full.clone(), self.server.config.limits.outbound_queue);
        // RFC 6120 §7.7.2.2: the new session wins; the old one gets a <conflict/> stream error.
        if let Some(old) = self.server.router.sessions().bind(handle.clone()) {
            old.kick(Kick::Conflict);
        }
        self.server.metrics.session_bound(F::TRANSPORT, 1);
        Box::pin(self.server.router.session_bound(&handle)).await;
        self.session = Some(handle);
        self.login_deadline = None;
        tracing::debug!(peer = %s.peer, jid = %full, "resource bound");
        let reply = stanza
            .iq_result(Some(Element::new("bind", ns::BIND).with_child(
                Element::new("jid", ns::BIND).with_text(full.as_str()),
            )));
        s.send_element(&reply);
        s.flush_flow().await
    }
}

fn sasl_element<F: Framing>(s: &mut Stream<F>, name: &str, data: &[u8]) {
    let mut el = Element::new(name, ns::SASL);
    if !data.is_empty() {
        el.push_text(B64.encode(data));
    }
    s.send_element(&el);
}

impl<F: Framing> Profile<F> for C2s {
    const KIND: &'static str = "c2s";

    async fn on_header(&mut self, s: &mut Stream<F>, header: StreamHeader) -> Flow {
        if header.ns != ns::STREAM {
            return s.stream_error(StreamError::InvalidNamespace, None).await;
        }
        if header.name != "stream" {
            return s
                .stream_error(StreamError::BadFormat, Some("expected <stream:stream>"))
                .await;
        }
        // RFC 6120 §4.9.3.10: a client stream's content is in jabber:client.
        if header.default_ns.as_deref() != Some(ns::CLIENT) {
            return s
                .stream_error(
                    StreamError::InvalidNamespace,
                    Some("the stream's default namespace must be jabber:client"),
                )
                .await;
        }
        if let Some(to) = header.attr("to") {
            let to = to.to_ascii_lowercase();
            if !self.server.config.serves(&to) {
                return s
                    .stream_error(
                        StreamError::HostUnknown,
                        Some("this server does not serve that domain"),
                    )
                    .await;
            }
            s.domain = to;
        }
        // RFC 6120 §4.7.5: no version means a pre-RFC (0.9) client, which we do not speak.
        match header.attr("version").and_then(|v| v.split('.').next()) {
            Some("1") => {}
            _ => {
                return s
                    .stream_error(
                        StreamError::UnsupportedVersion,
                        Some("version 1.0 is required"),
                    )
                    .await
            }
        }
        // RFC 6120 §4.7.4: adopt the client's language if it looks like a language tag.
        if let Some(lang) = header.attr("xml:lang") {
            let plausible = !lang.is_empty()
                && lang.len() <= 35
                && lang.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if plausible {
                s.lang = lang.to_string();
                self.lang_declared = true;
            }
        }
        if let Some(reason) = self.admission.refusal {
            return s
                .stream_error(StreamError::PolicyViolation, Some(reason))
                .await;
        }
        s.send_header();
        let features = self.features(s);
        s.send_features(features);
        s.flush_flow().await
    }

    async fn on_element(&mut self, s: &mut Stream<F>, el: Element) -> Flow {
        match (el.ns(), el.name()) {
            (ns::TLS, "starttls") if s.io.can_start_tls() => {
                s.send_raw(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                if s.flush().await {
                    Flow::StartTls
                } else {
                    Flow::Close
                }
            }
            // RFC 6120 §4.9.1.1: a stream error is answered by closing, never by another.
            (ns::STREAM, "error") => {
                tracing::debug!(peer = %s.peer, "the client sent a stream error");
                s.send_raw(b"</stream:stream>");
                s.flush().await;
                Flow::Close
            }
            (ns::SASL, _) if self.user.is_none() => self.on_sasl(s, el).await,
            (ns::CLIENT, "iq") if self.user.is_none() && !self.tls_required_now(s) => {
                self.on_pre_auth_iq(s, el).await
            }
            (ns::CLIENT, "message" | "presence" | "iq") => {
                if self.user.is_none() {
                    return s
                        .stream_error(StreamError::NotAuthorized, Some("authenticate first"))
                        .await;
                }
                self.on_stanza(s, el).await
            }
            (_, "message" | "presence" | "iq") => {
                s.stream_error(
                    StreamError::InvalidNamespace,
                    Some("stanzas must be in jabber:client"),
                )
                .await
            }
            _ => self.on_nonza(s, el).await,
        }
    }

    fn session(&self) -> Option<&Arc<SessionHandle>> {
        self.session.as_ref()
    }

    fn login_deadline(&self) -> Option<Instant> {
        self.login_deadline
    }

    fn eviction(&self) -> Option<Arc<Eviction>> {
        let pending = self.admission.pending.as_ref()?;
        Some(pending.eviction.clone())
    }

    fn keepalive(&self, s: &Stream<F>) -> Option<Element> {
        // XEP-0199 §4.2: a server-to-client ping finds half-open connections.
        let session = self.session.as_ref()?;
        Some(
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", format!("ping-{}", random_id(8)))
                .with_attr("from", s.domain.clone())
                .with_attr("to", session.jid.as_str())
                .with_child(Element::new("ping", ns::PING)),
        )
    }

    async fn close(&mut self) {
        if let Some(session) = self.session.take() {
            // Contacts learn the session is gone before it leaves the table (RFC 6121 §4.5).
            Box::pin(self.server.router.session_closing(&session)).await;
            self.server.metrics.session_bound(F::TRANSPORT, -1);
        }
    }
}
