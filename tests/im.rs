//! RFC 6121 end to end with scripted clients: rosters, the subscription handshake seen from
//! both sides, presence, message routing by priority, offline messages across a restart,
//! vCards, private XML, last activity and account management.

mod common;

use common::{friends, online, roster_get, Raw, TestServer, PASSWORD};

const ROSTER: &str = "jabber:iq:roster";

#[tokio::test]
async fn subscription_handshake_seen_from_both_sides() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "home", 0).await;
    let mut bob = online(&server, "bob", "phone", 0).await;

    // Alice adds Bob to her roster: a push with subscription none.
    let reply = alice
        .iq("a1", &format!("<iq type='set' id='a1'><query xmlns='{ROSTER}'><item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>"))
        .await;
    assert!(reply.contains("type='result'"), "{reply}");
    let push = alice
        .stanza_with(&["type='set'", "jid='bob@localhost'"])
        .await;
    assert!(
        push.contains("subscription='none'") && push.contains("<group>Friends</group>"),
        "{push}"
    );

    // She asks to subscribe: her push shows ask='subscribe', Bob gets the request.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let push = alice
        .stanza_with(&["jid='bob@localhost'", "ask='subscribe'"])
        .await;
    assert!(push.contains("subscription='none'"), "{push}");
    let request = bob.stanza_with(&["type='subscribe'"]).await;
    assert!(
        request.contains("from='alice@localhost'"),
        "stamped with the bare JID: {request}"
    );

    // Bob approves: his roster gets alice with 'from', hers becomes 'to'.
    bob.iq("b0", &roster_get("b0")).await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let push = bob
        .stanza_with(&["jid='alice@localhost'", "type='set'"])
        .await;
    assert!(push.contains("subscription='from'"), "{push}");
    let push = alice
        .stanza_with(&["jid='bob@localhost'", "type='set'"])
        .await;
    assert!(
        push.contains("subscription='to'") && !push.contains("ask="),
        "{push}"
    );
    alice
        .stanza_with(&["type='subscribed'", "from='bob@localhost'"])
        .await;
    // …and at once Bob's current presence.
    let p = alice
        .stanza_with(&["<presence", "from='bob@localhost/phone'"])
        .await;
    assert!(!p.contains("type="), "{p}");

    // The other direction.
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice
        .stanza_with(&["type='subscribe'", "from='bob@localhost'"])
        .await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    let push = alice
        .stanza_with(&["jid='bob@localhost'", "subscription='both'"])
        .await;
    assert!(push.contains("name='Bob'"), "name kept: {push}");
    bob.stanza_with(&["jid='alice@localhost'", "subscription='both'"])
        .await;
    bob.stanza_with(&["<presence", "from='alice@localhost/home'"])
        .await;

    // Presence changes now flow both ways.
    alice.send("<presence><show>away</show></presence>").await;
    let p = bob
        .stanza_with(&["from='alice@localhost/home'", "<show>away</show>"])
        .await;
    assert!(p.contains("to='bob@localhost'"), "{p}");

    // The stored rosters agree.
    let roster = bob.iq("b1", &roster_get("b1")).await;
    assert!(
        roster.contains("jid='alice@localhost' subscription='both'"),
        "{roster}"
    );

    // Bob cancels his subscription to Alice: both sides see the change.
    bob.send("<presence to='alice@localhost' type='unsubscribe'/>")
        .await;
    bob.stanza_with(&["jid='alice@localhost'", "subscription='from'"])
        .await;
    alice
        .stanza_with(&["jid='bob@localhost'", "subscription='to'"])
        .await;
    alice
        .stanza_with(&["type='unsubscribe'", "from='bob@localhost'"])
        .await;
    server.stop().await;
}

