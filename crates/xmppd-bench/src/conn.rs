//! Opening an authenticated session: TCP, STARTTLS, SASL SCRAM-SHA-1, resource binding.
//!
//! Three transports produce a [`Session`] (a byte stream carrying XMPP): TCP + STARTTLS,
//! WebSocket (RFC 7395) and BOSH (XEP-0124/0206). The web ones run a small pump task per
//! session (`web.rs`) behind an in-memory pipe, and speak the RFC 7395 framing (`<open/>`,
//! `<close/>`) on it, so scenarios do not care which one a session uses.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::reader::{Event, StanzaReader};
use crate::scram::{KeyCache, ScramClient};
use crate::xml::Stanza;

/// Where and how to log in; shared by every connection task.
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub user_prefix: String,
    pub resource: String,
    /// Source addresses used in turn (each has its own 64k ports); empty: the kernel picks.
    pub sources: Vec<IpAddr>,
    /// Bound on each wait for the server during login and in scenarios.
    pub timeout: Duration,
    pub tls: TlsConnector,
    pub keys: KeyCache,
    next_source: AtomicUsize,
    /// Protocol and cipher suite of the first TLS session, for the report.
    pub tls_params: OnceLock<String>,
    /// The server's HTTP listener, for WebSocket and BOSH sessions.
    pub http: Option<HttpTarget>,
}

/// Where a server serves its web transports (plain HTTP on loopback).
#[derive(Clone, Debug)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub ws_path: String,
    pub bosh_path: String,
}

/// How a session reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP, STARTTLS, then XMPP streams.
    Tcp,
    /// WebSocket, subprotocol `xmpp`, one element per text message (RFC 7395).
    Ws,
    /// BOSH: HTTP/1.1 requests carrying `<body/>` wrappers (XEP-0124/0206).
    Bosh,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

/// The RFC 7395 framing elements the web transports carry on their pipe.
pub const FRAMED_CLOSE: &[u8] = b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

impl Target {
    pub fn new(
        addr: SocketAddr,
        domain: String,
        user_prefix: String,
        password: &str,
        sources: Vec<IpAddr>,
        timeout: Duration,
    ) -> Self {
        Target {
            addr,
            domain,
            user_prefix,
            resource: "bench".into(),
            sources,
            timeout,
            tls: TlsConnector::from(crate::tls::client_config()),
            keys: KeyCache::new(password),
            next_source: AtomicUsize::new(0),
            tls_params: OnceLock::new(),
            http: None,
        }
    }

    /// Account names are PREFIX1 … PREFIXn, the scheme bench/run.sh provisions.
    pub fn username(&self, index: usize) -> String {
        format!("{}{}", self.user_prefix, index + 1)
    }

    pub fn bare_jid(&self, index: usize) -> String {
        format!("{}@{}", self.username(index), self.domain)
    }

    fn stream_header(&self, framed: bool) -> String {
        if framed {
            format!(
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{}' version='1.0'/>",
                self.domain
            )
        } else {
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
                self.domain
            )
        }
    }
}

/// Why a login or a scenario step failed; `stage` is the key errors are counted under.
#[derive(Debug)]
pub struct Failure {
    pub stage: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(stage: &'static str, detail: impl std::fmt::Display) -> Self {
        Failure {
            stage,
            detail: detail.to_string(),
        }
    }
}

pub type Tls = TlsStream<TcpStream>;

/// A session's byte stream: TLS over TCP, or the pipe to a web transport's pump task.
pub enum Io {
    Tls(Box<Tls>),
    Pipe(DuplexStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Io::Pipe(p) => Pin::new(p).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Io::Pipe(p) => Pin::new(p).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Io::Pipe(p) => Pin::new(p).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Io::Pipe(p) => Pin::new(p).poll_shutdown(cx),
        }
    }
}

/// An authenticated, bound session.
pub struct Session {
    pub io: Io,
    pub reader: StanzaReader,
    /// The full JID the server bound.
    pub jid: String,
    /// Whether the stream uses the RFC 7395 framing (`<open/>`/`<close/>`): web transports.
    pub framed: bool,
}

/// What ends a session's stream: `</stream:stream>`, or `<close/>` on a web transport.
pub fn close_tag(framed: bool) -> &'static [u8] {
    if framed {
        FRAMED_CLOSE
    } else {
        b"</stream:stream>"
    }
}

/// Waits for the next event, bounded by the target's timeout.
pub async fn next_event<'r, R: AsyncRead + Unpin>(
    reader: &'r mut StanzaReader,
    io: &mut R,
    timeout: Duration,
    stage: &'static str,
) -> Result<Event<'r>, Failure> {
    match tokio::time::timeout(timeout, reader.next(io)).await {
        Ok(Ok(event)) => Ok(event),
        Ok(Err(e)) => Err(Failure::new(stage, e)),
        Err(_) => Err(Failure::new(stage, "timed out")),
    }
}

