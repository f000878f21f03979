//! Every SASL mechanism driven by a scripted client, including the channel-binding rules that
//! no library exercises: tls-server-end-point, and the "y" flag downgrade check.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::scram::{success_text, Hash, Scram};
use common::{Raw, TestServer, PASSWORD};

const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

fn text_of(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag} ")).expect(tag);
    let open_end = start + xml[start..].find('>').unwrap() + 1;
    let close = xml[open_end..]
        .find("</")
        .map(|i| open_end + i)
        .unwrap_or(open_end);
    xml[open_end..close].to_string()
}

/// Runs a SCRAM exchange; returns the final server reply (success or failure).
async fn scram(
    raw: &mut Raw,
    mechanism: &str,
    hash: Hash,
    gs2: &str,
    cb_data: &[u8],
    password: &str,
) -> String {
    let client = Scram::new(hash, "alice", gs2);
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
        client.first()
    ))
    .await;
    let reply = raw.read_sasl_outcome().await;
    if !reply.contains("<challenge") {
        return reply;
    }
    let (final_msg, verifier) = client.answer(&text_of(&reply, "challenge"), password, cb_data);
    raw.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final_msg}</response>"
    ))
    .await;
    let outcome = raw.read_sasl_outcome().await;
    if outcome.contains("<success") {
        let got = success_text(&text_of(&outcome, "success"));
        assert_eq!(got, verifier, "server signature");
    }
    outcome
}

async fn bind_works(raw: &mut Raw) {
    raw.open().await;
    let jid = raw.bind(Some("scram")).await;
    assert_eq!(jid, "alice@localhost/scram");
}

#[tokio::test]
async fn scram_without_channel_binding() {
    let server = TestServer::start().await;
    for (mech, hash) in [("SCRAM-SHA-1", Hash::Sha1), ("SCRAM-SHA-256", Hash::Sha256)] {
        let (mut raw, _) = Raw::secure(server.c2s).await;
        let outcome = scram(&mut raw, mech, hash, "n,,", &[], PASSWORD).await;
        assert!(outcome.contains("<success"), "{mech}: {outcome}");
        bind_works(&mut raw).await;
        let (mut raw, _) = Raw::secure(server.c2s).await;
        let outcome = scram(&mut raw, mech, hash, "n,,", &[], "wrong").await;
        assert!(outcome.contains("<not-authorized/>"), "{mech}: {outcome}");
    }
    server.stop().await;
}

