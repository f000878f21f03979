//! BOSH (XEP-0124) carrying XMPP (XEP-0206): a framing for the one stream driver.
//!
//! A BOSH session outlives every HTTP request that carries it, so each session is one driver
//! task, as a TCP connection is, over a [`BoshFraming`] whose two ends meet in the session's
//! [`State`]. Requests put their payloads into the state's input in `rid` order (§14) and wait
//! there, held, for the output the driver writes; the driver's stream is cut into whole
//! elements ([`Splitter`]) and handed to the oldest held request when the driver flushes.
//!
//! A request's body is parsed once here, to answer malformed XML with `bad-request` before
//! anything reaches the stream (§19.1); its children are written out again for the driver's
//! parser, which applies the stanza limits exactly as on TCP.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use xmppd_core::{ns, Element};

use super::units::{Splitter, Unit};
use super::{Client, Web};
use crate::stream::framing::Framing;
use crate::tls::{CertResolver, ChannelBindings};

pub const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
pub const XBOSH: &str = "urn:xmpp:xbosh";
/// The highest BOSH version we speak (XEP-0124 §7.1 `ver`).
const VERSION: (u32, u32) = (1, 11);
/// The response type when the client names none (§7.1 `content`).
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";
/// Shortest interval between empty requests of a polling session (`hold='0'`), seconds.
const POLLING_SECS: u64 = 2;
/// A client's `ack` that lags a response sent this long ago is reported (§9.3).
const REPORT_AFTER: Duration = Duration::from_secs(5);
/// Most BOSH sessions at once; each is a driver task.
const MAX_SESSIONS: usize = 100_000;

/// Every BOSH session, by `sid`.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        lock(&self.map).remove(sid);
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a session agreed at creation (XEP-0124 §7.1).
struct Terms {
    wait: Duration,
    hold: usize,
    /// Requests the client may have outstanding: the `rid` window (§14).
    requests: u64,
    inactivity: Duration,
    max_pause: Duration,
    /// The client asked for acknowledgements (§9).
    acks: bool,
    /// The lower of its `ver` and ours (§7.2).
    ver: (u32, u32),
    /// The `Content-Type` of every response in the session (§7.1 `content`).
    content: Option<String>,
}

pub struct Session {
    sid: String,
    terms: Terms,
    state: Mutex<State>,
}

/// A request waiting for something to carry back.
struct Held {
    rid: u64,
    reply: oneshot::Sender<Bytes>,
}

/// A request that came before its turn: held back until the `rid`s before it arrive.
struct Early {
    request: Parsed,
    reply: oneshot::Sender<Bytes>,
}

/// A response, kept for a client that asks again (§14.3).
struct Sent {
    rid: u64,
    body: Bytes,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// The `rid` whose payload goes to the stream next.
    next_rid: u64,
    early: BTreeMap<u64, Early>,
    held: VecDeque<Held>,
    sent: VecDeque<Sent>,
    /// What the driver's parser reads next, and the driver waiting for it.
    input: Vec<u8>,
    reader: Option<Waker>,
    /// The driver's output: cut into elements, waiting for a request to carry them.
    splitter: Splitter,
    output: Vec<u8>,
    writer: Option<Waker>,
    /// Our stream header's `id` and `from` (the `authid` and `from` of the creation response).
    stream_attrs: Vec<(String, String)>,
    /// The creation request, until it is answered with the session's terms.
    creation_rid: Option<u64>,
    /// The stream sent a stream error: the terminating body says `remote-stream-error`.
    stream_error: bool,
    /// The session is over: every request from now on gets this body.
    ended: Option<Bytes>,
    /// The driver must end the stream (a terminal binding error).
    kill: bool,
    /// Since when no request has been held (the inactivity clock, §11).
    idle_since: Option<Instant>,
    pause_until: Option<Instant>,
    /// `report`/`time` for the next response (§9.3).
    report: Option<(u64, u128)>,
    last_empty_request: Option<Instant>,
}