#[tokio::test]
async fn contact_goes_offline_and_comes_back() {
    let server = TestServer::start().await;
    let (mut alice, bob) = friends(&server, "home", "phone").await;

    // Bob's connection breaks without unavailable presence: Alice is told anyway.
    drop(bob);
    let p = alice
        .stanza_with(&["from='bob@localhost/phone'", "type='unavailable'"])
        .await;
    assert!(p.starts_with("<presence"), "{p}");

    // He comes back: Alice sees him, and his probe brings him Alice's presence.
    let mut bob = Raw::login_quiet(server.c2s, "bob", "laptop").await;
    bob.send("<presence><status>back</status></presence>").await;
    alice
        .stanza_with(&["from='bob@localhost/laptop'", "<status>back</status>"])
        .await;
    bob.stanza_with(&["<presence", "from='alice@localhost/home'"])
        .await;

    // Last activity: online means 0 seconds; offline tells the status he left with.
    let reply = alice
        .iq(
            "l1",
            "<iq type='get' id='l1' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>",
        )
        .await;
    assert!(reply.contains("seconds='0'"), "{reply}");
    bob.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    alice
        .stanza_with(&["type='unavailable'", "gone fishing"])
        .await;
    let reply = alice
        .iq(
            "l2",
            "<iq type='get' id='l2' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>",
        )
        .await;
    assert!(
        reply.contains("gone fishing") && reply.contains("seconds="),
        "{reply}"
    );
    // Someone who is not subscribed may not ask.
    let (mut carol, _) = Raw::login(server.c2s, "carol", "c").await;
    let reply = carol
        .iq(
            "l3",
            "<iq type='get' id='l3' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>",
        )
        .await;
    assert!(reply.contains("<forbidden"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn messages_route_by_priority() {
    let server = TestServer::start().await;
    let mut high = online(&server, "bob", "high", 5).await;
    let mut low = online(&server, "bob", "low", 1).await;
    let (mut alice, _) = Raw::login(server.c2s, "alice", "a").await;

    alice
        .send("<message to='bob@localhost' type='chat'><body>to the best</body></message>")
        .await;
    let m = high.stanza_with(&["to the best"]).await;
    assert!(m.contains("from='alice@localhost/a'"), "{m}");
    low.sync().await;
    assert!(!low.next_stanza_if_any().await.contains("to the best"));

    // Equal priority: both get it.
    low.send("<presence><priority>5</priority></presence>")
        .await;
    high.stanza_with(&["from='bob@localhost/low'", "<priority>5</priority>"])
        .await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>to both</body></message>")
        .await;
    high.stanza_with(&["to both"]).await;
    low.stanza_with(&["to both"]).await;

    // A full JID reaches that resource only, whatever its priority.
    alice
        .send("<message to='bob@localhost/low'><body>direct</body></message>")
        .await;
    low.stanza_with(&["direct"]).await;

    // Negative priority everywhere: nobody gets it, it is stored offline.
    high.send("<presence><priority>-1</priority></presence>")
        .await;
    low.send("<presence><priority>-1</priority></presence>")
        .await;
    high.sync().await;
    low.sync().await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>for later</body></message>")
        .await;
    alice.sync().await;
    assert!(!high.next_stanza_if_any().await.contains("for later"));
    // A headline to nobody available is dropped, not stored.
    alice
        .send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    alice.sync().await;
    drop(high);
    drop(low);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "again").await;
    bob.send("<presence/>").await;
    let m = bob.stanza_with(&["for later"]).await;
    assert!(m.contains("urn:xmpp:delay"), "{m}");
    bob.sync().await;
    assert!(!bob.next_stanza_if_any().await.contains("news"));
    server.stop().await;
}

#[tokio::test]
async fn offline_messages_survive_a_restart() {
    let mut server = TestServer::start().await;
    let (mut alice, _) = Raw::login(server.c2s, "alice", "a").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='o1'><body>first</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost' type='chat' id='o2'><body>second</body></message>")
        .await;
    // A chat state alone is not worth storing.
    alice.send("<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    alice.sync().await;
    drop(alice);
    server.restart().await;

    let mut bob = Raw::login_quiet(server.c2s, "bob", "b").await;
    bob.send("<presence/>").await;
    let first = bob.stanza_with(&["<body>first</body>"]).await;
    assert!(first.contains("from='alice@localhost/a'"), "{first}");
    assert!(
        first.contains("<delay xmlns='urn:xmpp:delay' from='localhost' stamp='"),
        "{first}"
    );
    let second = bob.stanza_with(&["<message"]).await;
    assert!(second.contains("<body>second</body>"), "in order: {second}");
    // Like any client, Bob answers the ping behind the batch: it proves he read it.
    let ping = common::parse(&bob.stanza_with(&["<iq", "type='get'"]).await);
    let (id, from) = (ping.attr("id").unwrap(), ping.attr("from").unwrap());
    bob.send(&format!("<iq type='result' id='{id}' to='{from}'/>"))
        .await;
    bob.sync().await;
    // Delivered once: a second login gets nothing.
    drop(bob);
    let mut bob = Raw::login_quiet(server.c2s, "bob", "b2").await;
    bob.send("<presence/>").await;
    bob.sync().await;
    assert!(!bob.next_stanza_if_any().await.contains("<message"));
    server.stop().await;
}

#[tokio::test]
async fn offline_storage_is_limited() {
    let server = TestServer::start_with(|c| c.im.max_offline_messages = 2).await;
    let (mut alice, _) = Raw::login(server.c2s, "alice", "a").await;
    for i in 0..2 {
        alice
            .send(&format!(
                "<message to='bob@localhost' id='m{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    alice
        .send("<message to='bob@localhost' id='m2'><body>2</body></message>")
        .await;
    let bounce = alice.stanza_with(&["id='m2'"]).await;
    assert!(
        bounce.contains("type='error'") && bounce.contains("<service-unavailable"),
        "{bounce}"
    );
    server.stop().await;
}

/// Everyone subscribes to everyone at the same moment, then everyone approves at the same
/// moment: the requests and approvals cross on the wire, and every roster must still end in
/// `both` (a lost update left some at `to` or `from`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_subscriptions_all_end_in_both() {
    const N: usize = 8;
    let server = TestServer::start().await;
    let names: Vec<String> = (0..N).map(|i| format!("user{i}")).collect();
    let mut clients = Vec::new();
    for name in &names {
        server.add_user(name, PASSWORD).await;
        clients.push(online(&server, name, "r", 0).await);
    }
    let to_others = |i: usize, kind: &str| -> String {
        let others = names.iter().enumerate().filter(|(j, _)| *j != i);
        others
            .map(|(_, n)| format!("<presence to='{n}@localhost' type='{kind}'/>"))
            .collect()
    };
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&to_others(i, "subscribe")).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        for other in names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n)
        {
            let from = format!("from='{other}@localhost'");
            client.stanza_with(&["type='subscribe'", &from]).await;
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&to_others(i, "subscribed")).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.sync().await;
        // A contact's presence comes once it has approved us, after our roster recorded it.
        for other in names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n)
        {
            let from = format!("from='{other}@localhost/r'");
            client.stanza_with(&["<presence", &from]).await;
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let roster = client.iq("all", &roster_get("all")).await;
        let both = roster.matches("subscription='both'").count();
        assert_eq!(both, N - 1, "{} has {roster}", names[i]);
        assert!(!roster.contains("ask="), "{roster}");
    }
    server.stop().await;
}

#[tokio::test]
async fn subscription_request_waits_for_an_offline_contact() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "home", 0).await;
    alice
        .send("<presence to='bob@localhost' type='subscribe'><status>it is me</status></presence>")
        .await;
    alice.sync().await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "b").await;
    bob.send("<presence/>").await;
    let request = bob.stanza_with(&["type='subscribe'"]).await;
    assert!(
        request.contains("from='alice@localhost'") && request.contains("it is me"),
        "{request}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pre_approval_and_roster_removal() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "home", 0).await;
    let mut bob = online(&server, "bob", "phone", 0).await;
    // Bob pre-approves Alice (RFC 6121 §3.4): the server advertises the feature.
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let push = bob.stanza_with(&["jid='alice@localhost'"]).await;
    assert!(push.contains("approved='true'"), "{push}");
    // Alice's request is then accepted without asking Bob.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    alice
        .stanza_with(&["jid='bob@localhost'", "subscription='to'"])
        .await;
    bob.stanza_with(&["jid='alice@localhost'", "subscription='from'"])
        .await;

    // Alice removes Bob: the item goes, Bob's side loses its 'from'.
    let reply = alice
        .iq("rm", &format!("<iq type='set' id='rm'><query xmlns='{ROSTER}'><item jid='bob@localhost' subscription='remove'/></query></iq>"))
        .await;
    assert!(reply.contains("type='result'"), "{reply}");
    alice
        .stanza_with(&["jid='bob@localhost'", "subscription='remove'"])
        .await;
    bob.stanza_with(&["jid='alice@localhost'", "subscription='none'"])
        .await;
    let roster = alice.iq("g", &roster_get("g")).await;
    assert!(!roster.contains("bob@localhost"), "{roster}");
    server.stop().await;
}

