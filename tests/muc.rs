//! XEP-0045 Multi-User Chat end to end over real sockets: the service in the domain's
//! disco, creating and configuring rooms, the status codes of entering, talking, changing
//! nick, leaving, kicking and banning, the errors of §7.2, a persistent room across a
//! restart, and a join of 200 occupants.

mod common;

use std::collections::HashSet;

use common::{parse, Raw, TestServer};
use xmppd_xml::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const USER: &str = "http://jabber.org/protocol/muc#user";
const OWNER: &str = "http://jabber.org/protocol/muc#owner";
const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const DATA: &str = "jabber:x:data";
const CLIENT: &str = "jabber:client";
const SERVICE: &str = "conference.localhost";

fn codes(el: &Element) -> Vec<String> {
    el.get_child("x", USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", USER))
                .filter_map(|s| s.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item(el: &Element) -> &Element {
    el.get_child("x", USER)
        .and_then(|x| x.get_child("item", USER))
        .unwrap_or_else(|| panic!("no muc#user item in {el:?}"))
}

fn error_condition(el: &Element) -> String {
    assert_eq!(el.attr("type"), Some("error"), "{el:?}");
    el.get_child("error", CLIENT)
        .and_then(|e| e.children().next())
        .map(|c| c.name().to_string())
        .unwrap_or_default()
}

/// Sends a join and reads everything up to the subject, which ends the join (§7.2.15):
/// the occupants' presence, the self-presence, history.
async fn join(raw: &mut Raw, room: &str, nick: &str, x: &str) -> Vec<Element> {
    raw.send(&format!(
        "<presence to='{room}@{SERVICE}/{nick}'><x xmlns='{MUC}'>{x}</x></presence>"
    ))
    .await;
    let mut got = Vec::new();
    loop {
        let el = parse(&raw.next_stanza().await);
        let done = el.attr("type") == Some("error")
            || (el.name() == "message" && el.has_child("subject", CLIENT));
        got.push(el);
        if done {
            return got;
        }
    }
}

/// The one error presence a refused join gets.
async fn refused(raw: &mut Raw, room: &str, nick: &str, x: &str) -> String {
    let got = join(raw, room, nick, x).await;
    error_condition(got.last().unwrap())
}

fn self_presence(got: &[Element]) -> &Element {
    got.iter()
        .find(|e| e.name() == "presence" && codes(e).contains(&"110".to_string()))
        .unwrap_or_else(|| panic!("no self-presence in {got:?}"))
}

async fn iq(raw: &mut Raw, id: &str, to: &str, kind: &str, payload: &str) -> Element {
    parse(
        &raw.iq(
            id,
            &format!("<iq type='{kind}' id='{id}' to='{to}'>{payload}</iq>"),
        )
        .await,
    )
}

/// Submits the room configuration form with these `(var, value)` fields.
async fn configure(raw: &mut Raw, room: &str, fields: &[(&str, &str)]) -> Element {
    let fields: String = fields
        .iter()
        .map(|(var, v)| format!("<field var='{var}'><value>{v}</value></field>"))
        .collect();
    iq(
        raw,
        "cfg",
        &format!("{room}@{SERVICE}"),
        "set",
        &format!("<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>{fields}</x></query>"),
    )
    .await
}

/// `alice` (whoever it is) creates `room` as an instant room (§10.1.2) under the nick
/// "alice".
async fn create(alice: &mut Raw, room: &str) {
    let got = join(alice, room, "alice", "").await;
    assert_eq!(codes(self_presence(&got)), ["201", "110"]);
    let reply = configure(alice, room, &[]).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

#[tokio::test]
async fn the_service_is_in_the_domain_disco_and_describes_itself() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let items = iq(
        &mut alice,
        "i",
        "localhost",
        "get",
        &format!("<query xmlns='{DISCO_ITEMS}'/>"),
    )
    .await;
    let query = items.get_child("query", DISCO_ITEMS).unwrap();
    assert!(
        query.children().any(|i| i.attr("jid") == Some(SERVICE)),
        "{items:?}"
    );
    let info = iq(
        &mut alice,
        "d",
        SERVICE,
        "get",
        &format!("<query xmlns='{DISCO_INFO}'/>"),
    )
    .await;
    let query = info.get_child("query", DISCO_INFO).unwrap();
    let identity = query.get_child("identity", DISCO_INFO).unwrap();
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("conference"), Some("text"))
    );
    let features: Vec<_> = query.children().filter_map(|f| f.attr("var")).collect();
    assert!(features.contains(&MUC), "{features:?}");
    // Rooms may turn occupant ids off, so only rooms list them (XEP-0421 §4).
    assert!(
        !features.contains(&"urn:xmpp:occupant-id:0"),
        "{features:?}"
    );
    for f in [
        "http://jabber.org/protocol/muc#stable_id",
        "http://jabber.org/protocol/muc#self-ping-optimization",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
}

#[tokio::test]
async fn enter_talk_change_nick_and_leave_with_their_status_codes() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    // A new room is locked: bob cannot enter before alice configures it (§10.1.1).
    let got = join(&mut alice, "lounge", "alice", "").await;
    let own = self_presence(&got);
    assert_eq!(codes(own), ["201", "110"]);
    assert_eq!(item(own).attr("affiliation"), Some("owner"));
    assert_eq!(item(own).attr("role"), Some("moderator"));
    assert_eq!(
        refused(&mut bob, "lounge", "bob", "").await,
        "item-not-found"
    );
    // Reserved-room flow: the owner asks for the form, then submits it.
    let form = iq(
        &mut alice,
        "f",
        &format!("lounge@{SERVICE}"),
        "get",
        &format!("<query xmlns='{OWNER}'/>"),
    )
    .await;
    let x = form
        .get_child("query", OWNER)
        .and_then(|q| q.get_child("x", DATA))
        .unwrap();
    assert_eq!(x.attr("type"), Some("form"));
    assert!(x
        .children()
        .any(|f| f.attr("var") == Some("muc#roomconfig_whois")));
    let reply = configure(
        &mut alice,
        "lounge",
        &[("muc#roomconfig_roomname", "The Lounge")],
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"));

    // Bob enters: alice's presence first, then his own (110), then the subject.
    let got = join(&mut bob, "lounge", "bob", "").await;
    assert_eq!(
        got[0].attr("from"),
        Some("lounge@conference.localhost/alice")
    );
    assert_eq!(codes(&got[1]), ["110"]);
    assert!(item(&got[0]).attr("jid").is_none(), "semi-anonymous room");
    assert!(got[1]
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .is_some());
    let seen = parse(
        &alice
            .stanza_with(&["lounge@conference.localhost/bob"])
            .await,
    );
    // Moderators see real JIDs.
    assert_eq!(item(&seen).attr("jid"), Some("bob@localhost/home"));

    // Groupchat is reflected to everyone with its id and the occupant JID.
    bob.send(&format!(
        "<message to='lounge@{SERVICE}' type='groupchat' id='g1'><body>hello</body></message>"
    ))
    .await;
    for raw in [&mut alice, &mut bob] {
        let m = parse(&raw.stanza_with(&["id='g1'"]).await);
        assert_eq!(m.attr("from"), Some("lounge@conference.localhost/bob"));
        assert_eq!(m.get_child("body", CLIENT).unwrap().text(), "hello");
    }

    // The metrics count the room, its occupants and the two copies.
    assert_eq!(server.metric("xmppd_muc_rooms_active").await, 1);
    assert_eq!(server.metric("xmppd_muc_rooms_persistent").await, 0);
    assert_eq!(server.metric("xmppd_muc_occupants").await, 2);
    assert_eq!(server.metric("xmppd_muc_messages_out_total").await, 2);

    // Room disco#info carries muc_* features and the roominfo form.
    let info = iq(
        &mut bob,
        "ri",
        &format!("lounge@{SERVICE}"),
        "get",
        &format!("<query xmlns='{DISCO_INFO}'/>"),
    )
    .await;
    let q = info.get_child("query", DISCO_INFO).unwrap();
    let features: Vec<_> = q.children().filter_map(|f| f.attr("var")).collect();
    for f in [
        "muc_public",
        "muc_temporary",
        "muc_open",
        "muc_semianonymous",
        "muc_unsecured",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    let roominfo = q.get_child("x", DATA).unwrap();
    let occupants = roominfo
        .children()
        .find(|f| f.attr("var") == Some("muc#roominfo_occupants"))
        .unwrap();
    assert_eq!(occupants.get_child("value", DATA).unwrap().text(), "2");

    // The public room is listed, in pages (XEP-0059).
    let items = iq(&mut bob, "it", SERVICE, "get", &format!("<query xmlns='{DISCO_ITEMS}'><set xmlns='http://jabber.org/protocol/rsm'><max>1</max></set></query>")).await;
    let q = items.get_child("query", DISCO_ITEMS).unwrap();
    let listed = q.get_child("item", DISCO_ITEMS).unwrap();
    assert_eq!(listed.attr("jid"), Some("lounge@conference.localhost"));
    assert_eq!(listed.attr("name"), Some("The Lounge"));
    let set = q
        .get_child("set", "http://jabber.org/protocol/rsm")
        .unwrap();
    assert_eq!(
        set.get_child("count", "http://jabber.org/protocol/rsm")
            .unwrap()
            .text(),
        "1"
    );

    // Nick change: unavailable with 303 and the new nick, then available (§7.6).
    bob.send(&format!("<presence to='lounge@{SERVICE}/robert'/>"))
        .await;
    let gone = parse(&alice.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(codes(&gone), ["303"]);
    assert_eq!(item(&gone).attr("nick"), Some("robert"));
    let back = parse(
        &alice
            .stanza_with(&["lounge@conference.localhost/robert"])
            .await,
    );
    assert!(back.attr("type").is_none());
    let own = parse(&bob.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(codes(&own), ["303", "110"]);

    // XEP-0410 self-ping is answered by the service.
    let pong = iq(
        &mut bob,
        "sp",
        &format!("lounge@{SERVICE}/robert"),
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert_eq!(pong.attr("type"), Some("result"));

    // Leaving: unavailable with 110 to the leaver, without it to the others (§7.14).
    bob.send(&format!(
        "<presence to='lounge@{SERVICE}/robert' type='unavailable'/>"
    ))
    .await;
    let own = parse(&bob.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(codes(&own), ["110"]);
    let seen = parse(&alice.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(item(&seen).attr("role"), Some("none"));
    assert!(codes(&seen).is_empty());
}

#[tokio::test]
async fn entering_is_refused_with_the_errors_of_section_7_2() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    let mut carol = Raw::login_quiet(server.c2s, "carol", "home").await;
    create(&mut alice, "den").await;
    assert_eq!(refused(&mut bob, "den", "alice", "").await, "conflict");
    // A message from someone who is not in the room (§7.4).
    bob.send(&format!(
        "<message to='den@{SERVICE}' type='groupchat' id='x1'><body>hi</body></message>"
    ))
    .await;
    assert_eq!(
        error_condition(&parse(&bob.stanza_with(&["id='x1'"]).await)),
        "not-acceptable"
    );
    // Non-owners may not configure, and a wrongly typed field changes nothing.
    let reply = configure(&mut bob, "den", &[]).await;
    assert_eq!(error_condition(&reply), "forbidden");
    let reply = configure(
        &mut alice,
        "den",
        &[("muc#roomconfig_membersonly", "maybe")],
    )
    .await;
    assert_eq!(error_condition(&reply), "not-acceptable");
    // Password (§7.2.5), then members-only (§7.2.6).
    let reply = configure(
        &mut alice,
        "den",
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "pw"),
        ],
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(refused(&mut bob, "den", "bob", "").await, "not-authorized");
    let got = join(&mut bob, "den", "bob", "<password>pw</password>").await;
    assert_eq!(codes(self_presence(&got)), ["110"]);
    // Non-admins may not change affiliations.
    let ban = format!(
        "<query xmlns='{ADMIN}'><item jid='carol@localhost' affiliation='outcast'/></query>"
    );
    let reply = iq(&mut bob, "b1", &format!("den@{SERVICE}"), "set", &ban).await;
    assert_eq!(error_condition(&reply), "forbidden");
    let reply = iq(&mut alice, "b2", &format!("den@{SERVICE}"), "set", &ban).await;
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(
        refused(&mut carol, "den", "carol", "<password>pw</password>").await,
        "forbidden"
    );
    let reply = configure(&mut alice, "den", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(reply.attr("type"), Some("result"));
    // Bob, not a member, is removed with 322; the others hear 104 first.
    let removed = parse(&bob.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(codes(&removed), ["322", "110"]);
    let unban =
        format!("<query xmlns='{ADMIN}'><item jid='carol@localhost' affiliation='none'/></query>");
    iq(&mut alice, "b3", &format!("den@{SERVICE}"), "set", &unban).await;
    assert_eq!(
        refused(&mut carol, "den", "carol", "<password>pw</password>").await,
        "registration-required"
    );
    // Malformed nicks and room JIDs.
    carol
        .send(&format!(
            "<presence to='den@{SERVICE}'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    assert_eq!(
        error_condition(&parse(&carol.next_stanza().await)),
        "jid-malformed"
    );
    carol
        .send("<presence to='bad@@conference.localhost/x'/>")
        .await;
    let reply = parse(&carol.next_stanza().await);
    assert_eq!(error_condition(&reply), "jid-malformed");
    // The room still works.
    alice.send(&format!("<message to='den@{SERVICE}' type='groupchat' id='ok'><body>still here</body></message>")).await;
    assert_eq!(
        parse(&alice.stanza_with(&["id='ok'"]).await).attr("type"),
        Some("groupchat")
    );
}

#[tokio::test]
async fn moderators_kick_admins_ban_and_roles_follow_affiliations() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    let mut carol = Raw::login_quiet(server.c2s, "carol", "home").await;
    create(&mut alice, "court").await;
    join(&mut bob, "court", "bob", "").await;
    join(&mut carol, "court", "carol", "").await;
    let room = format!("court@{SERVICE}");
    // A participant cannot kick.
    let kick_alice = format!("<query xmlns='{ADMIN}'><item nick='alice' role='none'/></query>");
    assert_eq!(
        error_condition(&iq(&mut bob, "k0", &room, "set", &kick_alice).await),
        "forbidden"
    );
    // Bob becomes an admin: his role becomes moderator, everyone hears it.
    let admin =
        format!("<query xmlns='{ADMIN}'><item jid='bob@localhost' affiliation='admin'/></query>");
    assert_eq!(
        iq(&mut alice, "a1", &room, "set", &admin)
            .await
            .attr("type"),
        Some("result")
    );
    let p = parse(
        &carol
            .stanza_with(&["court@conference.localhost/bob", "affiliation='admin'"])
            .await,
    );
    assert_eq!(item(&p).attr("role"), Some("moderator"));
    // An admin cannot kick the owner (§8.2).
    assert_eq!(
        error_condition(&iq(&mut bob, "k1", &room, "set", &kick_alice).await),
        "not-allowed"
    );
    // Bob kicks carol with a reason: 307 to her (with 110) and to the others.
    let kick = format!("<query xmlns='{ADMIN}'><item nick='carol' role='none'><reason>noise</reason></item></query>");
    assert_eq!(
        iq(&mut bob, "k2", &room, "set", &kick).await.attr("type"),
        Some("result")
    );
    let kicked = parse(&carol.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(codes(&kicked), ["307", "110"]);
    assert_eq!(
        item(&kicked).get_child("reason", USER).unwrap().text(),
        "noise"
    );
    assert_eq!(
        item(&kicked).get_child("actor", USER).unwrap().attr("nick"),
        Some("bob")
    );
    let seen = parse(
        &alice
            .stanza_with(&["court@conference.localhost/carol", "type='unavailable'"])
            .await,
    );
    assert_eq!(codes(&seen), ["307"]);
    // Carol comes back and is banned: 301, and she cannot enter again.
    join(&mut carol, "court", "carol", "").await;
    let ban = format!("<query xmlns='{ADMIN}'><item jid='carol@localhost' affiliation='outcast'><reason>enough</reason></item></query>");
    assert_eq!(
        iq(&mut bob, "b1", &room, "set", &ban).await.attr("type"),
        Some("result")
    );
    let banned = parse(&carol.stanza_with(&["type='unavailable'"]).await);
    assert_eq!(codes(&banned), ["301", "110"]);
    assert_eq!(item(&banned).attr("affiliation"), Some("outcast"));
    assert_eq!(refused(&mut carol, "court", "carol", "").await, "forbidden");
    // The outcast list; admins cannot touch owners; the last owner stays.
    let list = iq(
        &mut bob,
        "l1",
        &room,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='outcast'/></query>"),
    )
    .await;
    let items: Vec<_> = list
        .get_child("query", ADMIN)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(items, ["carol@localhost"]);
    let demote = format!(
        "<query xmlns='{ADMIN}'><item jid='alice@localhost' affiliation='member'/></query>"
    );
    assert_eq!(
        error_condition(&iq(&mut bob, "d1", &room, "set", &demote).await),
        "not-allowed"
    );
    assert_eq!(
        error_condition(&iq(&mut alice, "d2", &room, "set", &demote).await),
        "conflict"
    );
    let destroy = format!("<query xmlns='{OWNER}'><destroy jid='hall@{SERVICE}'><reason>moving</reason></destroy></query>");
    assert_eq!(
        error_condition(&iq(&mut bob, "x1", &room, "set", &destroy).await),
        "forbidden"
    );
    assert_eq!(
        iq(&mut alice, "x2", &room, "set", &destroy)
            .await
            .attr("type"),
        Some("result")
    );
    let gone = parse(&bob.stanza_with(&["<destroy"]).await);
    let d = gone
        .get_child("x", USER)
        .and_then(|x| x.get_child("destroy", USER))
        .unwrap();
    assert_eq!(d.attr("jid"), Some("hall@conference.localhost"));
    assert_eq!(d.get_child("reason", USER).unwrap().text(), "moving");
}

#[tokio::test]
async fn history_subject_private_messages_and_invitations() {
    let server = TestServer::start().await;
    // Available, so that invitations and declines to their bare JIDs reach them.
    let mut alice = common::online(&server, "alice", "home", 0).await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    let mut carol = common::online(&server, "carol", "home", 0).await;
    create(&mut alice, "pub").await;
    let room = format!("pub@{SERVICE}");
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat' id='s'><subject>Rules</subject></message>"
        ))
        .await;
    alice.stanza_with(&["id='s'"]).await;
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='{room}' type='groupchat' id='h{i}'><body>m{i}</body></message>"
            ))
            .await;
        alice.stanza_with(&[&format!("id='h{i}'")]).await;
    }
    // Two of the three, each with a delay from the room, then the subject.
    let got = join(&mut bob, "pub", "bob", "<history maxstanzas='2'/>").await;
    let history: Vec<_> = got.iter().filter(|m| m.has_child("body", CLIENT)).collect();
    assert_eq!(
        history
            .iter()
            .map(|m| m.attr("id").unwrap())
            .collect::<Vec<_>>(),
        ["h1", "h2"]
    );
    let delay = history[0].get_child("delay", "urn:xmpp:delay").unwrap();
    assert_eq!(delay.attr("from"), Some("pub@conference.localhost"));
    let subject = got.last().unwrap();
    assert_eq!(
        subject.get_child("subject", CLIENT).unwrap().text(),
        "Rules"
    );
    assert_eq!(subject.attr("from"), Some("pub@conference.localhost/alice"));
    // A participant may not change the subject by default (§8.1).
    bob.send(&format!(
        "<message to='{room}' type='groupchat' id='s2'><subject>Mine</subject></message>"
    ))
    .await;
    assert_eq!(
        error_condition(&parse(&bob.stanza_with(&["id='s2'"]).await)),
        "forbidden"
    );
    // Private message through the room.
    bob.send(&format!(
        "<message to='{room}/alice' type='chat' id='pm'><body>psst</body></message>"
    ))
    .await;
    let pm = parse(&alice.stanza_with(&["id='pm'"]).await);
    assert_eq!(pm.attr("from"), Some("pub@conference.localhost/bob"));
    assert!(pm.has_child("x", USER));
    // A mediated invitation (§7.8.2), and carol's decline back to alice (§7.8.3).
    alice.send(&format!("<message to='{room}' id='inv'><x xmlns='{USER}'><invite to='carol@localhost'><reason>join us</reason></invite></x></message>")).await;
    let invite = parse(&carol.stanza_with(&["<invite"]).await);
    assert_eq!(invite.attr("from"), Some("pub@conference.localhost"));
    let i = invite
        .get_child("x", USER)
        .unwrap()
        .get_child("invite", USER)
        .unwrap();
    assert_eq!(i.attr("from"), Some("alice@localhost"));
    carol.send(&format!("<message to='{room}'><x xmlns='{USER}'><decline to='alice@localhost'><reason>busy</reason></decline></x></message>")).await;
    let decline = parse(&alice.stanza_with(&["<decline"]).await);
    let d = decline
        .get_child("x", USER)
        .unwrap()
        .get_child("decline", USER)
        .unwrap();
    assert_eq!(d.attr("from"), Some("carol@localhost"));
}

#[tokio::test]
async fn a_persistent_room_keeps_config_affiliations_and_history_across_restart() {
    let mut server = TestServer::start().await;
    {
        let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
        let got = join(&mut alice, "keep", "alice", "").await;
        assert_eq!(codes(self_presence(&got)), ["201", "110"]);
        let reply = configure(
            &mut alice,
            "keep",
            &[
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_roomname", "Kept"),
                ("muc#roomconfig_membersonly", "1"),
            ],
        )
        .await;
        assert_eq!(reply.attr("type"), Some("result"));
        let member = format!(
            "<query xmlns='{ADMIN}'><item jid='bob@localhost' affiliation='member'/></query>"
        );
        assert_eq!(
            iq(&mut alice, "m", &format!("keep@{SERVICE}"), "set", &member)
                .await
                .attr("type"),
            Some("result")
        );
        alice.send(&format!("<message to='keep@{SERVICE}' type='groupchat' id='old'><body>before</body></message>")).await;
        alice.stanza_with(&["id='old'"]).await;
    }
    assert_eq!(server.metric("xmppd_muc_rooms_persistent").await, 1);
    server.restart().await;
    // Counted at start, without loading it.
    assert_eq!(server.metric("xmppd_muc_rooms_persistent").await, 1);
    assert_eq!(server.metric("xmppd_muc_rooms_active").await, 0);
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    // Listed before anyone uses it: read from storage, not from a loaded room.
    let items = iq(
        &mut bob,
        "it",
        SERVICE,
        "get",
        &format!("<query xmlns='{DISCO_ITEMS}'/>"),
    )
    .await;
    let listed = items
        .get_child("query", DISCO_ITEMS)
        .unwrap()
        .get_child("item", DISCO_ITEMS)
        .unwrap();
    assert_eq!(
        (listed.attr("jid"), listed.attr("name")),
        (Some("keep@conference.localhost"), Some("Kept"))
    );
    // Bob is still a member of the members-only room, and the history is there.
    let got = join(&mut bob, "keep", "bob", "").await;
    assert_eq!(
        item(self_presence(&got)).attr("affiliation"),
        Some("member")
    );
    let old = got
        .iter()
        .find(|m| m.attr("id") == Some("old"))
        .expect("history after restart");
    assert!(old.get_child("delay", "urn:xmpp:delay").is_some());
    let mut carol = Raw::login_quiet(server.c2s, "carol", "home").await;
    assert_eq!(
        refused(&mut carol, "keep", "carol", "").await,
        "registration-required"
    );
    // The owner is still the owner.
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let form = iq(
        &mut alice,
        "f",
        &format!("keep@{SERVICE}"),
        "get",
        &format!("<query xmlns='{OWNER}'/>"),
    )
    .await;
    let x = form
        .get_child("query", OWNER)
        .and_then(|q| q.get_child("x", DATA))
        .unwrap();
    let name = x
        .children()
        .find(|f| f.attr("var") == Some("muc#roomconfig_roomname"))
        .unwrap();
    assert_eq!(name.get_child("value", DATA).unwrap().text(), "Kept");
}

/// A session of a fresh anonymous account (SASL ANONYMOUS: no key derivation, so two
/// hundred logins stay fast).
async fn anonymous(server: &TestServer) -> Raw {
    let (mut raw, _) = Raw::secure(server.c2s).await;
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        .await;
    let reply = raw.read_sasl_outcome().await;
    assert!(reply.contains("<success"), "{reply}");
    raw.open().await;
    raw.bind(None).await;
    raw
}

#[tokio::test]
async fn two_hundred_occupants_all_end_with_the_full_list() {
    const N: usize = 200;
    let server =
        TestServer::start_with(|c| c.sasl.anonymous_domains = vec!["localhost".into()]).await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    create(&mut alice, "big").await;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(anonymous(&server).await);
    }
    // All join at once; each reads until it has seen every occupant (itself included).
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut raw)| {
            tokio::spawn(async move {
                let mut present = HashSet::new();
                let history = "<history maxstanzas='0'/>";
                for el in join(&mut raw, "big", &format!("n{i}"), history).await {
                    if el.name() == "presence" {
                        present.insert(el.attr("from").unwrap().to_string());
                    }
                }
                while present.len() < N + 1 {
                    let el = parse(&raw.next_stanza().await);
                    if el.name() == "presence" && el.attr("type").is_none() {
                        present.insert(el.attr("from").unwrap().to_string());
                    }
                }
                (raw, present.len())
            })
        })
        .collect();
    for t in tasks {
        let (_raw, seen) = t.await.unwrap();
        assert_eq!(seen, N + 1);
    }
    // Alice, who was there first, has the whole list too.
    let mut present = HashSet::new();
    while present.len() < N {
        let el = parse(&alice.next_stanza().await);
        if el.name() == "presence" {
            present.insert(el.attr("from").unwrap().to_string());
        }
    }
}

#[tokio::test]
async fn rooms_per_user_and_message_rate_are_limited_and_the_room_still_works() {
    let server = TestServer::start_with(|c| {
        c.modules.insert(
            "muc".into(),
            toml::toml! { max_rooms_per_user = 2
            messages_per_second = 1.0 },
        );
    })
    .await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    create(&mut alice, "one").await;
    create(&mut alice, "two").await;
    assert_eq!(
        refused(&mut alice, "three", "alice", "").await,
        "policy-violation"
    );
    // A burst of two, then the third message at once is refused.
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='one@{SERVICE}' type='groupchat' id='r{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    for i in 0..2 {
        let m = parse(&alice.stanza_with(&[&format!("id='r{i}'")]).await);
        assert_eq!(m.attr("type"), Some("groupchat"));
    }
    let refused_msg = parse(&alice.stanza_with(&["id='r2'"]).await);
    assert_eq!(error_condition(&refused_msg), "resource-constraint");
    let info = iq(
        &mut alice,
        "ri",
        &format!("one@{SERVICE}"),
        "get",
        &format!("<query xmlns='{DISCO_INFO}'/>"),
    )
    .await;
    assert_eq!(info.attr("type"), Some("result"));
}

