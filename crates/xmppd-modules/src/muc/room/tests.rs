use super::*;

const ROOM: &str = "room@conference.x";

fn limits() -> Limits {
    Limits {
        logs_url: Some("http://x/muc-logs/".into()),
        max_occupants: 3,
        max_history: 50,
        max_nick_chars: 20,
        messages_per_second: 100.0,
        secret: std::sync::Arc::from(&[7u8; 16][..]),
    }
}

fn bare(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

/// A new room owned by alice, who is in it as "owner".
fn new_room() -> Room {
    let mut room = Room::create(bare(ROOM), &bare("alice@x"), RoomConfig::new(10), limits());
    send(&mut room, "<presence from='alice@x/a' to='room@conference.x/owner'><x xmlns='http://jabber.org/protocol/muc'/></presence>");
    room
}

/// An unlocked room (instant room, §10.1.2).
fn open_room() -> Room {
    let mut room = new_room();
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>");
    assert_eq!(o.out[0].attr("type"), Some("result"));
    room
}

fn send(room: &mut Room, xml: &str) -> Outcome {
    let el = xmppd_xml::parse_fragment(xml, NS_CLIENT).expect("xml");
    room.handle(&Stanza::parse(el).expect("stanza"), 1_000_000)
}

fn join(room: &mut Room, who: &str, nick: &str) -> Outcome {
    send(room, &format!("<presence from='{who}' to='room@conference.x/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"))
}

fn to<'a>(o: &'a Outcome, jid: &str) -> Vec<&'a Element> {
    o.out
        .iter()
        .filter(|e| e.attr("to") == Some(jid))
        .chain(
            o.fanned
                .iter()
                .filter(|f| f.to.iter().any(|t| t.as_str() == jid))
                .map(|f| &f.stanza),
        )
        .collect()
}

/// Every stanza, fan-outs counted once per recipient.
fn all(o: &Outcome) -> Vec<&Element> {
    let copies = o
        .fanned
        .iter()
        .flat_map(|f| f.to.iter().map(move |_| &f.stanza));
    o.out.iter().chain(copies).collect()
}

