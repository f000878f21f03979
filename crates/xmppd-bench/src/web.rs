//! The web transports: WebSocket (RFC 7395) and BOSH (XEP-0124/0206) on plain HTTP over
//! loopback. Each session gets a pump task that owns the server connection(s) and one end of
//! an in-memory pipe; the session writes and reads the RFC 7395 framing on the other end
//! (`<open/>` instead of a stream header, `<close/>` to end it, whole elements between), so
//! the login code and the scenarios are the same as over TCP.
//!
//! - WebSocket: one text message per element the session writes, the text of every message
//!   the server sends copied to the session.
//! - BOSH: a tiny HTTP/1.1 client (Content-Length or chunked responses, keep-alive). The first
//!   `<open/>` creates the BOSH session (`hold='1'`, a long `wait`), a later one is a restart
//!   (`xmpp:restart`), `<close/>` terminates it, and other elements go in the next request.
//!   One request is always held at the server, so it can push (an empty one, sent 20 ms after
//!   a response if the session has nothing to send by then); a request carrying data while
//!   the held one waits goes on a second connection (as a browser does, `requests='2'`), which
//!   is kept for reuse but closed after 2 s unused, so an idle session keeps exactly one
//!   connection and one held request. Payloads reach the session in `rid` order.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Failure, HttpTarget, Target};
use crate::xml::{self, Item, Stanza};

const PIPE: usize = 64 * 1024;
const FRAMED_OPEN: &[u8] = b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' version='1.0'/>";
/// How long after a response a BOSH session waits for the session's next stanza before it
/// sends an empty request instead. During a login the next request follows at once, so the
/// steps go one at a time: sent together on two connections, a restart can overtake the poll
/// before it, which ejabberd 23.01 does not survive (neither request is ever answered).
const POLL_DELAY: Duration = Duration::from_millis(20);
/// How long a BOSH session keeps a second, unused connection beside its held request.
const SPARE_CONNECTION: Duration = Duration::from_secs(2);
/// Seconds a BOSH request may be held (XEP-0124 `wait`): longer than any idle hold.
pub const BOSH_WAIT: u64 = 60;

fn http(target: &Target) -> Result<&HttpTarget, Failure> {
    target
        .http
        .as_ref()
        .ok_or_else(|| Failure::new("connect", "no HTTP address given (--http-addr)"))
}

/// `XMPPD_BENCH_TRACE=1`: print every BOSH request and response (for debugging a server).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("XMPPD_BENCH_TRACE").is_some())
}