impl State {
    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// A `<body/>` with these attributes (already escaped) around `payload`.
fn body(attrs: &[(&str, String)], payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128 + payload.len());
    out.extend_from_slice(b"<body xmlns='");
    out.extend_from_slice(HTTPBIND.as_bytes());
    out.push(b'\'');
    for (name, value) in attrs {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"='");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\'');
    }
    if payload.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        out.extend_from_slice(payload);
        out.extend_from_slice(b"</body>");
    }
    Bytes::from(out)
}

/// A terminal binding error (§17.2), which ends the session if there is one.
fn terminate(condition: &str) -> Bytes {
    body(
        &[
            ("type", "terminate".into()),
            ("condition", condition.into()),
        ],
        b"",
    )
}

impl Session {
    /// Answers the oldest held request with the output so far.
    fn answer_oldest(&self, st: &mut State) {
        let Some(held) = st.held.pop_front() else {
            return;
        };
        let output = std::mem::take(&mut st.output);
        st.wake_writer();
        self.answer(st, held, &output);
    }

    fn answer(&self, st: &mut State, held: Held, payload: &[u8]) {
        let mut attrs: Vec<(&str, String)> = Vec::new();
        if st.creation_rid == Some(held.rid) {
            st.creation_rid = None;
            let t = &self.terms;
            attrs.extend([
                ("sid", self.sid.clone()),
                ("wait", t.wait.as_secs().to_string()),
                ("requests", t.requests.to_string()),
                ("hold", t.hold.to_string()),
                ("inactivity", t.inactivity.as_secs().to_string()),
                ("polling", POLLING_SECS.to_string()),
                ("maxpause", t.max_pause.as_secs().to_string()),
                ("ver", format!("{}.{}", t.ver.0, t.ver.1)),
            ]);
            for (name, value) in &st.stream_attrs {
                match name.as_str() {
                    "from" => attrs.push(("from", value.clone())),
                    "id" => attrs.push(("authid", value.clone())),
                    _ => {}
                }
            }
            attrs.extend([
                ("xmpp:version", "1.0".into()),
                ("xmpp:restartlogic", "true".into()),
                ("xmlns:xmpp", XBOSH.into()),
                ("xmlns:stream", ns::STREAM.into()),
            ]);
            if t.acks {
                attrs.push(("ack", held.rid.to_string()));
            }
        } else if self.terms.acks && st.next_rid > held.rid + 1 {
            // Later requests arrived already: say which is the highest this one reflects.
            attrs.push(("ack", (st.next_rid - 1).to_string()));
        }
        if let Some((report, time)) = st.report.take() {
            attrs.push(("report", report.to_string()));
            attrs.push(("time", time.to_string()));
        }
        let reply = body(&attrs, payload);
        st.sent.push_back(Sent {
            rid: held.rid,
            body: reply.clone(),
            at: Instant::now(),
        });
        while st.sent.len() as u64 > self.terms.requests {
            st.sent.pop_front();
        }
        // A client that went away gets it again if it asks for this rid.
        let _ = held.reply.send(reply);
        if st.held.is_empty() {
            st.idle_since = Some(Instant::now());
            st.wake_reader();
        }
    }

    /// Ends the session with `reply` for every request from now on.
    fn end(&self, st: &mut State, reply: Bytes) {
        let output = std::mem::take(&mut st.output);
        let mut first = true;
        while let Some(held) = st.held.pop_front() {
            let final_body = if first && !output.is_empty() {
                self.final_body(st, &output)
            } else {
                reply.clone()
            };
            first = false;
            let _ = held.reply.send(final_body);
        }
        for (_, early) in std::mem::take(&mut st.early) {
            let _ = early.reply.send(reply.clone());
        }
        st.ended = Some(reply);
        st.kill = true;
        st.wake_reader();
        st.wake_writer();
    }

    /// The body that ends a stream we closed, carrying what it said last (XEP-0206 §7).
    fn final_body(&self, st: &State, payload: &[u8]) -> Bytes {
        let mut attrs = vec![("type", "terminate".to_string())];
        if st.stream_error {
            attrs.push(("condition", "remote-stream-error".into()));
            attrs.push(("xmlns:stream", ns::STREAM.into()));
        }
        body(&attrs, payload)
    }