#[tokio::test]
async fn two_sessions_are_one_occupant_and_a_closed_stream_leaves() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut phone = Raw::login_quiet(server.c2s, "bob", "phone").await;
    let mut laptop = Raw::login_quiet(server.c2s, "bob", "laptop").await;
    create(&mut alice, "multi").await;
    join(&mut phone, "multi", "bob", "").await;
    alice.stanza_with(&["multi@conference.localhost/bob"]).await;
    let got = join(&mut laptop, "multi", "bob", "").await;
    assert_eq!(codes(self_presence(&got)), ["110"]);
    // Both sessions get the room's messages.
    alice
        .send(&format!(
            "<message to='multi@{SERVICE}' type='groupchat' id='both'><body>hi</body></message>"
        ))
        .await;
    for raw in [&mut phone, &mut laptop] {
        raw.stanza_with(&["id='both'"]).await;
    }
    // A vCard request to the occupant is answered for the account, whichever session.
    let set = "<iq type='set' id='bv'><vCard xmlns='vcard-temp'><FN>Bob B.</FN></vCard></iq>";
    assert_eq!(
        parse(&laptop.iq("bv", set).await).attr("type"),
        Some("result")
    );
    let card = iq(
        &mut alice,
        "av",
        &format!("multi@{SERVICE}/bob"),
        "get",
        "<vCard xmlns='vcard-temp'/>",
    )
    .await;
    assert_eq!(card.attr("from"), Some("multi@conference.localhost/bob"));
    let fn_ = card
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("FN", "vcard-temp"))
        .map(|f| f.text());
    assert_eq!(fn_.as_deref(), Some("Bob B."), "{card:?}");
    // The phone's stream closes: bob is still there through the laptop.
    drop(phone);
    laptop.sync().await;
    alice
        .send(&format!(
            "<message to='multi@{SERVICE}' type='groupchat' id='still'><body>?</body></message>"
        ))
        .await;
    laptop.stanza_with(&["id='still'"]).await;
    // The laptop's goes too: now alice hears bob leave.
    drop(laptop);
    let gone = parse(
        &alice
            .stanza_with(&["multi@conference.localhost/bob", "type='unavailable'"])
            .await,
    );
    assert_eq!(item(&gone).attr("role"), Some("none"));
}