/// Complete top-level elements at the start of `buf`, removed from it.
fn take_elements(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, Failure> {
    let mut out = Vec::new();
    let mut used = 0;
    loop {
        match xml::next_item(&buf[used..]) {
            Ok(Some((Item::Stanza, s, e))) => {
                out.push(buf[used + s..used + e].to_vec());
                used += e;
            }
            // A session never writes stream headers on a framed transport.
            Ok(Some((_, _, e))) => used += e,
            Ok(None) => break,
            Err(_) => return Err(Failure::new("send", "malformed XML from the session")),
        }
    }
    buf.drain(..used);
    Ok(out)
}

/// Opens a WebSocket with subprotocol `xmpp` and returns the session's end of its pipe.
pub async fn websocket(target: &Arc<Target>) -> Result<DuplexStream, Failure> {
    let http = http(target)?;
    let tcp = crate::conn::connect_to(target, http.addr).await?;
    let mut request = format!("ws://{}{}", http.addr, http.ws_path)
        .into_client_request()
        .map_err(|e| Failure::new("connect", e))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "xmpp".parse().expect("a valid header value"),
    );
    let (ws, response) = tokio::time::timeout(
        target.timeout,
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .map_err(|_| Failure::new("websocket", "handshake timed out"))?
    .map_err(|e| Failure::new("websocket", e))?;
    if response
        .headers()
        .get("sec-websocket-protocol")
        .is_none_or(|p| p != "xmpp")
    {
        return Err(Failure::new(
            "websocket",
            "the server did not agree to the xmpp subprotocol",
        ));
    }
    let (mine, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(ws_pump(ws, theirs));
    Ok(mine)
}

async fn ws_pump(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    pipe: DuplexStream,
) -> Result<(), Failure> {
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(pipe);
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        tokio::select! {
            n = rd.read(&mut chunk) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    let _ = sink.close().await;
                    return Ok(());
                }
                pending.extend_from_slice(&chunk[..n]);
                for element in take_elements(&mut pending)? {
                    let mut qualified = Vec::with_capacity(element.len() + 24);
                    qualify(&mut qualified, &element);
                    let text = String::from_utf8(qualified)
                        .map_err(|_| Failure::new("send", "not UTF-8"))?;
                    sink.feed(Message::text(text))
                        .await
                        .map_err(|e| Failure::new("send", e))?;
                }
                sink.flush().await.map_err(|e| Failure::new("send", e))?;
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if wr.write_all(text.as_bytes()).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                // Pings are answered by tungstenite itself; binary is not XMPP.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Starts a BOSH pump and returns the session's end of its pipe (the HTTP session itself is
/// created when the session writes its first `<open/>`).
pub fn bosh(target: &Arc<Target>) -> Result<DuplexStream, Failure> {
    let http = http(target)?.clone();
    let (mine, theirs) = tokio::io::duplex(PIPE);
    let pump = BoshPump {
        target: target.clone(),
        http,
        sid: None,
        next_rid: rand::random::<u32>() as u64 + 1,
    };
    tokio::spawn(pump.run(theirs));
    Ok(mine)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Create,
    Restart,
    Data,
    Poll,
    Terminate,
}

type Reply = (u64, Kind, Option<TcpStream>, Result<Vec<u8>, String>);
type Pending = Pin<Box<dyn Future<Output = Reply> + Send>>;

struct BoshPump {
    target: Arc<Target>,
    http: HttpTarget,
    sid: Option<String>,
    next_rid: u64,
}

const HTTPBIND: &str = "xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'";

impl BoshPump {
    fn body(&mut self, kind: Kind, payload: &[u8]) -> (u64, Vec<u8>) {
        let rid = self.next_rid;
        self.next_rid += 1;
        let domain = &self.target.domain;
        let sid = self.sid.as_deref().unwrap_or("");
        let head = match kind {
            Kind::Create => format!(
                "<body {HTTPBIND} content='text/xml; charset=utf-8' hold='1' rid='{rid}' \
                 to='{domain}' ver='1.6' wait='{BOSH_WAIT}' xml:lang='en' xmpp:version='1.0'"
            ),
            Kind::Restart => format!(
                "<body {HTTPBIND} rid='{rid}' sid='{sid}' to='{domain}' xml:lang='en' \
                 xmpp:restart='true'"
            ),
            Kind::Terminate => format!("<body {HTTPBIND} rid='{rid}' sid='{sid}' type='terminate'"),
            Kind::Data | Kind::Poll => format!("<body {HTTPBIND} rid='{rid}' sid='{sid}'"),
        };
        let mut body = head.into_bytes();
        if payload.is_empty() {
            body.extend_from_slice(b"/>");
        } else {
            body.push(b'>');
            body.extend_from_slice(payload);
            body.extend_from_slice(b"</body>");
        }
        (rid, body)
    }

    fn request(&mut self, kind: Kind, payload: &[u8], conn: Option<TcpStream>) -> Pending {
        let (rid, body) = self.body(kind, payload);
        if trace() {
            eprintln!("BOSH >> {}", String::from_utf8_lossy(&body));
        }
        let target = self.target.clone();
        let http = self.http.clone();
        Box::pin(async move {
            // A held request lasts up to `wait`; anything else answers within the timeout.
            let bound = Duration::from_secs(BOSH_WAIT) + target.timeout;
            let reused = conn.is_some();
            let mut outcome = tokio::time::timeout(bound, post(&target, &http, conn, &body)).await;
            // A kept-alive connection the server closed meanwhile: once more on a new one.
            if reused && matches!(&outcome, Ok((_, Err(e))) if e.starts_with("closed")) {
                outcome = tokio::time::timeout(bound, post(&target, &http, None, &body)).await;
            }
            match outcome {
                Ok((conn, result)) => (rid, kind, conn, result),
                Err(_) => (rid, kind, None, Err("request timed out".into())),
            }
        })
    }

    async fn run(mut self, pipe: DuplexStream) {
        let (mut rd, mut wr) = tokio::io::split(pipe);
        let mut written = Vec::new();
        let mut chunk = vec![0u8; 8192];
        // What the session asked for and has not been sent yet.
        let mut open = false;
        let mut close = false;
        let mut queue: Vec<u8> = Vec::new();
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut idle: Option<TcpStream> = None;
        let mut replies: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut deliver_from = self.next_rid;
        let mut established = false;
        let mut session_gone = false;
        let mut idle_since = tokio::time::Instant::now();
        // When to send an empty request to be held, if the session has sent nothing by then.
        let mut poll_at = tokio::time::Instant::now();
        loop {
            // Start what can start: the creation alone, then data (or a restart, or the
            // end) while at most one other request is out, else a poll to be held.
            if !established {
                if open && inflight.is_empty() {
                    open = false;
                    inflight.push(self.request(Kind::Create, &[], idle.take()));
                }
            } else if (open || close || !queue.is_empty()) && inflight.len() < 2 {
                let (kind, payload) = if open {
                    open = false;
                    // The restart's answer carries the new features: the session expects
                    // the stream header first.
                    if wr.write_all(FRAMED_OPEN).await.is_err() {
                        session_gone = true;
                    }
                    (Kind::Restart, Vec::new())
                } else if !queue.is_empty() {
                    (Kind::Data, std::mem::take(&mut queue))
                } else {
                    close = false;
                    (
                        Kind::Terminate,
                        b"<presence type='unavailable' xmlns='jabber:client'/>".to_vec(),
                    )
                };
                inflight.push(self.request(kind, &payload, idle.take()));
            } else if inflight.is_empty() && !session_gone && tokio::time::Instant::now() >= poll_at
            {
                inflight.push(self.request(Kind::Poll, &[], idle.take()));
            }
            if session_gone && inflight.is_empty() {
                return;
            }
            tokio::select! {
                n = rd.read(&mut chunk), if !session_gone => {
                    let n = n.unwrap_or(0);
                    if n == 0 {
                        session_gone = true;
                        close = established;
                        continue;
                    }
                    written.extend_from_slice(&chunk[..n]);
                    let Ok(elements) = take_elements(&mut written) else {
                        return;
                    };
                    for element in elements {
                        match Stanza::new(&element).name() {
                            b"open" => open = true,
                            b"close" => close = true,
                            _ => qualify(&mut queue, &element),
                        }
                    }
                }
                _ = tokio::time::sleep_until(poll_at), if established && inflight.is_empty() && !session_gone => {}
                _ = tokio::time::sleep_until(idle_since + SPARE_CONNECTION), if idle.is_some() && !inflight.is_empty() => {
                    // The spare connection beside a held request: not needed while idle.
                    idle = None;
                }
                Some((rid, kind, conn, result)) = inflight.next(), if !inflight.is_empty() => {
                    if idle.is_none() {
                        idle = conn;
                        idle_since = tokio::time::Instant::now();
                    }
                    poll_at = tokio::time::Instant::now() + POLL_DELAY;
                    let body = match result {
                        Ok(body) => {
                            if trace() {
                                eprintln!("BOSH << {rid} {}", String::from_utf8_lossy(&body));
                            }
                            body
                        }
                        Err(e) => {
                            eprintln!("xmppd-bench: BOSH {kind:?} request failed: {e}");
                            let _ = wr.shutdown().await;
                            return;
                        }
                    };
                    let Some((attrs, payload)) = split_body(&body) else {
                        eprintln!("xmppd-bench: BOSH: not a <body/>: {}", String::from_utf8_lossy(&body));
                        let _ = wr.shutdown().await;
                        return;
                    };
                    let wrapper = Stanza::new(attrs);
                    let mut out = Vec::new();
                    if kind == Kind::Create {
                        match wrapper.attr(b"sid") {
                            Some(sid) => self.sid = Some(String::from_utf8_lossy(sid).into_owned()),
                            None => {
                                eprintln!("xmppd-bench: BOSH: no sid in {}", String::from_utf8_lossy(&body));
                                let _ = wr.shutdown().await;
                                return;
                            }
                        }
                        established = true;
                        out.extend_from_slice(FRAMED_OPEN);
                    }
                    out.extend_from_slice(payload);
                    let terminated = wrapper.attr(b"type") == Some(b"terminate");
                    if terminated {
                        out.extend_from_slice(crate::conn::FRAMED_CLOSE);
                    }
                    replies.insert(rid, out);
                    while let Some(bytes) = replies.remove(&deliver_from) {
                        deliver_from += 1;
                        if !session_gone && wr.write_all(&bytes).await.is_err() {
                            session_gone = true;
                        }
                    }
                    if terminated || kind == Kind::Terminate {
                        let _ = wr.shutdown().await;
                        return;
                    }
                }
            }
        }
    }
}

/// Appends a stanza to a BOSH payload or a WebSocket message, qualified: inside `<body/>` the
/// default namespace is httpbind's (XEP-0206 §8), and every WebSocket message is a standalone
/// document (RFC 7395 §3.3.3), so a stanza without its own gets `xmlns='jabber:client'`.
fn qualify(queue: &mut Vec<u8>, element: &[u8]) {
    let stanza = Stanza::new(element);
    let plain = matches!(stanza.name(), b"message" | b"presence" | b"iq")
        && stanza.attr(b"xmlns").is_none();
    if plain {
        let name_end = 1 + stanza.name().len();
        queue.extend_from_slice(&element[..name_end]);
        queue.extend_from_slice(b" xmlns='jabber:client'");
        queue.extend_from_slice(&element[name_end..]);
    } else {
        queue.extend_from_slice(element);
    }
}

/// The opening tag of a `<body>` wrapper and what it wraps.
fn split_body(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = body.windows(5).position(|w| w == b"<body")?;
    let (_, _, end) = xml::next_item(&body[start..]).ok()??;
    let element = &body[start..start + end];
    let open_end = xml::tag_end(element, 0).ok()??;
    let tag = &element[..open_end];
    if tag.ends_with(b"/>") {
        return Some((tag, &[]));
    }
    let close = element.len() - b"</body>".len();
    Some((tag, element.get(open_end..close)?))
}

/// One HTTP/1.1 POST of `body`, on `conn` or a new connection. Returns the connection when
/// the server keeps it open, and the response body (an error for a status other than 200).
async fn post(
    target: &Target,
    http: &HttpTarget,
    conn: Option<TcpStream>,
    body: &[u8],
) -> (Option<TcpStream>, Result<Vec<u8>, String>) {
    let mut conn = match conn {
        Some(c) => c,
        None => match crate::conn::connect_to(target, http.addr).await {
            Ok(c) => c,
            Err(e) => return (None, Err(e.detail)),
        },
    };
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n",
        http.bosh_path,
        http.addr,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    if let Err(e) = conn.write_all(&request).await {
        return (None, Err(format!("closed: {e}")));
    }
    match read_response(&mut conn).await {
        Ok((200, keep, body)) => (keep.then_some(conn), Ok(body)),
        Ok((status, _, body)) => (
            None,
            Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        ),
        Err(e) => (None, Err(e)),
    }
}

/// Status, whether the connection stays open, and the body of one HTTP/1.1 response.
async fn read_response(conn: &mut TcpStream) -> Result<(u16, bool, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "closed before a response".into()
            } else {
                "closed in the response headers".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = !status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep = false;
                } else if v.contains("keep-alive") {
                    keep = true;
                }
            }
            _ => {}
        }
    }
    let mut rest = buf.split_off(header_end);
    if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                let want = rest.len() + 1;
                fill(conn, &mut rest, want).await?;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let need = line_end + 2 + size + 2;
            fill(conn, &mut rest, need).await?;
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..need);
            if size == 0 {
                return Ok((status, keep, body));
            }
        }
    }
    match length {
        Some(len) => {
            fill(conn, &mut rest, len).await?;
            rest.truncate(len);
            Ok((status, keep, rest))
        }
        None => {
            // No length: the body ends with the connection.
            let _ = conn.read_to_end(&mut rest).await;
            Ok((status, false, rest))
        }
    }
}