fn codes(el: &Element) -> Vec<String> {
    el.get_child("x", NS_USER)
        .map(|x| {
            x.children()
                .filter_map(|s| s.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item(el: &Element) -> &Element {
    el.get_child("x", NS_USER)
        .and_then(|x| x.get_child("item", NS_USER))
        .expect("item")
}

fn error(o: &Outcome) -> String {
    let e = o
        .out
        .iter()
        .find(|e| e.attr("type") == Some("error"))
        .expect("an error");
    e.get_child("error", NS_CLIENT)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .name()
        .to_string()
}

#[test]
fn the_creator_gets_201_and_the_room_is_locked_until_configured() {
    let mut room = Room::create(bare(ROOM), &bare("alice@x"), RoomConfig::new(10), limits());
    let o = join(&mut room, "alice@x/a", "owner");
    let [own, subject] = to(&o, "alice@x/a")[..] else {
        panic!("{o:?}")
    };
    assert_eq!(codes(own), ["201", "110"]);
    assert_eq!(item(own).attr("affiliation"), Some("owner"));
    assert_eq!(item(own).attr("role"), Some("moderator"));
    assert!(subject.has_child("subject", NS_CLIENT));
    assert_eq!(error(&join(&mut room, "bob@x/b", "bob")), "item-not-found");
    let mut room = open_room();
    let o = join(&mut room, "bob@x/b", "bob");
    let bob: Vec<_> = to(&o, "bob@x/b");
    // The owner's presence first, self-presence (110) next, the subject last.
    assert_eq!(bob[0].attr("from"), Some("room@conference.x/owner"));
    assert_eq!(codes(bob[1]), ["110"]);
    assert!(item(bob[0]).attr("jid").is_none(), "semi-anonymous");
    assert!(bob[2].has_child("subject", NS_CLIENT));
    // The owner (a moderator) sees bob's real JID.
    let seen = to(&o, "alice@x/a");
    assert_eq!(item(seen[0]).attr("jid"), Some("bob@x/b"));
    assert!(seen[0].get_child("occupant-id", NS_OCCUPANT_ID).is_some());
}

#[test]
fn entry_is_refused_with_the_errors_of_section_7_2() {
    let mut room = open_room();
    assert_eq!(error(&join(&mut room, "bob@x/b", "Owner")), "conflict");
    assert_eq!(error(&join(&mut room, "bob@x/b", "  ")), "jid-malformed");
    send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='eve@x' affiliation='outcast'/></query></iq>");
    assert_eq!(error(&join(&mut room, "eve@x/e", "eve")), "forbidden");
    join(&mut room, "bob@x/b", "bob");
    join(&mut room, "carol@x/c", "carol");
    assert_eq!(
        error(&join(&mut room, "dave@x/d", "dave")),
        "service-unavailable"
    );
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field><field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field><field var='muc#roomconfig_roomsecret'><value>pw</value></field></x></query></iq>");
    // 322: bob and carol are not members and leave.
    let bob = to(&o, "bob@x/b");
    assert!(bob
        .iter()
        .any(|p| codes(p).contains(&"322".to_string()) && codes(p).contains(&"110".to_string())));
    assert_eq!(room.occupant_count(), 1);
    assert_eq!(
        error(&join(&mut room, "dave@x/d", "dave")),
        "registration-required"
    );
    send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='dave@x' affiliation='member'/></query></iq>");
    assert_eq!(
        error(&join(&mut room, "dave@x/d", "dave")),
        "not-authorized"
    );
    let o = send(&mut room, "<presence from='dave@x/d' to='room@conference.x/dave'><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>");
    assert_eq!(codes(to(&o, "dave@x/d")[1]), ["110"]);
}

#[test]
fn a_nick_change_is_unavailable_with_303_then_available() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let o = join(&mut room, "bob@x/b", "robert");
    let alice = to(&o, "alice@x/a");
    assert_eq!(alice[0].attr("type"), Some("unavailable"));
    assert_eq!(alice[0].attr("from"), Some("room@conference.x/bob"));
    assert_eq!(codes(alice[0]), ["303"]);
    assert_eq!(item(alice[0]).attr("nick"), Some("robert"));
    assert_eq!(alice[1].attr("from"), Some("room@conference.x/robert"));
    let bob = to(&o, "bob@x/b");
    assert_eq!(codes(bob[0]), ["303", "110"]);
    assert_eq!(codes(bob[1]), ["110"]);
    assert_eq!(error(&join(&mut room, "bob@x/b", "OWNER")), "conflict");
}

#[test]
fn two_sessions_share_one_occupant_and_leave_one_by_one() {
    let mut room = open_room();
    join(&mut room, "bob@x/phone", "bob");
    let o = join(&mut room, "bob@x/laptop", "bob");
    assert!(
        to(&o, "alice@x/a").is_empty(),
        "no second presence for the same occupant"
    );
    assert_eq!(room.occupant_count(), 2);
    let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x' type='groupchat' id='g1'><body>hi</body></message>");
    assert_eq!(
        to(&o, "bob@x/phone").len() + to(&o, "bob@x/laptop").len(),
        2
    );
    let o = send(
        &mut room,
        "<presence from='bob@x/phone' to='room@conference.x/bob' type='unavailable'/>",
    );
    assert!(to(&o, "alice@x/a").is_empty());
    assert_eq!(codes(to(&o, "bob@x/phone")[0]), ["110"]);
    let o = send(&mut room, "<presence from='bob@x/laptop' to='room@conference.x/bob' type='unavailable'><status>bye</status></presence>");
    let seen = to(&o, "alice@x/a");
    assert_eq!(seen[0].attr("type"), Some("unavailable"));
    assert_eq!(item(seen[0]).attr("role"), Some("none"));
    assert!(seen[0].has_child("status", NS_CLIENT));
    assert_eq!(room.occupant_count(), 1);
}

#[test]
fn groupchat_is_reflected_with_its_id_and_kept_as_history() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x' type='groupchat' id='m1'><body>one</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>");
    assert_eq!(all(&o).len(), 2);
    for m in all(&o) {
        assert_eq!(m.attr("id"), Some("m1"));
        assert_eq!(m.attr("from"), Some("room@conference.x/bob"));
        let ids: Vec<_> = m
            .children()
            .filter(|c| c.is("occupant-id", NS_OCCUPANT_ID))
            .collect();
        assert_eq!(ids.len(), 1);
        assert_ne!(ids[0].attr("id"), Some("forged"));
    }
    assert!(matches!(o.changes[..], [Change::History(1000, _)]));
    send(&mut room, "<message from='bob@x/b' to='room@conference.x' type='groupchat' id='m2'><body>two</body></message>");
    let o = send(&mut room, "<presence from='carol@x/c' to='room@conference.x/carol'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='1'/></x></presence>");
    let history: Vec<_> = to(&o, "carol@x/c")
        .into_iter()
        .filter(|m| m.has_child("body", NS_CLIENT))
        .collect();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].attr("id"), Some("m2"));
    let delay = history[0].get_child("delay", NS_DELAY).unwrap();
    assert_eq!(delay.attr("from"), Some(ROOM));
    let o = send(&mut room, "<presence from='dave@x/d' to='room@conference.x/dave'><x xmlns='http://jabber.org/protocol/muc'><history maxchars='0'/></x></presence>");
    assert!(!all(&o).iter().any(|m| m.has_child("body", NS_CLIENT)));
    let o = send(&mut room, "<message from='eve@x/e' to='room@conference.x' type='groupchat'><body>spam</body></message>");
    assert_eq!(error(&o), "not-acceptable");
    let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x/carol' type='groupchat'><body>pm</body></message>");
    assert_eq!(error(&o), "bad-request");
    let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x/carol' type='chat' id='p'><body>pm</body></message>");
    let pm = to(&o, "carol@x/c");
    assert_eq!(pm[0].attr("from"), Some("room@conference.x/bob"));
    assert!(pm[0].has_child("x", NS_USER));
}