#[tokio::test]
async fn each_copy_of_a_groupchat_message_is_addressed_to_its_session() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    // A resource that needs escaping in the spliced `to` attribute.
    // (written escaped: the helper puts it into the bind request as it is)
    let mut bob = Raw::login_quiet(server.c2s, "bob", "o'neil &amp; &lt;co&gt;").await;
    create(&mut alice, "quotes").await;
    join(&mut bob, "quotes", "bob", "").await;
    alice
        .send(&format!(
            "<message to='quotes@{SERVICE}' type='groupchat' id='q1'><body>a &amp; b</body></message>"
        ))
        .await;
    let copy = parse(&bob.stanza_with(&["id='q1'"]).await);
    assert_eq!(copy.attr("to"), Some("bob@localhost/o'neil & <co>"));
    assert_eq!(copy.attr("from"), Some("quotes@conference.localhost/alice"));
    assert_eq!(copy.get_child("body", CLIENT).unwrap().text(), "a & b");
    let own = parse(&alice.stanza_with(&["id='q1'"]).await);
    assert_eq!(own.attr("to"), Some("alice@localhost/home"));
}

#[tokio::test]
async fn only_the_configured_admins_create_rooms_when_the_service_says_so() {
    let server = TestServer::start_with(|c| {
        c.modules.insert(
            "muc".into(),
            toml::toml! { create_rooms = "admins"
            admins = ["carol@localhost"] },
        );
    })
    .await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut carol = Raw::login_quiet(server.c2s, "carol", "home").await;
    assert_eq!(
        refused(&mut alice, "mine", "alice", "").await,
        "not-allowed"
    );
    create(&mut carol, "staff").await;
    // Entering an existing room is not creating one (carol is "alice" there: `create`).
    let got = join(&mut alice, "staff", "al", "").await;
    assert_eq!(codes(self_presence(&got)), ["110"]);
}

