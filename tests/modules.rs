//! The registry's seams, each exercised by a test module registered through the public API
//! exactly as a feature module would be: a host for a subdomain, filters that drop and
//! reject, event handlers, and the stream features the standard modules add.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{parse, Raw, TestServer, PASSWORD};
use xmppd_core::{Jid, Stanza, StanzaErrorCondition};
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, Filter, Handled, Host, Point, Verdict,
};
use xmppd_server::router::SessionHandle;

const HOST: &str = "echo.localhost";

/// Answers every message to a JID at its subdomain by sending it back, and every iq request
/// with an empty result.
struct Echo;

#[async_trait]
impl Host for Echo {
    async fn handle(&self, cx: &mut Ctx<'_>, stanza: Stanza) {
        let (Some(from), Some(to)) = (stanza.from.clone(), stanza.to.clone()) else {
            return;
        };
        if stanza.is_iq_request() {
            cx.reply(stanza.iq_result(None));
            return;
        }
        let mut el = stanza.into_element();
        el.set_attr("from", to.as_str());
        el.set_attr("to", from.as_str());
        cx.route_element(el);
    }
}

#[tokio::test]
async fn a_host_module_receives_stanzas_for_its_subdomain() {
    let server = TestServer::start_with_modules(|_| {}, |r| r.host(HOST, Arc::new(Echo))).await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    alice
        .send(&format!(
            "<message to='room@{HOST}' id='m1' type='chat'><body>hello</body></message>"
        ))
        .await;
    let echo = parse(&alice.stanza_with(&["id='m1'"]).await);
    assert_eq!(echo.attr("from"), Some("room@echo.localhost"));
    assert_eq!(echo.attr("to"), Some("alice@localhost/home"));
    assert_eq!(
        echo.get_child("body", "jabber:client").unwrap().text(),
        "hello"
    );

    let reply = parse(
        &alice
            .iq(
                "q1",
                &format!("<iq type='get' id='q1' to='{HOST}'><query xmlns='urn:test'/></iq>"),
            )
            .await,
    );
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(reply.attr("from"), Some(HOST));
    // Unregistered subdomains stay unknown: remote-server-not-found without federation.
    let other = parse(
        &alice
            .iq(
                "q2",
                "<iq type='get' id='q2' to='other.localhost'><query xmlns='urn:test'/></iq>",
            )
            .await,
    );
    let error = other.get_child("error", "jabber:client").unwrap();
    assert!(error.has_child(
        "remote-server-not-found",
        "urn:ietf:params:xml:ns:xmpp-stanzas"
    ));
    server.stop().await;
}

/// Drops messages whose body is "drop", refuses those whose body is "reject".
struct BodyFilter;

#[async_trait]
impl Filter for BodyFilter {
    async fn check(
        &self,
        _: &Ctx<'_>,
        stanza: &Stanza,
        _: &Jid,
        _: Point,
        _: Option<&Arc<SessionHandle>>,
    ) -> Verdict {
        let body = stanza
            .element()
            .get_child("body", "jabber:client")
            .map(|b| b.text());
        match body.as_deref() {
            Some("drop") => Verdict::Drop,
            Some("reject") => Verdict::Reject(
                xmppd_core::StanzaError::new(StanzaErrorCondition::NotAllowed).with_text("no"),
            ),
            _ => Verdict::Allow,
        }
    }
}