#[test]
fn moderators_kick_admins_ban_and_the_protected_are_not_allowed() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    join(&mut room, "carol@x/c", "carol");
    let kick = |nick: &str| {
        format!("<iq from='{{}}' to='room@conference.x' type='set' id='k'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='{nick}' role='none'><reason>out</reason></item></query></iq>")
    };
    let as_ = |who: &str, t: String| t.replace("{}", who);
    assert_eq!(
        error(&send(&mut room, &as_("bob@x/b", kick("carol")))),
        "forbidden"
    );
    assert_eq!(error(&send(&mut room, "<iq from='bob@x/b' to='room@conference.x' type='set' id='a'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='carol@x' affiliation='outcast'/></query></iq>")), "forbidden");
    let o = send(&mut room, &as_("alice@x/a", kick("carol")));
    let carol = to(&o, "carol@x/c");
    assert_eq!(carol[0].attr("type"), Some("unavailable"));
    assert_eq!(codes(carol[0]), ["307", "110"]);
    let i = item(carol[0]);
    assert_eq!(
        i.get_child("actor", NS_USER).unwrap().attr("nick"),
        Some("owner")
    );
    assert_eq!(i.get_child("reason", NS_USER).unwrap().text(), "out");
    assert_eq!(codes(to(&o, "bob@x/b")[0]), ["307"]);
    assert!(to(&o, "alice@x/a")
        .iter()
        .any(|e| e.attr("type") == Some("result")));
    // Voice and moderator grants, and their limits.
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='v'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='moderator'/></query></iq>");
    assert_eq!(item(to(&o, "bob@x/b")[0]).attr("role"), Some("moderator"));
    assert_eq!(
        error(&send(&mut room, &as_("bob@x/b", kick("owner")))),
        "not-allowed"
    );
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@x' affiliation='outcast'><reason>bye</reason></item></query></iq>");
    assert_eq!(codes(to(&o, "bob@x/b")[0]), ["301", "110"]);
    assert!(o.changes.contains(&Change::Affiliation("bob@x".into())));
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='get' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>");
    let list = o.out[0].get_child("query", NS_ADMIN).unwrap();
    assert_eq!(
        list.get_child("item", NS_ADMIN).unwrap().attr("jid"),
        Some("bob@x")
    );
    // The last owner stays (§10.4).
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='o'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@x' affiliation='admin'/></query></iq>");
    assert_eq!(error(&o), "conflict");
}