#[tokio::test]
async fn roster_versioning_and_validation() {
    let server = TestServer::start_with(|c| c.im.max_roster_items = 2).await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "a").await;
    let set = |id: &str, item: &str| {
        format!("<iq type='set' id='{id}'><query xmlns='{ROSTER}'>{item}</query></iq>")
    };
    alice
        .iq("s1", &set("s1", "<item jid='bob@localhost'/>"))
        .await;
    let full = alice.iq("g1", &roster_get("g1")).await;
    let ver = full
        .split("ver='")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    // Same version: an empty result (RFC 6121 §2.6.3).
    let same = alice
        .iq(
            "g2",
            &format!("<iq type='get' id='g2'><query xmlns='{ROSTER}' ver='{ver}'/></iq>"),
        )
        .await;
    assert!(same.ends_with("type='result'/>"), "{same}");
    let older = alice
        .iq(
            "g3",
            &format!("<iq type='get' id='g3'><query xmlns='{ROSTER}' ver='0'/></iq>"),
        )
        .await;
    assert!(older.contains("jid='bob@localhost'"), "{older}");

    let two = alice
        .iq(
            "e1",
            &set("e1", "<item jid='a@localhost'/><item jid='b@localhost'/>"),
        )
        .await;
    assert!(two.contains("<bad-request"), "{two}");
    let dup = alice
        .iq(
            "e2",
            &set(
                "e2",
                "<item jid='c@localhost'><group>x</group><group>x</group></item>",
            ),
        )
        .await;
    assert!(dup.contains("<bad-request"), "{dup}");
    let empty = alice
        .iq(
            "e3",
            &set("e3", "<item jid='c@localhost'><group></group></item>"),
        )
        .await;
    assert!(empty.contains("<not-acceptable"), "{empty}");
    alice
        .iq("s2", &set("s2", "<item jid='carol@localhost'/>"))
        .await;
    let full = alice
        .iq("e4", &set("e4", "<item jid='dave@localhost'/>"))
        .await;
    assert!(full.contains("<resource-constraint"), "{full}");
    let other = alice
        .iq(
            "e5",
            &format!("<iq type='get' id='e5' to='bob@localhost'><query xmlns='{ROSTER}'/></iq>"),
        )
        .await;
    assert!(other.contains("<forbidden"), "{other}");
    server.stop().await;
}

