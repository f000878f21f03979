//! Scripted raw-XML exchanges for every error path of stream negotiation (RFC 6120 §4–§7).
//! After each, a fresh client must still log in.

mod common;

use common::{assert_login_works, header, Raw, TestServer, DOMAIN, PASSWORD};

fn stream_error(condition: &str) -> String {
    format!("<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
}

/// Sends `data` after a stream header on a plain connection; expects `condition` and a close.
async fn expect_stream_error(server: &TestServer, data: &str, condition: &str) -> String {
    let mut raw = Raw::connect(server.c2s).await;
    raw.send(data).await;
    let all = raw.read_to_close().await;
    assert!(
        all.contains(&stream_error(condition)),
        "expected {condition}, got {all}"
    );
    assert!(
        all.ends_with("</stream:stream>"),
        "stream not closed: {all}"
    );
    all
}

#[tokio::test]
async fn malformed_xml_is_not_well_formed() {
    let server = TestServer::start().await;
    let data = format!("{}<message><body>hi</message>", header(DOMAIN));
    expect_stream_error(&server, &data, "not-well-formed").await;
    let data = format!("{}<message a='1' a='2'/>", header(DOMAIN));
    expect_stream_error(&server, &data, "not-well-formed").await;
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn dtd_comment_pi_and_entities_are_restricted() {
    let server = TestServer::start().await;
    let dtd = "<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY boom 'x'>]>";
    let all = expect_stream_error(&server, dtd, "restricted-xml").await;
    // The header is sent before the error even though the client never completed one.
    assert!(
        all.starts_with("<?xml version='1.0'?><stream:stream"),
        "{all}"
    );
    for bad in [
        "<!-- comment -->",
        "<?target data?>",
        "<message>&boom;</message>",
    ] {
        let data = format!("{}{bad}", header(DOMAIN));
        expect_stream_error(&server, &data, "restricted-xml").await;
    }
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_stanza_is_a_policy_violation() {
    let server = TestServer::start_with(|c| c.limits.max_stanza_size = 10_000).await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "big").await;
    let body = "x".repeat(20_000);
    raw.send(&format!(
        "<message to='bob@localhost'><body>{body}</body></message>"
    ))
    .await;
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("policy-violation")), "{all}");
    // Deep nesting is refused too.
    let deep = format!("{}{}", header(DOMAIN), "<a>".repeat(100));
    expect_stream_error(&server, &deep, "policy-violation").await;
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn header_errors() {
    let server = TestServer::start().await;
    let wrong_ns = "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>";
    expect_stream_error(&server, wrong_ns, "invalid-namespace").await;
    expect_stream_error(&server, &header("elsewhere.example"), "host-unknown").await;
    let old = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>";
    expect_stream_error(&server, old, "unsupported-version").await;
    // RFC 6120 §4.9.3.10: a content namespace other than jabber:client ends the stream at
    // the header (it used to be accepted until the first stanza).
    let server_ns = header(DOMAIN).replace("jabber:client", "jabber:server");
    expect_stream_error(&server, &server_ns, "invalid-namespace").await;
    let unknown = format!("{}<foo xmlns='urn:example'/>", header(DOMAIN));
    expect_stream_error(&server, &unknown, "unsupported-stanza-type").await;
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn tls_is_required_before_auth_and_stanzas() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.c2s).await;
    let features = raw.open().await;
    assert!(
        features
            .contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{features}"
    );
    assert!(
        !features.contains("mechanisms"),
        "no SASL before TLS: {features}"
    );
    let reply = raw.auth_plain("alice", PASSWORD).await;
    assert!(reply.contains("<encryption-required/>"), "{reply}");
    raw.send("<message to='bob@localhost'><body>x</body></message>")
        .await;
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("not-authorized")), "{all}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn sasl_failures() {
    let server = TestServer::start().await;
    let (mut raw, features) = Raw::secure(server.c2s).await;
    for mech in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(
            features.contains(&format!("<mechanism>{mech}</mechanism>")),
            "{features}"
        );
    }
    assert!(
        features.contains("<channel-binding type='tls-exporter'/>"),
        "{features}"
    );
    assert!(
        !features.contains("ANONYMOUS"),
        "anonymous is off by default"
    );
    assert!(
        !features.contains("EXTERNAL"),
        "no client certificate, no EXTERNAL"
    );
    // Bad base64: incorrect-encoding (not counted as a credential failure).
    raw.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!not base64</auth>",
    )
    .await;
    let reply = raw.read_sasl_outcome().await;
    assert!(reply.contains("<incorrect-encoding/>"), "{reply}");
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='CRAM-MD5'/>")
        .await;
    let reply = raw.read_sasl_outcome().await;
    assert!(reply.contains("<invalid-mechanism/>"), "{reply}");
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNl</auth>")
        .await;
    let reply = raw.read_sasl_outcome().await;
    assert!(reply.contains("<malformed-request/>"), "{reply}");
    // A wrong password is not-authorized; it is the third failed attempt, so the stream is
    // closed (RFC 6120 §6.4.5).
    let reply = raw.auth_plain("alice", "wrong").await;
    assert!(reply.contains("<not-authorized/>"), "{reply}");
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("policy-violation")), "{all}");
    assert!(server.metric("xmppd_auth_failures_total").await >= 3);
    // By mechanism and reason, and the stream error by its condition.
    let reasons = "xmppd_auth_failure_reasons_total";
    let by = |mechanism: &str, reason: &str| {
        format!("{reasons}{{mechanism=\"{mechanism}\",reason=\"{reason}\"}}")
    };
    assert!(server.metric(&by("PLAIN", "not-authorized")).await >= 1);
    assert!(server.metric(&by("PLAIN", "malformed-request")).await >= 1);
    assert!(server.metric(&by("unknown", "invalid-mechanism")).await >= 1);
    let condition = "xmppd_stream_error_conditions_total{condition=\"policy-violation\"}";
    assert!(server.metric(condition).await >= 1);
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let server = TestServer::start_with(|c| c.sasl.max_failures_per_ip = 2).await;
    for _ in 0..2 {
        let (mut raw, _) = Raw::secure(server.c2s).await;
        let reply = raw.auth_plain("alice", "wrong").await;
        assert!(reply.contains("<not-authorized/>"), "{reply}");
    }
    let (mut raw, _) = Raw::secure(server.c2s).await;
    let reply = raw.auth_plain("alice", PASSWORD).await;
    assert!(
        reply.contains("<temporary-auth-failure/>"),
        "even the right password waits: {reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn stanzas_before_auth_and_bind() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::secure(server.c2s).await;
    raw.send("<iq type='get' id='1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("not-authorized")), "{all}");

    let (mut raw, _) = Raw::secure(server.c2s).await;
    assert!(raw.auth_plain("alice", PASSWORD).await.contains("<success"));
    let features = raw.open().await;
    assert!(
        features.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
        "{features}"
    );
    assert!(
        features
            .contains("<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"),
        "{features}"
    );
    raw.send("<message to='bob@localhost'><body>x</body></message>")
        .await;
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("not-authorized")), "{all}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn bind_generates_resources_and_resolves_conflicts() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::secure(server.c2s).await;
    assert!(raw.auth_plain("alice", PASSWORD).await.contains("<success"));
    raw.open().await;
    let jid = raw.bind(None).await;
    assert!(
        jid.starts_with("alice@localhost/") && jid.len() > "alice@localhost/".len(),
        "{jid}"
    );
    // The legacy session request gets an empty result.
    raw.send(
        "<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    )
    .await;
    let reply = raw.read_until("/>").await;
    assert!(
        reply.contains("id='sess'") && reply.contains("type='result'"),
        "{reply}"
    );

    let (mut first, _) = Raw::login(server.c2s, "bob", "phone").await;
    first.sync().await;
    let (mut second, jid) = Raw::login(server.c2s, "bob", "phone").await;
    assert_eq!(jid, "bob@localhost/phone");
    let all = first.read_to_close().await;
    assert!(all.contains(&stream_error("conflict")), "{all}");
    second.sync().await;
    server.stop().await;
}

#[tokio::test]
async fn forged_from_is_invalid_from() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "r").await;
    // Our own bare or full JID is fine.
    raw.send("<iq type='get' id='own' from='alice@localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    raw.read_until("id='own'").await;
    raw.send("<message from='bob@localhost/x' to='carol@localhost'><body>x</body></message>")
        .await;
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("invalid-from")), "{all}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn stanza_errors_from_the_router() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "r").await;
    // iq to a resource that is not online: service-unavailable.
    raw.send(
        "<iq type='get' id='gone' to='bob@localhost/nowhere'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    let reply = raw.read_until("</iq>").await;
    assert!(
        reply.contains("type='error'") && reply.contains("<service-unavailable"),
        "{reply}"
    );
    // Message to an account that does not exist.
    raw.send("<message id='m1' to='nobody@localhost'><body>hello</body></message>")
        .await;
    let reply = raw.read_until("</message>").await;
    assert!(reply.contains("<service-unavailable"), "{reply}");
    // A malformed address.
    raw.send("<message id='m2' to='a@b@c'><body>x</body></message>")
        .await;
    let reply = raw.read_until("</message>").await;
    assert!(reply.contains("<jid-malformed"), "{reply}");
    // Unknown payload namespace at the server.
    raw.send("<iq type='get' id='u' to='localhost'><query xmlns='urn:example:none'/></iq>")
        .await;
    let reply = raw.read_until("</iq>").await;
    assert!(reply.contains("<service-unavailable"), "{reply}");
    // An iq without an id is bad-request.
    raw.send("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let reply = raw.read_until("</iq>").await;
    assert!(reply.contains("<bad-request"), "{reply}");
    // Remote domains are not reachable yet.
    raw.send("<message id='m3' to='someone@remote.example'><body>x</body></message>")
        .await;
    let reply = raw.read_until("</message>").await;
    assert!(reply.contains("<remote-server-not-found"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn disco_and_version_of_the_server() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "r").await;
    raw.send("<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let reply = raw.read_until("</iq>").await;
    assert!(
        reply.contains("<identity category='server' type='im'"),
        "{reply}"
    );
    for feature in [
        "urn:xmpp:ping",
        "jabber:iq:version",
        "http://jabber.org/protocol/disco#info",
    ] {
        assert!(
            reply.contains(&format!("<feature var='{feature}'/>")),
            "{feature} in {reply}"
        );
    }
    raw.send("<iq type='get' id='v' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let reply = raw.read_until("</iq>").await;
    assert!(reply.contains("<name>xmppd</name>"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn closing_handshake_and_whitespace() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "r").await;
    raw.send("   \n  ").await;
    raw.sync().await;
    raw.send("</stream:stream>").await;
    let all = raw.read_to_close().await;
    assert!(all.ends_with("</stream:stream>"), "{all}");
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_connections_time_out() {
    let server = TestServer::start_with(|c| c.limits.unauthenticated_timeout_secs = 1).await;
    let mut raw = Raw::connect(server.c2s).await;
    raw.open().await;
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("connection-timeout")), "{all}");
    server.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_limited() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let mut a = Raw::connect(server.c2s).await;
    a.open().await;
    let mut b = Raw::connect(server.c2s).await;
    b.open().await;
    expect_stream_error(&server, &header(DOMAIN), "policy-violation").await;
    assert_eq!(server.metric("xmppd_connections_refused_total").await, 1);
    drop(a);
    drop(b);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_system_shutdown() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "r").await;
    raw.sync().await;
    let stop = tokio::spawn(server.stop());
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("system-shutdown")), "{all}");
    stop.await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let server = TestServer::start_with(|c| {
        c.limits.outbound_queue = 8;
        c.limits.max_bytes_per_second = 0;
        c.limits.write_timeout_secs = 2;
    })
    .await;
    let (mut sink, _) = Raw::login(server.c2s, "bob", "sink").await;
    sink.sync().await;
    let (mut sender, _) = Raw::login(server.c2s, "alice", "src").await;
    let body = "y".repeat(60_000);
    let stanza =
        format!("<message to='bob@localhost/sink' type='chat'><body>{body}</body></message>");
    // Bob never reads: the kernel buffers fill, then his queue, then he is cut off.
    for _ in 0..400 {
        if !sender.try_send(stanza.as_bytes()).await {
            break;
        }
        if server.metric("xmppd_queue_overflows_total").await > 0 {
            break;
        }
    }
    assert!(server.metric("xmppd_queue_overflows_total").await > 0);
    sender.sync().await;
    drop(sink);
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_counts() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "r").await;
    raw.sync().await;
    let text = server.metrics_text().await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("# TYPE xmppd_connections_open gauge"),
        "{text}"
    );
    assert_eq!(server.metric("xmppd_sessions_bound").await, 1);
    assert_eq!(server.metric("xmppd_sessions{transport=\"tcp\"}").await, 1);
    // The process's own figures, named as every Prometheus client names them.
    assert!(server.metric("process_resident_memory_bytes").await > 1 << 20);
    assert!(server.metric("process_open_fds").await > 3);
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    assert!(server.metric("xmppd_auth_success_total").await >= 1);
    assert!(server.metric("xmppd_stanzas_in_total{kind=\"iq\"}").await >= 2);
    // Storage latency: the login read the account; a roster change writes, and counts.
    assert!(
        text.contains("# TYPE xmppd_storage_seconds histogram"),
        "{text}"
    );
    let before = server.metric("xmppd_storage_seconds_count").await;
    assert!(before >= 1);
    raw.iq("r1", "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query></iq>")
        .await;
    assert!(server.metric("xmppd_storage_seconds_count").await > before);
    server.stop().await;
}