#[test]
fn visitors_are_silent_in_moderated_rooms_and_config_changes_are_announced() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_moderatedroom'><value>1</value></field><field var='muc#roomconfig_whois'><value>anyone</value></field></x></query></iq>");
    let notice = to(&o, "bob@x/b")
        .into_iter()
        .find(|m| m.name() == "message")
        .unwrap();
    assert_eq!(codes(notice), ["104", "172"]);
    assert_eq!(error(&send(&mut room, "<iq from='bob@x/b' to='room@conference.x' type='get' id='f'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")), "forbidden");
    let o = join(&mut room, "carol@x/c", "carol");
    let own = to(&o, "carol@x/c")
        .into_iter()
        .find(|p| codes(p).contains(&"110".to_string()))
        .unwrap();
    assert_eq!(codes(own), ["100", "110"]);
    assert_eq!(item(own).attr("role"), Some("visitor"));
    let o = send(&mut room, "<message from='carol@x/c' to='room@conference.x' type='groupchat'><body>hi</body></message>");
    assert_eq!(error(&o), "forbidden");
    let o = send(&mut room, "<message from='carol@x/c' to='room@conference.x' type='groupchat'><subject>new</subject></message>");
    assert_eq!(error(&o), "forbidden");
    let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x' type='groupchat'><subject>new</subject></message>");
    assert_eq!(all(&o).len(), 3);
    assert_eq!(o.changes, [Change::Room]);
}

#[test]
fn self_ping_errors_that_mean_gone_and_destroy() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let o = send(&mut room, "<iq from='bob@x/b' to='room@conference.x/bob' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert_eq!(o.out[0].attr("type"), Some("result"));
    let o = send(&mut room, "<iq from='eve@x/e' to='room@conference.x/bob' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert_eq!(error(&o), "not-acceptable");
    let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x/owner' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
    assert_eq!(codes(to(&o, "alice@x/a")[0]), ["333"]);
    assert_eq!(room.occupant_count(), 1);
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='d'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='other@conference.x'><reason>moved</reason></destroy></query></iq>");
    let d = to(&o, "alice@x/a")[1]
        .get_child("x", NS_USER)
        .unwrap()
        .get_child("destroy", NS_USER)
        .unwrap();
    assert_eq!(d.attr("jid"), Some("other@conference.x"));
    assert!(room.is_destroyed() && room.is_empty());
    assert!(o.changes.contains(&Change::Destroyed));
}

#[test]
fn a_registered_nick_is_reserved_and_makes_a_member() {
    let mut room = open_room();
    let o = send(&mut room, "<iq from='bob@x/b' to='room@conference.x' type='get' id='r'><query xmlns='jabber:iq:register'/></iq>");
    let form = o.out[0]
        .get_child("query", NS_REGISTER)
        .and_then(|q| q.get_child("x", crate::forms::NS));
    assert!(form.is_some(), "{o:?}");
    let register = |nick: &str| {
        format!("<iq from='bob@x/b' to='room@conference.x' type='set' id='r'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field><field var='muc#register_roomnick'><value>{nick}</value></field></x></query></iq>")
    };
    assert_eq!(error(&send(&mut room, &register("Owner"))), "conflict");
    let o = send(&mut room, &register("thebob"));
    assert_eq!(o.out[0].attr("type"), Some("result"));
    assert_eq!(room.affiliation(&bare("bob@x")), Affiliation::Member);
    assert_eq!(error(&join(&mut room, "carol@x/c", "TheBob")), "conflict");
    assert_eq!(
        codes(to(&join(&mut room, "bob@x/b", "thebob"), "bob@x/b")[1]),
        ["110"]
    );
}

#[test]
fn iqs_to_occupants_are_forwarded_and_answered_through_the_room() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x/bob' type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>");
    let fwd = &o.out[0];
    // vCards are the account's, answered by its server at the bare JID (XEP-0054 §3.2).
    assert_eq!(fwd.attr("to"), Some("bob@x"));
    assert_eq!(fwd.attr("from"), Some("room@conference.x/owner"));
    let id = fwd.attr("id").unwrap().to_string();
    // A forged answer from someone else is ignored.
    let forged = send(
        &mut room,
        &format!("<iq from='eve@x/e' to='room@conference.x/owner' type='result' id='{id}'/>"),
    );
    assert!(forged.out.is_empty());
    let o = send(&mut room, &format!("<iq from='bob@x' to='room@conference.x/owner' type='result' id='{id}'><vCard xmlns='vcard-temp'/></iq>"));
    let back = &o.out[0];
    assert_eq!(
        (back.attr("to"), back.attr("from"), back.attr("id")),
        (Some("alice@x/a"), Some("room@conference.x/bob"), Some("v1"))
    );
    // Any other iq goes to a session: the first one of a multi-session occupant.
    join(&mut room, "bob@x/second", "bob");
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x/bob' type='get' id='t1'><time xmlns='urn:xmpp:time'/></iq>");
    assert_eq!(o.out[0].attr("to"), Some("bob@x/b"));
    let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x/nobody' type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>");
    assert_eq!(error(&o), "item-not-found");
}

