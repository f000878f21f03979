//! `xmppd-bench relay`: the physical floor for the chat scenario. It is not a server.
//!
//! A chat message costs any server at least this: a TLS record decrypted on one connection,
//! the recipient found, a TLS record encrypted and written on another, on this machine's
//! loopback and cores. The relay does only that, so a chat run against it shows what is
//! left for everything a real server does on top (XML parsing, routing rules, stamping
//! `from`, storage, …): every chat table gets an `xmppd / relay` column.
//!
//! It speaks just enough of XMPP's bytes for the generator's login path (`conn.rs`): canned
//! stream headers and features, STARTTLS, TLS with the bench certificate, SASL SCRAM-SHA-1
//! with a correct server signature (the generator checks it) but without checking the
//! client's proof (any account logs in), and resource binding. After that, each top-level
//! element is found by a byte scan (no XML parser): a `<message …>` is copied unchanged to
//! the connection bound to its `to='…'` full JID (dropped if there is none), an iq get/set
//! gets an empty result (the generator's ping), and anything else is ignored. The scan
//! assumes what the generator sends: no `>` inside attribute values and no element nested
//! in one of its own name. Forwarded bytes are appended to the recipient's outbox, which the
//! recipient's own task writes out in one TLS write per wake-up.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Args;
use hmac::{Hmac, Mac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha1::Sha1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

#[derive(Args)]
pub struct RelayArgs {
    /// Where to listen (loopback only), e.g. 127.0.0.1:5222.
    #[arg(long, default_value = "127.0.0.1:5222")]
    listen: SocketAddr,
    /// Certificate chain (PEM), e.g. bench's localhost.crt.
    #[arg(long)]
    cert: PathBuf,
    /// Private key (PEM) of the certificate.
    #[arg(long)]
    key: PathBuf,
    /// The domain in stream headers and bound JIDs.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The password the generator logs in with: the SCRAM server signature depends on it.
    #[arg(long, default_value = "bench-secret")]
    password: String,
    /// SCRAM iteration count offered (the same as the servers' 4096).
    #[arg(long, default_value_t = 4096)]
    scram_iterations: u32,
}

/// Runs the relay until the process is killed.
pub fn main(args: RelayArgs) -> Result<(), String> {
    if !args.listen.ip().is_loopback() {
        return Err("only loopback addresses may be used".into());
    }
    if args.scram_iterations == 0 {
        return Err("--scram-iterations must be at least 1".into());
    }
    let certs = CertificateDer::pem_file_iter(&args.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|e| format!("{}: {e}", args.key.display()))?;
    let relay = Relay::new(
        certs,
        key,
        &args.domain,
        &args.password,
        args.scram_iterations,
    )?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let listener = listen(args.listen).map_err(|e| format!("{}: {e}", args.listen))?;
        eprintln!("xmppd-bench relay: listening on {}", args.listen);
        serve(listener, Arc::new(relay)).await;
        Ok(())
    })
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // A login burst must not overflow the accept queue (see ejabberd's backlog in the README).
    socket.listen(1024)
}