    /// Takes a request whose turn it is: its payload goes to the stream, it waits for output.
    fn accept(&self, st: &mut State, rid: u64, request: Parsed, reply: oneshot::Sender<Bytes>) {
        st.next_rid = rid + 1;
        if let Some(ack) = request.ack.filter(|_| self.terms.acks) {
            self.check_ack(st, ack);
        }
        match request.kind {
            Kind::Terminate => {
                st.input.extend_from_slice(&request.payload);
                st.input.extend_from_slice(b"</stream:stream>");
            }
            Kind::Restart => st.input.extend_from_slice(&request.header),
            Kind::Normal => st.input.extend_from_slice(&request.payload),
        }
        st.wake_reader();
        st.held.push_back(Held { rid, reply });
        st.idle_since = None;
        if let Some(pause) = request.pause {
            // §10: the client goes away for a while; answer everything now.
            let pause = Duration::from_secs(pause).min(self.terms.max_pause);
            st.pause_until = Some(Instant::now() + pause);
            while !st.held.is_empty() {
                self.answer_oldest(st);
            }
            return;
        }
        st.pause_until = None;
        let over = st.held.len() > self.terms.hold;
        if over || !st.output.is_empty() || st.report.is_some() {
            self.answer_oldest(st);
        }
        while st.held.len() > self.terms.hold {
            self.answer_oldest(st);
        }
    }

    /// §9.3: a client acknowledging less than we answered long ago may have lost a response.
    fn check_ack(&self, st: &mut State, ack: u64) {
        while st.sent.front().is_some_and(|s| s.rid <= ack) {
            st.sent.pop_front();
        }
        if let Some(missing) = st.sent.iter().find(|s| s.rid == ack + 1) {
            let age = missing.at.elapsed();
            if age >= REPORT_AFTER {
                st.report = Some((missing.rid, age.as_millis()));
            }
        }
    }

    /// A request with `rid`, in whatever order it came.
    fn receive(&self, rid: u64, request: Parsed) -> Result<oneshot::Receiver<Bytes>, Bytes> {
        let mut st = lock(&self.state);
        if let Some(ended) = &st.ended {
            return Err(ended.clone());
        }
        let (tx, rx) = oneshot::channel();
        if rid < st.next_rid {
            // §14.3: asked again. The buffered answer if we have it; if it is still held, the
            // old request gets a recoverable error and this one takes its place.
            if let Some(sent) = st.sent.iter().find(|s| s.rid == rid) {
                return Err(sent.body.clone());
            }
            if let Some(held) = st.held.iter_mut().find(|h| h.rid == rid) {
                let old = std::mem::replace(&mut held.reply, tx);
                let _ = old.send(body(&[("type", "error".into())], b""));
                return Ok(rx);
            }
            self.end(&mut st, terminate("item-not-found"));
            return Err(terminate("item-not-found"));
        }
        if rid >= st.next_rid + self.terms.requests {
            self.end(&mut st, terminate("item-not-found"));
            return Err(terminate("item-not-found"));
        }
        if self.terms.hold == 0 && request.is_empty() {
            let now = Instant::now();
            let too_soon = st
                .last_empty_request
                .is_some_and(|t| now < t + Duration::from_secs(POLLING_SECS));
            st.last_empty_request = Some(now);
            if too_soon && st.held.is_empty() {
                // §12: polling faster than `polling` allows.
                self.end(&mut st, terminate("policy-violation"));
                return Err(terminate("policy-violation"));
            }
        }
        if rid > st.next_rid {
            // §14.2: out of order; its payload waits for the requests before it.
            let early = Early { request, reply: tx };
            if let Some(old) = st.early.insert(rid, early) {
                let _ = old.reply.send(body(&[("type", "error".into())], b""));
            }
            return Ok(rx);
        }
        self.accept(&mut st, rid, request, tx);
        while let Some(early) = {
            let next = st.next_rid;
            st.early.remove(&next)
        } {
            let next = st.next_rid;
            self.accept(&mut st, next, early.request, early.reply);
        }
        Ok(rx)
    }

    /// The client's `wait` ran out for the request `rid`: an empty answer, if it is still held.
    fn expire(&self, rid: u64) {
        let mut st = lock(&self.state);
        if let Some(i) = st.held.iter().position(|h| h.rid == rid) {
            if let Some(held) = st.held.remove(i) {
                // Output that arrived meanwhile goes with it.
                let output = std::mem::take(&mut st.output);
                st.wake_writer();
                self.answer(&mut st, held, &output);
            }
        }
    }
}

