//! The one stream driver: an XML stream over any [`Framing`] (TCP/TLS, WebSocket, BOSH),
//! negotiated and served by a [`Profile`] (client-to-server, server-to-server, components).
//!
//! The driver owns what every stream has: the parser and its limits, the output buffer,
//! reading with a byte-rate limit, timers (login deadline, keepalive ping), the session's
//! outbound queue and kick signal, shutdown, and stream errors (RFC 6120 §4.9), which are
//! always written before the connection closes. The profile decides what the header and
//! each top-level element mean.

pub mod framing;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use xmppd_core::{Element, StreamError};
use xmppd_xml::{Limits, ParseError, StreamEvent, StreamHeader, StreamParser};

use crate::limits::{ByteRate, Eviction};
use crate::metrics::Metrics;
use crate::router::{Kick, SessionHandle};
use crate::tls::TlsContext;
use crate::ServerState;
pub use framing::{Framing, FramingError, MemoryFraming, TcpFraming};

/// What the driver does after the profile handled an event.
pub enum Flow {
    Continue,
    /// A new stream on the same framing (after SASL success, RFC 6120 §6.4.6).
    Restart,
    /// `<proceed/>` was sent: hand the connection to TLS (RFC 6120 §5.4.3.3).
    StartTls,
    /// The stream is closed; end the connection.
    Close,
}

/// Why a connection ended, for the line the log gets when it closes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    Open,
    /// The peer closed its stream (`</stream:stream>`).
    PeerClosed,
    /// The connection dropped without a closing tag.
    PeerGone,
    /// A write did not complete within `limits.write_timeout_secs`.
    WriteFailed,
    /// Closed by us for lack of use.
    Idle,
    /// We sent this stream error.
    Error(StreamError),
}

impl Ended {
    /// One word each, so log searches need no quoting.
    fn describe(self) -> &'static str {
        match self {
            // The profile ended it by closing the stream (a failed outgoing link, say).
            Ended::Open => "closed",
            Ended::PeerClosed => "peer-closed",
            Ended::PeerGone => "connection-lost",
            Ended::WriteFailed => "write-timeout",
            Ended::Idle => "idle",
            Ended::Error(e) => e.as_str(),
        }
    }
}

/// How long final writes (errors, closing tags) may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Outbound stanzas coalesced into one write.
const WRITE_BATCH: usize = 64;
/// How long, and how much, a closed connection's input is drained (see [`Driver::drain`]).
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 1 << 20;
/// What an HTTP request on an XMPP port gets before the connection closes.
const HTTP_REFUSAL: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

pub fn random_id(len: usize) -> String {
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
        ParseError::UnsupportedEncoding => (StreamError::UnsupportedEncoding, "only UTF-8 is used"),
    }
}

/// Whether a connection's first bytes are an HTTP request line.
fn looks_like_http(data: &[u8]) -> bool {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"OPTIONS ",
        b"CONNECT ",
        b"DELETE ",
    ];
    METHODS.iter().any(|m| data.starts_with(m))
}