/// Accepts connections for ever; each one runs in its own task.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let relay = relay.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay.connection(tcp).await {
                        // Resets and closes at the end of a run (and the scripts' port probes)
                        // are normal; a failed login is worth a line.
                        let normal = matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::UnexpectedEof
                                | io::ErrorKind::BrokenPipe
                        );
                        if !normal {
                            eprintln!("xmppd-bench relay: connection: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                eprintln!("xmppd-bench relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

type HmacSha1 = Hmac<Sha1>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Bytes waiting to be written to one bound session, and the wake-up of its task.
#[derive(Default)]
struct Outbox {
    buf: Mutex<Vec<u8>>,
    ready: Notify,
}

impl Outbox {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap();
        let was_empty = buf.is_empty();
        buf.extend_from_slice(bytes);
        drop(buf);
        // A non-empty outbox has a wake-up pending already.
        if was_empty {
            self.ready.notify_one();
        }
    }
}

pub struct Relay {
    tls: TlsAcceptor,
    domain: String,
    /// SCRAM-SHA-1: one salt for every account, so ServerKey is derived once.
    salt_b64: String,
    iterations: u32,
    server_key: [u8; 20],
    /// Bound full JID → its outbox.
    sessions: RwLock<HashMap<Box<[u8]>, Arc<Outbox>>>,
    next_id: AtomicU64,
}

const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BUFFER: usize = 1 << 20;
const STREAM_NS: &str = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";
const FEATURES_STARTTLS: &[u8] = b"<stream:features><starttls \
    xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const FEATURES_SASL: &[u8] = b"<stream:features><mechanisms \
    xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism>\
    </mechanisms></stream:features>";
const FEATURES_BIND: &[u8] =
    b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>";

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Relay {
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        domain: &str,
        password: &str,
        iterations: u32,
    ) -> Result<Relay, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate: {e}"))?;
        // The generator never resumes a session: tickets would be wasted work.
        config.send_tls13_tickets = 0;
        let salt = b"xmppd-bench-relay";
        let mut salted = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut salted);
        Ok(Relay {
            tls: TlsAcceptor::from(Arc::new(config)),
            domain: domain.to_owned(),
            salt_b64: B64.encode(salt),
            iterations,
            server_key: hmac(&salted, b"Server Key"),
            sessions: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    fn stream_header(&self) -> Vec<u8> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!(
            "<?xml version='1.0'?><stream:stream {STREAM_NS} from='{}' id='r{id}' version='1.0'>",
            self.domain
        )
        .into_bytes()
    }

    async fn connection(&self, tcp: TcpStream) -> io::Result<()> {
        tcp.set_nodelay(true)?;
        let (mut io, jid, inbuf) = tokio::time::timeout(LOGIN_TIMEOUT, self.login(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "login timed out"))??;
        let outbox = Arc::new(Outbox::default());
        let previous = self
            .sessions
            .write()
            .unwrap()
            .insert(jid.clone().into(), outbox.clone());
        // A second login with the same full JID replaces the first: the last one wins.
        drop(previous);
        let result = self.forward(&mut io, inbuf, &outbox).await;
        let mut sessions = self.sessions.write().unwrap();
        if sessions
            .get(jid.as_slice())
            .is_some_and(|o| Arc::ptr_eq(o, &outbox))
        {
            sessions.remove(jid.as_slice());
        }
        result
    }

    /// STARTTLS, SASL SCRAM-SHA-1 and bind, as the generator does them. Returns the TLS
    /// stream, the bound full JID and what was read past the bind request.
    async fn login(
        &self,
        mut tcp: TcpStream,
    ) -> io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Vec<u8>, InBuf)> {
        let mut inbuf = InBuf::default();
        inbuf.expect(&mut tcp, Kind::Header).await?;
        let mut reply = self.stream_header();
        reply.extend_from_slice(FEATURES_STARTTLS);
        tcp.write_all(&reply).await?;
        let (s, e) = inbuf.expect(&mut tcp, Kind::Element).await?;
        if name(&inbuf.buf[s..e]) != b"starttls" {
            return Err(invalid("expected <starttls/>"));
        }
        tcp.write_all(PROCEED).await?;
        let mut io = self.tls.accept(tcp).await?;

        let mut inbuf = InBuf::default();
        inbuf.expect(&mut io, Kind::Header).await?;
        let mut reply = self.stream_header();
        reply.extend_from_slice(FEATURES_SASL);
        send(&mut io, &reply).await?;
        let (s, e) = inbuf.expect(&mut io, Kind::Element).await?;
        let (user, bare, server_first) = self.sasl_challenge(&inbuf.buf[s..e])?;
        let challenge = format!(
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
            B64.encode(&server_first)
        );
        send(&mut io, challenge.as_bytes()).await?;
        let (s, e) = inbuf.expect(&mut io, Kind::Element).await?;
        let server_final = self.sasl_success(&inbuf.buf[s..e], &bare, &server_first)?;
        let success = format!(
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</success>",
            B64.encode(server_final)
        );
        send(&mut io, success.as_bytes()).await?;

        inbuf.expect(&mut io, Kind::Header).await?;
        let mut reply = self.stream_header();
        reply.extend_from_slice(FEATURES_BIND);
        send(&mut io, &reply).await?;
        let (s, e) = inbuf.expect(&mut io, Kind::Element).await?;
        let iq = &inbuf.buf[s..e];
        if name(iq) != b"iq" {
            return Err(invalid("expected the bind iq"));
        }
        let resource = between(iq, b"<resource>", b"</resource>")
            .filter(|r| !r.is_empty())
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| {
                format!("relay{}", self.next_id.fetch_add(1, Ordering::Relaxed)).into_bytes()
            });
        let mut jid = user;
        jid.push(b'@');
        jid.extend_from_slice(self.domain.as_bytes());
        jid.push(b'/');
        jid.extend_from_slice(&resource);
        let mut reply = b"<iq type='result' id='".to_vec();
        reply.extend_from_slice(attr(iq, b"id").unwrap_or_default());
        reply.extend_from_slice(b"'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
        reply.extend_from_slice(&jid);
        reply.extend_from_slice(b"</jid></bind></iq>");
        send(&mut io, &reply).await?;
        Ok((io, jid, inbuf))
    }

    /// Takes `<auth mechanism='SCRAM-SHA-1'>…</auth>`; returns the username, the
    /// client-first-message-bare and the server-first-message.
    fn sasl_challenge(&self, auth: &[u8]) -> io::Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        if name(auth) != b"auth" || attr(auth, b"mechanism") != Some(b"SCRAM-SHA-1") {
            return Err(invalid("expected <auth mechanism='SCRAM-SHA-1'>"));
        }
        let client_first = sasl_payload(auth)?;
        // gs2 header (`n,,`), then the bare message: n=USER,r=NONCE.
        let mut commas = client_first.iter().enumerate().filter(|(_, &b)| b == b',');
        let bare_at = commas
            .nth(1)
            .map(|(i, _)| i + 1)
            .ok_or_else(|| invalid("SCRAM client-first without gs2 header"))?;
        let bare = client_first[bare_at..].to_vec();
        let user = scram_field(&bare, b'n').ok_or_else(|| invalid("SCRAM: no username"))?;
        let cnonce = scram_field(&bare, b'r').ok_or_else(|| invalid("SCRAM: no nonce"))?;
        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(cnonce);
        server_first.extend_from_slice(B64.encode(rand::random::<[u8; 12]>()).as_bytes());
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(self.salt_b64.as_bytes());
        server_first.extend_from_slice(format!(",i={}", self.iterations).as_bytes());
        // Bench account names need no SCRAM unescaping (=2C, =3D).
        Ok((user.to_vec(), bare, server_first))
    }

    /// Takes `<response>…</response>`; returns server-final-message (`v=…`). The client's
    /// proof is not checked: the relay accepts any account.
    fn sasl_success(
        &self,
        response: &[u8],
        bare: &[u8],
        server_first: &[u8],
    ) -> io::Result<String> {
        if name(response) != b"response" {
            return Err(invalid("expected a SASL <response>"));
        }
        let client_final = sasl_payload(response)?;
        let proof_at = find(&client_final, b",p=").ok_or_else(|| invalid("SCRAM: no proof"))?;
        let mut auth_message = bare.to_vec();
        auth_message.push(b',');
        auth_message.extend_from_slice(server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(&client_final[..proof_at]);
        let signature = hmac(&self.server_key, &auth_message);
        Ok(format!("v={}", B64.encode(signature)))
    }

    /// The bound session: forwards messages, answers iqs, writes what others forwarded to
    /// it, until the stream or the connection closes.
    async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        mut inbuf: InBuf,
        outbox: &Outbox,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        loop {
            while let Some((kind, s, e)) = scan(inbuf.pending()).map_err(invalid)? {
                let element = &inbuf.pending()[s..e];
                match kind {
                    Kind::Element => match name(element) {
                        b"message" => {
                            if let Some(to) = attr(element, b"to") {
                                let dest = self.sessions.read().unwrap().get(to).cloned();
                                if let Some(dest) = dest {
                                    dest.push(element);
                                }
                            }
                        }
                        b"iq" if matches!(attr(element, b"type"), Some(b"get" | b"set")) => {
                            let mut reply = b"<iq type='result' id='".to_vec();
                            reply.extend_from_slice(attr(element, b"id").unwrap_or_default());
                            reply.extend_from_slice(b"'/>");
                            send(io, &reply).await?;
                        }
                        _ => {}
                    },
                    Kind::Close => {
                        send(io, b"</stream:stream>").await?;
                        return io.shutdown().await;
                    }
                    Kind::Header => return Err(invalid("unexpected stream header")),
                }
                inbuf.consume(e);
            }
            tokio::select! {
                read = inbuf.read(io) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                () = outbox.ready.notified() => {
                    std::mem::swap(&mut *outbox.buf.lock().unwrap(), &mut out);
                    if !out.is_empty() {
                        send(io, &out).await?;
                        out.clear();
                    }
                }
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// The base64 text inside a SASL element, decoded.
fn sasl_payload(element: &[u8]) -> io::Result<Vec<u8>> {
    let open_end = element
        .iter()
        .position(|&b| b == b'>')
        .ok_or_else(|| invalid("SASL element"))?;
    let text = &element[open_end + 1..];
    let text = &text[..text.iter().position(|&b| b == b'<').unwrap_or(text.len())];
    B64.decode(text)
        .map_err(|_| invalid("SASL data is not base64"))
}

/// The value of `k=` in a SCRAM message (`n=user,r=nonce`).
fn scram_field(message: &[u8], k: u8) -> Option<&[u8]> {
    message
        .split(|&b| b == b',')
        .find_map(|part| part.strip_prefix(&[k, b'='][..]))
}

/// Read bytes not yet consumed, one buffer per connection.
#[derive(Default)]
struct InBuf {
    buf: Vec<u8>,
    start: usize,
}

impl InBuf {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` bytes of [`Self::pending`] as consumed.
    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads more bytes (cancel-safe: `read_buf` either reads or leaves the buffer alone).
    async fn read<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() >= MAX_BUFFER {
            return Err(invalid("element larger than 1 MiB"));
        }
        self.buf.reserve(4096);
        io.read_buf(&mut self.buf).await
    }

    /// Reads until a whole item of `kind` is at the start of the pending bytes; returns its
    /// range in `buf` (consumed already: valid until the next read).
    async fn expect<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        kind: Kind,
    ) -> io::Result<(usize, usize)> {
        loop {
            if let Some((k, s, e)) = scan(self.pending()).map_err(invalid)? {
                if k != kind {
                    return Err(invalid(format!("expected {kind:?}, got {k:?}")));
                }
                let base = self.start;
                self.consume(e);
                return Ok((base + s, base + e));
            }
            if self.read(io).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `<stream:stream …>`, possibly after `<?xml …?>`.
    Header,
    /// `</stream:stream>` (the only closing tag at the top level).
    Close,
    /// A whole top-level element.
    Element,
}

/// Finds the first complete item in `buf` by a byte scan: its kind and range, or None when
/// more bytes are needed.
fn scan(buf: &[u8]) -> Result<Option<(Kind, usize, usize)>, &'static str> {
    let mut pos = 0;
    loop {
        while pos < buf.len() && buf[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos == buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'<' {
            return Err("text at the top level of the stream");
        }
        if !buf[pos..].starts_with(b"<?") {
            break;
        }
        match find(&buf[pos..], b"?>") {
            Some(end) => pos += end + 2,
            None => return Ok(None),
        }
    }
    let Some(gt) = buf[pos..].iter().position(|&b| b == b'>') else {
        return Ok(None);
    };
    let open_end = pos + gt + 1;
    let tag = &buf[pos..open_end];
    if tag.starts_with(b"</") {
        return Ok(Some((Kind::Close, pos, open_end)));
    }
    let name = name(tag);
    if name == b"stream:stream" {
        return Ok(Some((Kind::Header, pos, open_end)));
    }
    if tag.ends_with(b"/>") {
        return Ok(Some((Kind::Element, pos, open_end)));
    }
    // The closing tag of the same name: `</name>`.
    let mut from = open_end;
    while let Some(at) = find(&buf[from..], b"</") {
        let close = from + at + 2;
        let rest = &buf[close..];
        if rest.len() < name.len() + 1 {
            return Ok(None);
        }
        if rest.starts_with(name) && rest[name.len()] == b'>' {
            return Ok(Some((Kind::Element, pos, close + name.len() + 1)));
        }
        from = close;
    }
    Ok(None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The qualified name of the element starting at `element[0]` (`<message to=…>` → `message`).
fn name(element: &[u8]) -> &[u8] {
    let body = element.get(1..).unwrap_or_default();
    let end = body
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
        .unwrap_or(body.len());
    &body[..end]
}

/// The raw value of attribute `key` in the opening tag of `element`.
fn attr<'a>(element: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let tag = &element[..element.iter().position(|&b| b == b'>')?];
    let mut from = 0;
    while let Some(at) = find(&tag[from..], key) {
        let k = from + at;
        let v = k + key.len();
        from = k + 1;
        if k == 0 || !tag[k - 1].is_ascii_whitespace() || tag.get(v) != Some(&b'=') {
            continue;
        }
        let quote = *tag.get(v + 1)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value = &tag[v + 2..];
        return Some(&value[..value.iter().position(|&b| b == quote)?]);
    }
    None
}

/// The bytes between the first `open` and the next `close`.
fn between<'a>(hay: &'a [u8], open: &[u8], close: &[u8]) -> Option<&'a [u8]> {
    let start = find(hay, open)? + open.len();
    let len = find(&hay[start..], close)?;
    Some(&hay[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Target;
    use crate::scenario::{self, Run};
    use crate::scram::{KeyCache, ScramClient};
    use std::time::Instant;

    #[test]
    fn scans_items_by_bytes() {
        let header = b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0'>";
        assert_eq!(scan(header), Ok(Some((Kind::Header, 21, header.len()))));
        assert_eq!(scan(b"<?xml version='1.0'?><stream:str"), Ok(None));
        let msg = b" <message to='a@b/c' type='chat'><body>12</body></message><presence/>";
        let end = msg.len() - b"<presence/>".len();
        assert_eq!(scan(msg), Ok(Some((Kind::Element, 1, end))));
        assert_eq!(scan(&msg[end..]), Ok(Some((Kind::Element, 0, 11))));
        for cut in 1..end {
            assert_eq!(scan(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let iq = b"<iq type='set' id='b'><bind><resource>r</resource></bind></iq>";
        assert_eq!(scan(iq), Ok(Some((Kind::Element, 0, iq.len()))));
        assert_eq!(scan(b"\n</stream:stream>"), Ok(Some((Kind::Close, 1, 17))));
        assert!(scan(b"text").is_err());
    }

    #[test]
    fn reads_names_and_attributes() {
        let m = b"<message type='chat' to='bench2@localhost/bench'><body>1</body></message>";
        assert_eq!(name(m), b"message");
        assert_eq!(attr(m, b"to"), Some(&b"bench2@localhost/bench"[..]));
        assert_eq!(attr(m, b"type"), Some(&b"chat"[..]));
        assert_eq!(attr(b"<iq xto='x' id=\"7\"/>", b"to"), None);
        assert_eq!(attr(b"<iq xto='x' id=\"7\"/>", b"id"), Some(&b"7"[..]));
        assert_eq!(name(b"<starttls xmlns='x'/>"), b"starttls");
        assert_eq!(
            between(b"<a><resource>r1</resource>", b"<resource>", b"</resource>"),
            Some(&b"r1"[..])
        );
    }

    fn test_relay(password: &str) -> Relay {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        Relay::new(
            vec![cert.cert.der().clone()],
            key,
            "localhost",
            password,
            16,
        )
        .unwrap()
    }

    /// The generator's SCRAM client accepts the relay's server signature.
    #[test]
    fn scram_signature_satisfies_the_client() {
        let relay = test_relay("pw");
        let cache = KeyCache::new("pw");
        let mut client = ScramClient::new("bench1", "nonce123");
        let auth = format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(client.client_first())
        );
        let (user, bare, server_first) = relay.sasl_challenge(auth.as_bytes()).unwrap();
        assert_eq!(user, b"bench1");
        let client_final = client.client_final(&server_first, &cache).unwrap();
        let response = format!("<response>{}</response>", B64.encode(client_final));
        let v = relay
            .sasl_success(response.as_bytes(), &bare, &server_first)
            .unwrap();
        client.verify_server_final(v.as_bytes()).unwrap();
    }

    /// Runs the generator's chat scenario against a relay; `federated`: as s2s, with the
    /// odd sessions on a "peer" that is the same relay under another resource.
    async fn chat_against_relay(federated: bool) -> (Arc<Run>, serde_json::Value, &'static str) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(test_relay("secret"))));
        let target = || {
            Target::new(
                addr,
                "localhost".into(),
                "bench".into(),
                "secret",
                vec![],
                Duration::from_secs(5),
            )
        };
        let peer = federated.then(|| {
            let mut peer = target();
            peer.resource = "peer".into();
            Arc::new(peer)
        });
        let run = Arc::new(Run {
            target: Arc::new(target()),
            server_pid: None,
            errors: Default::default(),
            epoch: Instant::now(),
            rate: 1000.0,
            max_inflight: 8,
            peer,
            peer_pid: None,
        });
        let params = scenario::chat::Params {
            pairs: 4,
            rate: 400.0,
            duration: Duration::from_millis(500),
            drain: Duration::from_secs(2),
            ws_side: false,
            s2s_ports: vec![],
        };
        let (metrics, status) = scenario::chat::run(run.clone(), params).await;
        server.abort();
        (run, metrics, status)
    }

    /// The generator's own chat scenario runs against the relay without errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_scenario_runs_against_the_relay() {
        let (run, metrics, status) = chat_against_relay(false).await;
        assert_eq!(status, "ok", "{metrics}");
        assert_eq!(run.errors.total(), 0, "{}", run.errors.to_json());
        assert_eq!(metrics["sessions_online"], 8);
        assert!(metrics["received"].as_u64().unwrap() > 0);
        assert_eq!(metrics["sent"], metrics["received"]);
        assert!(metrics.get("links").is_none());
    }

    /// In s2s mode the warm-up message goes each way first and is not counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s2s_mode_warms_the_link_up_first() {
        let (run, metrics, status) = chat_against_relay(true).await;
        assert_eq!(status, "ok", "{metrics}");
        assert_eq!(run.errors.total(), 0, "{}", run.errors.to_json());
        assert_eq!(metrics["links"]["warm_up_delivered"], 2);
        assert_eq!(
            metrics["params"]["domains"],
            serde_json::json!(["localhost", "localhost"])
        );
        assert_eq!(metrics["sent"], metrics["received"]);
    }
}
