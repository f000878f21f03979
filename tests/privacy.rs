//! Privacy lists (XEP-0016) and blocking (XEP-0191) end to end: one enforcement point, both
//! views of one store.

mod common;

use common::{friends, online, Raw, TestServer};

const BLOCKING: &str = "urn:xmpp:blocking";
const PRIVACY: &str = "jabber:iq:privacy";

#[tokio::test]
async fn blocking_stops_and_unblocking_restores_the_flow() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "a", "b").await;

    let list = alice
        .iq(
            "bl0",
            &format!("<iq type='get' id='bl0'><blocklist xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert!(
        list.contains(&format!("<blocklist xmlns='{BLOCKING}'/>")),
        "empty at first: {list}"
    );

    let reply = alice.iq("b1", &format!("<iq type='set' id='b1'><block xmlns='{BLOCKING}'><item jid='bob@localhost'/></block></iq>")).await;
    assert!(reply.contains("type='result'"), "{reply}");
    let push = alice.stanza_with(&["<block", "jid='bob@localhost'"]).await;
    assert!(push.contains("type='set'"), "{push}");
    // Bob sees Alice go offline.
    bob.stanza_with(&["from='alice@localhost/a'", "type='unavailable'"])
        .await;

    // Bob's messages bounce as if Alice were offline, and are not stored.
    bob.send("<message to='alice@localhost' id='m1'><body>hello?</body></message>")
        .await;
    let bounce = bob.stanza_with(&["id='m1'"]).await;
    assert!(
        bounce.contains("type='error'") && bounce.contains("<service-unavailable"),
        "{bounce}"
    );
    bob.send("<iq type='get' id='q1' to='alice@localhost/a'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(bob
        .stanza_with(&["id='q1'"])
        .await
        .contains("<service-unavailable"));
    // His presence no longer reaches her.
    bob.send("<presence><status>anyone?</status></presence>")
        .await;
    bob.sync().await;
    alice.sync().await;
    assert!(!alice.next_stanza_if_any().await.contains("anyone?"));
    // Alice cannot write to Bob either: not-acceptable with <blocked/>.
    alice
        .send("<message to='bob@localhost' id='m2'><body>x</body></message>")
        .await;
    let err = alice.stanza_with(&["id='m2'"]).await;
    assert!(
        err.contains("<not-acceptable")
            && err.contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
        "{err}"
    );

    // The blocklist is the default privacy list.
    let names = alice
        .iq(
            "p1",
            &format!("<iq type='get' id='p1'><query xmlns='{PRIVACY}'/></iq>"),
        )
        .await;
    assert!(names.contains("<default name='blocklist'/>"), "{names}");
    let l = alice.iq("p2", &format!("<iq type='get' id='p2'><query xmlns='{PRIVACY}'><list name='blocklist'/></query></iq>")).await;
    assert!(
        l.contains("type='jid'")
            && l.contains("value='bob@localhost'")
            && l.contains("action='deny'"),
        "{l}"
    );
    let list = alice
        .iq(
            "bl1",
            &format!("<iq type='get' id='bl1'><blocklist xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert!(list.contains("<item jid='bob@localhost'/>"), "{list}");

    // Unblock: a push, Bob gets Alice's presence again, messages flow.
    let reply = alice.iq("u1", &format!("<iq type='set' id='u1'><unblock xmlns='{BLOCKING}'><item jid='bob@localhost'/></unblock></iq>")).await;
    assert!(reply.contains("type='result'"), "{reply}");
    alice
        .stanza_with(&["<unblock", "jid='bob@localhost'"])
        .await;
    bob.stanza_with(&["<presence", "from='alice@localhost/a'"])
        .await;
    bob.send("<message to='alice@localhost' id='m3'><body>back</body></message>")
        .await;
    alice.stanza_with(&["<body>back</body>"]).await;

    let bad = alice
        .iq(
            "b2",
            &format!("<iq type='set' id='b2'><block xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert!(bad.contains("<bad-request"), "{bad}");
    server.stop().await;
}

#[tokio::test]
async fn blocked_sender_is_not_stored_offline_and_unblock_all() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    for who in ["bob@localhost", "carol@localhost"] {
        alice.iq("b", &format!("<iq type='set' id='b'><block xmlns='{BLOCKING}'><item jid='{who}'/></block></iq>")).await;
    }
    drop(alice);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    bob.send("<message to='alice@localhost' id='off'><body>stored?</body></message>")
        .await;
    assert!(bob
        .stanza_with(&["id='off'"])
        .await
        .contains("<service-unavailable"));
    // A blocked subscription request vanishes without an answer.
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    bob.sync().await;

    let mut alice = Raw::login_quiet(server.c2s, "alice", "a2").await;
    alice.send("<presence/>").await;
    alice.sync().await;
    let got = alice.next_stanza_if_any().await;
    assert!(
        !got.contains("stored?") && !got.contains("type='subscribe'"),
        "{got}"
    );
    let list = alice
        .iq(
            "g",
            &format!("<iq type='get' id='g'><blocklist xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert!(
        list.contains("bob@localhost") && list.contains("carol@localhost"),
        "{list}"
    );
    alice
        .iq(
            "ua",
            &format!("<iq type='set' id='ua'><unblock xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    let list = alice
        .iq(
            "g2",
            &format!("<iq type='get' id='g2'><blocklist xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert!(!list.contains("<item"), "{list}");
    server.stop().await;
}

#[tokio::test]
async fn privacy_lists_active_default_and_conflicts() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "a", "b").await;

    // A list that refuses Bob's messages only.
    let list = format!(
        "<iq type='set' id='l1'><query xmlns='{PRIVACY}'><list name='quiet'>\
        <item type='jid' value='bob@localhost' action='deny' order='1'><message/></item>\
        <item action='allow' order='2'/></list></query></iq>"
    );
    assert!(alice.iq("l1", &list).await.contains("type='result'"));
    alice
        .stanza_with(&["<list name='quiet'/>", "type='set'"])
        .await;
    let missing = alice.iq("a0", &format!("<iq type='set' id='a0'><query xmlns='{PRIVACY}'><active name='nope'/></query></iq>")).await;
    assert!(missing.contains("<item-not-found"), "{missing}");
    assert!(alice.iq("a1", &format!("<iq type='set' id='a1'><query xmlns='{PRIVACY}'><active name='quiet'/></query></iq>")).await.contains("type='result'"));

    bob.send("<message to='alice@localhost/a' id='m1'><body>psst</body></message>")
        .await;
    assert!(bob
        .stanza_with(&["id='m1'"])
        .await
        .contains("<service-unavailable"));
    // Presence still flows: only messages are denied.
    bob.send("<presence><status>still here</status></presence>")
        .await;
    alice.stanza_with(&["still here"]).await;

    // Declining the active list lets messages through again.
    alice
        .iq(
            "a2",
            &format!("<iq type='set' id='a2'><query xmlns='{PRIVACY}'><active/></query></iq>"),
        )
        .await;
    bob.send("<message to='alice@localhost/a' id='m2'><body>now?</body></message>")
        .await;
    alice.stanza_with(&["<body>now?</body>"]).await;

    // Default list: fine while no default is in use; a second change conflicts while another
    // resource of Alice's (with no active list) is using the default.
    assert!(alice.iq("d1", &format!("<iq type='set' id='d1'><query xmlns='{PRIVACY}'><default name='quiet'/></query></iq>")).await.contains("type='result'"));
    let mut other = online(&server, "alice", "other", 0).await;
    other.sync().await;
    let conflict = alice
        .iq(
            "d2",
            &format!("<iq type='set' id='d2'><query xmlns='{PRIVACY}'><default/></query></iq>"),
        )
        .await;
    assert!(conflict.contains("<conflict"), "{conflict}");
    let remove = alice
        .iq(
            "d3",
            &format!(
                "<iq type='set' id='d3'><query xmlns='{PRIVACY}'><list name='quiet'/></query></iq>"
            ),
        )
        .await;
    assert!(
        remove.contains("<conflict"),
        "in use by the other resource: {remove}"
    );
    // Once the other resource picks its own active list, the default can change.
    other.iq("o1", &format!("<iq type='set' id='o1'><query xmlns='{PRIVACY}'><active name='quiet'/></query></iq>")).await;
    assert!(alice
        .iq(
            "d4",
            &format!("<iq type='set' id='d4'><query xmlns='{PRIVACY}'><default/></query></iq>")
        )
        .await
        .contains("type='result'"));

    // Validation: duplicate order, and a group that is not in the roster.
    let dup = alice.iq("v1", &format!("<iq type='set' id='v1'><query xmlns='{PRIVACY}'><list name='x'><item action='deny' order='1'/><item action='allow' order='1'/></list></query></iq>")).await;
    assert!(dup.contains("<bad-request"), "{dup}");
    let group = alice.iq("v2", &format!("<iq type='set' id='v2'><query xmlns='{PRIVACY}'><list name='x'><item type='group' value='Nobody' action='deny' order='1'/></list></query></iq>")).await;
    assert!(group.contains("<item-not-found"), "{group}");
    server.stop().await;
}

#[tokio::test]
async fn presence_out_and_everything_rules() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "a", "b").await;
    // Invisible to Bob: presence-out denied by subscription state.
    let list = format!("<iq type='set' id='l'><query xmlns='{PRIVACY}'><list name='invisible'>\
        <item type='subscription' value='both' action='deny' order='1'><presence-out/></item></list></query></iq>");
    alice.iq("l", &list).await;
    alice.iq("a", &format!("<iq type='set' id='a'><query xmlns='{PRIVACY}'><active name='invisible'/></query></iq>")).await;
    alice
        .send("<presence><status>secret</status></presence>")
        .await;
    alice.sync().await;
    bob.sync().await;
    assert!(!bob.next_stanza_if_any().await.contains("secret"));
    // Messages still go both ways.
    alice
        .send("<message to='bob@localhost/b'><body>hi from nowhere</body></message>")
        .await;
    bob.stanza_with(&["hi from nowhere"]).await;

    // An item without type or children blocks everything, both ways.
    let all = format!("<iq type='set' id='l2'><query xmlns='{PRIVACY}'><list name='all'><item action='deny' order='1'/></list></query></iq>");
    alice.iq("l2", &all).await;
    alice
        .iq(
            "a2",
            &format!(
                "<iq type='set' id='a2'><query xmlns='{PRIVACY}'><active name='all'/></query></iq>"
            ),
        )
        .await;
    alice
        .send("<message to='bob@localhost/b' id='o'><body>out</body></message>")
        .await;
    assert!(alice
        .stanza_with(&["id='o'"])
        .await
        .contains("<not-acceptable"));
    // Her own resources are never blocked.
    let mut alice2 = online(&server, "alice", "a2", 0).await;
    alice2
        .send("<message to='alice@localhost/a' id='self'><body>note to self</body></message>")
        .await;
    alice.stanza_with(&["note to self"]).await;
    server.stop().await;
}

#[tokio::test]
async fn switched_off_protocols_are_not_advertised() {
    let server = TestServer::start_with(|c| {
        c.im.privacy_lists = false;
        c.im.blocking = false;
    })
    .await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "a").await;
    let info = alice.iq("d", "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        !info.contains(PRIVACY) && !info.contains(BLOCKING),
        "{info}"
    );
    let reply = alice
        .iq(
            "b",
            &format!("<iq type='get' id='b'><blocklist xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert!(reply.contains("<service-unavailable"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn active_list_applies_per_session_and_lists_survive_restart() {
    let mut server = TestServer::start().await;
    let mut a1 = online(&server, "alice", "one", 0).await;
    let mut a2 = online(&server, "alice", "two", 0).await;
    let (mut bob, _) = Raw::login(server.c2s, "bob", "b").await;
    let list = format!(
        "<iq type='set' id='l'><query xmlns='{PRIVACY}'><list name='nobob'>\
        <item type='jid' value='bob@localhost' action='deny' order='1'/></list></query></iq>"
    );
    a1.iq("l", &list).await;
    a1.iq(
        "a",
        &format!(
            "<iq type='set' id='a'><query xmlns='{PRIVACY}'><active name='nobob'/></query></iq>"
        ),
    )
    .await;
    // Both resources have the same priority; only the one without the active list gets it.
    bob.send("<message to='alice@localhost' type='chat'><body>for whoever</body></message>")
        .await;
    a2.stanza_with(&["for whoever"]).await;
    a1.sync().await;
    assert!(!a1.next_stanza_if_any().await.contains("for whoever"));

    // Block bob, restart: the block is still there.
    a1.iq("b", &format!("<iq type='set' id='b'><block xmlns='{BLOCKING}'><item jid='bob@localhost'/></block></iq>")).await;
    drop((a1, a2, bob));
    server.restart().await;
    let (mut bob, _) = Raw::login(server.c2s, "bob", "b").await;
    bob.send("<message to='alice@localhost' id='after'><body>x</body></message>")
        .await;
    assert!(bob
        .stanza_with(&["id='after'"])
        .await
        .contains("<service-unavailable"));
    let mut alice = Raw::login_quiet(server.c2s, "alice", "again").await;
    let names = alice
        .iq(
            "n",
            &format!("<iq type='get' id='n'><query xmlns='{PRIVACY}'/></iq>"),
        )
        .await;
    assert!(
        names.contains("<list name='nobob'/>") && names.contains("<default name='blocklist'/>"),
        "{names}"
    );
    server.stop().await;
}

/// Two resources blocking different JIDs at the same moment: every block is kept (each one
/// loads the list, adds to it and stores it; unserialised, one overwrote the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blocks_from_two_resources_all_stick() {
    const EACH: usize = 15;
    let server = TestServer::start().await;
    let mut phone = Raw::login_quiet(server.c2s, "alice", "phone").await;
    let mut laptop = Raw::login_quiet(server.c2s, "alice", "laptop").await;
    let blocks = |prefix: &str| -> String {
        (0..EACH)
            .map(|i| format!("<iq type='set' id='{prefix}{i}'><block xmlns='{BLOCKING}'><item jid='{prefix}{i}@example.net'/></block></iq>"))
            .collect()
    };
    let (a, b) = (blocks("p"), blocks("l"));
    tokio::join!(phone.send(&a), laptop.send(&b));
    for i in 0..EACH {
        let reply = phone.stanza_with(&[&format!("id='p{i}'")]).await;
        assert!(reply.contains("type='result'"), "{reply}");
        let reply = laptop.stanza_with(&[&format!("id='l{i}'")]).await;
        assert!(reply.contains("type='result'"), "{reply}");
    }
    let list = phone
        .iq(
            "all",
            &format!("<iq type='get' id='all'><blocklist xmlns='{BLOCKING}'/></iq>"),
        )
        .await;
    assert_eq!(list.matches("<item ").count(), 2 * EACH, "{list}");
    server.stop().await;
}

/// XEP-0016 §2.2 (business rules): no layering. A session's active list replaces the default
/// list, also for messages to the bare JID; without one, the default applies again.
#[tokio::test]
async fn an_active_list_replaces_the_default_for_bare_jid_messages() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "one", 0).await;
    let (mut bob, _) = Raw::login(server.c2s, "bob", "b").await;
    let set = |id: &str, body: &str| {
        format!("<iq type='set' id='{id}'><query xmlns='{PRIVACY}'>{body}</query></iq>")
    };
    for (id, body) in [
        ("l1", "<list name='nobob'><item type='jid' value='bob@localhost' action='deny' order='1'/></list>"),
        ("l2", "<list name='open'><item action='allow' order='1'/></list>"),
        ("d", "<default name='nobob'/>"),
        ("a", "<active name='open'/>"),
    ] {
        let reply = alice.iq(id, &set(id, body)).await;
        assert!(reply.contains("type='result'"), "{reply}");
    }
    bob.send("<message to='alice@localhost' type='chat' id='m1'><body>through the active list</body></message>")
        .await;
    alice.stanza_with(&["through the active list"]).await;

    // Declining the active list brings the default back: refused, and not stored offline.
    let reply = alice.iq("a0", &set("a0", "<active/>")).await;
    assert!(reply.contains("type='result'"), "{reply}");
    bob.send("<message to='alice@localhost' type='chat' id='m2'><body>refused</body></message>")
        .await;
    let bounce = bob.stanza_with(&["id='m2'"]).await;
    assert!(bounce.contains("<service-unavailable"), "{bounce}");
    drop(alice);
    let mut again = Raw::login_quiet(server.c2s, "alice", "two").await;
    again.send("<presence/>").await;
    again.sync().await;
    assert!(!again.next_stanza_if_any().await.contains("refused"));
    server.stop().await;
}