/// The state every stream has, whatever its profile: the framing, the parser, the output
/// buffer and what the response header says.
pub struct Stream<F> {
    pub io: F,
    pub peer: SocketAddr,
    parser: StreamParser,
    limits: Limits,
    /// Read buffer, empty while idle (see [`Framing::poll_read_lazy`]).
    input: Vec<u8>,
    out: Vec<u8>,
    header_sent: bool,
    /// We opened this stream (an outgoing server link): our header for a restarted stream
    /// goes out before the restart, so a restart does not forget it was sent.
    initiator: bool,
    /// The default namespace of the stream's content (`jabber:client`, `jabber:server`…).
    pub content_ns: &'static str,
    /// The `from` of our stream header: the local domain the peer asked for.
    pub domain: String,
    /// The stream's default language (RFC 6120 §4.7.4).
    pub lang: String,
    /// Nothing was read from the peer yet.
    first_read: bool,
    /// The parser's scratch memory was given back since the last read: a connection that
    /// only receives (a room's occupant) wakes for every stanza it is sent, and finds it so.
    parser_released: bool,
    /// The stream ended on input we refused; the peer may still be sending.
    unread_input: bool,
    ended: Ended,
    rate: ByteRate,
    /// Until when reading is paused by the byte-rate limit.
    paused_until: Option<Instant>,
    write_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<F: Framing> Stream<F> {
    pub fn new(io: F, peer: SocketAddr, server: &ServerState, content_ns: &'static str) -> Self {
        let l = &server.config.limits;
        let limits = Limits {
            max_stanza_size: l.max_stanza_size,
            max_depth: l.max_depth,
            max_attributes: l.max_attributes,
        };
        Stream {
            io,
            peer,
            parser: StreamParser::new(limits),
            limits,
            // Not empty: the first read goes straight to the socket.
            input: vec![0; framing::READ_BUFFER],
            out: Vec::new(),
            header_sent: false,
            initiator: false,
            content_ns,
            domain: server.config.server.domains[0].clone(),
            lang: "en".to_string(),
            first_read: true,
            parser_released: false,
            unread_input: false,
            ended: Ended::Open,
            rate: ByteRate::new(l.max_bytes_per_second, l.burst_bytes),
            paused_until: None,
            write_timeout: Duration::from_secs(l.write_timeout_secs),
            metrics: server.metrics.clone(),
        }
    }

    /// Starts a new stream on the same framing: a new parser, a new response header.
    fn restart(&mut self) {
        self.parser = StreamParser::new(self.limits);
        self.header_sent = self.initiator;
    }

    /// Appends our stream header (as the receiving entity) to the output; returns its `id`
    /// (dialback keys and the component handshake are computed over it). Not kept here:
    /// this struct is in every idle connection's task.
    pub fn send_header(&mut self) -> String {
        let id = random_id(16);
        // Server streams declare the dialback prefix (XEP-0220 §2.1: some peers accept
        // only `db:`); XEP-0114 component streams carry no version (XEP-0114 §3).
        let (extra, version) = match self.content_ns {
            xmppd_core::ns::SERVER => (" xmlns:db='jabber:server:dialback'", " version='1.0'"),
            xmppd_core::ns::COMPONENT => ("", ""),
            _ => ("", " version='1.0'"),
        };
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}'{extra} \
             xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}'{version} \
             xml:lang='{}'>",
            self.content_ns, id, self.domain, self.lang
        );
        self.out.extend_from_slice(header.as_bytes());
        self.header_sent = true;
        id
    }

    /// Appends the header of a stream we initiate (an outgoing server-to-server link,
    /// RFC 6120 §4.7): from our domain to the peer's, no id.
    pub fn send_initial_header(&mut self, to: &str) {
        let mut header = Vec::with_capacity(256);
        header.extend_from_slice(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
              xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
              version='1.0' from='",
        );
        xmppd_xml::escape_attr(&mut header, &self.domain);
        header.extend_from_slice(b"' to='");
        xmppd_xml::escape_attr(&mut header, to);
        header.extend_from_slice(b"'>");
        self.out.extend_from_slice(&header);
        self.header_sent = true;
        self.initiator = true;
    }

    /// Appends `<stream:features>` with these children.
    pub fn send_features(&mut self, features: impl IntoIterator<Item = Element>) {
        // `features` is in the stream namespace, written with the stream: prefix by hand.
        self.out.extend_from_slice(b"<stream:features>");
        for child in features {
            child.write_to(&mut self.out, self.content_ns);
        }
        self.out.extend_from_slice(b"</stream:features>");
    }

    /// Appends an element to the output (written by the next flush).
    pub fn send_element(&mut self, el: &Element) {
        el.write_to(&mut self.out, self.content_ns);
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    /// Writes the output buffer; false if the peer is gone or too slow.
    pub async fn flush(&mut self) -> bool {
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

    /// [`Stream::flush`] as the flow that follows it.
    pub async fn flush_flow(&mut self) -> Flow {
        if self.flush().await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    async fn write(&mut self, data: &[u8]) -> bool {
        let io = &mut self.io;
        let result = tokio::time::timeout(self.write_timeout, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await;
        matches!(result, Ok(Ok(())))
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1): the header first if
    /// none was sent yet, then the error, then the closing tag.
    pub async fn stream_error(&mut self, err: StreamError, text: Option<&str>) -> Flow {
        self.metrics.stream_error(err.as_str());
        self.ended = Ended::Error(err);
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

    /// Moves every stanza queued for `session` into the output buffer.
    fn drain_queue(&mut self, session: &SessionHandle) {
        while let Some(data) = session.outbox().pop() {
            self.out.extend_from_slice(&data);
        }
    }

    /// Writes queued stanzas, taking more that are already waiting into the same write.
    async fn write_queued(&mut self, session: Option<&SessionHandle>, first: Bytes) -> bool {
        let second = session.and_then(|s| s.outbox().pop());
        if second.is_none() && self.out.is_empty() {
            // One stanza alone (a fan-out's copy, mostly) is written from its own bytes:
            // copied into `out`, it cost an allocation that the idle connection then freed.
            return self.write(&first).await;
        }
        self.out.extend_from_slice(&first);
        let Some(second) = second else {
            return self.flush().await;
        };
        self.out.extend_from_slice(&second);
        if let Some(session) = session {
            for _ in 1..WRITE_BATCH {
                match session.outbox().pop() {
                    Some(more) => self.out.extend_from_slice(&more),
                    None => break,
                }
            }
        }
        self.flush().await
    }
}

/// What makes a stream c2s, s2s or a component: what the header and each element mean.
pub trait Profile<F: Framing>: Send {
    /// What the logs call this kind of stream (`c2s`, `s2s-in`, …).
    const KIND: &'static str;

    /// Before anything is read: a stream we initiate sends its header here.
    fn on_start(&mut self, _s: &mut Stream<F>) -> impl Future<Output = Flow> + Send {
        async { Flow::Continue }
    }

    /// The TLS configuration STARTTLS and direct TLS use (server streams ask for the
    /// peer's certificate, client streams only where SASL EXTERNAL is configured).
    fn acceptor<'a>(&self, tls: &'a TlsContext) -> &'a tokio_rustls::TlsAcceptor {
        &tls.acceptor
    }

    /// The peer's stream header (the first one, or after a restart).
    fn on_header(
        &mut self,
        s: &mut Stream<F>,
        header: StreamHeader,
    ) -> impl Future<Output = Flow> + Send;

    /// A complete top-level element: a stanza or a nonza.
    fn on_element(&mut self, s: &mut Stream<F>, el: Element) -> impl Future<Output = Flow> + Send;

    /// The session whose outbound queue the driver writes out and whose kick it obeys.
    fn session(&self) -> Option<&Arc<SessionHandle>>;

    /// Until when the peer may take to authenticate (none once it has).
    fn login_deadline(&self) -> Option<Instant>;

    /// Signalled when this unauthenticated connection is evicted to make room for a newer
    /// one from the same address (see `crate::limits::Unauthenticated`).
    fn eviction(&self) -> Option<Arc<Eviction>>;

    /// A keepalive request for a silent peer (an XEP-0199 ping), if the profile has one.
    fn keepalive(&self, s: &Stream<F>) -> Option<Element>;

    /// The connection is over: end the session (unavailable presence, unbinding).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// One connection: a stream, its profile and the server they serve.
pub struct Driver<F, P> {
    server: Arc<ServerState>,
    stream: Stream<F>,
    profile: P,
    /// When the peer last sent anything; silence leads to a keepalive.
    last_read: Instant,
    /// Until when the peer must answer our keepalive.
    ping_deadline: Option<Instant>,
}

/// Why a connection must end before its peer is done: its session was kicked, or (before
/// authentication) it was evicted. One future for both, as a connection has at most one of
/// them at a time and every byte of the select is paid by every idle connection.
enum Ending {
    Kicked(Kick),
    Evicted,
}

async fn wait_ending(session: Option<&SessionHandle>, eviction: Option<&Eviction>) -> Ending {
    match (session, eviction) {
        (Some(s), _) => Ending::Kicked(s.kicked().await),
        (None, Some(e)) => {
            e.wait().await;
            Ending::Evicted
        }
        (None, None) => std::future::pending().await,
    }
}

async fn recv(session: Option<&SessionHandle>) -> Option<Bytes> {
    match session {
        Some(s) => s.outbox().next().await,
        None => std::future::pending().await,
    }
}

impl<F: Framing, P: Profile<F>> Driver<F, P> {
    pub fn new(server: Arc<ServerState>, stream: Stream<F>, profile: P) -> Self {
        Driver {
            server,
            stream,
            profile,
            last_read: Instant::now(),
            ping_deadline: None,
        }
    }

    /// Runs the connection to its end. `direct_tls` starts with a TLS handshake (XEP-0368).
    ///
    /// Written as an async block rather than an `async fn`: rustc stores an async fn's
    /// by-value arguments twice in its future, and this future is every connection's task.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn, see above
    pub fn run(mut self, direct_tls: bool) -> impl Future<Output = ()> + Send {
        async move {
            let metrics = self.server.metrics.clone();
            metrics.connections_total.inc();
            metrics.connections_open.inc();
            // Seconds since start in 32 bits: this future is every connection's task.
            let opened = self.server.router.uptime_secs() as u32;
            tracing::info!(
                peer = %self.stream.peer,
                kind = P::KIND,
                transport = F::TRANSPORT,
                "connection opened"
            );
            if (!direct_tls || self.start_tls().await) && self.start().await {
                self.serve().await;
            }
            self.log_closed(opened);
            self.profile.close().await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.io.shutdown()).await;
            if self.stream.unread_input {
                self.drain().await;
            }
            metrics.connections_open.dec();
        }
    }

    /// One line per connection when it ends: who, for how long, and why.
    fn log_closed(&self, opened: u32) {
        let who = self.profile.session().map(|s| s.jid.to_string());
        tracing::info!(
            peer = %self.stream.peer,
            kind = P::KIND,
            transport = F::TRANSPORT,
            account = who.as_deref().unwrap_or("-"),
            secs = self.server.router.uptime_secs() - i64::from(opened),
            reason = self.stream.ended.describe(),
            "connection closed"
        );
    }

    /// Reads and discards what the peer still sends, briefly, after our side is shut down.
    /// Closing a socket with unread input makes the kernel send a reset, which can destroy
    /// the stream error we just wrote before the peer reads it; draining lets it arrive.
    async fn drain(&mut self) {
        let stream = &mut self.stream;
        let mut discarded = 0;
        let deadline = Instant::now() + DRAIN_TIME;
        while discarded < DRAIN_BYTES {
            let mut scratch = std::mem::take(&mut stream.input);
            let read = poll_fn(|cx| stream.io.poll_read_lazy(cx, &mut scratch));
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => return,
            }
            stream.input = scratch;
        }
    }

    /// The profile's first move, for streams we initiate.
    async fn start(&mut self) -> bool {
        match self.profile.on_start(&mut self.stream).await {
            Flow::Continue => self.stream.flush().await,
            _ => false,
        }
    }

    async fn start_tls(&mut self) -> bool {
        let tls = &self.server.tls;
        let acceptor = self.profile.acceptor(tls);
        let ok = self.stream.io.start_tls(acceptor, &tls.resolver).await;
        if !ok {
            tracing::debug!(peer = %self.stream.peer, "no TLS: the handshake failed");
        }
        self.stream.restart();
        ok
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
            let session = self.profile.session().cloned();
            let eviction = self.profile.eviction();
            let can_read = self.stream.paused_until.is_none();
            let stream = &mut self.stream;
            tokio::select! {
                biased;
                _ = crate::shutting_down(&mut shutdown) => {
                    // What modules sent on their way out (MUC's 332) goes before the end.
                    if let Some(session) = &session {
                        stream.drain_queue(session);
                    }
                    stream.stream_error(StreamError::SystemShutdown, Some("server is shutting down")).await;
                    return;
                }
                ending = wait_ending(session.as_deref(), eviction.as_deref()) => {
                    let kick = match ending {
                        Ending::Kicked(kick) => kick,
                        Ending::Evicted => {
                            stream.stream_error(
                                StreamError::PolicyViolation,
                                Some("too many unauthenticated connections from your address"),
                            ).await;
                            return;
                        }
                    };
                    if kick == Kick::Idle {
                        stream.ended = Ended::Idle;
                        stream.write(b"</stream:stream>").await;
                        return;
                    }
                    if kick != Kick::QueueOverflow {
                        // What was queued before the kick (such as the reply to the request
                        // that deleted the account) still goes out first.
                        if let Some(session) = &session {
                            stream.drain_queue(session);
                        }
                    }
                    let (err, text) = match kick {
                        Kick::Conflict => (StreamError::Conflict, "replaced by a new session with the same resource"),
                        Kick::AccountRemoved => (StreamError::NotAuthorized, "the account was deleted"),
                        _ => (StreamError::PolicyViolation, "too many stanzas waiting: the client does not read"),
                    };
                    stream.stream_error(err, Some(text)).await;
                    return;
                }
                Some(first) = recv(session.as_deref()) => {
                    if !stream.write_queued(session.as_deref(), first).await {
                        stream.ended = Ended::WriteFailed;
                        return;
                    }
                }
                read = poll_fn(|cx| {
                    let read = stream.io.poll_read_lazy(cx, &mut stream.input);
                    if read.is_pending() {
                        // Idle: scratch memory goes the way of the input buffer.
                        if !stream.parser_released {
                            stream.parser.release_temporaries();
                            stream.parser_released = true;
                        }
                        if stream.out.is_empty() {
                            stream.out = Vec::new();
                        }
                    }
                    read
                }), if can_read => {
                    let n = match read {
                        Err(e) => {
                            if let Some(refused) = e.get_ref().and_then(|e| e.downcast_ref::<FramingError>()) {
                                self.stream.stream_error(refused.condition, Some(refused.text)).await;
                            } else {
                                self.stream.ended = Ended::PeerGone;
                            }
                            return;
                        }
                        Ok(0) => {
                            self.stream.ended = Ended::PeerGone;
                            return;
                        }
                        Ok(n) => n,
                    };
                    self.last_read = Instant::now();
                    self.stream.parser_released = false;
                    self.ping_deadline = None;
                    if let Some(wait) = self.stream.rate.take(n) {
                        self.stream.paused_until = Some(Instant::now() + wait);
                    }
                    // Boxed: parsing and handling a stanza needs a large future, which
                    // should exist only while there is input, not in every idle task.
                    let input = std::mem::take(&mut self.stream.input);
                    if !Box::pin(self.process(&input[..n])).await {
                        return;
                    }
                    // Kept: there may be more above the socket (the next poll tells).
                    self.stream.input = input;
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
        let ping = match (self.profile.session(), self.ping_deadline) {
            (_, Some(deadline)) => Some(deadline),
            (Some(_), None) => Some(self.last_read + ping_interval),
            (None, None) => None,
        };
        [
            ping,
            self.stream.paused_until,
            self.profile.login_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + ping_interval)
    }

    /// Timers: end of a rate pause, the login deadline, the keepalive and its timeout.
    async fn on_timer(&mut self, (interval, timeout): (Duration, Duration)) -> bool {
        let now = Instant::now();
        let stream = &mut self.stream;
        if stream.paused_until.is_some_and(|t| t <= now) {
            stream.paused_until = None;
        }
        if self.profile.login_deadline().is_some_and(|t| t <= now) {
            stream
                .stream_error(
                    StreamError::ConnectionTimeout,
                    Some("authenticate and bind sooner"),
                )
                .await;
            return false;
        }
        if self.ping_deadline.is_some_and(|t| t <= now) {
            stream
                .stream_error(StreamError::ConnectionTimeout, Some("no answer to ping"))
                .await;
            return false;
        }
        if self.ping_deadline.is_none() && self.last_read + interval <= now {
            match self.profile.keepalive(stream) {
                Some(ping) => {
                    stream.send_element(&ping);
                    self.ping_deadline = Some(now + timeout);
                    return stream.flush().await;
                }
                // No keepalive of its own (server streams): wait another interval.
                None => self.last_read = now,
            }
        }
        true
    }

    /// Feeds read bytes to the parser and hands every complete event to the profile.
    async fn process(&mut self, mut data: &[u8]) -> bool {
        if std::mem::take(&mut self.stream.first_read) && looks_like_http(data) {
            // A browser or a probe on an XMPP port: no XML stream, just a one-line answer.
            tracing::debug!(peer = %self.stream.peer, "HTTP request on an XMPP port");
            self.stream.write(HTTP_REFUSAL).await;
            return false;
        }
        loop {
            let stream = &mut self.stream;
            let event = match stream.parser.feed(&mut data) {
                Ok(Some(event)) => event,
                Ok(None) => return true,
                Err(e) => {
                    let (err, text) = parse_error_condition(&e);
                    stream.stream_error(err, Some(text)).await;
                    // The peer may be mid-way through sending what we refused.
                    stream.unread_input = true;
                    return false;
                }
            };
            let flow = match event {
                StreamEvent::Header(header) => self.profile.on_header(stream, header).await,
                StreamEvent::Stanza(el) => self.profile.on_element(stream, el).await,
                StreamEvent::Close => {
                    stream.ended = Ended::PeerClosed;
                    stream.write(b"</stream:stream>").await;
                    Flow::Close
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => return false,
                Flow::Restart => self.stream.restart(),
                Flow::StartTls => {
                    // Anything the client sent after <starttls/> and before the handshake is
                    // not covered by TLS and is discarded (RFC 6120 §5.4.3.3).
                    return self.start_tls().await;
                }
            }
        }
    }
}