#[tokio::test]
async fn public_rooms_are_listed_in_pages_and_hidden_ones_are_not() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    for room in ["a1", "a2", "a3"] {
        create(&mut alice, room).await;
    }
    create(&mut alice, "secret").await;
    let reply = configure(&mut alice, "secret", &[("muc#roomconfig_publicroom", "0")]).await;
    assert_eq!(reply.attr("type"), Some("result"));
    const RSM: &str = "http://jabber.org/protocol/rsm";
    let page =
        |set: &str| format!("<query xmlns='{DISCO_ITEMS}'><set xmlns='{RSM}'>{set}</set></query>");
    let jids = |reply: &Element| -> Vec<String> {
        let q = reply.get_child("query", DISCO_ITEMS).unwrap();
        q.children()
            .filter_map(|i| i.attr("jid"))
            .map(str::to_string)
            .collect()
    };
    let first = iq(&mut alice, "p1", SERVICE, "get", &page("<max>2</max>")).await;
    assert_eq!(
        jids(&first),
        ["a1@conference.localhost", "a2@conference.localhost"]
    );
    let set = first
        .get_child("query", DISCO_ITEMS)
        .unwrap()
        .get_child("set", RSM)
        .unwrap();
    assert_eq!(set.get_child("count", RSM).unwrap().text(), "3");
    let last = set.get_child("last", RSM).unwrap().text();
    let next = iq(
        &mut alice,
        "p2",
        SERVICE,
        "get",
        &page(&format!("<max>2</max><after>{last}</after>")),
    )
    .await;
    assert_eq!(jids(&next), ["a3@conference.localhost"]);
    let bad = iq(
        &mut alice,
        "p3",
        SERVICE,
        "get",
        &page("<after>nowhere</after>"),
    )
    .await;
    assert_eq!(error_condition(&bad), "item-not-found");
}