enum Kind {
    Normal,
    Restart,
    Terminate,
}

/// A request body, read.
struct Parsed {
    kind: Kind,
    /// Its children, written for the driver's `jabber:client` stream.
    payload: Vec<u8>,
    /// For a restart: the stream header the driver reads.
    header: Vec<u8>,
    pause: Option<u64>,
    ack: Option<u64>,
}

impl Parsed {
    fn is_empty(&self) -> bool {
        self.payload.is_empty() && matches!(self.kind, Kind::Normal) && self.pause.is_none()
    }
}

/// The stream header the driver reads for a session's creation or restart.
fn stream_header(to: &str, lang: Option<&str>) -> Vec<u8> {
    let mut header = format!(
        "<stream:stream xmlns='{}' xmlns:stream='{}' version='1.0' to='",
        ns::CLIENT,
        ns::STREAM
    )
    .into_bytes();
    xmppd_xml::escape_attr(&mut header, to);
    header.push(b'\'');
    if let Some(lang) = lang {
        header.extend_from_slice(b" xml:lang='");
        xmppd_xml::escape_attr(&mut header, lang);
        header.push(b'\'');
    }
    header.push(b'>');
    header
}

fn parse_body(body: &Element, to_default: &str) -> Parsed {
    let mut payload = Vec::new();
    for child in body.children() {
        child.write_to(&mut payload, ns::CLIENT);
    }
    let xbosh = |name: &str| body.attr(&format!("{{{XBOSH}}}{name}"));
    let kind = if body.attr("type") == Some("terminate") {
        Kind::Terminate
    } else if xbosh("restart") == Some("true") || xbosh("restart") == Some("1") {
        Kind::Restart
    } else {
        Kind::Normal
    };
    let to = body.attr("to").unwrap_or(to_default);
    Parsed {
        header: stream_header(to, body.attr("xml:lang")),
        kind,
        payload,
        pause: body.attr("pause").and_then(|p| p.parse().ok()),
        ack: body.attr("ack").and_then(|a| a.parse().ok()),
    }
}

/// A BOSH response: its status, its `Content-Type` and its body.
pub struct Response {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
}

fn respond(body: Bytes, session: Option<&Session>) -> Response {
    let content = session.and_then(|s| s.terms.content.clone());
    Response {
        status: StatusCode::OK,
        content_type: content.unwrap_or_else(|| CONTENT_TYPE.to_string()),
        body,
    }
}

/// A request taken in: answered already, or held by its session until output or `wait`.
pub enum Pending {
    Answered(Option<Arc<Session>>, Bytes),
    Held(Arc<Session>, u64, oneshot::Receiver<Bytes>),
}

impl Pending {
    /// The response, once there is one. The request's bytes are not needed for this: the
    /// caller frees them first, so a held request costs only what the session keeps.
    pub async fn response(self) -> Response {
        match self {
            Pending::Answered(session, reply) => respond(reply, session.as_deref()),
            Pending::Held(session, rid, rx) => {
                let reply = wait_for(&session, rid, rx).await;
                respond(reply, Some(&session))
            }
        }
    }
}

