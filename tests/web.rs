//! Web clients over real sockets: BOSH (XEP-0124/0206) and WebSocket (RFC 7395) on the HTTP
//! listener, each logging in with SCRAM, binding and chatting with a TCP client, every error
//! path with its condition, and XEP-0156 host-meta.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{exchange, exchange_on, parse_head};
use common::scram::{success_text, Hash, Scram};
use common::{parse, Raw, TestServer, PASSWORD};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use xmppd_xml::Element;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A message or a body as the server sent it, parsed on its own (no stream around it).
fn standalone(xml: &str) -> Element {
    xmppd_xml::parse_fragment(xml, "").unwrap_or_else(|| panic!("not one element: {xml:?}"))
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// An RFC 7395 client: one element per text message.
struct Ws {
    ws: WsStream,
}

impl Ws {
    async fn connect(http: SocketAddr) -> Ws {
        Self::try_connect(http, Some("xmpp"), None).await.unwrap()
    }

    async fn try_connect(
        http: SocketAddr,
        protocol: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{http}/xmpp-websocket")
            .into_client_request()
            .unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        if let Some(o) = origin {
            request.headers_mut().insert("Origin", o.parse().unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        // RFC 7395 §3.1: the server names the subprotocol it agreed to.
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "xmpp"
        );
        Ok(Ws { ws })
    }

    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next text message, or `None` once the server closed the connection.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("the server answers in time");
            match next {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> Element {
        let text = self.next_text().await.expect("a message, not the end");
        standalone(&text)
    }

    /// Opens (or reopens) the stream: the server's `<open/>`, then its features.
    async fn open(&mut self) -> Element {
        self.send_text(&format!(
            "<open xmlns='{FRAMING}' to='localhost' version='1.0' xml:lang='en'/>"
        ))
        .await;
        let open = self.next().await;
        assert!(open.is("open", FRAMING), "{}", open.to_xml());
        assert_eq!(open.attr("from"), Some("localhost"));
        assert_eq!(open.attr("version"), Some("1.0"));
        assert!(open.attr("id").is_some_and(|id| !id.is_empty()));
        let features = self.next().await;
        assert!(features.is("features", "http://etherx.jabber.org/streams"));
        features
    }

    /// Waits for the server to end the stream; returns the stream error it sent, if any.
    async fn stream_error(&mut self) -> Option<Element> {
        let mut error = None;
        while let Some(text) = self.next_text().await {
            let el = standalone(&text);
            if el.is("error", "http://etherx.jabber.org/streams") {
                error = Some(el);
            } else if el.is("close", FRAMING) {
                return error;
            }
        }
        error
    }
}

/// A BOSH client over raw HTTP/1.1: each request on its own connection, as several may be
/// outstanding at once.
struct Bosh {
    http: SocketAddr,
    sid: String,
    rid: u64,
    /// Responses of requests sent in the background, as they complete.
    responses: tokio::sync::mpsc::UnboundedSender<Element>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<Element>,
    outstanding: usize,
    inbox: VecDeque<Element>,
}

async fn post(addr: SocketAddr, body: &str) -> Element {
    let (status, headers, body) = exchange(addr, "POST", "/http-bind", &[], body).await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers.iter().find(|(k, _)| k == "content-type").unwrap();
    assert_eq!(content_type.1, "text/xml; charset=utf-8");
    let body = standalone(&body);
    assert!(body.is("body", HTTPBIND), "{}", body.to_xml());
    body
}

fn condition(body: &Element) -> (Option<&str>, Option<&str>) {
    (body.attr("type"), body.attr("condition"))
}

impl Bosh {
    /// Creates a session with `wait` and `hold`; returns it and the creation response.
    async fn create(http: SocketAddr, wait: u64, hold: u64) -> (Bosh, Element) {
        let rid = 73_000 + u64::from(rand_u16());
        let created = post(
            http,
            &format!(
                "<body rid='{rid}' to='localhost' wait='{wait}' hold='{hold}' ver='1.6' \
                 xml:lang='en' xmpp:version='1.0' xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
            ),
        )
        .await;
        let sid = created.attr("sid").expect("a sid").to_string();
        let (responses, arrived) = tokio::sync::mpsc::unbounded_channel();
        let bosh = Bosh {
            http,
            sid,
            rid,
            responses,
            arrived,
            outstanding: 0,
            inbox: VecDeque::new(),
        };
        (bosh, created)
    }

    fn body(&mut self, attrs: &str, payload: &str) -> String {
        self.rid += 1;
        format!(
            "<body rid='{}' sid='{}' xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'{attrs}>{payload}</body>",
            self.rid, self.sid
        )
    }

    /// Sends a request now and waits for its response.
    async fn request(&mut self, attrs: &str, payload: &str) -> Element {
        let body = self.body(attrs, payload);
        post(self.http, &body).await
    }

    /// Sends a request in the background; its response's children arrive in the inbox.
    fn send(&mut self, payload: &str) {
        let body = self.body("", payload);
        let (http, tx) = (self.http, self.responses.clone());
        self.outstanding += 1;
        tokio::spawn(async move {
            let _ = tx.send(post(http, &body).await);
        });
    }

    /// The next stanza from the server, polling as a client does (one request always held).
    async fn next(&mut self) -> Element {
        let deadline = Instant::now() + TIMEOUT;
        while self.inbox.is_empty() {
            assert!(Instant::now() < deadline, "nothing arrived in time");
            if self.outstanding == 0 {
                self.send("");
            }
            let body = tokio::time::timeout(TIMEOUT, self.arrived.recv())
                .await
                .expect("a response in time")
                .unwrap();
            self.outstanding -= 1;
            assert_ne!(body.attr("type"), Some("terminate"), "{}", body.to_xml());
            self.inbox.extend(body.children().cloned());
        }
        self.inbox.pop_front().unwrap()
    }
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 60_000) as u16
}

/// Either web client, for what both do alike.
#[async_trait::async_trait]
trait WebClient: Send {
    async fn send_stanza(&mut self, xml: &str);
    async fn next_stanza(&mut self) -> Element;
    /// Restarts the stream after SASL; returns the new features.
    async fn restart(&mut self) -> Element;

    /// The next stanza `matches` accepts, skipping others (bounded).
    async fn expect(&mut self, matches: &(dyn for<'a> Fn(&'a Element) -> bool + Sync)) -> Element {
        for _ in 0..50 {
            let el = self.next_stanza().await;
            if matches(&el) {
                return el;
            }
        }
        panic!("no matching stanza among the next 50");
    }
}

#[async_trait::async_trait]
impl WebClient for Ws {
    async fn send_stanza(&mut self, xml: &str) {
        self.send_text(xml).await;
    }
    async fn next_stanza(&mut self) -> Element {
        self.next().await
    }
    async fn restart(&mut self) -> Element {
        self.open().await
    }
}

#[async_trait::async_trait]
impl WebClient for Bosh {
    async fn send_stanza(&mut self, xml: &str) {
        self.send(xml);
    }
    async fn next_stanza(&mut self) -> Element {
        self.next().await
    }
    async fn restart(&mut self) -> Element {
        // XEP-0206 §5: the restart request is answered with the new stream's features.
        let body = self
            .request(" to='localhost' xmpp:restart='true'", "")
            .await;
        let features = body.children().next().expect("features").clone();
        assert!(features.is("features", "http://etherx.jabber.org/streams"));
        features
    }
}

/// SCRAM-SHA-1 (no channel binding: there is no TLS session of ours to bind to), a stream
/// restart, binding and initial presence; returns the bound JID.
async fn login(
    client: &mut dyn WebClient,
    features: &Element,
    user: &str,
    resource: &str,
) -> String {
    let mechanisms: Vec<String> = features
        .get_child("mechanisms", SASL)
        .expect("mechanisms")
        .children()
        .map(|m| m.text())
        .collect();
    assert!(
        mechanisms.contains(&"SCRAM-SHA-1".to_string()),
        "{mechanisms:?}"
    );
    assert!(
        !mechanisms.iter().any(|m| m.ends_with("-PLUS")),
        "{mechanisms:?}"
    );
    let scram = Scram::new(Hash::Sha1, user, "n,,");
    client
        .send_stanza(&format!(
            "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{}</auth>",
            scram.first()
        ))
        .await;
    let challenge = client.next_stanza().await;
    assert!(challenge.is("challenge", SASL), "{}", challenge.to_xml());
    let (answer, verifier) = scram.answer(&challenge.text(), PASSWORD, b"");
    client
        .send_stanza(&format!("<response xmlns='{SASL}'>{answer}</response>"))
        .await;
    let success = client.next_stanza().await;
    assert!(success.is("success", SASL), "{}", success.to_xml());
    assert_eq!(success_text(&success.text()), verifier);
    let features = client.restart().await;
    assert!(features.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
    client
        .send_stanza(&format!(
            "<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await;
    let bound = client.expect(&|e| e.attr("id") == Some("bind")).await;
    let jid = bound
        .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
        .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
        .expect("a bound jid")
        .text();
    client
        .send_stanza("<presence xmlns='jabber:client'/>")
        .await;
    jid
}

/// Makes alice and bob contacts over TCP (the roster stays), then leaves bob online there.
async fn bob_with_alice_as_contact(server: &TestServer) -> Raw {
    let (alice, mut bob) = common::friends(server, "tcp", "tcp").await;
    drop(alice);
    bob.stanza_with(&["from='alice@localhost/tcp'", "type='unavailable'"])
        .await;
    bob
}

/// What both web transports must do with a TCP client: presence, chat both ways.
async fn chats_with_tcp(client: &mut dyn WebClient, jid: &str, bob: &mut Raw) {
    let presence = parse(
        &bob.stanza_with(&["<presence", &format!("from='{jid}'")])
            .await,
    );
    assert_eq!(presence.attr("type"), None);
    bob.send(&format!(
        "<message to='{jid}' type='chat' id='m1'><body>hello web</body></message>"
    ))
    .await;
    let message = client.expect(&|e| e.name() == "message").await;
    assert!(message.is("message", "jabber:client"));
    assert_eq!(message.attr("from"), Some("bob@localhost/tcp"));
    assert_eq!(
        message.get_child("body", "jabber:client").map(|b| b.text()),
        Some("hello web".into())
    );
    client
        .send_stanza(
            "<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat' id='m2'>\
             <body>hello tcp</body></message>",
        )
        .await;
    let reply = parse(&bob.stanza_with(&["<message", "id='m2'"]).await);
    assert_eq!(reply.attr("from"), Some(jid));
    assert_eq!(
        reply.get_child("body", "jabber:client").map(|b| b.text()),
        Some("hello tcp".into())
    );
}

#[tokio::test]
async fn a_websocket_client_logs_in_with_scram_binds_and_chats_with_a_tcp_client() {
    let server = TestServer::start().await;
    let mut bob = bob_with_alice_as_contact(&server).await;
    let mut ws = Ws::connect(server.http.unwrap()).await;
    let features = ws.open().await;
    let jid = login(&mut ws, &features, "alice", "web").await;
    assert_eq!(jid, "alice@localhost/web");
    chats_with_tcp(&mut ws, &jid, &mut bob).await;
    // RFC 7395 §3.6: our <close/> is answered with the server's, then the socket closes.
    ws.send_text(&format!("<close xmlns='{FRAMING}'/>")).await;
    let mut closed = false;
    while let Some(text) = ws.next_text().await {
        closed |= standalone(&text).is("close", FRAMING);
    }
    assert!(closed, "the server answered <close/>");
    let gone = parse(
        &bob.stanza_with(&[&format!("from='{jid}'"), "unavailable"])
            .await,
    );
    assert_eq!(gone.attr("type"), Some("unavailable"));
    assert_eq!(
        server
            .metric("xmppd_sessions{transport=\"websocket\"}")
            .await,
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_bosh_client_logs_in_with_scram_binds_and_chats_with_a_tcp_client() {
    let server = TestServer::start().await;
    let mut bob = bob_with_alice_as_contact(&server).await;
    let http = server.http.unwrap();
    let (mut bosh, created) = Bosh::create(http, 10, 1).await;
    // XEP-0124 §7.1 and XEP-0206 §3: the session's terms, and the stream's features in it.
    for attr in [
        "wait",
        "requests",
        "hold",
        "inactivity",
        "polling",
        "ver",
        "authid",
    ] {
        assert!(
            created.attr(attr).is_some(),
            "{attr} in {}",
            created.to_xml()
        );
    }
    assert_eq!(created.attr("from"), Some("localhost"));
    assert_eq!(created.attr("wait"), Some("10"));
    assert_eq!(created.attr("hold"), Some("1"));
    assert_eq!(created.attr("{urn:xmpp:xbosh}version"), Some("1.0"));
    let features = created.children().next().expect("features").clone();
    let jid = login(&mut bosh, &features, "alice", "bosh").await;
    assert_eq!(jid, "alice@localhost/bosh");
    chats_with_tcp(&mut bosh, &jid, &mut bob).await;
    // §13: terminate, with a last stanza in it; contacts see the session end.
    let end = bosh
        .request(
            " type='terminate'",
            "<presence xmlns='jabber:client' type='unavailable'><status>bye</status></presence>",
        )
        .await;
    assert_eq!(end.attr("type"), Some("terminate"));
    let gone = parse(
        &bob.stanza_with(&[&format!("from='{jid}'"), "unavailable"])
            .await,
    );
    assert_eq!(
        gone.get_child("status", "jabber:client").map(|s| s.text()),
        Some("bye".into())
    );
    // The session is gone: its sid is unknown now.
    let after = bosh.request("", "").await;
    assert_eq!(
        condition(&after),
        (Some("terminate"), Some("item-not-found"))
    );
    server.stop().await;
}

#[tokio::test]
async fn websocket_errors_get_their_rfc_7395_and_rfc_6120_conditions() {
    let server = TestServer::start_with(|c| {
        c.http.cors_origins = vec!["https://chat.example".into()];
    })
    .await;
    let http = server.http.unwrap();
    // §3.1: no "xmpp" subprotocol, no WebSocket.
    let refused = Ws::try_connect(http, None, None)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400),
        "{refused:?}"
    );
    // An origin not in http.cors_origins.
    let refused = Ws::try_connect(http, Some("xmpp"), Some("https://evil.example"))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403),
        "{refused:?}"
    );
    assert!(
        Ws::try_connect(http, Some("xmpp"), Some("https://chat.example"))
            .await
            .is_ok()
    );

    let expect_error = |cases: Vec<(&'static str, Message)>| async move {
        for (condition, message) in cases {
            let mut ws = Ws::connect(http).await;
            ws.open().await;
            ws.ws.send(message.clone()).await.unwrap();
            let what = format!("{message:?}").chars().take(80).collect::<String>();
            let error = ws
                .stream_error()
                .await
                .unwrap_or_else(|| panic!("a stream error for {what}"));
            assert!(
                error.has_child(condition, STREAMS),
                "{what}: {}",
                error.to_xml()
            );
        }
    };
    let big = format!(
        "<message xmlns='jabber:client' to='bob@localhost'><body>{}</body></message>",
        "x".repeat(300 * 1024)
    );
    expect_error(vec![
        // §3.3.3: one element per message.
        (
            "not-well-formed",
            Message::Text(
                "<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>".into(),
            ),
        ),
        ("not-well-formed", Message::Text("hello".into())),
        (
            "not-well-formed",
            Message::Text("<message xmlns='jabber:client'>".into()),
        ),
        // §3.3.1: text messages only.
        ("bad-format", Message::Binary(vec![1, 2, 3].into())),
        // The same stanza limit as TCP, and far beyond it.
        ("policy-violation", Message::Text(big.into())),
        (
            "policy-violation",
            Message::Text(
                format!(
                    "<message xmlns='jabber:client'><body>{}</body></message>",
                    "y".repeat(700 * 1024)
                )
                .into(),
            ),
        ),
    ])
    .await;
    // Stanzas before authentication are refused as on TCP.
    let mut ws = Ws::connect(http).await;
    ws.open().await;
    ws.send_text("<message xmlns='jabber:client' to='bob@localhost'><body>x</body></message>")
        .await;
    let error = ws.stream_error().await.expect("a stream error");
    assert!(
        error.has_child("not-authorized", STREAMS),
        "{}",
        error.to_xml()
    );
    server.stop().await;
}

#[tokio::test]
async fn websocket_clients_are_sent_to_the_see_other_uri() {
    let server = TestServer::start_with(|c| {
        c.http.websocket_see_other_uri = "wss://elsewhere.example/xmpp".into();
    })
    .await;
    let mut ws = Ws::connect(server.http.unwrap()).await;
    ws.send_text(&format!(
        "<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
    ))
    .await;
    let close = ws.next().await;
    assert!(close.is("close", FRAMING));
    assert_eq!(
        close.attr("see-other-uri"),
        Some("wss://elsewhere.example/xmpp")
    );
    assert!(ws.next_text().await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn bosh_long_polls_return_within_wait_and_at_once_when_a_stanza_arrives() {
    let server = TestServer::start().await;
    let mut bob = bob_with_alice_as_contact(&server).await;
    let http = server.http.unwrap();
    let (mut bosh, created) = Bosh::create(http, 2, 1).await;
    let features = created.children().next().unwrap().clone();
    let jid = login(&mut bosh, &features, "alice", "poll").await;
    bob.stanza_with(&["<presence", &format!("from='{jid}'")])
        .await;
    // Drain what login left (own presence, roster pushes) until a poll comes back empty.
    loop {
        let started = Instant::now();
        let body = bosh.request("", "").await;
        if body.children().next().is_none() {
            // Nothing to say: answered at `wait`, not before and not much after.
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
                "{took:?}"
            );
            break;
        }
    }
    // A held request returns as soon as a stanza arrives.
    bosh.send("");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    bob.send(&format!(
        "<message to='{jid}' id='now'><body>now</body></message>"
    ))
    .await;
    let message = bosh.expect(&|e| e.name() == "message").await;
    assert_eq!(message.attr("id"), Some("now"));
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "{:?}",
        sent.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn bosh_request_ids_follow_the_window_repeats_and_order_of_section_14() {
    let server = TestServer::start().await;
    let mut bob = bob_with_alice_as_contact(&server).await;
    let http = server.http.unwrap();
    let (mut bosh, created) = Bosh::create(http, 2, 1).await;
    assert_eq!(created.attr("requests"), Some("2"));
    let features = created.children().next().unwrap().clone();
    let jid = login(&mut bosh, &features, "alice", "rid").await;
    bob.stanza_with(&["<presence", &format!("from='{jid}'")])
        .await;
    while bosh.request("", "").await.children().next().is_some() {}

    // Out of order: rid+2 arrives first and waits for rid+1; the payloads reach the
    // stream in rid order.
    let m = |id: &str| {
        format!("<message xmlns='jabber:client' to='bob@localhost/tcp' id='{id}'><body>{id}</body></message>")
    };
    let first = bosh.body("", &m("first"));
    let second = bosh.body("", &m("second"));
    let later = tokio::spawn(async move { post(http, &second).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let earlier = tokio::spawn(async move { post(http, &first).await });
    let a = bob.next_stanza().await;
    let b = bob.next_stanza().await;
    assert!(
        a.contains("id='first'") && b.contains("id='second'"),
        "{a} {b}"
    );
    earlier.await.unwrap();
    later.await.unwrap();

    // A repeated rid gets the same response again.
    let body = bosh.body("", "");
    let original = post(http, &body).await;
    let repeated = post(http, &body).await;
    assert_eq!(original.to_xml(), repeated.to_xml());

    // A bad sid: item-not-found, and the real session lives on.
    let bad = post(
        http,
        &format!("<body rid='1' sid='nonexistent' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(condition(&bad), (Some("terminate"), Some("item-not-found")));
    assert!(bosh.request("", "").await.attr("type").is_none());

    // A rid beyond the window ends the session with item-not-found; contacts see it go.
    bosh.rid += 5;
    let beyond = bosh.request("", "").await;
    assert_eq!(
        condition(&beyond),
        (Some("terminate"), Some("item-not-found"))
    );
    bob.stanza_with(&[&format!("from='{jid}'"), "unavailable"])
        .await;
    server.stop().await;
}

#[tokio::test]
async fn bosh_bad_requests_get_their_binding_conditions() {
    let server = TestServer::start().await;
    let http = server.http.unwrap();
    // §19.1: malformed XML, with or without a session; the session ends.
    let (mut bosh, _) = Bosh::create(http, 2, 1).await;
    let sid = bosh.sid.clone();
    let broken = post(
        http,
        &format!(
            "<body rid='{}' sid='{sid}' xmlns='{HTTPBIND}'><message><body></body>",
            bosh.rid + 1
        ),
    )
    .await;
    assert_eq!(condition(&broken), (Some("terminate"), Some("bad-request")));
    let after = bosh.request("", "").await;
    assert_eq!(
        condition(&after),
        (Some("terminate"), Some("item-not-found"))
    );
    let garbage = post(http, "this is not XML").await;
    assert_eq!(
        condition(&garbage),
        (Some("terminate"), Some("bad-request"))
    );
    let no_rid = post(http, &format!("<body to='localhost' xmlns='{HTTPBIND}'/>")).await;
    assert_eq!(condition(&no_rid), (Some("terminate"), Some("bad-request")));
    // §7.1: a domain we do not serve.
    let unknown = post(
        http,
        &format!("<body rid='5' to='example.net' wait='2' hold='1' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(
        condition(&unknown),
        (Some("terminate"), Some("host-unknown"))
    );
    // A body larger than the stanza limit.
    let big = format!(
        "<body rid='6' to='localhost' xmlns='{HTTPBIND}'><message xmlns='jabber:client'><body>{}</body></message></body>",
        "x".repeat(300 * 1024)
    );
    let refused = post(http, &big).await;
    assert_eq!(
        condition(&refused),
        (Some("terminate"), Some("policy-violation"))
    );
    // Stanzas before authentication: the stream error, carried as XEP-0206 §7 says.
    let (mut bosh, _) = Bosh::create(http, 2, 1).await;
    let error = bosh
        .request(
            "",
            "<message xmlns='jabber:client' to='bob@localhost'><body>x</body></message>",
        )
        .await;
    assert_eq!(
        condition(&error),
        (Some("terminate"), Some("remote-stream-error"))
    );
    let stream_error = error.children().next().expect("the stream error");
    assert!(
        stream_error.has_child("not-authorized", STREAMS),
        "{}",
        error.to_xml()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_bosh_session_without_requests_ends_after_inactivity() {
    let server = TestServer::start_with(|c| c.http.bosh_inactivity_secs = 2).await;
    let mut bob = bob_with_alice_as_contact(&server).await;
    let http = server.http.unwrap();
    let (mut bosh, created) = Bosh::create(http, 1, 1).await;
    assert_eq!(created.attr("inactivity"), Some("2"));
    let features = created.children().next().unwrap().clone();
    let jid = login(&mut bosh, &features, "alice", "idle").await;
    bob.stanza_with(&["<presence", &format!("from='{jid}'")])
        .await;
    // Let every request come back, then send none: the session ends, contacts see it.
    while bosh.outstanding > 0 {
        bosh.arrived.recv().await.unwrap();
        bosh.outstanding -= 1;
    }
    let gone = Instant::now();
    bob.stanza_with(&[&format!("from='{jid}'"), "unavailable"])
        .await;
    assert!(gone.elapsed() < Duration::from_secs(15));
    let after = bosh.request("", "").await;
    assert_eq!(
        condition(&after),
        (Some("terminate"), Some("item-not-found"))
    );
    server.stop().await;
}

#[tokio::test]
async fn bosh_sessions_count_against_the_per_address_limit_not_its_requests() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let http = server.http.unwrap();
    let (mut first, _) = Bosh::create(http, 1, 1).await;
    let second = post(
        http,
        &format!("<body rid='1' to='localhost' wait='1' hold='1' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert!(second.attr("sid").is_some(), "{}", second.to_xml());
    // Many requests in one session are one connection.
    for _ in 0..4 {
        assert!(first.request("", "").await.attr("type").is_none());
    }
    let third = post(
        http,
        &format!("<body rid='1' to='localhost' wait='1' hold='1' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(
        condition(&third),
        (Some("terminate"), Some("remote-stream-error"))
    );
    let error = third.children().next().expect("the stream error");
    assert!(
        error.has_child("policy-violation", STREAMS),
        "{}",
        third.to_xml()
    );
    server.stop().await;
}

#[tokio::test]
async fn bosh_cors_preflight_and_origins() {
    let server = TestServer::start_with(|c| {
        c.http.cors_origins = vec!["https://chat.example".into()];
    })
    .await;
    let http = server.http.unwrap();
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (status, headers, _) = exchange(
        http,
        "OPTIONS",
        "/http-bind",
        &[
            ("Origin", "https://chat.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        "",
    )
    .await;
    assert!((200..300).contains(&status), "{status}");
    assert_eq!(
        header(&headers, "access-control-allow-origin").as_deref(),
        Some("https://chat.example")
    );
    assert!(header(&headers, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(header(&headers, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase()
        .contains("content-type"));
    let body = format!("<body rid='9' to='localhost' wait='1' hold='1' xmlns='{HTTPBIND}'/>");
    let (_, headers, _) = exchange(
        http,
        "POST",
        "/http-bind",
        &[("Origin", "https://evil.example")],
        &body,
    )
    .await;
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    server.stop().await;
}

#[tokio::test]
async fn host_meta_lists_both_endpoints_in_xrd_and_json() {
    let server = TestServer::start().await;
    let http = server.http.unwrap();
    let (status, headers, xrd) = exchange(http, "GET", "/.well-known/host-meta", &[], "").await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "access-control-allow-origin" && v == "*"));
    let xrd = standalone(
        xrd.trim_start_matches(|c| c != '<')
            .split_once("?>")
            .unwrap()
            .1
            .trim(),
    );
    assert!(xrd.is("XRD", "http://docs.oasis-open.org/ns/xri/xrd-1.0"));
    let links: Vec<(String, String)> = xrd
        .children()
        .map(|l| {
            (
                l.attr("rel").unwrap().into(),
                l.attr("href").unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        links,
        vec![
            (
                "urn:xmpp:alt-connections:xbosh".to_string(),
                format!("http://{http}/http-bind")
            ),
            (
                "urn:xmpp:alt-connections:websocket".to_string(),
                format!("ws://{http}/xmpp-websocket")
            ),
        ]
    );
    let (status, _, json) = exchange(http, "GET", "/.well-known/host-meta.json", &[], "").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let links = json["links"].as_array().unwrap();
    assert_eq!(links[0]["rel"], "urn:xmpp:alt-connections:xbosh");
    assert_eq!(links[0]["href"], format!("http://{http}/http-bind"));
    assert_eq!(links[1]["rel"], "urn:xmpp:alt-connections:websocket");
    assert_eq!(links[1]["href"], format!("ws://{http}/xmpp-websocket"));
    server.stop().await;

    // Behind a proxy: the public URL.
    let server =
        TestServer::start_with(|c| c.http.public_url = "https://xmpp.example.org/".into()).await;
    let (_, _, json) = exchange(
        server.http.unwrap(),
        "GET",
        "/.well-known/host-meta.json",
        &[],
        "",
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["links"][0]["href"],
        "https://xmpp.example.org/http-bind"
    );
    assert_eq!(
        json["links"][1]["href"],
        "wss://xmpp.example.org/xmpp-websocket"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_https_listener_serves_the_same_with_the_tls_certificates() {
    let server =
        TestServer::start_with(|c| c.listen.https = vec!["127.0.0.1:0".parse().unwrap()]).await;
    let https = server.https.unwrap();
    let tls = || async {
        let tcp = TcpStream::connect(https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        common::tls_connector(false)
            .connect(name, tcp)
            .await
            .unwrap()
    };
    let (status, _, json) = exchange_on(
        tls().await,
        https,
        "GET",
        "/.well-known/host-meta.json",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["links"][0]["href"],
        format!("https://{https}/http-bind")
    );
    assert_eq!(
        json["links"][1]["href"],
        format!("wss://{https}/xmpp-websocket")
    );
    let create = format!("<body rid='3' to='localhost' wait='1' hold='1' xmlns='{HTTPBIND}'/>");
    let (status, _, body) =
        exchange_on(tls().await, https, "POST", "/http-bind", &[], &create).await;
    assert_eq!(status, 200);
    let body = standalone(&body);
    let features = body.children().next().expect("features");
    assert!(features.has_child("mechanisms", SASL), "{}", body.to_xml());
    server.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_and_scheme_count() {
    let server = TestServer::start_with(|c| {
        c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.limits.max_connections_per_ip = 1;
    })
    .await;
    let http = server.http.unwrap();
    let create = format!("<body rid='3' to='localhost' wait='1' hold='1' xmlns='{HTTPBIND}'/>");
    let features = |headers: &'static [(&'static str, &'static str)]| {
        let create = create.clone();
        async move {
            let (_, _, body) = exchange(http, "POST", "/http-bind", headers, &create).await;
            let body = standalone(&body);
            assert!(body.attr("sid").is_some(), "{}", body.to_xml());
            let features = body.children().next().expect("features").clone();
            features
        }
    };
    // Plain HTTP at the proxy: not encrypted, so no SASL (TLS before authentication).
    let plain = features(&[
        ("X-Forwarded-For", "203.0.113.5"),
        ("X-Forwarded-Proto", "http"),
    ])
    .await;
    assert!(!plain.has_child("mechanisms", SASL), "{}", plain.to_xml());
    // HTTPS at the proxy, another client (each address has its own limit of one).
    let secure = features(&[
        ("X-Forwarded-For", "203.0.113.6"),
        ("Forwarded", "for=203.0.113.6;proto=https"),
    ])
    .await;
    assert!(secure.has_child("mechanisms", SASL), "{}", secure.to_xml());
    server.stop().await;

    // Without trusted proxies a forwarded request from loopback is someone else's: not
    // taken as encrypted.
    let server = TestServer::start().await;
    let (_, _, body) = exchange(
        server.http.unwrap(),
        "POST",
        "/http-bind",
        &[
            ("X-Forwarded-For", "203.0.113.5"),
            ("X-Forwarded-Proto", "https"),
        ],
        &create,
    )
    .await;
    let body = standalone(&body);
    let features = body.children().next().expect("features");
    assert!(!features.has_child("mechanisms", SASL), "{}", body.to_xml());
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_client_that_stops_answering_pings_is_timed_out() {
    let server = TestServer::start_with(|c| {
        c.limits.ping_interval_secs = 1;
        c.limits.ping_timeout_secs = 2;
    })
    .await;
    let mut ws = Ws::connect(server.http.unwrap()).await;
    let features = ws.open().await;
    login(&mut ws, &features, "alice", "silent").await;
    // An XEP-0199 ping arrives; a client that does not answer it is ended.
    let ping = ws.expect(&|e| e.has_child("ping", "urn:xmpp:ping")).await;
    assert_eq!(ping.attr("type"), Some("get"));
    let error = ws.stream_error().await.expect("a stream error");
    assert!(
        error.has_child("connection-timeout", STREAMS),
        "{}",
        error.to_xml()
    );
    server.stop().await;
}

#[tokio::test]
async fn bosh_session_terms_follow_section_7() {
    let server = TestServer::start().await;
    let http = server.http.unwrap();
    // §7.2: the lower version, and a polling session's wait of 0; §7.1: the client's
    // Content-Type on every response of the session.
    let create = format!(
        "<body rid='20' to='localhost' wait='0' hold='0' ver='1.6' \
         content='text/plain; charset=utf-8' xmlns='{HTTPBIND}'/>"
    );
    let (status, headers, body) = exchange(http, "POST", "/http-bind", &[], &create).await;
    assert_eq!(status, 200);
    let content_type = |headers: &[(String, String)]| {
        headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        content_type(&headers).as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let body = standalone(&body);
    assert_eq!(body.attr("ver"), Some("1.6"));
    assert_eq!(body.attr("wait"), Some("0"));
    assert_eq!(body.attr("hold"), Some("0"));
    let sid = body.attr("sid").unwrap();
    let poll = format!("<body rid='21' sid='{sid}' xmlns='{HTTPBIND}'/>");
    let (_, headers, _) = exchange(http, "POST", "/http-bind", &[], &poll).await;
    assert_eq!(
        content_type(&headers).as_deref(),
        Some("text/plain; charset=utf-8")
    );
    // A newer client gets our version.
    let (_, _, body) = exchange(
        http,
        "POST",
        "/http-bind",
        &[],
        &format!("<body rid='5' to='localhost' wait='1' hold='1' ver='1.12' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(standalone(&body).attr("ver"), Some("1.11"));
    server.stop().await;
}

/// Reads one HTTP response off a kept-alive connection: status, headers, body (by its
/// `Content-Length`).
async fn read_one_response(tcp: &mut TcpStream) -> (u16, Vec<(String, String)>, String) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(n > 0, "the connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let (status, headers) = parse_head(&head);
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("a Content-Length");
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
            .await
            .expect("a response body in time")
            .unwrap();
        assert!(n > 0, "the connection closed inside a response");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        body.len(),
        length,
        "nothing after the response was asked for"
    );
    (status, headers, String::from_utf8(body).unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn bosh_requests_keep_their_connection_alive_beside_the_other_endpoints() {
    let server = TestServer::start().await;
    let http = server.http.unwrap();
    let mut tcp = TcpStream::connect(http).await.unwrap();
    let rid = 41_000 + u64::from(rand_u16());
    let post_on = |rid: u64, sid: Option<&str>, extra: &str| {
        let body = match sid {
            None => format!(
                "<body rid='{rid}' to='localhost' wait='1' hold='1' ver='1.6' \
                 xmpp:version='1.0' xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
            ),
            Some(sid) => format!("<body rid='{rid}' sid='{sid}' xmlns='{HTTPBIND}'/>"),
        };
        format!(
            "POST /http-bind HTTP/1.1\r\nHost: {http}\r\nOrigin: https://app.example\r\n\
             Content-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    // Creation and a held request, one after the other on one HTTP/1.1 connection.
    tcp.write_all(post_on(rid, None, "").as_bytes())
        .await
        .unwrap();
    let (status, headers, body) = read_one_response(&mut tcp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(header(&headers, "connection"), None, "kept alive");
    let created = standalone(&body);
    let sid = created.attr("sid").expect("a sid").to_string();
    tcp.write_all(post_on(rid + 1, Some(&sid), "").as_bytes())
        .await
        .unwrap();
    let (status, _, body) = read_one_response(&mut tcp).await;
    assert_eq!(status, 200);
    let empty = standalone(&body);
    assert!(
        empty.is("body", HTTPBIND) && empty.attr("type").is_none(),
        "{body}"
    );
    // A chunked body is axum's to read: the same session answers on the same connection.
    let chunked = format!("<body rid='{}' sid='{sid}' xmlns='{HTTPBIND}'/>", rid + 2);
    let request = format!(
        "POST /http-bind HTTP/1.1\r\nHost: {http}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunked}\r\n0\r\n\r\n",
        chunked.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (status, _, body) = read_one_response(&mut tcp).await;
    assert_eq!(status, 200, "{body}");
    let reply = standalone(&body);
    assert!(
        reply.is("body", HTTPBIND) && reply.attr("type").is_none(),
        "{body}"
    );
    // Then host-meta, and BOSH again, all on that connection.
    let get = format!("GET /.well-known/host-meta.json HTTP/1.1\r\nHost: {http}\r\n\r\n");
    tcp.write_all(get.as_bytes()).await.unwrap();
    let (status, _, body) = read_one_response(&mut tcp).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("{\"links\":"), "{body}");
    tcp.write_all(post_on(rid + 3, Some(&sid), "").as_bytes())
        .await
        .unwrap();
    let (status, headers, body) = read_one_response(&mut tcp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(standalone(&body).attr("type"), None, "{body}");
    // `http.cors_origins` is `["*"]` by default: the origin is let in, by name.
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );

    // HTTP/1.0 without keep-alive, and HTTP/1.1 with `Connection: close`: one response, then
    // the server closes.
    for (version, extra) in [("HTTP/1.0", ""), ("HTTP/1.1", "Connection: close\r\n")] {
        let mut tcp = TcpStream::connect(http).await.unwrap();
        let request = post_on(rid + 100, None, extra).replace("HTTP/1.1", version);
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut response))
            .await
            .expect("the server closes after its response")
            .unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(standalone(body).attr("sid").is_some(), "{body}");
    }
    server.stop().await;
}