#[test]
fn a_wrong_muc_section_is_an_error_naming_the_module() {
    for section in [
        toml::toml! { max_occupant = 10 },
        toml::toml! { create_rooms = "friends" },
        toml::toml! { max_occupants = 0 },
        toml::toml! { subdomain = "" },
        toml::toml! { admins = ["not a jid@@"] },
    ] {
        let mut config = xmppd_server::config::Config::default();
        config.modules.insert("muc".into(), section.clone());
        let error = xmppd_server::hooks(&config, xmppd_modules::standard)
            .err()
            .unwrap_or_else(|| panic!("{section:?} was accepted"));
        assert!(error.to_string().contains("muc"), "{error}");
    }
}

#[tokio::test]
async fn room_presence_held_for_an_inactive_client_arrives_addressed_to_it() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "phone").await;
    create(&mut alice, "csi").await;
    join(&mut bob, "csi", "bob", "").await;
    bob.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    bob.sync().await;
    // XEP-0352: the presence update and the chat state wait for bob to be active.
    alice
        .send(&format!(
            "<presence to='csi@{SERVICE}/alice'><show>away</show></presence>"
        ))
        .await;
    alice
        .send(&format!("<message to='csi@{SERVICE}' type='groupchat' id='cs'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"))
        .await;
    alice.stanza_with(&["id='cs'"]).await;
    bob.sync().await;
    assert_eq!(bob.next_stanza_if_any().await, "");
    bob.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    let presence = parse(&bob.stanza_with(&["<presence"]).await);
    assert_eq!(presence.attr("to"), Some("bob@localhost/phone"));
    assert_eq!(presence.get_child("show", CLIENT).unwrap().text(), "away");
    let state = parse(&bob.stanza_with(&["id='cs'"]).await);
    assert_eq!(state.attr("to"), Some("bob@localhost/phone"));
    assert_eq!(state.attr("from"), Some("csi@conference.localhost/alice"));
}