/// Reads from `conn` until `rest` holds at least `want` bytes.
async fn fill(conn: &mut TcpStream, rest: &mut Vec<u8>, want: usize) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    while rest.len() < want {
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed in the response body".into());
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_wrapper_and_payload() {
        let (tag, payload) = split_body(
            b"<?xml version='1.0'?><body sid='s1' xmlns='http://jabber.org/protocol/httpbind'>\
              <message><body>1</body></message></body>",
        )
        .unwrap();
        assert_eq!(Stanza::new(tag).attr(b"sid"), Some(&b"s1"[..]));
        assert_eq!(payload, b"<message><body>1</body></message>");
        let (tag, payload) = split_body(b"<body type='terminate'/>").unwrap();
        assert_eq!(Stanza::new(tag).attr(b"type"), Some(&b"terminate"[..]));
        assert!(payload.is_empty());
    }

    #[test]
    fn stanzas_get_the_client_namespace() {
        let mut q = Vec::new();
        qualify(&mut q, b"<iq type='get'/>");
        qualify(&mut q, b"<presence/>");
        qualify(&mut q, b"<auth xmlns='x'/>");
        assert_eq!(
            q,
            b"<iq xmlns='jabber:client' type='get'/><presence xmlns='jabber:client'/><auth xmlns='x'/>"
        );
    }

    #[test]
    fn elements_are_taken_whole() {
        let mut buf = b"<open to='l'/><message><body>2</body></message><iq".to_vec();
        let elements = take_elements(&mut buf).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(buf, b"<iq");
    }

    #[tokio::test]
    async fn reads_chunked_and_sized_responses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // One response per request, as BOSH has it: the second after the client's byte.
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n<bo\r\n4\r\ndy/>\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            s.read_exact(&mut [0u8; 1]).await.unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\n<body/>",
            )
            .await
            .unwrap();
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            read_response(&mut c).await.unwrap(),
            (200, true, b"<body/>".to_vec())
        );
        c.write_all(b"x").await.unwrap();
        assert_eq!(
            read_response(&mut c).await.unwrap(),
            (200, false, b"<body/>".to_vec())
        );
        server.await.unwrap();
    }
}