#[tokio::test]
async fn scram_plus_with_both_channel_binding_types() {
    let server = TestServer::start().await;
    for (mech, hash) in [
        ("SCRAM-SHA-1-PLUS", Hash::Sha1),
        ("SCRAM-SHA-256-PLUS", Hash::Sha256),
    ] {
        let (mut raw, _) = Raw::secure(server.c2s).await;
        let cb = raw.tls_exporter();
        let outcome = scram(&mut raw, mech, hash, "p=tls-exporter,,", &cb, PASSWORD).await;
        assert!(outcome.contains("<success"), "{mech}: {outcome}");
        bind_works(&mut raw).await;

        let (mut raw, _) = Raw::secure(server.c2s).await;
        let cb = raw.tls_server_end_point();
        let outcome = scram(
            &mut raw,
            mech,
            hash,
            "p=tls-server-end-point,,",
            &cb,
            PASSWORD,
        )
        .await;
        assert!(outcome.contains("<success"), "{mech} end-point: {outcome}");

        // Channel-binding data of another connection (a man in the middle) fails.
        let (mut raw, _) = Raw::secure(server.c2s).await;
        let outcome = scram(
            &mut raw,
            mech,
            hash,
            "p=tls-exporter,,",
            &[0u8; 32],
            PASSWORD,
        )
        .await;
        assert!(
            outcome.contains("<not-authorized/>"),
            "{mech} wrong binding: {outcome}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn scram_downgrade_is_detected() {
    let server = TestServer::start().await;
    // "y": the client supports binding but thinks we do not. We offered -PLUS: refuse.
    let (mut raw, _) = Raw::secure(server.c2s).await;
    let outcome = scram(
        &mut raw,
        "SCRAM-SHA-256",
        Hash::Sha256,
        "y,,",
        &[],
        PASSWORD,
    )
    .await;
    assert!(outcome.contains("<not-authorized/>"), "{outcome}");
    server.stop().await;

    // With -PLUS not offered, "y" is an honest answer and succeeds.
    let server = TestServer::start_with(|c| c.sasl.mechanisms = vec!["SCRAM-SHA-256".into()]).await;
    let (mut raw, features) = Raw::secure(server.c2s).await;
    assert!(!features.contains("PLUS"), "{features}");
    let outcome = scram(
        &mut raw,
        "SCRAM-SHA-256",
        Hash::Sha256,
        "y,,",
        &[],
        PASSWORD,
    )
    .await;
    assert!(outcome.contains("<success"), "{outcome}");
    server.stop().await;
}

/// What poezio with slixmpp 1.8.3 does on TLS 1.3: -PLUS with tls-unique (which TLS 1.3
/// does not have), then plain SCRAM with "y". Neither is a password guess: the client still
/// reaches its fallback on the same stream, and nobody behind its address is locked out.
#[tokio::test]
async fn channel_binding_failures_do_not_use_up_attempts() {
    let server = TestServer::start().await;
    for round in 0..3 {
        let (mut raw, _) = Raw::secure(server.c2s).await;
        for (mechanism, hash, gs2) in [
            ("SCRAM-SHA-256-PLUS", Hash::Sha256, "p=tls-unique,,"),
            ("SCRAM-SHA-1-PLUS", Hash::Sha1, "p=tls-unique,,"),
            ("SCRAM-SHA-256", Hash::Sha256, "y,,"),
            ("SCRAM-SHA-1", Hash::Sha1, "y,,"),
        ] {
            let outcome = scram(&mut raw, mechanism, hash, gs2, &[], PASSWORD).await;
            let failure = common::parse(&outcome);
            assert_eq!(failure.name(), "failure", "{round} {mechanism}: {outcome}");
            assert!(failure.has_child("not-authorized", SASL), "{outcome}");
            let text = failure.get_child("text", SASL).expect("says why").text();
            assert!(text.contains("channel"), "{text}");
        }
        let outcome = raw.auth_plain("alice", PASSWORD).await;
        assert!(outcome.contains("<success"), "round {round}: {outcome}");
        bind_works(&mut raw).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn external_with_a_client_certificate() {
    let server =
        TestServer::start_with(|c| c.tls.client_ca = Some(common::pki().ca_file.clone())).await;
    // Without a certificate EXTERNAL is not offered.
    let (_, features) = Raw::secure(server.c2s).await;
    assert!(!features.contains("EXTERNAL"), "{features}");

    let mut raw = Raw::connect_tls(server.direct_tls, true).await;
    let features = raw.open().await;
    assert!(
        features.contains("<mechanism>EXTERNAL</mechanism>"),
        "{features}"
    );
    // An authzid the certificate does not name is refused.
    let other = B64.encode("bob@localhost");
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{other}</auth>"
    ))
    .await;
    assert!(raw.read_sasl_outcome().await.contains("<invalid-authzid/>"));
    // "=" (empty authzid): the identity in the certificate, alice@localhost.
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await;
    let outcome = raw.read_sasl_outcome().await;
    assert!(outcome.contains("<success"), "{outcome}");
    raw.open().await;
    assert_eq!(raw.bind(Some("cert")).await, "alice@localhost/cert");
    server.stop().await;
}

#[tokio::test]
async fn anonymous_only_where_enabled() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::secure(server.c2s).await;
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        .await;
    assert!(raw
        .read_sasl_outcome()
        .await
        .contains("<invalid-mechanism/>"));
    server.stop().await;

    let server =
        TestServer::start_with(|c| c.sasl.anonymous_domains = vec!["localhost".into()]).await;
    let (mut raw, features) = Raw::secure(server.c2s).await;
    assert!(
        features.contains("<mechanism>ANONYMOUS</mechanism>"),
        "{features}"
    );
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        .await;
    assert!(raw.read_sasl_outcome().await.contains("<success"));
    raw.open().await;
    let jid = raw.bind(None).await;
    assert!(jid.contains("@localhost/"), "{jid}");
    server.stop().await;
}
