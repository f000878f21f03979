//! `kill -9` under load loses nothing a client was told succeeded: the real binary is
//! killed at a random moment while a client writes offline messages, roster items, vCards
//! and privacy lists, then restarted, and everything acknowledged before the kill must be
//! there. Five rounds.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::binary::{free_port, serve, write_config, xmppd};
use common::{parse, Raw, PASSWORD};

const ROUNDS: usize = 5;

/// One acknowledged write of each kind per step; `acked` counts the completed steps.
async fn write_until_killed(addr: std::net::SocketAddr, round: usize, acked: Arc<AtomicUsize>) {
    let (mut alice, _) = Raw::login(addr, "alice", &format!("w{round}")).await;
    for i in 0..10_000 {
        let tag = format!("r{round}-{i}");
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='{tag}'><body>{tag}</body></message>"
            ))
            .await;
        for (id, payload) in [
            (
                "roster",
                format!("<query xmlns='jabber:iq:roster'><item jid='{tag}@example.net'/></query>"),
            ),
            ("vcard", format!("<vCard xmlns='vcard-temp'><FN>{tag}</FN></vCard>")),
            (
                "privacy",
                format!(
                    "<query xmlns='jabber:iq:privacy'><list name='{tag}'><item action='allow' order='1'/></list></query>"
                ),
            ),
        ] {
            let reply = alice
                .iq(id, &format!("<iq type='set' id='{id}'>{payload}</iq>"))
                .await;
            assert!(reply.contains("type='result'"), "{reply}");
        }
        // The ping's answer proves the message before it was handled (stored) too.
        alice.sync().await;
        acked.store(i + 1, Ordering::SeqCst);
    }
}

/// Reads bob's offline messages until nothing more comes for a second; answers the ping
/// behind each batch, so delivered messages leave storage.
async fn drain_offline(bob: &mut Raw) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Ok(stanza) = tokio::time::timeout(Duration::from_secs(1), bob.next_stanza()).await {
        let el = parse(&stanza);
        match el.name() {
            "message" => {
                if let Some(body) = el.get_child("body", "jabber:client") {
                    bodies.push(body.text());
                }
            }
            "iq" if el.attr("type") == Some("get") => {
                let (id, from) = (el.attr("id").unwrap(), el.attr("from").unwrap());
                bob.send(&format!("<iq type='result' id='{id}' to='{from}'/>"))
                    .await;
            }
            _ => {}
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    for user in ["alice", "bob"] {
        let (ok, _, err) = xmppd(
            &config,
            &[
                "user",
                "add",
                &format!("{user}@localhost"),
                "--password",
                PASSWORD,
            ],
        );
        assert!(ok, "{err}");
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    let mut acked_tags = Vec::new();
    let mut delivered = Vec::new();
    for round in 0..ROUNDS {
        let log = std::fs::File::create(dir.path().join(format!("server{round}.log"))).unwrap();
        let mut server = serve(&config, c2s, log).await;
        let acked = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_until_killed(addr, round, acked.clone()));
        // A moment that differs from round to round, once some writes were acknowledged.
        for _ in 0..400 {
            if acked.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let jitter = (std::process::id() as u64 * 7919 + round as u64 * 104_729) % 400;
        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
        server.0.kill().unwrap(); // SIGKILL, by PID
        server.0.wait().unwrap();
        // The writer's connection breaks; what it counted before that is what was promised.
        let _ = writer.await;
        let n = acked.load(Ordering::SeqCst);
        assert!(n >= 3, "round {round}: only {n} writes before the kill");
        acked_tags.extend((0..n).map(|i| format!("r{round}-{i}")));
        let last_vcard = format!("r{round}-{}", n - 1);

        // Restart on the same data and check everything acknowledged so far.
        let log = std::fs::File::create(dir.path().join(format!("check{round}.log"))).unwrap();
        let _server = serve(&config, c2s, log).await;
        let mut alice = Raw::login_quiet(addr, "alice", "check").await;
        let roster = alice.iq("r", &common::roster_get("r")).await;
        let lists = alice
            .iq(
                "l",
                "<iq type='get' id='l'><query xmlns='jabber:iq:privacy'/></iq>",
            )
            .await;
        for tag in &acked_tags {
            assert!(
                roster.contains(&format!("jid='{tag}@example.net'")),
                "roster lost {tag}"
            );
            assert!(
                lists.contains(&format!("name='{tag}'")),
                "privacy list {tag} lost"
            );
        }
        let vcard = parse(
            &alice
                .iq(
                    "v",
                    "<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>",
                )
                .await,
        );
        let name = vcard
            .get_child("vCard", "vcard-temp")
            .and_then(|v| v.get_child("FN", "vcard-temp"))
            .map(|f| f.text())
            .unwrap_or_default();
        let next = format!("r{round}-{n}");
        assert!(
            name == last_vcard || name == next,
            "vCard is {name:?}, acknowledged {last_vcard}"
        );
        let (mut bob, _) = Raw::login(addr, "bob", &format!("b{round}")).await;
        delivered.extend(drain_offline(&mut bob).await);
        for tag in &acked_tags {
            assert!(delivered.contains(tag), "offline message {tag} lost");
        }
    }
}