/// Waits for the next stanza; a stream close or a stream error fails the stage.
async fn next_stanza<'r, R: AsyncRead + Unpin>(
    reader: &'r mut StanzaReader,
    io: &mut R,
    timeout: Duration,
    stage: &'static str,
) -> Result<Stanza<'r>, Failure> {
    match next_event(reader, io, timeout, stage).await? {
        Event::Stanza(s) if s.name() == b"error" => Err(Failure::new(
            stage,
            format!("stream error {}", String::from_utf8_lossy(s.raw())),
        )),
        Event::Stanza(s) => Ok(s),
        Event::StreamOpen => Err(Failure::new(stage, "unexpected stream header")),
        Event::StreamClose => Err(Failure::new(stage, "stream closed by server")),
    }
}

pub async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    stage: &'static str,
) -> Result<(), Failure> {
    io.write_all(bytes)
        .await
        .map_err(|e| Failure::new(stage, e))?;
    io.flush().await.map_err(|e| Failure::new(stage, e))
}

/// Sends a stream header and returns the features that follow the server's.
async fn open_stream<'r, S: AsyncRead + AsyncWrite + Unpin>(
    target: &Target,
    reader: &'r mut StanzaReader,
    io: &mut S,
    framed: bool,
    stage: &'static str,
) -> Result<Stanza<'r>, Failure> {
    send(io, target.stream_header(framed).as_bytes(), stage).await?;
    match next_event(reader, io, target.timeout, stage).await? {
        Event::StreamOpen if !framed => {}
        Event::Stanza(s) if framed && s.name() == b"open" => {}
        _ => return Err(Failure::new(stage, "expected a stream header")),
    }
    let features = next_stanza(reader, io, target.timeout, stage).await?;
    if features.name() != b"features" {
        return Err(Failure::new(stage, "expected stream features"));
    }
    Ok(features)
}

async fn connect_tcp(target: &Target) -> Result<TcpStream, Failure> {
    connect_to(target, target.addr).await
}

/// A TCP connection to `addr` from the next source address, without Nagle.
pub async fn connect_to(target: &Target, addr: SocketAddr) -> Result<TcpStream, Failure> {
    let socket = TcpSocket::new_v4().map_err(|e| Failure::new("connect", e))?;
    if !target.sources.is_empty() {
        let i = target.next_source.fetch_add(1, Ordering::Relaxed) % target.sources.len();
        socket
            .bind(SocketAddr::new(target.sources[i], 0))
            .map_err(|e| Failure::new("connect", e))?;
    }
    let stream = tokio::time::timeout(target.timeout, socket.connect(addr))
        .await
        .map_err(|_| Failure::new("connect", "timed out"))?
        .map_err(|e| Failure::new("connect", e))?;
    // Stanzas are small and latency is measured: no Nagle delay.
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::new("connect", e))?;
    Ok(stream)
}

async fn starttls(target: &Target, mut tcp: TcpStream) -> Result<Tls, Failure> {
    let mut reader = StanzaReader::default();
    let features = open_stream(target, &mut reader, &mut tcp, false, "stream").await?;
    if !features.has_child(b"starttls") {
        return Err(Failure::new("starttls", "STARTTLS not offered"));
    }
    send(
        &mut tcp,
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        "starttls",
    )
    .await?;
    let reply = next_stanza(&mut reader, &mut tcp, target.timeout, "starttls").await?;
    if reply.name() != b"proceed" {
        return Err(Failure::new("starttls", "server did not proceed"));
    }
    if reader.has_pending() {
        return Err(Failure::new("starttls", "data after <proceed/>"));
    }
    let name = rustls::pki_types::ServerName::try_from(target.domain.clone())
        .map_err(|e| Failure::new("tls", e))?;
    let tls = tokio::time::timeout(target.timeout, target.tls.connect(name, tcp))
        .await
        .map_err(|_| Failure::new("tls", "timed out"))?
        .map_err(|e| Failure::new("tls", e))?;
    target.tls_params.get_or_init(|| {
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version().map(|v| format!("{v:?}"));
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        format!(
            "{} {}",
            version.unwrap_or_default(),
            suite.unwrap_or_default()
        )
    });
    Ok(tls)
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    target: &Target,
    io: &mut S,
    framed: bool,
    username: &str,
) -> Result<(), Failure> {
    let mut reader = StanzaReader::default();
    let timeout = target.timeout;
    let features = open_stream(target, &mut reader, io, framed, "stream").await?;
    if !features.raw().windows(13).any(|w| w == b">SCRAM-SHA-1<") {
        return Err(Failure::new("auth", "SCRAM-SHA-1 not offered"));
    }
    let mut scram = ScramClient::new(username, &ScramClient::random_nonce());
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
        B64.encode(scram.client_first())
    );
    send(io, auth.as_bytes(), "auth").await?;
    let challenge = next_stanza(&mut reader, io, timeout, "auth").await?;
    if challenge.name() != b"challenge" {
        return Err(sasl_failure(challenge));
    }
    let server_first = decode_sasl(challenge)?;
    let client_final = scram
        .client_final(&server_first, &target.keys)
        .map_err(|e| Failure::new("auth", e))?;
    let response = format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(client_final)
    );
    send(io, response.as_bytes(), "auth").await?;
    let mut outcome = next_stanza(&mut reader, io, timeout, "auth").await?;
    // RFC 6120 §6.3.10 allows the server-final message as a last challenge instead of
    // additional data with success.
    if outcome.name() == b"challenge" {
        let server_final = decode_sasl(outcome)?;
        scram
            .verify_server_final(&server_final)
            .map_err(|e| Failure::new("auth", e))?;
        send(
            io,
            b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            "auth",
        )
        .await?;
        outcome = next_stanza(&mut reader, io, timeout, "auth").await?;
        if outcome.name() != b"success" {
            return Err(sasl_failure(outcome));
        }
        return Ok(());
    }
    if outcome.name() != b"success" {
        return Err(sasl_failure(outcome));
    }
    let server_final = decode_sasl(outcome)?;
    scram
        .verify_server_final(&server_final)
        .map_err(|e| Failure::new("auth", e))
}

