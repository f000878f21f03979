//! Offline messages (XEP-0160) at scale: far more stored messages than a session's queue
//! holds all arrive, in order, and a message leaves storage only once the client has shown
//! (by answering the ping that follows its batch) that it read it.

mod common;

use std::time::Duration;

use common::{parse, Raw, TestServer};
use xmppd_storage::OfflineMessage;

const STORED: usize = 5_000;

/// Stores `STORED` chat messages for bob, numbered from 0.
async fn store_for_bob(server: &TestServer) {
    let offline = &server.state().router.storage().offline;
    for i in 0..STORED {
        let message = OfflineMessage {
            stamp: 0,
            stanza: format!(
                "<message from='alice@localhost/x' to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
            ),
        };
        assert!(offline
            .push("bob", "localhost", &message, STORED)
            .await
            .unwrap());
    }
}

async fn stored_for_bob(server: &TestServer) -> usize {
    let offline = &server.state().router.storage().offline;
    offline.count("bob", "localhost").await.unwrap()
}

/// Waits (bounded) until bob has `n` stored messages left.
async fn wait_until_stored(server: &TestServer, n: usize) {
    for _ in 0..200 {
        if stored_for_bob(server).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} stored, expected {n}", stored_for_bob(server).await);
}

/// Reads until `n` messages with a body arrived, answering the server's pings as any client
/// does (RFC 6120 §8.2.3); returns their ids in arrival order.
async fn read_messages(raw: &mut Raw, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let stanza = parse(&raw.next_stanza().await);
        match stanza.name() {
            "iq" if stanza.attr("type") == Some("get") => {
                let (id, from) = (stanza.attr("id").unwrap(), stanza.attr("from").unwrap());
                raw.send(&format!("<iq type='result' id='{id}' to='{from}'/>"))
                    .await;
            }
            "message" if stanza.get_child("body", "jabber:client").is_some() => {
                ids.push(stanza.attr("id").unwrap().to_string());
            }
            _ => {}
        }
    }
    ids
}

/// Reads until the server's next ping and answers it.
async fn answer_ping(raw: &mut Raw) {
    let ping = parse(&raw.stanza_with(&["<iq", "type='get'"]).await);
    let (id, from) = (ping.attr("id").unwrap(), ping.attr("from").unwrap());
    raw.send(&format!("<iq type='result' id='{id}' to='{from}'/>"))
        .await;
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn five_thousand_stored_messages_all_arrive_in_order() {
    // Every other setting at its default: the session queue holds 1,000.
    let server = TestServer::start_with(|c| c.im.max_offline_messages = STORED).await;
    store_for_bob(&server).await;
    let (mut bob, _) = Raw::login(server.c2s, "bob", "phone").await;
    let ids = read_messages(&mut bob, STORED).await;
    assert_eq!(ids, expected(0..STORED));
    // The last batch leaves storage once its ping was answered.
    answer_ping(&mut bob).await;
    wait_until_stored(&server, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_delivery_gets_the_rest_at_the_next_login() {
    let server = TestServer::start_with(|c| c.im.max_offline_messages = STORED).await;
    store_for_bob(&server).await;
    let (mut bob, _) = Raw::login(server.c2s, "bob", "phone").await;
    // The first batch and the ping behind it, answered; then the connection just drops.
    let first = read_messages(&mut bob, 100).await;
    assert_eq!(first, expected(0..100));
    answer_ping(&mut bob).await;
    wait_until_stored(&server, STORED - 100).await;
    drop(bob);
    // What was sent after that but never confirmed is still stored.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_for_bob(&server).await, STORED - 100);

    let (mut bob, _) = Raw::login(server.c2s, "bob", "laptop").await;
    let rest = read_messages(&mut bob, STORED - 100).await;
    assert_eq!(rest, expected(100..STORED));
    answer_ping(&mut bob).await;
    wait_until_stored(&server, 0).await;
    server.stop().await;
}