#[tokio::test]
async fn directed_presence_is_undone() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "home", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;
    alice
        .send("<presence to='carol@localhost/c'><status>psst</status></presence>")
        .await;
    carol
        .stanza_with(&["from='alice@localhost/home'", "psst"])
        .await;
    alice.send("<presence type='unavailable'/>").await;
    carol
        .stanza_with(&["from='alice@localhost/home'", "type='unavailable'"])
        .await;
    server.stop().await;
}

#[tokio::test]
async fn vcard_round_trip_and_avatar_hash() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "home", "phone").await;

    let empty = alice
        .iq(
            "v0",
            "<iq type='get' id='v0'><vCard xmlns='vcard-temp'/></iq>",
        )
        .await;
    assert!(empty.contains("<vCard xmlns='vcard-temp'/>"), "{empty}");
    // "hello" as the photo: its SHA-1 is the avatar hash.
    let set = "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN>\
        <PHOTO><TYPE>image/png</TYPE><BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard></iq>";
    assert!(alice.iq("v1", set).await.contains("type='result'"));
    let own = alice
        .iq(
            "v2",
            "<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>",
        )
        .await;
    assert!(own.contains("<FN>Alice A.</FN>"), "{own}");
    let theirs = bob
        .iq(
            "v3",
            "<iq type='get' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        )
        .await;
    assert!(
        theirs.contains("<FN>Alice A.</FN>") && theirs.contains("from='alice@localhost'"),
        "{theirs}"
    );
    let forbidden = bob.iq("v4", "<iq type='set' id='v4' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>x</FN></vCard></iq>").await;
    assert!(forbidden.contains("<forbidden"), "{forbidden}");

    // Her next presence carries the hash, even if her client did not put it there.
    alice.send("<presence/>").await;
    let p = bob
        .stanza_with(&["from='alice@localhost/home'", "vcard-temp:x:update"])
        .await;
    assert!(
        p.contains("<photo>aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d</photo>"),
        "{p}"
    );
    // An explicit empty <photo/> is the client's word and stays (XEP-0398 §5).
    alice
        .send("<presence><status>no pic</status><x xmlns='vcard-temp:x:update'><photo/></x></presence>")
        .await;
    let p = bob
        .stanza_with(&["from='alice@localhost/home'", "no pic"])
        .await;
    assert!(p.contains("<photo/>") && !p.contains("aaf4c61d"), "{p}");
    server.stop().await;
}