/// A `ver` attribute as (major, minor).
fn parse_version(ver: &str) -> Option<(u32, u32)> {
    let (major, minor) = ver.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Takes one BOSH request's body (§7, §14): parsed, checked, and handed to its session.
pub fn submit(web: &Arc<Web>, client: Client, raw: &[u8]) -> Pending {
    let limit = web.server.config.limits.max_stanza_size;
    if raw.len() > limit {
        return Pending::Answered(None, terminate("policy-violation"));
    }
    let parsed = std::str::from_utf8(raw)
        .ok()
        .and_then(|text| xmppd_xml::parse_fragment(text, ""));
    let Some(el) = parsed.filter(|el| el.is("body", HTTPBIND)) else {
        // §19.1: a body that is not XML (or not a BOSH body). If it names a session, the
        // session ends with it.
        let session = sid_of(raw).and_then(|sid| web.bosh.get(&sid));
        if let Some(session) = &session {
            session.end(&mut lock(&session.state), terminate("bad-request"));
        }
        return Pending::Answered(session, terminate("bad-request"));
    };
    let Some(rid) = el.attr("rid").and_then(|r| r.parse::<u64>().ok()) else {
        return Pending::Answered(None, terminate("bad-request"));
    };
    let (session, rx) = match el.attr("sid") {
        Some(sid) => {
            let Some(session) = web.bosh.get(sid) else {
                return Pending::Answered(None, terminate("item-not-found"));
            };
            let parsed = parse_body(&el, "");
            match session.receive(rid, parsed) {
                Ok(rx) => (session, rx),
                Err(reply) => return Pending::Answered(Some(session), reply),
            }
        }
        None => match create(web, client, rid, &el) {
            Ok(created) => created,
            Err(reply) => return Pending::Answered(None, reply),
        },
    };
    Pending::Held(session, rid, rx)
}

/// Waits for the response to `rid`: output from the stream, or empty after `wait`.
async fn wait_for(session: &Session, rid: u64, mut rx: oneshot::Receiver<Bytes>) -> Bytes {
    if let Ok(reply) = tokio::time::timeout(session.terms.wait, &mut rx).await {
        return reply.unwrap_or_else(|_| terminate("remote-connection-failed"));
    }
    session.expire(rid);
    rx.await
        .unwrap_or_else(|_| terminate("remote-connection-failed"))
}

/// The `sid` of a body that did not parse, read from its start tag as written.
fn sid_of(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let start = text.find("sid=")? + 4;
    let quote = text[start..].chars().next()?;
    let rest = &text[start + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

/// A session creation request (§7.1, XEP-0206 §3): a new session, whose driver starts at
/// once, and the request held for the stream's features.
fn create(
    web: &Arc<Web>,
    client: Client,
    rid: u64,
    el: &Element,
) -> Result<(Arc<Session>, oneshot::Receiver<Bytes>), Bytes> {
    let server = &web.server;
    let config = &server.config.http;
    let Some(to) = el.attr("to") else {
        return Err(terminate("improper-addressing"));
    };
    if !server.config.server.domains.iter().any(|d| d == to) {
        return Err(terminate("host-unknown"));
    }
    if web.bosh.len() >= MAX_SESSIONS {
        return Err(terminate("remote-connection-failed"));
    }
    let secs = |name: &str| el.attr(name).and_then(|v| v.parse::<u64>().ok());
    let max_wait = config.bosh_max_wait_secs;
    let hold = secs("hold")
        .unwrap_or(1)
        .min(u64::from(config.bosh_max_hold)) as usize;
    // §7.1: a Content-Type for every response, if the client names one that can be one.
    let content = el
        .attr("content")
        .filter(|c| c.len() < 128 && axum::http::HeaderValue::from_str(c).is_ok())
        .map(str::to_string);
    let ver = el
        .attr("ver")
        .and_then(parse_version)
        .map_or(VERSION, |v| v.min(VERSION));
    let terms = Terms {
        // A polling session (`hold='0'`) may ask for `wait='0'`.
        wait: Duration::from_secs(secs("wait").unwrap_or(max_wait).min(max_wait)),
        hold,
        requests: hold as u64 + 1,
        inactivity: Duration::from_secs(config.bosh_inactivity_secs),
        max_pause: Duration::from_secs(config.bosh_max_pause_secs),
        acks: el.attr("ack") == Some("1"),
        ver,
        content,
    };
    let session = Arc::new(Session {
        sid: crate::stream::random_id(32),
        terms,
        state: Mutex::new(State {
            next_rid: rid,
            creation_rid: Some(rid),
            ..State::default()
        }),
    });
    lock(&web.bosh.map).insert(session.sid.clone(), session.clone());
    let framing = BoshFraming {
        session: session.clone(),
        sessions: Arc::downgrade(&web.bosh),
        secure: client.secure,
        inactive: None,
    };
    let (driver, delay) = crate::c2s::connection(server.clone(), framing, client.addr);
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        driver.run(false).await;
    });
    let mut parsed = parse_body(el, to);
    parsed.kind = Kind::Restart;
    let (tx, rx) = oneshot::channel();
    session.accept(&mut lock(&session.state), rid, parsed, tx);
    Ok((session, rx))
}

/// The driver's end of a BOSH session.
pub struct BoshFraming {
    session: Arc<Session>,
    sessions: Weak<Sessions>,
    secure: bool,
    /// The inactivity timer, armed while no request is held (§11).
    inactive: Option<Pin<Box<Sleep>>>,
}

/// How much output may wait for a request before the driver's writes wait too (and its write
/// timeout ends a session whose client stopped asking).
const OUTPUT_LIMIT: usize = 1 << 20;

impl Framing for BoshFraming {
    const TRANSPORT: &'static str = "bosh";

    fn poll_read_lazy(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.session.state);
        if st.kill {
            return Poll::Ready(Ok(0));
        }
        if !st.input.is_empty() {
            let n = st.input.len();
            if buf.len() < n {
                // As WebSocket does: the input buffer changes hands instead of being copied.
                std::mem::swap(buf, &mut st.input);
            } else {
                buf[..n].copy_from_slice(&st.input);
            }
            st.input.clear();
            if st.input.capacity() > 4096 {
                st.input = Vec::new();
            }
            return Poll::Ready(Ok(n));
        }
        st.reader = Some(cx.waker().clone());
        let terms = &self.session.terms;
        let deadline = match (st.held.is_empty() && st.early.is_empty(), st.idle_since) {
            (true, Some(since)) => {
                Some((since + terms.inactivity).max(st.pause_until.unwrap_or(since)))
            }
            _ => None,
        };
        drop(st);
        *buf = Vec::new();
        let Some(deadline) = deadline else {
            self.inactive = None;
            return Poll::Pending;
        };
        let timer = self
            .inactive
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            // §11: the client is gone; end the session as a dropped connection.
            Poll::Ready(()) => Poll::Ready(Ok(0)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn channel_bindings(&self) -> Option<&ChannelBindings> {
        None
    }

    fn can_start_tls(&self) -> bool {
        false
    }

    async fn start_tls(&mut self, _: &TlsAcceptor, _: &CertResolver) -> bool {
        false
    }
}

impl AsyncWrite for BoshFraming {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let session = &self.session;
        let mut st = lock(&session.state);
        if st.ended.is_some() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if st.output.len() > OUTPUT_LIMIT {
            st.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.splitter.push(buf);
        while let Some(unit) = st.splitter.next_unit() {
            match unit {
                Unit::Open(mut attrs) => {
                    // Kept for the creation response: only what it carries.
                    attrs.retain(|(name, _)| name == "from" || name == "id");
                    attrs.shrink_to_fit();
                    st.stream_attrs = attrs;
                }
                Unit::Element(element) => {
                    st.stream_error |= element.starts_with(b"<stream:error");
                    st.output.extend_from_slice(&element);
                }
                Unit::Close => {
                    let output = std::mem::take(&mut st.output);
                    let reply = session.final_body(&st, &output);
                    st.output = output;
                    session.end(&mut st, reply);
                    break;
                }
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let session = &self.session;
        let mut st = lock(&session.state);
        if !st.output.is_empty() && !st.held.is_empty() {
            session.answer_oldest(&mut st);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Drop for BoshFraming {
    /// The driver is done: requests still waiting are told the session ended, and the sid is
    /// forgotten.
    fn drop(&mut self) {
        let session = &self.session;
        {
            let mut st = lock(&session.state);
            if st.ended.is_none() {
                session.end(&mut st, terminate("remote-connection-failed"));
            }
        }
        if let Some(sessions) = self.sessions.upgrade() {
            sessions.remove(&session.sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(hold: usize) -> Session {
        Session {
            sid: "s".into(),
            terms: Terms {
                wait: Duration::from_secs(30),
                hold,
                requests: hold as u64 + 1,
                inactivity: Duration::from_secs(60),
                max_pause: Duration::from_secs(120),
                acks: false,
                ver: VERSION,
                content: None,
            },
            state: Mutex::new(State {
                next_rid: 10,
                ..State::default()
            }),
        }
    }

    fn message(text: &str) -> Parsed {
        Parsed {
            kind: Kind::Normal,
            payload: text.as_bytes().to_vec(),
            header: Vec::new(),
            pause: None,
            ack: None,
        }
    }

    #[tokio::test]
    async fn payloads_reach_the_stream_in_rid_order_and_the_oldest_held_request_answers() {
        let s = session(1);
        let mut r11 = s.receive(11, message("<b/>")).unwrap();
        // 11 waits for 10: nothing reaches the stream yet.
        assert!(lock(&s.state).input.is_empty());
        let mut r10 = s.receive(10, message("<a/>")).unwrap();
        assert_eq!(lock(&s.state).input, b"<a/><b/>");
        // Two held with hold=1: 10 was answered (empty), 11 waits.
        assert_eq!(
            &r10.try_recv().unwrap()[..],
            b"<body xmlns='http://jabber.org/protocol/httpbind'/>"
        );
        assert!(r11.try_recv().is_err());
        // Output goes to the held request when the driver flushes.
        {
            let mut st = lock(&s.state);
            st.output
                .extend_from_slice(b"<message xmlns='jabber:client'/>");
            s.answer_oldest(&mut st);
        }
        assert_eq!(
            &r11.try_recv().unwrap()[..],
            &b"<body xmlns='http://jabber.org/protocol/httpbind'><message xmlns='jabber:client'/></body>"[..]
        );
        // Asked again: the same response.
        assert_eq!(
            s.receive(11, message("<b/>")).unwrap_err(),
            lock(&s.state).sent.back().unwrap().body
        );
    }

    #[tokio::test]
    async fn a_rid_outside_the_window_ends_the_session() {
        let s = session(1);
        let reply = s.receive(12, message("")).unwrap_err();
        assert_eq!(&reply[..], &terminate("item-not-found")[..]);
        assert!(lock(&s.state).kill);
        // And so does a rid that was never answered and is long gone.
        let s = session(1);
        assert_eq!(
            &s.receive(3, message("")).unwrap_err()[..],
            &terminate("item-not-found")[..]
        );
    }

    #[tokio::test]
    async fn a_terminate_request_closes_the_stream_and_pause_answers_everything() {
        let s = session(1);
        let parsed = Parsed {
            kind: Kind::Terminate,
            ..message("<presence type='unavailable'/>")
        };
        let _r = s.receive(10, parsed).unwrap();
        assert_eq!(
            lock(&s.state).input,
            b"<presence type='unavailable'/></stream:stream>"
        );
        let s = session(1);
        let mut r10 = s.receive(10, message("")).unwrap();
        let mut r11 = s
            .receive(
                11,
                Parsed {
                    pause: Some(60),
                    ..message("")
                },
            )
            .unwrap();
        assert!(r10.try_recv().is_ok() && r11.try_recv().is_ok());
        assert!(lock(&s.state).pause_until.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgements_and_reports_follow_section_9() {
        let mut s = session(1);
        s.terms.acks = true;
        let mut r10 = s.receive(10, message("")).unwrap();
        let _r11 = s.receive(11, message("")).unwrap();
        // 10 is answered while 11 is in: the answer acknowledges up to 11 (§9.2).
        let answer = r10.try_recv().unwrap();
        assert!(std::str::from_utf8(&answer).unwrap().contains("ack='11'"));
        // The client says, much later, it has only 9: the response to 10 went missing, so
        // the next response reports it with its age (§9.3), at once.
        tokio::time::advance(Duration::from_secs(6)).await;
        let mut r12 = s
            .receive(
                12,
                Parsed {
                    ack: Some(9),
                    ..message("")
                },
            )
            .unwrap();
        let _ = r12.try_recv();
        let sent: Vec<String> = lock(&s.state)
            .sent
            .iter()
            .map(|s| String::from_utf8(s.body.to_vec()).unwrap())
            .collect();
        assert!(
            sent.iter()
                .any(|b| b.contains("report='10'") && b.contains("time='6")),
            "{sent:?}"
        );
    }

    #[test]
    fn reads_the_sid_of_a_broken_body() {
        assert_eq!(
            sid_of(b"<body sid='abc' rid='1'><oops").as_deref(),
            Some("abc")
        );
        assert_eq!(sid_of(b"<body sid=\"x\">").as_deref(), Some("x"));
        assert_eq!(sid_of(b"garbage"), None);
    }
}