/// `xmppd room …` as the running server executes it.
async fn room_command(server: &TestServer, words: &[&str]) -> Result<String, String> {
    let words: Vec<String> = std::iter::once("room")
        .chain(words.iter().copied())
        .map(str::to_string)
        .collect();
    xmppd_server::admin::run_module_command(server.state(), &words).await
}

fn field<'a>(info: &'a str, key: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in {info}"))
}

#[tokio::test]
async fn the_operator_creates_lists_describes_and_destroys_rooms() {
    let mut server = TestServer::start().await;
    let room = format!("ops@{SERVICE}");
    let created = room_command(
        &server,
        &[
            "create",
            &room,
            "--owner",
            "alice@localhost",
            "--name",
            "Operations",
            "--members-only",
        ],
    )
    .await;
    assert_eq!(created, Ok(format!("created {room}")));
    assert_eq!(server.metric("xmppd_muc_rooms_persistent").await, 1);
    assert!(
        room_command(&server, &["create", &room, "--owner", "bob@localhost"])
            .await
            .unwrap_err()
            .contains("exists already")
    );
    // Created configured: the owner enters an unlocked room (no 201), others need to be
    // members.
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let got = join(&mut alice, "ops", "alice", "").await;
    let own = self_presence(&got);
    assert_eq!(codes(own), ["110"]);
    assert_eq!(item(own).attr("affiliation"), Some("owner"));
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    assert_eq!(
        refused(&mut bob, "ops", "bob", "").await,
        "registration-required"
    );
    let info = room_command(&server, &["info", &room]).await.unwrap();
    assert_eq!(field(&info, "name"), "Operations");
    assert_eq!(field(&info, "persistent"), "yes");
    assert_eq!(field(&info, "members-only"), "yes");
    assert_eq!(field(&info, "locked"), "no");
    assert_eq!(field(&info, "occupants"), "1 alice");
    assert_eq!(field(&info, "owners"), "alice@localhost");
    // A temporary room of a user beside it; the list tells them apart.
    create(&mut bob, "chat").await;
    let list = room_command(&server, &["list"]).await.unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines,
        [
            format!("chat@{SERVICE} temporary active"),
            format!("ops@{SERVICE} persistent active"),
        ]
    );
    // Destroyed with a reason and a venue: the occupant hears both (§10.9).
    let destroyed = room_command(
        &server,
        &[
            "destroy",
            &room,
            "--reason",
            "moved",
            "--venue",
            "chat@conference.localhost",
        ],
    )
    .await;
    assert_eq!(destroyed, Ok(format!("destroyed {room}")));
    assert_eq!(server.metric("xmppd_muc_rooms_persistent").await, 0);
    let gone = parse(&alice.stanza_with(&["unavailable"]).await);
    let destroy = gone
        .get_child("x", USER)
        .and_then(|x| x.get_child("destroy", USER))
        .unwrap_or_else(|| panic!("no destroy in {gone:?}"));
    assert_eq!(destroy.attr("jid"), Some("chat@conference.localhost"));
    assert_eq!(destroy.get_child("reason", USER).unwrap().text(), "moved");
    // Gone from storage too: not there after a restart, and info says so.
    server.restart().await;
    let list = room_command(&server, &["list"]).await.unwrap();
    assert!(!list.contains("ops@"), "{list}");
    let missing = room_command(&server, &["info", &room]).await.unwrap_err();
    assert!(missing.contains("there is no room"), "{missing}");
    // Bad input is explained, not guessed at.
    for (words, says) in [
        (vec!["create", "x@conference.localhost"], "--owner"),
        (vec!["info", "nobody@elsewhere"], "not a MUC service"),
        (vec!["info", "conference.localhost"], "no room name"),
        (
            vec!["destroy", "x@conference.localhost", "--bogus"],
            "unknown option",
        ),
        (vec!["frobnicate"], "unknown room command"),
        (vec![], "usage"),
    ] {
        let e = room_command(&server, &words).await.unwrap_err();
        assert!(e.contains(says), "{words:?}: {e}");
    }
    server.stop().await;
}