#[test]
fn a_visitor_asks_for_voice_and_a_moderator_grants_it() {
    let mut room = open_room();
    send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query></iq>");
    join(&mut room, "bob@x/b", "bob");
    let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field></x></message>");
    let request = to(&o, "alice@x/a")[0];
    let form = Form::parse(request.get_child("x", crate::forms::NS).unwrap()).unwrap();
    assert_eq!(form.single("muc#roomnick"), Some("bob"));
    assert_eq!(form.single("muc#jid"), Some("bob@x"));
    let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#roomnick'><value>bob</value></field><field var='muc#request_allow'><value>true</value></field></x></message>");
    assert_eq!(item(to(&o, "bob@x/b")[0]).attr("role"), Some("participant"));
}

#[test]
fn a_nick_the_service_maps_is_announced_with_210() {
    let mut room = open_room();
    // RFC 8266 §2.2: inner runs of spaces become one.
    let o = join(&mut room, "bob@x/b", "bob   smith");
    let own = to(&o, "bob@x/b")[1];
    assert_eq!(codes(own), ["210", "110"]);
    assert_eq!(own.attr("from"), Some("room@conference.x/bob smith"));
}

#[test]
fn members_of_a_private_room_read_its_member_list_but_not_its_bans() {
    let mut room = open_room();
    send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field><field var='muc#roomconfig_whois'><value>anyone</value></field></x></query></iq>");
    send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@x' affiliation='member'/></query></iq>");
    let list = |room: &mut Room, a: &str| {
        send(room, &format!("<iq from='bob@x/b' to='room@conference.x' type='get' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='{a}'/></query></iq>"))
    };
    let o = list(&mut room, "owner");
    let q = o.out[0].get_child("query", NS_ADMIN).unwrap();
    assert_eq!(
        q.get_child("item", NS_ADMIN).unwrap().attr("jid"),
        Some("alice@x")
    );
    assert_eq!(error(&list(&mut room, "outcast")), "forbidden");
}

#[test]
fn history_by_seconds_and_since() {
    let mut room = open_room();
    let at = |room: &mut Room, ms: i64, id: &str| {
        let xml = format!("<message from='alice@x/a' to='room@conference.x' type='groupchat' id='{id}'><body>{id}</body></message>");
        let el = xmppd_xml::parse_fragment(&xml, NS_CLIENT).unwrap();
        room.handle(&Stanza::parse(el).unwrap(), ms);
    };
    at(&mut room, 1_000_000, "old");
    at(&mut room, 1_100_000, "new");
    let bodies = |o: &Outcome| -> Vec<String> {
        o.out
            .iter()
            .filter(|m| m.has_child("body", NS_CLIENT))
            .map(|m| m.attr("id").unwrap().to_string())
            .collect()
    };
    let el = xmppd_xml::parse_fragment("<presence from='bob@x/b' to='room@conference.x/bob'><x xmlns='http://jabber.org/protocol/muc'><history seconds='50'/></x></presence>", NS_CLIENT).unwrap();
    let o = room.handle(&Stanza::parse(el).unwrap(), 1_120_000);
    assert_eq!(bodies(&o), ["new"]);
    // 1000 s after the epoch: both are newer.
    let el = xmppd_xml::parse_fragment("<presence from='carol@x/c' to='room@conference.x/carol'><x xmlns='http://jabber.org/protocol/muc'><history since='1970-01-01T00:16:40Z'/></x></presence>", NS_CLIENT).unwrap();
    let o = room.handle(&Stanza::parse(el).unwrap(), 1_120_000);
    assert_eq!(bodies(&o), ["old", "new"]);
}

