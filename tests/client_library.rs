//! End-to-end tests with a third-party client library (tokio-xmpp, from crates.io) over real
//! sockets: STARTTLS and direct TLS, each mechanism it speaks, bind, and messages between two
//! accounts.

mod common;

use std::time::Duration;

use common::{TestServer, PASSWORD};
use futures::StreamExt;
use tokio_xmpp::connect::{DirectTlsServerConnector, DnsConfig, StartTlsServerConnector};
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message};
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};

const WAIT: Duration = Duration::from_secs(15);

fn starttls_client(server: &TestServer, jid: &str) -> Client {
    let connector = StartTlsServerConnector(DnsConfig::addr(&server.c2s.to_string()));
    Client::new_with_connector(
        BareJid::new(jid).unwrap(),
        PASSWORD,
        connector,
        Timeouts::tight(),
    )
}

fn direct_tls_client(server: &TestServer, jid: &str) -> Client {
    let connector = DirectTlsServerConnector(DnsConfig::addr(&server.direct_tls.to_string()));
    Client::new_with_connector(
        BareJid::new(jid).unwrap(),
        PASSWORD,
        connector,
        Timeouts::tight(),
    )
}

/// Waits for the client to be online; returns its bound JID.
async fn online(client: &mut Client) -> Jid {
    tokio::time::timeout(WAIT, async {
        loop {
            match client.next().await {
                Some(Event::Online { bound_jid, .. }) => return bound_jid,
                Some(Event::Disconnected(e)) => panic!("disconnected: {e}"),
                Some(Event::Stanza(_)) => {}
                None => panic!("client stream ended"),
            }
        }
    })
    .await
    .expect("client online in time")
}

/// Waits for a chat message with `body`; returns it.
async fn receive(client: &mut Client, body: &str) -> Message {
    tokio::time::timeout(WAIT, async {
        loop {
            match client.next().await {
                Some(Event::Stanza(Stanza::Message(m))) if m.bodies.values().any(|b| b == body) => {
                    return m
                }
                Some(Event::Disconnected(e)) => panic!("disconnected: {e}"),
                None => panic!("client stream ended"),
                Some(_) => {}
            }
        }
    })
    .await
    .expect("message in time")
}

async fn login_with_only(mechanism: &str, direct_tls: bool) {
    let mechanism = mechanism.to_string();
    let server = TestServer::start_with(|c| c.sasl.mechanisms = vec![mechanism]).await;
    let mut client = if direct_tls {
        direct_tls_client(&server, "alice@localhost")
    } else {
        starttls_client(&server, "alice@localhost")
    };
    let jid = online(&mut client).await;
    assert_eq!(jid.to_bare().as_str(), "alice@localhost");
    assert!(jid.resource().is_some(), "server-generated resource");
    assert_eq!(server.metric("xmppd_auth_success_total").await, 1);
    client.send_end().await.unwrap();
    server.stop().await;
}

// tokio-xmpp over TLS 1.3 always uses the -PLUS variant with tls-exporter channel binding;
// plain SCRAM is driven by the scripted client in `sasl_mechanisms.rs` and by slixmpp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_scram_sha_256_plus() {
    login_with_only("SCRAM-SHA-256-PLUS", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_scram_sha_1_plus() {
    login_with_only("SCRAM-SHA-1-PLUS", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_plain() {
    login_with_only("PLAIN", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_scram_sha_256_plus() {
    login_with_only("SCRAM-SHA-256-PLUS", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_plain() {
    login_with_only("PLAIN", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_exchange_messages() {
    let server = TestServer::start().await;
    let mut alice = starttls_client(&server, "alice@localhost");
    let mut bob = direct_tls_client(&server, "bob@localhost");
    let alice_jid = online(&mut alice).await;
    let bob_jid = online(&mut bob).await;
    bob.send_stanza(Presence::available().into()).await.unwrap();
    // Round trip so bob's presence is processed before alice writes to his bare JID.
    let mut raw_sync = common::Raw::login(server.c2s, "carol", "sync").await.0;
    raw_sync.sync().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let to_bob = Message::chat(Some(Jid::from(BareJid::new("bob@localhost").unwrap())))
        .with_body(Lang::default(), "hello bob".into());
    alice.send_stanza(to_bob.into()).await.unwrap();
    let got = receive(&mut bob, "hello bob").await;
    assert_eq!(
        got.from,
        Some(alice_jid.clone()),
        "server stamps the sender's full JID"
    );

    let to_alice =
        Message::chat(Some(alice_jid.clone())).with_body(Lang::default(), "hi alice".into());
    bob.send_stanza(to_alice.into()).await.unwrap();
    let got = receive(&mut alice, "hi alice").await;
    assert_eq!(got.from, Some(bob_jid));

    alice.send_end().await.unwrap();
    bob.send_end().await.unwrap();
    server.stop().await;
}