#[tokio::test]
async fn occupants_hear_status_332_when_the_server_stops() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    create(&mut alice, "bye").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    join(&mut bob, "bye", "bob", "").await;
    alice.stanza_with(&["bye@conference.localhost/bob"]).await;
    let stopping = tokio::spawn(server.stop());
    for raw in [&mut alice, &mut bob] {
        // §15.6.2 (332) with 110 as self-presence, before the stream ends.
        let rest = raw.read_to_close().await;
        let presence = rest
            .find("<presence")
            .map(|start| &rest[start..])
            .and_then(|p| p.find("</presence>").map(|end| &p[..end + 11]))
            .unwrap_or_else(|| panic!("no presence before the end: {rest}"));
        let presence = parse(presence);
        assert_eq!(presence.attr("type"), Some("unavailable"));
        assert_eq!(codes(&presence), ["110", "332"]);
        assert!(rest.contains("<system-shutdown"), "{rest}");
    }
    stopping.await.unwrap();
}

/// The cells of one class in a log page's rows, in order.
fn cells(page: &Element, class: &str) -> Vec<String> {
    const XHTML: &str = "http://www.w3.org/1999/xhtml";
    let body = page.get_child("body", XHTML).expect("a body");
    let table = body
        .get_child("table", XHTML)
        .unwrap_or_else(|| panic!("a table: {body:?}"));
    table
        .children()
        .flat_map(|tr| tr.children())
        .filter(|td| td.attr("class") == Some(class))
        .map(|td| td.text())
        .collect()
}

