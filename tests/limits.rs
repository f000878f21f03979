//! Per-address limits that fit real networks: many honest users behind one address log in,
//! a flood of slow sockets from that address does not keep them out, and guessing one
//! account's password locks out only that account.

mod common;

use std::time::{Duration, Instant};

use common::{assert_login_works, Raw, TestServer, PASSWORD};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The two load tests take turns: together they would measure each other.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_from_one_address_log_in_at_once() {
    let _turn = HEAVY.lock().await;
    let server = TestServer::start().await;
    // 500 people behind one address (an office, carrier NAT), each with an account.
    let accounts: Vec<_> = (0..500)
        .map(|i| {
            tokio::task::spawn_blocking(move || {
                let user = format!("user{i}");
                xmppd_server::sasl::credentials::new_account(&user, "localhost", PASSWORD, 4096)
                    .unwrap()
            })
        })
        .collect();
    for account in accounts {
        let account = account.await.unwrap();
        let accounts = &server.state().router.storage().accounts;
        accounts.create(&account).await.unwrap();
    }
    let logins: Vec<_> = (0..500)
        .map(|i| {
            let addr = server.c2s;
            tokio::spawn(async move {
                let (mut raw, jid) = Raw::login(addr, &format!("user{i}"), "office").await;
                raw.sync().await;
                (raw, jid)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for (i, login) in logins.into_iter().enumerate() {
        let (raw, jid) = login.await.expect("every login succeeds");
        assert_eq!(jid, format!("user{i}@localhost/office"));
        clients.push(raw);
    }
    drop(clients);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_logins_get_through_a_flood_of_slow_sockets_from_their_address() {
    let _turn = HEAVY.lock().await;
    let server = TestServer::start().await;
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' ";
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let mut tcp = TcpStream::connect(server.c2s).await.unwrap();
        let _ = tcp.write_all(header.as_bytes()).await;
        slow.push(tcp);
    }
    // They keep trickling (whitespace inside the unfinished header) while we log in.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            for tcp in slow.iter_mut() {
                let _ = tcp.try_write(b" ");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        slow
    });
    for i in 0..20 {
        let started = Instant::now();
        let (mut raw, _) = Raw::login(server.c2s, "bob", &format!("real{i}")).await;
        raw.sync().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "login {i} took {took:?}");
    }
    drop(trickle.await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn an_account_has_a_bounded_number_of_sessions() {
    let server = TestServer::start_with(|c| c.limits.max_resources_per_account = 2).await;
    let (_a, _) = Raw::login(server.c2s, "alice", "one").await;
    let (_b, _) = Raw::login(server.c2s, "alice", "two").await;
    let (mut raw, _) = Raw::secure(server.c2s).await;
    assert!(raw.auth_plain("alice", PASSWORD).await.contains("<success"));
    raw.open().await;
    let reply = common::parse(
        &raw.iq(
            "b3",
            "<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>three</resource></bind></iq>",
        )
        .await,
    );
    let error = reply.get_child("error", "jabber:client").expect("refused");
    assert!(error.has_child("resource-constraint", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    // Taking over an existing resource is still allowed (RFC 6120 §7.7.2.2).
    assert_eq!(raw.bind(Some("two")).await, "alice@localhost/two");
    server.stop().await;
}

#[tokio::test]
async fn guessing_one_password_locks_out_only_that_account() {
    let server = TestServer::start_with(|c| c.sasl.failure_delay_ms = 10).await;
    // Far more guesses than the per-address ceiling (50), three per connection.
    let mut refused = 0;
    for _ in 0..30 {
        let (mut raw, _) = Raw::secure(server.c2s).await;
        for _ in 0..3 {
            let reply = raw.auth_plain("alice", "guess").await;
            if reply.contains("<temporary-auth-failure/>") {
                refused += 1;
            } else {
                assert!(reply.contains("<not-authorized/>"), "{reply}");
            }
        }
    }
    assert!(
        refused >= 80,
        "alice is locked out from this address: {refused}"
    );
    assert!(server.metric("xmppd_auth_throttled_total").await >= 80);
    // Bob, behind the same address, still logs in.
    let (mut raw, _) = Raw::secure(server.c2s).await;
    let reply = raw.auth_plain("bob", PASSWORD).await;
    assert!(reply.contains("<success"), "{reply}");
    assert_login_works(server.c2s).await;
    server.stop().await;
}
