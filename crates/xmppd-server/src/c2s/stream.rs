//! One client connection: stream negotiation (TLS → SASL → bind, RFC 6120 §4–§7), then the
//! session's stanzas in and out. One task owns the socket; others reach it only through its
//! bounded queue and its kick signal.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use xmppd_core::{
    bare_str, ns, BareJid, Element, FullJid, Jid, Stanza, StanzaErrorCondition, StanzaKind,
    StreamError,
};
use xmppd_xml::{Limits, ParseError, StreamEvent, StreamHeader, StreamParser};

use super::transport::{Transport, READ_BUFFER};
use crate::limits::{ByteRate, ConnectionSlot};
use crate::metrics::Metrics;
use crate::registry::{Stage, StreamInfo};
use crate::router::{Kick, SessionHandle};
use crate::sasl::{self, Exchange, SaslEnv, Step};
use crate::tls::ChannelBindings;
use crate::ServerState;

/// What the connection loop does after an event.
enum Flow {
    Continue,
    /// A new stream on the same transport (after SASL success, RFC 6120 §6.4.6).
    Restart,
    /// `<proceed/>` was sent: hand the socket to TLS (RFC 6120 §5.4.3.3).
    StartTls,
    /// The stream is closed; end the connection.
    Close,
}

/// How long final writes (errors, closing tags) may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Outbound stanzas coalesced into one write.
const WRITE_BATCH: usize = 64;

pub struct Connection {
    server: Arc<ServerState>,
    io: Transport,
    peer: SocketAddr,
    secure: bool,
    bindings: Option<ChannelBindings>,
    parser: StreamParser,
    header_sent: bool,
    /// The domain the client asked for in its stream header.
    domain: String,
    /// The stream's default language (RFC 6120 §4.7.4), and whether the client declared it.
    lang: String,
    lang_declared: bool,
    sasl: Option<Exchange>,
    sasl_failures: u32,
    /// The authenticated account's localpart.
    user: Option<String>,
    session: Option<Arc<SessionHandle>>,
    rate: ByteRate,
    /// Until when reading is paused by the byte-rate limit.
    paused_until: Option<Instant>,
    /// Until when the client may take to authenticate and bind.
    login_deadline: Option<Instant>,
    /// When the client last sent anything; silence leads to a ping (XEP-0199).
    last_read: Instant,
    /// Until when the client must answer our ping.
    ping_deadline: Option<Instant>,
    /// Set when the connection is over a per-IP limit: it only gets a stream error.
    refused: bool,
    /// Read buffer, empty while idle (see [`Transport::poll_read_lazy`]).
    input: Vec<u8>,
    out: Vec<u8>,
    _slot: Option<ConnectionSlot>,
}