#[tokio::test]
async fn a_logged_room_is_served_over_http_day_by_day() {
    let server =
        TestServer::start_with(|c| c.http.public_url = "https://chat.example/".into()).await;
    let http = server.http.unwrap();
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    create(&mut alice, "logged").await;
    let room = format!("logged@{SERVICE}");
    let say = |id: &str, payload: &str| {
        format!("<message to='{room}' type='groupchat' id='{id}'>{payload}</message>")
    };
    let logs_field = |info: &Element| -> Option<String> {
        let form = info.get_child("query", DISCO_INFO)?.get_child("x", DATA)?;
        form.children()
            .find(|f| f.attr("var") == Some("muc#roominfo_logs"))
            .and_then(|f| f.get_child("value", DATA))
            .map(|v| v.text())
    };
    // Before logging is on: nothing is kept, and the room gives no address.
    alice.send(&say("m0", "<body>before</body>")).await;
    alice.stanza_with(&["id='m0'"]).await;
    let info = iq(
        &mut alice,
        "i0",
        &room,
        "get",
        &format!("<query xmlns='{DISCO_INFO}'/>"),
    )
    .await;
    assert_eq!(logs_field(&info), None);
    let (status, _, _) =
        common::http::exchange(http, "GET", &format!("/muc-logs/{room}/"), &[], "").await;
    assert_eq!(status, 404);

    let reply = configure(
        &mut alice,
        "logged",
        &[("muc#roomconfig_enablelogging", "1")],
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"));
    let notice = parse(&alice.stanza_with(&["code='170'"]).await);
    assert!(codes(&notice).contains(&"170".to_string()), "{notice:?}");
    alice
        .send(&say("m1", "<body>hello &lt;world&gt; &amp; all</body>"))
        .await;
    alice.stanza_with(&["id='m1'"]).await;
    alice.send(&say("m2", "<subject>Tea</subject>")).await;
    alice.stanza_with(&["id='m2'"]).await;
    let info = iq(
        &mut alice,
        "i1",
        &room,
        "get",
        &format!("<query xmlns='{DISCO_INFO}'/>"),
    )
    .await;
    assert_eq!(
        logs_field(&info).as_deref(),
        Some("https://chat.example/muc-logs/logged@conference.localhost/")
    );

    // The index lists today (UTC); the day's page has both lines, escaped, and not "before".
    let (status, headers, index) =
        common::http::exchange(http, "GET", &format!("/muc-logs/{room}/"), &[], "").await;
    assert_eq!(status, 200, "{index}");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/xhtml+xml")));
    let index = parse(index.split_once("?>").map_or(&*index, |(_, rest)| rest));
    let list = index
        .get_child("body", "http://www.w3.org/1999/xhtml")
        .and_then(|b| b.get_child("ul", "http://www.w3.org/1999/xhtml"))
        .expect("a list of days");
    let days: Vec<String> = list
        .children()
        .filter_map(|li| li.get_child("a", "http://www.w3.org/1999/xhtml"))
        .map(|a| a.text())
        .collect();
    assert_eq!(days.len(), 1, "{days:?}");
    let day = &days[0];
    let (status, _, page) =
        common::http::exchange(http, "GET", &format!("/muc-logs/{room}/{day}"), &[], "").await;
    assert_eq!(status, 200, "{page}");
    let page = parse(page.split_once("?>").map_or(&*page, |(_, rest)| rest));
    assert_eq!(
        cells(&page, "text"),
        ["hello <world> & all", "set the subject to: Tea"]
    );
    assert_eq!(cells(&page, "nick"), ["alice", "alice"]);

    // Pages that are not there are 404s; the room still works.
    for path in [
        format!("/muc-logs/{room}/1999-01-01"),
        format!("/muc-logs/{room}/2026-13-01"),
        "/muc-logs/nobody@conference.localhost/".to_string(),
        "/muc-logs/logged@elsewhere.example/".to_string(),
        "/muc-logs/not a jid/".to_string().replace(' ', "%20"),
    ] {
        let (status, _, _) = common::http::exchange(http, "GET", &path, &[], "").await;
        assert_eq!(status, 404, "{path}");
    }
    alice.send(&say("m3", "<body>still here</body>")).await;
    alice.stanza_with(&["id='m3'"]).await;

    // Destroying the room takes its log with it.
    let destroy = format!("<query xmlns='{OWNER}'><destroy/></query>");
    assert_eq!(
        iq(&mut alice, "d", &room, "set", &destroy)
            .await
            .attr("type"),
        Some("result")
    );
    let (status, _, _) =
        common::http::exchange(http, "GET", &format!("/muc-logs/{room}/"), &[], "").await;
    assert_eq!(status, 404);
}