#[tokio::test]
async fn a_filter_can_drop_and_reject() {
    let server = TestServer::start_with_modules(
        |_| {},
        |r| r.filter(Point::Inbound, 0, Arc::new(BodyFilter)),
    )
    .await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    for (id, body) in [("m1", "drop"), ("m2", "reject"), ("m3", "pass")] {
        alice
            .send(&format!(
                "<message to='bob@localhost/home' id='{id}' type='chat'><body>{body}</body></message>"
            ))
            .await;
    }
    // Stanzas are routed in order: had m1 or m2 reached Bob, they would come before m3.
    let first = parse(&bob.next_stanza().await);
    assert_eq!(first.attr("id"), Some("m3"));
    let bounce = parse(&alice.stanza_with(&["id='m2'"]).await);
    assert_eq!(bounce.attr("type"), Some("error"));
    let error = bounce.get_child("error", "jabber:client").unwrap();
    assert!(error.has_child("not-allowed", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    // Nothing came back for the dropped one: the next thing Alice gets is her ping reply.
    alice.sync().await;
    assert!(!alice.next_stanza_if_any().await.contains("id='m1'"));
    server.stop().await;
}

/// Writes down every event it sees.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str) {
        for _ in 0..100 {
            if self.seen().iter().any(|s| s == what) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {what:?} among {:?}", self.seen());
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn on(&self, _: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        let line = match event {
            Event::SessionBound(s) => format!("bound {}", s.jid),
            Event::InitialPresence(s) => format!("initial {}", s.jid),
            Event::SessionClosing(s) => format!("closing {}", s.jid),
            Event::AccountRemoving(u) => format!("removing {u}"),
            Event::AccountRemoved(u) => format!("removed {u}"),
            Event::Undelivered { user, .. } => format!("undelivered {user}"),
            Event::Delivered { user, .. } => format!("delivered {user}"),
            Event::PresenceReceived { from, user, .. } => format!("presence {from} to {user}"),
            Event::Started => "started".to_string(),
            Event::ShuttingDown => "shutting down".to_string(),
        };
        self.0.lock().unwrap().push(line);
        Handled::Continue
    }
}

#[tokio::test]
async fn event_handlers_see_sessions_come_and_go_and_accounts_deleted() {
    let recorder = Arc::new(Recorder::default());
    let handler = recorder.clone();
    let server = TestServer::start_with_modules(
        |_| {},
        move |r| {
            for kind in [
                EventKind::SessionBound,
                EventKind::InitialPresence,
                EventKind::SessionClosing,
                EventKind::AccountRemoving,
                EventKind::AccountRemoved,
                EventKind::Undelivered,
                EventKind::PresenceReceived,
                EventKind::ShuttingDown,
            ] {
                // Above offline storage, so it sees undelivered messages before they stop.
                r.on(kind, 50, handler.clone());
            }
        },
    )
    .await;
    let (mut alice, jid) = Raw::login(server.c2s, "alice", "home").await;
    alice.sync().await;
    recorder.wait_for(&format!("bound {jid}")).await;
    recorder.wait_for(&format!("initial {jid}")).await;
    // The user's own available presence, as broadcast to its resources.
    recorder
        .wait_for(&format!("presence {jid} to alice@localhost"))
        .await;
    alice
        .send("<message to='bob@localhost' id='o1' type='chat'><body>later</body></message>")
        .await;
    alice.sync().await;
    recorder.wait_for("undelivered bob@localhost").await;
    alice.send("</stream:stream>").await;
    alice.read_to_close().await;
    recorder.wait_for(&format!("closing {jid}")).await;
    let closed = recorder
        .seen()
        .iter()
        .filter(|s| s.starts_with("presence "))
        .count();
    assert_eq!(
        closed, 2,
        "available, then unavailable as the session closed"
    );

    let (mut carol, _) = Raw::login(server.c2s, "carol", "x").await;
    carol.send("<iq type='set' id='rm' to='localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>").await;
    carol.read_to_close().await;
    recorder.wait_for("removing carol@localhost").await;
    recorder.wait_for("removed carol@localhost").await;
    let seen = recorder.seen();
    let at = |what: &str| seen.iter().position(|s| s == what).unwrap();
    assert!(at("removing carol@localhost") < at("removed carol@localhost"));
    assert!(!seen.iter().any(|s| s == "shutting down"));
    server.stop().await;
    assert_eq!(
        recorder.seen().last().map(String::as_str),
        Some("shutting down")
    );
}

#[tokio::test]
async fn post_auth_features_advertise_roster_versioning_pre_approval_and_csi() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::secure(server.c2s).await;
    assert!(raw.auth_plain("alice", PASSWORD).await.contains("<success"));
    let opened = raw.open().await;
    let start = opened.find("<stream:features").unwrap();
    let features = parse(&opened[start..]);
    let has = |name: &str, ns: &str| features.children().any(|c| c.is(name, ns));
    assert!(has("bind", "urn:ietf:params:xml:ns:xmpp-bind"), "{opened}");
    // RFC 6121 §2.6.1 and §3.4.
    assert!(has("ver", "urn:xmpp:features:rosterver"), "{opened}");
    assert!(has("sub", "urn:xmpp:features:pre-approval"), "{opened}");
    // XEP-0352 §3.
    assert!(has("csi", "urn:xmpp:csi:0"), "{opened}");
    server.stop().await;
}

#[tokio::test]
async fn a_module_config_with_an_unknown_key_or_module_is_refused() {
    let mut config = xmppd_server::config::Config::default();
    config.listen.c2s = vec![];
    config.listen.c2s_direct_tls = vec![];
    config.listen.metrics = None;
    config.listen.http = vec![];
    let dir = tempfile::tempdir().unwrap();
    config.server.data_dir = dir.path().to_path_buf();
    let mut bad = config.clone();
    bad.modules
        .insert("csi".into(), toml::toml! { max_hld = 3 });
    let error = xmppd_server::start(bad, xmppd_modules::standard)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("[modules.csi]"), "{error}");
    assert!(error.to_string().contains("max_hld"), "{error}");
    let mut unknown = config.clone();
    unknown.modules.insert("nosuch".into(), toml::Table::new());
    let error = xmppd_server::start(unknown, xmppd_modules::standard)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("no such module"), "{error}");
    let mut off = config;
    off.modules
        .insert("carbons".into(), toml::toml! { enabled = false });
    let server = xmppd_server::start(off, xmppd_modules::standard)
        .await
        .expect("starts");
    server.shutdown().await;
}

#[test]
fn the_example_config_loads_with_every_module_section() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("xmppd.example.toml");
    let config = xmppd_server::config::Config::load(&path).expect("example config parses");
    assert!(config.modules.contains_key("csi"));
    xmppd_server::hooks(&config, xmppd_modules::standard).expect("every module accepts it");
}