#[tokio::test]
async fn private_storage_and_small_services() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "a").await;
    let set = "<iq type='set' id='p1'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><color>blue</color></prefs></query></iq>";
    assert!(alice.iq("p1", set).await.contains("type='result'"));
    let got = alice.iq("p2", "<iq type='get' id='p2'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert!(got.contains("<color>blue</color>"), "{got}");
    let bad = alice.iq("p3", "<iq type='get' id='p3'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></iq>").await;
    assert!(bad.contains("<not-acceptable"), "{bad}");
    let (mut bob, _) = Raw::login(server.c2s, "bob", "b").await;
    let other = bob.iq("p4", "<iq type='get' id='p4' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>").await;
    assert!(other.contains("<forbidden"), "{other}");

    let time = alice
        .iq(
            "t",
            "<iq type='get' id='t' to='localhost'><time xmlns='urn:xmpp:time'/></iq>",
        )
        .await;
    assert!(
        time.contains("<tzo>+00:00</tzo>") && time.contains("Z</utc>"),
        "{time}"
    );
    let up = alice
        .iq(
            "u",
            "<iq type='get' id='u' to='localhost'><query xmlns='jabber:iq:last'/></iq>",
        )
        .await;
    assert!(up.contains("seconds='"), "{up}");
    let ping = alice
        .iq(
            "pg",
            "<iq type='get' id='pg' to='bob@localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert!(ping.contains("type='result'"), "{ping}");
    server.stop().await;
}

#[tokio::test]
async fn password_change_and_account_deletion_in_band() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "home", "phone").await;
    let change = "<iq type='set' id='pw' to='localhost'><query xmlns='jabber:iq:register'><username>alice</username><password>n3w pass</password></query></iq>";
    assert!(alice.iq("pw", change).await.contains("type='result'"));
    let (mut probe, _) = Raw::secure(server.c2s).await;
    assert!(probe
        .auth_plain("alice", PASSWORD)
        .await
        .contains("<not-authorized/>"));
    let (mut probe, _) = Raw::secure(server.c2s).await;
    assert!(probe
        .auth_plain("alice", "n3w pass")
        .await
        .contains("<success"));

    let steal = "<iq type='set' id='st' to='localhost'><query xmlns='jabber:iq:register'><username>bob</username><password>x</password></query></iq>";
    assert!(alice.iq("st", steal).await.contains("<not-allowed"));

    let remove = "<iq type='set' id='rm' to='localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>";
    alice.send(remove).await;
    let rest = alice.read_to_close().await;
    assert!(
        rest.contains("id='rm'") && rest.contains("<not-authorized"),
        "{rest}"
    );
    // Gone with all its data: Bob's messages to her now bounce.
    bob.stanza_with(&["from='alice@localhost/home'", "type='unavailable'"])
        .await;
    bob.send("<message to='alice@localhost' id='gone'><body>hi?</body></message>")
        .await;
    let bounce = bob.stanza_with(&["id='gone'"]).await;
    assert!(bounce.contains("<service-unavailable"), "{bounce}");
    server.stop().await;
}