#[tokio::test]
async fn stream_language_is_applied_to_stanzas() {
    let server = TestServer::start().await;
    let (mut bob, _) = Raw::login(server.c2s, "bob", "b").await;
    bob.sync().await;
    let (mut alice, _) = Raw::secure(server.c2s).await;
    assert!(alice
        .auth_plain("alice", PASSWORD)
        .await
        .contains("<success"));
    alice
        .send(&header(DOMAIN).replace("version='1.0'>", "version='1.0' xml:lang='de'>"))
        .await;
    let opened = alice.read_until("</stream:features>").await;
    assert!(opened.contains("xml:lang='de'"), "{opened}");
    alice.bind(Some("a")).await;
    alice
        .send("<message to='bob@localhost/b'><body>hallo</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost/b' xml:lang='fr'><body>salut</body></message>")
        .await;
    let m = bob.stanza_with(&["hallo"]).await;
    assert!(m.contains("xml:lang='de'"), "{m}");
    let m = bob.stanza_with(&["salut"]).await;
    assert!(m.contains("xml:lang='fr'") && !m.contains("'de'"), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn silent_clients_are_pinged_then_dropped() {
    let server = TestServer::start_with(|c| {
        c.limits.ping_interval_secs = 1;
        c.limits.ping_timeout_secs = 1;
    })
    .await;
    let (mut quiet, jid) = Raw::login(server.c2s, "alice", "quiet").await;
    let ping = quiet.stanza_with(&["<ping xmlns='urn:xmpp:ping'/>"]).await;
    assert!(
        ping.contains("type='get'") && ping.contains(&format!("to='{jid}'")),
        "{ping}"
    );
    // It never answers: connection-timeout.
    let rest = quiet.read_to_close().await;
    assert!(rest.contains(&stream_error("connection-timeout")), "{rest}");

    // A client that answers stays.
    let (mut lively, _) = Raw::login(server.c2s, "bob", "lively").await;
    for _ in 0..3 {
        let ping = lively.stanza_with(&["<ping xmlns='urn:xmpp:ping'/>"]).await;
        let id = ping
            .split("id='")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        lively
            .send(&format!("<iq type='result' id='{id}' to='localhost'/>"))
            .await;
    }
    lively.sync().await;
    server.stop().await;
}

#[tokio::test]
async fn fast_senders_are_slowed_not_dropped() {
    let server = TestServer::start_with(|c| {
        c.limits.max_bytes_per_second = 4000;
        c.limits.burst_bytes = 4000;
    })
    .await;
    let (mut alice, _) = Raw::login(server.c2s, "alice", "a").await;
    let started = std::time::Instant::now();
    // About 12 kB: three seconds' worth at 4 kB/s once the burst is spent.
    for i in 0..120 {
        alice
            .send(&format!(
                "<iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
    }
    alice.stanza_with(&["id='p119'"]).await;
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "reading was paused"
    );
    assert_eq!(server.metric("xmppd_stream_errors_total").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_huge_stanza_gets_its_policy_violation_before_the_close() {
    // The default limit (256 KiB) and a client that keeps sending 4 MiB: the reason must
    // arrive, not a connection reset that destroys it.
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "huge").await;
    raw.sync().await;
    let chunk = "x".repeat(64 * 1024);
    raw.send("<message to='bob@localhost'><body>").await;
    for _ in 0..64 {
        if !raw.try_send(chunk.as_bytes()).await {
            break;
        }
    }
    let all = raw.read_to_close().await;
    assert!(all.contains(&stream_error("policy-violation")), "{all}");
    assert!(all.contains("stanza too large"), "{all}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_stream_error_is_answered_by_closing_only() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::login(server.c2s, "alice", "err").await;
    raw.sync().await;
    raw.send(&format!(
        "{}</stream:error>",
        stream_error("undefined-condition")
    ))
    .await;
    let rest = raw.read_to_close().await;
    assert!(!rest.contains("<stream:error"), "{rest}");
    assert!(rest.ends_with("</stream:stream>"), "{rest}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn an_http_request_gets_a_400_and_the_close() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.c2s).await;
    raw.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let all = raw.read_to_close().await;
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
    assert!(!all.contains("<stream"), "{all}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn bind_with_two_resources_and_presence_of_unknown_type_are_bad_requests() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::secure(server.c2s).await;
    assert!(raw.auth_plain("alice", PASSWORD).await.contains("<success"));
    raw.open().await;
    let reply = common::parse(
        &raw.iq(
            "b2",
            "<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a</resource><resource>b</resource></bind></iq>",
        )
        .await,
    );
    assert_eq!(reply.attr("type"), Some("error"), "{reply:?}");
    let error = reply.get_child("error", "jabber:client").unwrap();
    assert!(error.has_child("bad-request", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    raw.bind(Some("one")).await;
    raw.send("<presence id='p1' type='wobbly' to='bob@localhost'/>")
        .await;
    let reply = common::parse(&raw.stanza_with(&["id='p1'"]).await);
    assert_eq!(reply.attr("type"), Some("error"), "{reply:?}");
    let error = reply.get_child("error", "jabber:client").unwrap();
    assert!(error.has_child("bad-request", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    server.stop().await;
}

#[tokio::test]
async fn a_declared_encoding_other_than_utf8_and_a_pi_before_the_header() {
    let server = TestServer::start().await;
    // RFC 6120 §11.6: UTF-8 only.
    let latin1 = format!(
        "<?xml version='1.0' encoding='ISO-8859-1'?>{}",
        header(DOMAIN).trim_start_matches("<?xml version='1.0'?>")
    );
    expect_stream_error(&server, &latin1, "unsupported-encoding").await;
    // §11.1: no processing instructions, not even before the stream header.
    let pi = format!(
        "<?xml version='1.0'?><?target data?>{}",
        header(DOMAIN).trim_start_matches("<?xml version='1.0'?>")
    );
    expect_stream_error(&server, &pi, "restricted-xml").await;
    assert_login_works(server.c2s).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_stream_in_another_namespace_is_invalid_namespace() {
    let server = TestServer::start().await;
    for content in ["xmlns='jabber:server'", "xmlns='urn:example:wrong'", ""] {
        let data = format!(
            "<?xml version='1.0'?><stream:stream {content} \
             xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>"
        );
        expect_stream_error(&server, &data, "invalid-namespace").await;
    }
    assert_login_works(server.c2s).await;
    server.stop().await;
}

/// Every metric the Grafana dashboard in dist/grafana graphs is one the server exports.
#[tokio::test]
async fn the_grafana_dashboard_graphs_metrics_the_server_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dist/grafana/xmppd.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let server = TestServer::start().await;
    let text = server.metrics_text().await;
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("xmppd_") || w.starts_with("process_"));
            for name in names {
                // A counter's samples end in _total, a histogram's in _bucket/_count/_sum.
                let base = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    exported.contains(base),
                    "{name} in {expr:?} is not exported"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "the dashboard graphs {checked} metrics");
    server.stop().await;
}