fn random_id(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn parse_error_condition(e: &ParseError) -> (StreamError, &'static str) {
    match e {
        ParseError::NotWellFormed(_) => (StreamError::NotWellFormed, "XML is not well-formed"),
        ParseError::Restricted(_) => (
            StreamError::RestrictedXml,
            "DTDs, comments, processing instructions and entities are not allowed",
        ),
        ParseError::TooLarge => (StreamError::PolicyViolation, "stanza too large"),
        ParseError::TooLong => (
            StreamError::PolicyViolation,
            "name or attribute value too long",
        ),
        ParseError::TooDeep => (StreamError::PolicyViolation, "XML nested too deeply"),
        ParseError::TooManyAttributes => (StreamError::PolicyViolation, "too many attributes"),
        ParseError::TextAtStreamLevel => (StreamError::BadFormat, "text outside of any stanza"),
    }
}

impl Connection {
    pub fn new(
        server: Arc<ServerState>,
        tcp: TcpStream,
        peer: SocketAddr,
        slot: Option<ConnectionSlot>,
    ) -> Self {
        let limits = &server.config.limits;
        let login_deadline =
            Instant::now() + Duration::from_secs(limits.unauthenticated_timeout_secs);
        Connection {
            io: Transport::Plain(tcp),
            peer,
            secure: false,
            bindings: None,
            parser: StreamParser::new(Self::parser_limits(&server)),
            header_sent: false,
            domain: server.config.server.domains[0].clone(),
            lang: "en".to_string(),
            lang_declared: false,
            sasl: None,
            sasl_failures: 0,
            user: None,
            session: None,
            rate: ByteRate::new(limits.max_bytes_per_second, limits.burst_bytes),
            paused_until: None,
            login_deadline: Some(login_deadline),
            last_read: Instant::now(),
            ping_deadline: None,
            refused: slot.is_none(),
            // Not empty: the first read goes straight to the socket.
            input: vec![0; READ_BUFFER],
            out: Vec::new(),
            _slot: slot,
            server,
        }
    }

    fn parser_limits(server: &ServerState) -> Limits {
        let l = &server.config.limits;
        Limits {
            max_stanza_size: l.max_stanza_size,
            max_depth: l.max_depth,
            max_attributes: l.max_attributes,
        }
    }

    /// Runs the connection to its end. `direct_tls` starts with a TLS handshake (XEP-0368).
    ///
    /// Written as an async block rather than an `async fn`: rustc stores an async fn's
    /// by-value arguments twice in its future, and this future is every connection's task.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn, see above
    pub fn run(mut self, direct_tls: bool) -> impl std::future::Future<Output = ()> {
        async move {
            let metrics = self.server.metrics.clone();
            Metrics::inc(&metrics.connections_total);
            Metrics::inc(&metrics.connections_open);
            if !direct_tls || self.start_tls().await {
                self.serve().await;
            }
            self.end_session().await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.shutdown()).await;
            Metrics::dec(&metrics.connections_open);
        }
    }

    async fn start_tls(&mut self) -> bool {
        let Transport::Plain(tcp) = std::mem::replace(&mut self.io, Transport::Upgrading) else {
            return false;
        };
        let handshake = Box::pin(self.server.tls.acceptor.accept(tcp));
        match tokio::time::timeout(Duration::from_secs(30), handshake).await {
            Ok(Ok(tls)) => {
                let (_, conn) = tls.get_ref();
                self.bindings = Some(ChannelBindings::capture(conn, &self.server.tls.resolver));
                self.io = Transport::Tls(Box::new(tls));
                self.secure = true;
                self.parser = StreamParser::new(Self::parser_limits(&self.server));
                self.header_sent = false;
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                false
            }
        }
    }

    async fn serve(&mut self) {
        let mut shutdown = self.server.shutdown.clone();
        let limits = &self.server.config.limits;
        let ping = (
            Duration::from_secs(limits.ping_interval_secs.max(1)),
            Duration::from_secs(limits.ping_timeout_secs.max(1)),
        );
        loop {
            let wake = self.next_wake(ping.0);
            let session = self.session.clone();
            let can_read = self.paused_until.is_none();
            tokio::select! {
                biased;
                _ = crate::shutting_down(&mut shutdown) => {
                    self.stream_error(StreamError::SystemShutdown, Some("server is shutting down")).await;
                    return;
                }
                kick = wait_kick(session.as_deref()) => {
                    if kick != Kick::QueueOverflow {
                        // What was queued before the kick (such as the reply to the request
                        // that deleted the account) still goes out first.
                        self.drain_queue();
                    }
                    let (err, text) = match kick {
                        Kick::Conflict => (StreamError::Conflict, "replaced by a new session with the same resource"),
                        Kick::AccountRemoved => (StreamError::NotAuthorized, "the account was deleted"),
                        _ => (StreamError::PolicyViolation, "too many stanzas waiting: the client does not read"),
                    };
                    self.stream_error(err, Some(text)).await;
                    return;
                }
                Some(first) = recv(session.as_deref()) => {
                    if !self.write_queued(first).await {
                        return;
                    }
                }
                read = poll_fn(|cx| {
                    let read = self.io.poll_read_lazy(cx, &mut self.input);
                    if read.is_pending() {
                        // Idle: scratch memory goes the way of the input buffer.
                        self.parser.release_temporaries();
                        if self.out.is_empty() {
                            self.out = Vec::new();
                        }
                    }
                    read
                }), if can_read => {
                    let n = match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    self.last_read = Instant::now();
                    self.ping_deadline = None;
                    if let Some(wait) = self.rate.take(n) {
                        self.paused_until = Some(Instant::now() + wait);
                    }
                    // Boxed: parsing and handling a stanza needs a large future, which
                    // should exist only while there is input, not in every idle task.
                    let input = std::mem::take(&mut self.input);
                    if !Box::pin(self.process(&input[..n])).await {
                        return;
                    }
                    // Kept: there may be more above the socket (the next poll tells).
                    self.input = input;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if !self.on_timer(ping).await {
                        return;
                    }
                }
            }
        }
    }

    fn next_wake(&self, ping_interval: Duration) -> Instant {
        // Before a session exists the login deadline is the only clock that matters.
        let ping = match (&self.session, self.ping_deadline) {
            (_, Some(deadline)) => Some(deadline),
            (Some(_), None) => Some(self.last_read + ping_interval),
            (None, None) => None,
        };
        [ping, self.paused_until, self.login_deadline]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + ping_interval)
    }

    /// Timers: end of a rate pause, the login deadline, the keepalive ping and its timeout.
    async fn on_timer(&mut self, (interval, timeout): (Duration, Duration)) -> bool {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        if self.login_deadline.is_some_and(|t| t <= now) {
            self.stream_error(
                StreamError::ConnectionTimeout,
                Some("authenticate and bind sooner"),
            )
            .await;
            return false;
        }
        if self.ping_deadline.is_some_and(|t| t <= now) {
            self.stream_error(StreamError::ConnectionTimeout, Some("no answer to ping"))
                .await;
            return false;
        }
        if let (Some(session), None) = (&self.session, self.ping_deadline) {
            if self.last_read + interval <= now {
                // XEP-0199 §4.2: a server-to-client ping finds half-open connections.
                let ping = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "get")
                    .with_attr("id", format!("ping-{}", random_id(8)))
                    .with_attr("from", self.domain.clone())
                    .with_attr("to", session.jid.as_str())
                    .with_child(Element::new("ping", ns::PING));
                self.send_element(&ping);
                self.ping_deadline = Some(now + timeout);
                return self.flush().await;
            }
        }
        true
    }

    /// Feeds read bytes to the parser and handles every complete event.
    async fn process(&mut self, mut data: &[u8]) -> bool {
        loop {
            let event = match self.parser.feed(&mut data) {
                Ok(Some(event)) => event,
                Ok(None) => return true,
                Err(e) => {
                    let (err, text) = parse_error_condition(&e);
                    self.stream_error(err, Some(text)).await;
                    return false;
                }
            };
            let flow = match event {
                StreamEvent::Header(header) => self.on_header(header).await,
                StreamEvent::Stanza(el) => self.on_element(el).await,
                StreamEvent::Close => {
                    self.write(b"</stream:stream>").await;
                    Flow::Close
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => return false,
                Flow::Restart => {
                    self.parser = StreamParser::new(Self::parser_limits(&self.server));
                    self.header_sent = false;
                }
                Flow::StartTls => {
                    // Anything the client sent after <starttls/> and before the handshake is
                    // not covered by TLS and is discarded (RFC 6120 §5.4.3.3).
                    return self.start_tls().await;
                }
            }
        }
    }

    async fn on_header(&mut self, header: StreamHeader) -> Flow {
        if header.ns != ns::STREAM {
            return self.stream_error(StreamError::InvalidNamespace, None).await;
        }
        if header.name != "stream" {
            return self
                .stream_error(StreamError::BadFormat, Some("expected <stream:stream>"))
                .await;
        }
        if let Some(to) = header.attr("to") {
            let to = to.to_ascii_lowercase();
            if !self.server.config.serves(&to) {
                return self
                    .stream_error(
                        StreamError::HostUnknown,
                        Some("this server does not serve that domain"),
                    )
                    .await;
            }
            self.domain = to;
        }
        // RFC 6120 §4.7.5: no version means a pre-RFC (0.9) client, which we do not speak.
        match header.attr("version").and_then(|v| v.split('.').next()) {
            Some("1") => {}
            _ => {
                return self
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
                self.lang = lang.to_string();
                self.lang_declared = true;
            }
        }
        if self.refused {
            return self
                .stream_error(
                    StreamError::PolicyViolation,
                    Some("too many connections from your address"),
                )
                .await;
        }
        self.send_header();
        self.push_features();
        if self.flush().await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    /// Appends the response stream header to the output buffer.
    fn send_header(&mut self) {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}' \
             version='1.0' xml:lang='{}'>",
            random_id(16),
            self.domain,
            self.lang
        );
        self.out.extend_from_slice(header.as_bytes());
        self.header_sent = true;
    }

    fn sasl_env(&self) -> SaslEnv<'_> {
        let config = &self.server.config;
        SaslEnv {
            config: &config.sasl,
            domain: &self.domain,
            secure: self.secure,
            bindings: self.bindings.as_ref(),
            accounts: &*self.server.router.storage().accounts,
            anonymous: config.sasl.anonymous_domains.contains(&self.domain),
            iterations: config.sasl.scram_iterations,
            secret: &self.server.secret,
        }
    }

    fn tls_required_now(&self) -> bool {
        !self.secure && self.server.config.tls.require_c2s_encryption
    }

    fn push_features(&mut self) {
        let mut features = Element::new("features", ns::STREAM);
        if !self.secure {
            let mut starttls = Element::new("starttls", ns::TLS);
            if self.tls_required_now() {
                starttls.push_child(Element::new("required", ns::TLS));
            }
            features.push_child(starttls);
        }
        let hooks = self.server.router.hooks();
        let info = StreamInfo {
            domain: &self.domain,
            secure: self.secure,
        };
        if self.user.is_none() && !self.tls_required_now() {
            for feature in hooks.stream_features(Stage::PreAuth, &info) {
                features.push_child(feature);
            }
            let env = self.sasl_env();
            let mut mechanisms = Element::new("mechanisms", ns::SASL);
            for mech in env.offered() {
                mechanisms.push_child(Element::new("mechanism", ns::SASL).with_text(mech));
            }
            features.push_child(mechanisms);
            // XEP-0440: tell clients which channel-binding types they may use.
            let cb_types = env.channel_binding_types();
            if !cb_types.is_empty() {
                let mut cb = Element::new("sasl-channel-binding", ns::SASL_CB);
                for t in cb_types {
                    cb.push_child(
                        Element::new("channel-binding", ns::SASL_CB).with_attr("type", t),
                    );
                }
                features.push_child(cb);
            }
        } else if self.user.is_some() {
            features.push_child(Element::new("bind", ns::BIND));
            // RFC 6121 obsoleted the session step; advertise it as optional for old clients.
            features.push_child(
                Element::new("session", ns::SESSION)
                    .with_child(Element::new("optional", ns::SESSION)),
            );
            for feature in hooks.stream_features(Stage::PostAuth, &info) {
                features.push_child(feature);
            }
        }
        // `features` is in the stream namespace, written with the stream: prefix by hand.
        self.out.extend_from_slice(b"<stream:features>");
        for child in features.children() {
            child.write_to(&mut self.out, ns::CLIENT);
        }
        self.out.extend_from_slice(b"</stream:features>");
    }

    async fn on_element(&mut self, el: Element) -> Flow {
        match (el.ns(), el.name()) {
            (ns::TLS, "starttls") if !self.secure => {
                self.out
                    .extend_from_slice(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                if self.flush().await {
                    Flow::StartTls
                } else {
                    Flow::Close
                }
            }
            (ns::SASL, _) if self.user.is_none() => self.on_sasl(el).await,
            (ns::CLIENT, "iq") if self.user.is_none() && !self.tls_required_now() => {
                self.on_pre_auth_iq(el).await
            }
            (ns::CLIENT, "message" | "presence" | "iq") => {
                if self.user.is_none() {
                    return self
                        .stream_error(StreamError::NotAuthorized, Some("authenticate first"))
                        .await;
                }
                self.on_stanza(el).await
            }
            (_, "message" | "presence" | "iq") => {
                self.stream_error(
                    StreamError::InvalidNamespace,
                    Some("stanzas must be in jabber:client"),
                )
                .await
            }
            (element_ns, name) => {
                let nonza = self.session.clone().and_then(|session| {
                    let handler = self.server.router.hooks().nonza(element_ns, name)?;
                    Some((session, handler))
                });
                match nonza {
                    Some((session, handler)) => {
                        handler.handle(&self.server.router.context(), &session, &el);
                        Flow::Continue
                    }
                    None => {
                        self.stream_error(StreamError::UnsupportedStanzaType, None)
                            .await
                    }
                }
            }
        }
    }

    /// An iq before authentication: only what a module answers there (XEP-0077
    /// registration) is allowed.
    async fn on_pre_auth_iq(&mut self, el: Element) -> Flow {
        let server = self.server.clone();
        let hooks = server.router.hooks();
        let handler = el
            .children()
            .next()
            .and_then(|p| hooks.pre_auth_iq(p.ns(), p.name()));
        let (Some(handler), Ok(stanza)) = (handler, Stanza::parse(el)) else {
            return self
                .stream_error(StreamError::NotAuthorized, Some("authenticate first"))
                .await;
        };
        if !stanza.is_iq_request() {
            return self
                .stream_error(StreamError::NotAuthorized, Some("authenticate first"))
                .await;
        }
        let mut cx = server.router.context();
        let result = Box::pin(handler.handle(&mut cx, &self.domain, self.peer.ip(), &stanza)).await;
        server.router.apply(cx).await;
        let reply = match result {
            Ok(payload) => stanza.iq_result(payload),
            Err(e) => match stanza.error_reply(&e) {
                Some(reply) => reply,
                None => return Flow::Continue,
            },
        };
        self.send_element(&reply);
        self.flush_flow().await
    }

    async fn on_sasl(&mut self, el: Element) -> Flow {
        if self.tls_required_now() {
            // RFC 6120 §6.5.4 encryption-required: no SASL before STARTTLS on this server.
            return self
                .sasl_failure(sasl::Failure::EncryptionRequired, false)
                .await;
        }
        let data = match el.text().trim() {
            "" => None,
            "=" => Some(Vec::new()),
            text => match B64.decode(text) {
                Ok(d) => Some(d),
                Err(_) => {
                    return self
                        .sasl_failure(sasl::Failure::IncorrectEncoding, false)
                        .await
                }
            },
        };
        let (step, exchange) = match el.name() {
            "auth" => {
                if self.server.throttle.is_blocked(self.peer.ip()) {
                    return self
                        .sasl_failure(sasl::Failure::TemporaryAuthFailure, false)
                        .await;
                }
                let mechanism = el.attr("mechanism").unwrap_or_default().to_string();
                Box::pin(sasl::begin(&mechanism, data, &self.sasl_env())).await
            }
            "response" => match (self.sasl.take(), data) {
                (Some(exchange), data) => {
                    Box::pin(sasl::respond(
                        exchange,
                        data.unwrap_or_default(),
                        &self.sasl_env(),
                    ))
                    .await
                }
                (None, _) => (Step::Failure(sasl::Failure::MalformedRequest), None),
            },
            "abort" => {
                self.sasl = None;
                (Step::Failure(sasl::Failure::Aborted), None)
            }
            _ => {
                return self
                    .stream_error(StreamError::UnsupportedStanzaType, None)
                    .await
            }
        };
        self.sasl = exchange;
        match step {
            Step::Challenge(data) => {
                self.sasl_element("challenge", &data);
                self.flush_flow().await
            }
            Step::Success {
                username,
                additional,
            } => {
                Metrics::inc(&self.server.metrics.auth_success);
                tracing::info!(peer = %self.peer, user = %username, domain = %self.domain, "authenticated");
                self.sasl_element("success", additional.as_deref().unwrap_or_default());
                self.user = Some(username);
                if self.flush().await {
                    Flow::Restart
                } else {
                    Flow::Close
                }
            }
            Step::Failure(f) => self.sasl_failure(f, true).await,
        }
    }

    fn sasl_element(&mut self, name: &str, data: &[u8]) {
        let mut el = Element::new(name, ns::SASL);
        if !data.is_empty() {
            el.push_text(B64.encode(data));
        }
        el.write_to(&mut self.out, ns::CLIENT);
    }

    async fn sasl_failure(&mut self, failure: sasl::Failure, counts: bool) -> Flow {
        self.sasl = None;
        Element::new("failure", ns::SASL)
            .with_child(Element::new(failure.as_str(), ns::SASL))
            .write_to(&mut self.out, ns::CLIENT);
        if counts && failure != sasl::Failure::Aborted {
            Metrics::inc(&self.server.metrics.auth_failures);
            tracing::info!(peer = %self.peer, reason = failure.as_str(), "authentication failed");
            if failure.is_credential_failure() {
                self.server.throttle.record_failure(self.peer.ip());
            }
            self.sasl_failures += 1;
            // RFC 6120 §6.4.5: after too many retries, close with policy-violation.
            if self.sasl_failures >= self.server.config.sasl.max_attempts_per_stream {
                return self
                    .stream_error(
                        StreamError::PolicyViolation,
                        Some("too many failed authentication attempts"),
                    )
                    .await;
            }
        }
        self.flush_flow().await
    }

    fn full_jid(&self) -> Option<&FullJid> {
        self.session.as_ref().map(|s| &s.jid)
    }

    async fn on_stanza(&mut self, mut el: Element) -> Flow {
        if let Some(kind) = xmppd_core::StanzaKind::of(&el) {
            self.server.metrics.stanza_in(kind);
        }
        let Some(full) = self.full_jid().cloned() else {
            return self.before_bind(el).await;
        };
        // RFC 6120 §8.1.2.1: the server stamps the full JID; a different one is a forgery.
        if let Some(from) = el.attr("from") {
            let ok = Jid::new(from)
                .is_ok_and(|j| j.as_str() == full.as_str() || j.as_str() == bare_str(&full));
            if !ok {
                return self.stream_error(StreamError::InvalidFrom, None).await;
            }
        }
        el.set_attr("from", full.as_str());
        // RFC 6120 §4.7.4: stanzas without a language carry the stream's on their way.
        if self.lang_declared && el.attr("xml:lang").is_none() {
            el.set_attr("xml:lang", self.lang.clone());
        }
        let mut stanza = match Stanza::parse(el) {
            Ok(s) => s,
            Err(failed) => {
                let (el, error) = *failed;
                if let Some(mut reply) = xmppd_core::stanza::error_reply(&el, &error) {
                    reply.set_attr("from", self.domain.clone());
                    self.send_element(&reply);
                }
                return self.flush_flow().await;
            }
        };
        if stanza.kind == StanzaKind::Iq && stanza.to.is_none() && stanza.is_iq_request() {
            if let Some(payload) = stanza.iq_payload() {
                if payload.is("session", ns::SESSION) {
                    let reply = stanza.iq_result(None);
                    self.send_element(&reply);
                    return self.flush_flow().await;
                }
            }
            // No 'to': the account itself answers (RFC 6120 §10.3.3).
            stanza.set_to(Jid::from(full.to_bare()));
        }
        if let Some(session) = self.session.clone() {
            // Boxed: the routing future is large, and inline it would sit in every idle
            // connection's task (see the README's memory notes).
            Box::pin(self.server.router.from_session(&session, stanza)).await;
        }
        Flow::Continue
    }

    /// Before a resource is bound only bind (and the legacy session request) are allowed.
    async fn before_bind(&mut self, el: Element) -> Flow {
        let is_bind = el.name() == "iq"
            && el.attr("type") == Some("set")
            && el.get_child("bind", ns::BIND).is_some();
        if !is_bind {
            return self
                .stream_error(StreamError::NotAuthorized, Some("bind a resource first"))
                .await;
        }
        let Ok(stanza) = Stanza::parse(el) else {
            return self
                .stream_error(StreamError::BadFormat, Some("invalid bind request"))
                .await;
        };
        let mut resources = stanza
            .iq_payload()
            .into_iter()
            .flat_map(|b| b.children())
            .filter(|c| c.is("resource", ns::BIND));
        let (first, second) = (resources.next(), resources.next());
        if second.is_some() {
            // RFC 6120 §7.7.2.1: one resource per request.
            let error = xmppd_core::StanzaError::new(StanzaErrorCondition::BadRequest)
                .with_text("more than one resource requested");
            if let Some(reply) = stanza.error_reply(&error) {
                self.send_element(&reply);
            }
            return self.flush_flow().await;
        }
        let requested = first
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("xmppd-{}", random_id(12)));
        let user = self.user.clone().unwrap_or_default();
        let full = BareJid::new(&format!("{user}@{}", self.domain))
            .and_then(|bare| bare.with_resource_str(&requested));
        let full = match full {
            Ok(full) => full,
            Err(_) => {
                // RFC 6120 §7.7.2.1: a resource that cannot be processed is bad-request.
                let error = StanzaErrorCondition::BadRequest.into();
                if let Some(reply) = stanza.error_reply(&error) {
                    self.send_element(&reply);
                }
                return self.flush_flow().await;
            }
        };
        let handle = SessionHandle::new(full.clone(), self.server.config.limits.outbound_queue);
        // RFC 6120 §7.7.2.2: the new session wins; the old one gets a <conflict/> stream error.
        if let Some(old) = self.server.router.sessions().bind(handle.clone()) {
            old.kick(Kick::Conflict);
        }
        Metrics::inc(&self.server.metrics.sessions_bound);
        Box::pin(self.server.router.session_bound(&handle)).await;
        self.session = Some(handle);
        self.login_deadline = None;
        tracing::debug!(peer = %self.peer, jid = %full, "resource bound");
        let reply = stanza
            .iq_result(Some(Element::new("bind", ns::BIND).with_child(
                Element::new("jid", ns::BIND).with_text(full.as_str()),
            )));
        self.send_element(&reply);
        self.flush_flow().await
    }

    async fn end_session(&mut self) {
        if let Some(session) = self.session.take() {
            // Contacts learn the session is gone before it leaves the table (RFC 6121 §4.5).
            Box::pin(self.server.router.session_closing(&session)).await;
            Metrics::dec(&self.server.metrics.sessions_bound);
        }
    }

    fn send_element(&mut self, el: &Element) {
        el.write_to(&mut self.out, ns::CLIENT);
    }

    /// Moves every queued stanza into the output buffer.
    fn drain_queue(&mut self) {
        if let Some(session) = &self.session {
            while let Some(data) = session.outbox().pop() {
                self.out.extend_from_slice(&data);
            }
        }
    }

    /// Writes queued stanzas, taking more that are already waiting into the same write.
    async fn write_queued(&mut self, first: Bytes) -> bool {
        self.out.extend_from_slice(&first);
        if let Some(session) = &self.session {
            for _ in 0..WRITE_BATCH {
                match session.outbox().pop() {
                    Some(more) => self.out.extend_from_slice(&more),
                    None => break,
                }
            }
        }
        self.flush().await
    }

    async fn flush_flow(&mut self) -> Flow {
        if self.flush().await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    /// Writes the output buffer; false if the client is gone or too slow.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let ok = self.write(&out).await;
        self.out = out;
        self.out.clear();
        // Do not let one large burst pin memory for the life of an idle connection.
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
        ok
    }

    async fn write(&mut self, data: &[u8]) -> bool {
        let timeout = Duration::from_secs(self.server.config.limits.write_timeout_secs);
        let io = &mut self.io;
        let result = tokio::time::timeout(timeout, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await;
        matches!(result, Ok(Ok(())))
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1): the header first if
    /// none was sent yet, then the error, then the closing tag.
    async fn stream_error(&mut self, err: StreamError, text: Option<&str>) -> Flow {
        Metrics::inc(&self.server.metrics.stream_errors);
        tracing::debug!(peer = %self.peer, condition = err.as_str(), "stream error");
        if !self.header_sent {
            self.send_header();
        }
        err.write_to(&mut self.out, text);
        self.out.extend_from_slice(b"</stream:stream>");
        let out = std::mem::take(&mut self.out);
        let io = &mut self.io;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            io.write_all(&out).await?;
            io.flush().await
        })
        .await;
        Flow::Close
    }
}

async fn wait_kick(session: Option<&SessionHandle>) -> Kick {
    match session {
        Some(s) => s.kicked().await,
        None => std::future::pending().await,
    }
}

async fn recv(session: Option<&SessionHandle>) -> Option<Bytes> {
    match session {
        Some(s) => s.outbox().next().await,
        None => std::future::pending().await,
    }
}