#[tokio::test]
async fn disco_lists_exactly_the_implemented_features() {
    let server = TestServer::start_with(|c| {
        c.server
            .contact_addresses
            .insert("admin".into(), vec!["xmpp:admin@localhost".into()]);
    })
    .await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "a").await;
    let info = alice.iq("d1", "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let features: Vec<&str> = info
        .split("<feature var='")
        .skip(1)
        .map(|f| f.split('\'').next().unwrap())
        .collect();
    assert_eq!(
        features,
        vec![
            // XEP-0115 §7: the server advertises caps in its stream features.
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "jabber:iq:last",
            "jabber:iq:privacy",
            "jabber:iq:register",
            "jabber:iq:version",
            "urn:xmpp:blocking",
            "urn:xmpp:carbons:2",
            "urn:xmpp:ping",
            "urn:xmpp:time",
            "vcard-temp",
        ]
    );
    assert!(
        info.contains("<field var='admin-addresses'><value>xmpp:admin@localhost</value></field>"),
        "XEP-0157: {info}"
    );
    // The account itself sees its identity…
    let own = alice.iq("d2", "<iq type='get' id='d2' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        own.contains("<identity category='account' type='registered'/>"),
        "{own}"
    );
    server.stop().await;
}

/// XEP-0030 §8: no directory harvesting through disco of bare JIDs.
#[tokio::test]
async fn account_disco_is_for_the_account_and_its_subscribers_only() {
    use common::parse;
    let server = TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "home", "phone").await;
    let mut carol = Raw::login_quiet(server.c2s, "carol", "x").await;
    let info = |id: &str, to: &str| {
        format!("<iq type='get' id='{id}' to='{to}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    };
    let items = |id: &str, to: &str| {
        format!("<iq type='get' id='{id}' to='{to}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    };
    // A subscribed contact is answered.
    let reply = parse(&bob.iq("b1", &info("b1", "alice@localhost")).await);
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let query = reply
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(query
        .children()
        .any(|c| c.name() == "identity" && c.attr("category") == Some("account")));
    // A stranger gets the same answer for an existing account as for a missing one.
    for (id, to) in [("c1", "alice@localhost"), ("c2", "nobody@localhost")] {
        let reply = parse(&carol.iq(id, &info(id, to)).await);
        assert_eq!(reply.attr("type"), Some("error"), "{to}: {reply:?}");
        let error = reply.get_child("error", "jabber:client").unwrap();
        assert!(
            error.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"),
            "{to}: {reply:?}"
        );
    }
    let reply = parse(&carol.iq("c3", &items("c3", "alice@localhost")).await);
    assert_eq!(reply.attr("type"), Some("result"));
    let query = reply
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap();
    assert_eq!(query.children().count(), 0);
    alice.sync().await;
    server.stop().await;
}

#[tokio::test]
async fn in_band_registration_when_enabled() {
    let server = TestServer::start_with(|c| {
        c.im.allow_registration = true;
        c.im.registrations_per_ip_per_hour = 1;
    })
    .await;
    let (mut raw, features) = Raw::secure(server.c2s).await;
    assert!(
        features.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{features}"
    );
    let form = raw
        .iq(
            "f",
            "<iq type='get' id='f'><query xmlns='jabber:iq:register'/></iq>",
        )
        .await;
    assert!(
        form.contains("<username/>") && form.contains("<password/>"),
        "{form}"
    );
    let taken = raw.iq("t", "<iq type='set' id='t'><query xmlns='jabber:iq:register'><username>alice</username><password>x</password></query></iq>").await;
    assert!(taken.contains("<conflict"), "{taken}");
    let ok = raw.iq("n", "<iq type='set' id='n'><query xmlns='jabber:iq:register'><username>Newbie</username><password>fresh pass</password></query></iq>").await;
    assert!(ok.contains("type='result'"), "{ok}");
    let again = raw.iq("n2", "<iq type='set' id='n2'><query xmlns='jabber:iq:register'><username>other</username><password>p</password></query></iq>").await;
    assert!(
        again.contains("<resource-constraint"),
        "rate limited: {again}"
    );
    let (mut login, _) = Raw::secure(server.c2s).await;
    assert!(login
        .auth_plain("newbie", "fresh pass")
        .await
        .contains("<success"));
    server.stop().await;

    // Off by default: not advertised, and the request is refused.
    let server = TestServer::start().await;
    let (mut raw, features) = Raw::secure(server.c2s).await;
    assert!(!features.contains("iq-register"), "{features}");
    raw.send("<iq type='get' id='f'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    assert!(raw.read_to_close().await.contains("<not-authorized"));
    server.stop().await;
}

/// RFC 6121 §8.5.3.2.1 and §8.5.2: messages to a resource that is not there, and groupchat
/// to a bare JID.
#[tokio::test]
async fn messages_to_an_absent_resource_follow_their_type() {
    use common::parse;
    let server = TestServer::start().await;
    let mut bob = online(&server, "bob", "phone", 0).await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let send = |id: &str, to: &str, kind: &str| {
        format!("<message to='{to}' id='{id}' type='{kind}'><body>{id}</body></message>")
    };
    let is_service_unavailable = |reply: &str| {
        let reply = parse(reply);
        reply.attr("type") == Some("error")
            && reply.get_child("error", "jabber:client").is_some_and(|e| {
                e.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas")
            })
    };
    // normal and groupchat: refused, never shown to another resource.
    for (id, kind) in [("n1", "normal"), ("g1", "groupchat")] {
        alice.send(&send(id, "bob@localhost/laptop", kind)).await;
        let reply = alice.stanza_with(&[&format!("id='{id}'")]).await;
        assert!(is_service_unavailable(&reply), "{kind}: {reply}");
    }
    // groupchat to the bare JID: refused too.
    alice.send(&send("g2", "bob@localhost", "groupchat")).await;
    let reply = alice.stanza_with(&["id='g2'"]).await;
    assert!(is_service_unavailable(&reply), "{reply}");
    // headline: silently dropped.
    alice
        .send(&send("h1", "bob@localhost/laptop", "headline"))
        .await;
    // chat: delivered as if to the bare JID.
    alice
        .send(&send("c1", "bob@localhost/laptop", "chat"))
        .await;
    let first = parse(&bob.next_stanza().await);
    assert_eq!(first.attr("id"), Some("c1"), "{first:?}");
    alice.sync().await;
    assert!(!alice.next_stanza_if_any().await.contains("id='h1'"));
    server.stop().await;
}

/// XEP-0054 §3.3: another account's missing vCard and a missing account look the same.
#[tokio::test]
async fn a_missing_vcard_of_another_account_is_service_unavailable() {
    use common::parse;
    let server = TestServer::start().await;
    let mut carol = Raw::login_quiet(server.c2s, "carol", "x").await;
    let get = |id: &str, to: &str| {
        format!("<iq type='get' id='{id}' to='{to}'><vCard xmlns='vcard-temp'/></iq>")
    };
    for (id, to) in [("v1", "bob@localhost"), ("v2", "nobody@localhost")] {
        let reply = parse(&carol.iq(id, &get(id, to)).await);
        assert_eq!(reply.attr("type"), Some("error"), "{to}: {reply:?}");
        let error = reply.get_child("error", "jabber:client").unwrap();
        assert!(
            error.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"),
            "{to}: {reply:?}"
        );
    }
    // One's own missing vCard is an empty one.
    let own = parse(&carol.iq("v3", &get("v3", "carol@localhost")).await);
    assert_eq!(own.attr("type"), Some("result"));
    let vcard = own
        .get_child("vCard", "vcard-temp")
        .expect("an empty vCard");
    assert_eq!(vcard.children().count(), 0);
    server.stop().await;
}