#[test]
fn only_invitations_sent_can_be_declined_and_invitations_are_bounded() {
    let mut room = open_room();
    let decline = "<message from='carol@x/c' to='room@conference.x'><x xmlns='http://jabber.org/protocol/muc#user'><decline to='alice@x'/></x></message>";
    assert_eq!(error(&send(&mut room, decline)), "not-acceptable");
    let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='carol@x'><reason>come</reason></invite></x></message>");
    assert_eq!(to(&o, "carol@x").len(), 1);
    let o = send(&mut room, decline);
    let d = to(&o, "alice@x")[0].get_child("x", NS_USER).unwrap();
    assert_eq!(
        d.get_child("decline", NS_USER).unwrap().attr("from"),
        Some("carol@x")
    );
    // Declined once: a second decline relays nothing.
    assert_eq!(error(&send(&mut room, decline)), "not-acceptable");
    let many: String = (0..11).map(|i| format!("<invite to='u{i}@x'/>")).collect();
    let o = send(&mut room, &format!("<message from='alice@x/a' to='room@conference.x'><x xmlns='http://jabber.org/protocol/muc#user'>{many}</x></message>"));
    assert_eq!(error(&o), "policy-violation");
}

#[test]
fn a_join_from_a_session_already_in_the_room_gets_the_state_again() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let o = join(&mut room, "bob@x/b", "bob");
    let bob = to(&o, "bob@x/b");
    assert_eq!(bob[0].attr("from"), Some("room@conference.x/owner"));
    assert_eq!(codes(bob[1]), ["110"]);
    assert!(bob.last().unwrap().has_child("subject", NS_CLIENT));
    // The others see an update, not a second occupant.
    let seen = to(&o, "alice@x/a");
    assert_eq!(seen.len(), 1);
    assert!(codes(seen[0]).is_empty());
    assert_eq!(room.occupant_count(), 2);
}

#[test]
fn xep_0082_timestamps_parse() {
    assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_iso8601("2002-09-10T23:08:25.123Z"),
        Some(1_031_699_305)
    );
    assert_eq!(
        parse_iso8601("2002-09-10T23:08:25+01:00"),
        Some(1_031_695_705)
    );
    assert_eq!(parse_iso8601("yesterday"), None);
}

#[test]
fn an_owner_can_turn_occupant_ids_off_and_then_none_go_out() {
    let mut room = open_room();
    join(&mut room, "bob@x/b", "bob");
    let has_feature = |room: &Room| {
        room.disco_info()
            .children()
            .any(|f| f.attr("var") == Some(NS_OCCUPANT_ID))
    };
    assert!(has_feature(&room));
    let off = format!("<iq from='alice@x/a' to='room@conference.x' type='set' id='off'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='{}'><value>0</value></field></x></query></iq>", config::OCCUPANT_ID_FIELD);
    let o = send(&mut room, &off);
    assert_eq!(o.out[0].attr("type"), Some("result"));
    assert!(!has_feature(&room));
    // Neither ours nor the one a client forged goes out.
    let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x' type='groupchat' id='m'><body>hi</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>");
    let o2 = join(&mut room, "carol@x/c", "carol");
    for el in all(&o).into_iter().chain(all(&o2)) {
        assert!(
            !el.children().any(|c| c.is("occupant-id", NS_OCCUPANT_ID)),
            "{el:?}"
        );
    }
}