fn decode_sasl(stanza: Stanza<'_>) -> Result<Vec<u8>, Failure> {
    let text = stanza
        .text()
        .ok_or_else(|| Failure::new("auth", "no SASL data"))?;
    B64.decode(text)
        .map_err(|_| Failure::new("auth", "SASL data is not base64"))
}

fn sasl_failure(stanza: Stanza<'_>) -> Failure {
    Failure::new(
        "auth",
        format!("SASL: {}", String::from_utf8_lossy(stanza.raw())),
    )
}

async fn bind<S: AsyncRead + AsyncWrite + Unpin>(
    target: &Target,
    io: &mut S,
    framed: bool,
) -> Result<(StanzaReader, String), Failure> {
    let mut reader = StanzaReader::default();
    let features = open_stream(target, &mut reader, io, framed, "stream").await?;
    if !features.has_child(b"bind") {
        return Err(Failure::new("bind", "bind not offered"));
    }
    let request = format!(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{}</resource></bind></iq>",
        target.resource
    );
    send(io, request.as_bytes(), "bind").await?;
    // Bounded: a server that keeps sending other stanzas still times out on the deadline.
    let deadline = tokio::time::Instant::now() + target.timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reply = next_stanza(&mut reader, io, left, "bind").await?;
        if reply.name() != b"iq" || reply.attr(b"id") != Some(b"bind1") {
            continue;
        }
        if reply.attr(b"type") != Some(b"result") {
            return Err(Failure::new(
                "bind",
                String::from_utf8_lossy(reply.raw()).into_owned(),
            ));
        }
        let jid = reply
            .child_text(b"jid")
            .ok_or_else(|| Failure::new("bind", "no JID in bind result"))?;
        let jid = String::from_utf8_lossy(jid).into_owned();
        return Ok((reader, jid));
    }
}

/// Connects and logs account `index` in, up to a bound resource (no presence sent yet).
pub async fn login(target: &Arc<Target>, index: usize) -> Result<Session, Failure> {
    login_via(target, index, Transport::Tcp).await
}

/// [`login`] over the given transport.
pub async fn login_via(
    target: &Arc<Target>,
    index: usize,
    transport: Transport,
) -> Result<Session, Failure> {
    let (mut io, framed) = match transport {
        Transport::Tcp => {
            let tcp = connect_tcp(target).await?;
            (Io::Tls(Box::new(starttls(target, tcp).await?)), false)
        }
        Transport::Ws => (Io::Pipe(crate::web::websocket(target).await?), true),
        Transport::Bosh => (Io::Pipe(crate::web::bosh(target)?), true),
    };
    authenticate(target, &mut io, framed, &target.username(index)).await?;
    let (reader, jid) = bind(target, &mut io, framed).await?;
    Ok(Session {
        io,
        reader,
        jid,
        framed,
    })
}

impl Session {
    /// Sends `presence` (the initial presence, possibly with a status) and then a ping to the
    /// domain, and waits for the pong: once it arrives the server has processed the presence.
    /// Stanzas that arrive meanwhile go to `on_stanza`.
    pub async fn go_online(
        &mut self,
        target: &Target,
        presence: &[u8],
        mut on_stanza: impl FnMut(Stanza<'_>),
    ) -> Result<(), Failure> {
        let ping = format!(
            "<iq type='get' id='online1' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            target.domain
        );
        let mut out = Vec::with_capacity(presence.len() + ping.len());
        out.extend_from_slice(presence);
        out.extend_from_slice(ping.as_bytes());
        send(&mut self.io, &out, "presence").await?;
        let deadline = tokio::time::Instant::now() + target.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let s = next_stanza(&mut self.reader, &mut self.io, left, "presence").await?;
            if s.name() == b"iq" && s.attr(b"id") == Some(b"online1") {
                return Ok(());
            }
            on_stanza(s);
        }
    }

    /// Closes the stream politely and then the connection, bounded in time.
    pub async fn close(mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.io.write_all(close_tag(self.framed)).await;
            let _ = self.io.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}
