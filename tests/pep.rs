//! PEP (XEP-0163) end to end over real sockets: notifications filtered by XEP-0115 caps
//! (the test clients answer the server's disco#info queries), the presence access model,
//! last items on presence, retract/purge/delete notifications, publish-options, bad input,
//! durability and account deletion.

mod common;

use base64::Engine;
use common::caps::{advertise, answer_caps, caps_presence, ver};
use common::{online, parse, Raw, TestServer};
use sha1::Digest;
use xmppd_xml::Element;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NICK: &str = "http://jabber.org/protocol/nick";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn publish(id: &str, node: &str, item: &str, payload: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{item}'>{payload}</item></publish></pubsub></iq>"
    )
}

fn nick(name: &str) -> String {
    format!("<nick xmlns='{NICK}'>{name}</nick>")
}

/// The `<event/>` of a pubsub notification, checking it is a headline from `from`.
fn event(message: &Element, from: &str) -> Element {
    assert_eq!(message.name(), "message", "{message:?}");
    assert_eq!(message.attr("from"), Some(from), "{message:?}");
    assert_eq!(message.attr("type"), Some("headline"));
    message
        .get_child("event", EVENT)
        .unwrap_or_else(|| panic!("no event: {message:?}"))
        .clone()
}

/// The published item (id, payload text) of a notification about `node`.
fn published(message: &Element, from: &str, node: &str) -> (String, String) {
    let items = event(message, from)
        .get_child("items", EVENT)
        .unwrap()
        .clone();
    assert_eq!(items.attr("node"), Some(node));
    let item = items.get_child("item", EVENT).expect("an item");
    let text = match item.children().next() {
        // The payload keeps its own namespace.
        Some(p) if node == NICK => {
            assert!(p.is("nick", NICK), "{p:?}");
            p.text()
        }
        Some(p) => {
            assert_eq!(p.ns(), node.split('#').next().unwrap(), "{p:?}");
            p.text()
        }
        None => String::new(),
    };
    (item.attr("id").unwrap().to_string(), text)
}

fn assert_result(reply: &str) {
    assert_eq!(parse(reply).attr("type"), Some("result"), "{reply}");
}

/// The condition and pubsub-specific condition of an error reply.
fn error_of(reply: &str) -> (String, Option<String>) {
    let el = parse(reply);
    assert_eq!(el.attr("type"), Some("error"), "{reply}");
    let error = el.get_child("error", "jabber:client").expect("error");
    let condition = error
        .children()
        .find(|c| c.ns() == STANZAS && c.name() != "text")
        .map(|c| c.name().to_string())
        .unwrap();
    let app = error
        .children()
        .find(|c| c.ns() == ERRORS)
        .map(|c| c.name().to_string());
    (condition, app)
}

/// Makes the owners of two online full JIDs mutual contacts, consuming what that causes.
async fn befriend_any(x: &mut Raw, x_full: &str, y: &mut Raw, y_full: &str) {
    let bare = |full: &str| full.split('/').next().unwrap().to_string();
    let (xb, yb) = (bare(x_full), bare(y_full));
    x.send(&format!("<presence to='{yb}' type='subscribe'/>"))
        .await;
    y.stanza_with(&["type='subscribe'"]).await;
    y.send(&format!("<presence to='{xb}' type='subscribed'/>"))
        .await;
    y.send(&format!("<presence to='{xb}' type='subscribe'/>"))
        .await;
    x.stanza_with(&["type='subscribe'"]).await;
    x.send(&format!("<presence to='{yb}' type='subscribed'/>"))
        .await;
    x.stanza_with(&[&format!("jid='{yb}'"), "subscription='both'"])
        .await;
    y.stanza_with(&[&format!("jid='{xb}'"), "subscription='both'"])
        .await;
    x.stanza_with(&["<presence", &format!("from='{y_full}'")])
        .await;
    y.stanza_with(&["<presence", &format!("from='{x_full}'")])
        .await;
    x.sync().await;
    y.sync().await;
}

/// Sends `body` with its `ID` replaced by `id`; the error that comes back.
async fn ask(raw: &mut Raw, id: &str, body: String) -> (String, Option<String>) {
    let iq = body.replace("ID", id);
    error_of(&raw.iq(id, &iq).await)
}

/// No pubsub notification arrives within a short while.
async fn assert_no_event(raw: &mut Raw) {
    raw.sync().await;
    let rest = raw.next_stanza_if_any().await;
    assert!(!rest.contains(EVENT), "unexpected notification: {rest}");
}

#[tokio::test]
async fn contacts_advertising_notify_get_notifications_others_get_nothing() {
    let server = TestServer::start().await;
    server.add_user("dave", common::PASSWORD).await;
    let (mut alice, mut bob) = common::friends(&server, "a", "b").await;
    let mut carol = online(&server, "carol", "c", 0).await;
    befriend_any(
        &mut alice,
        "alice@localhost/a",
        &mut carol,
        "carol@localhost/c",
    )
    .await;
    let mut dave = online(&server, "dave", "d", 0).await;

    // First publish creates the node (XEP-0163 §3) with the presence access model.
    let reply = alice
        .iq("p1", &publish("p1", NICK, "current", &nick("Alice")))
        .await;
    assert_result(&reply);
    let id = parse(&reply)
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish", PUBSUB))
        .and_then(|p| p.get_child("item", PUBSUB))
        .and_then(|i| i.attr("id").map(str::to_string));
    assert_eq!(id.as_deref(), Some("current"));

    // Bob's client wants nick notifications: once the server has learnt his caps, it sends
    // him the last item (§4.3.2).
    let wants = [DISCO_INFO, "http://jabber.org/protocol/nick+notify"];
    advertise(&mut bob, &wants).await;
    let last = parse(&bob.stanza_with(&[EVENT]).await);
    assert_eq!(
        published(&last, "alice@localhost", NICK),
        ("current".into(), "Alice".into())
    );
    assert_eq!(last.attr("to"), Some("bob@localhost/b"));

    // Carol's client does not ask for nicks; Dave asks but is no contact of Alice's.
    advertise(&mut carol, &[DISCO_INFO]).await;
    dave.send(&format!(
        "<presence to='alice@localhost'><c xmlns='http://jabber.org/protocol/caps' \
         hash='sha-1' node='https://xmppd.test' ver='{}'/></presence>",
        ver(&wants)
    ))
    .await;
    dave.sync().await;

    alice
        .iq("p2", &publish("p2", NICK, "current", &nick("Alice B.")))
        .await;
    let update = parse(&bob.stanza_with(&[EVENT]).await);
    assert_eq!(published(&update, "alice@localhost", NICK).1, "Alice B.");
    assert_no_event(&mut carol).await;
    assert_no_event(&mut dave).await;
    // Alice's own client advertised no caps: it is not told either (§4.4 filtering).
    assert_no_event(&mut alice).await;

    // Under the presence model, Dave may not even read the node.
    let reply = dave
        .iq(
            "i1",
            &format!(
                "<iq type='get' id='i1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
                 <items node='{NICK}'/></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(
        error_of(&reply),
        (
            "not-authorized".into(),
            Some("presence-subscription-required".into())
        )
    );
    let reply = bob
        .iq(
            "i2",
            &format!(
                "<iq type='get' id='i2' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
                 <items node='{NICK}'/></pubsub></iq>"
            ),
        )
        .await;
    let items = parse(&reply);
    let items = items
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .unwrap();
    assert_eq!(items.children().count(), 1);
}

#[tokio::test]
async fn own_resources_hear_of_retract_purge_and_delete() {
    let server = TestServer::start().await;
    let mut phone = online(&server, "alice", "phone", 0).await;
    let mut laptop = online(&server, "alice", "laptop", 0).await;
    let node = "urn:xmpp:bookmarks:1";
    advertise(&mut laptop, &[DISCO_INFO, "urn:xmpp:bookmarks:1+notify"]).await;
    laptop.sync().await;
    // XEP-0402: bookmarks are whitelisted with as many items as the server keeps.
    let options = "<publish-options><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='pubsub#persist_items'><value>true</value></field>\
        <field var='pubsub#max_items'><value>max</value></field>\
        <field var='pubsub#send_last_published_item'><value>never</value></field>\
        <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options>";
    for room in ["a@muc", "b@muc"] {
        let iq = format!(
            "<iq type='set' id='b-{room}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
             <item id='{room}'><conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/></item>\
             </publish>{options}</pubsub></iq>"
        );
        assert_result(&phone.iq(&format!("b-{room}"), &iq).await);
        let note = parse(&laptop.stanza_with(&[EVENT, room]).await);
        assert_eq!(published(&note, "alice@localhost", node).0, room);
    }
    // The phone advertised nothing and hears nothing.
    assert_no_event(&mut phone).await;

    let retract = format!(
        "<iq type='set' id='r1'><pubsub xmlns='{PUBSUB}'><retract node='{node}'>\
         <item id='a@muc'/></retract></pubsub></iq>"
    );
    assert_result(&phone.iq("r1", &retract).await);
    let note = parse(&laptop.stanza_with(&[EVENT, "retract"]).await);
    let items = event(&note, "alice@localhost");
    let items = items.get_child("items", EVENT).unwrap();
    assert_eq!(
        items.get_child("retract", EVENT).and_then(|r| r.attr("id")),
        Some("a@muc")
    );

    let owner = "http://jabber.org/protocol/pubsub#owner";
    let purge = format!(
        "<iq type='set' id='pu'><pubsub xmlns='{owner}'><purge node='{node}'/></pubsub></iq>"
    );
    assert_result(&phone.iq("pu", &purge).await);
    let note = parse(&laptop.stanza_with(&[EVENT, "purge"]).await);
    assert!(event(&note, "alice@localhost").has_child("purge", EVENT));

    let delete = format!(
        "<iq type='set' id='de'><pubsub xmlns='{owner}'><delete node='{node}'>\
         <redirect uri='xmpp:alice@localhost?;node=elsewhere'/></delete></pubsub></iq>"
    );
    assert_result(&phone.iq("de", &delete).await);
    let note = parse(&laptop.stanza_with(&[EVENT, "delete"]).await);
    let ev = event(&note, "alice@localhost");
    let deleted = ev.get_child("delete", EVENT).unwrap();
    assert_eq!(
        deleted
            .get_child("redirect", EVENT)
            .and_then(|r| r.attr("uri")),
        Some("xmpp:alice@localhost?;node=elsewhere")
    );
    let items = format!(
        "<iq type='get' id='gone'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>"
    );
    assert_eq!(
        error_of(&phone.iq("gone", &items).await).0,
        "item-not-found"
    );
}

#[tokio::test]
async fn publish_options_create_open_nodes_and_conflicts_are_refused() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let node = "eu.siacs.conversations.axolotl.devicelist";
    let with_access = |id: &str, access: &str| {
        format!(
            "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
             <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list></item>\
             </publish><publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#access_model'><value>{access}</value></field></x></publish-options></pubsub></iq>"
        )
    };
    assert_result(&alice.iq("o1", &with_access("o1", "open")).await);
    // OMEMO device lists are open: Bob, no contact, reads it.
    let get = format!(
        "<iq type='get' id='g1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
         <items node='{node}'/></pubsub></iq>"
    );
    let reply = parse(&bob.iq("g1", &get).await);
    let item = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.get_child("item", PUBSUB))
        .expect("the device list");
    assert_eq!(item.attr("id"), Some("current"));
    // §7.1.5: options the node does not have are a precondition not met.
    let reply = alice.iq("o2", &with_access("o2", "presence")).await;
    assert_eq!(
        error_of(&reply),
        ("conflict".into(), Some("precondition-not-met".into()))
    );
    // Open to read, but not pushed to whoever sends presence: Bob is no contact.
    let wants = [
        DISCO_INFO,
        "eu.siacs.conversations.axolotl.devicelist+notify",
    ];
    advertise(&mut bob, &wants).await;
    bob.send(&caps_presence(&ver(&wants)).replace("<presence>", "<presence to='alice@localhost'>"))
        .await;
    bob.sync().await;
    assert_result(&alice.iq("o3", &with_access("o3", "open")).await);
    assert_no_event(&mut bob).await;
}

#[tokio::test]
async fn bad_input_gets_the_errors_of_xep_0060() {
    let server = TestServer::start_with(|c| {
        let mut section = toml::Table::new();
        section.insert("max_item_size".into(), toml::Value::Integer(200));
        c.modules.insert("pubsub".into(), section);
    })
    .await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let e = ask(
        &mut alice,
        "e1",
        format!(
            "<iq type='get' id='ID'><pubsub xmlns='{PUBSUB}'><items node='nope'/></pubsub></iq>"
        ),
    )
    .await;
    assert_eq!(e.0, "item-not-found");
    let e = ask(
        &mut alice,
        "e2",
        format!("<iq type='get' id='ID'><pubsub xmlns='{PUBSUB}'><items/></pubsub></iq>"),
    )
    .await;
    assert_eq!(e, ("bad-request".into(), Some("nodeid-required".into())));
    let big = nick(&"x".repeat(300));
    let e = ask(&mut alice, "e3", publish("ID", NICK, "1", &big)).await;
    assert_eq!(e, ("not-acceptable".into(), Some("payload-too-big".into())));
    let e = ask(&mut alice, "e4", publish("ID", NICK, "1", "")).await;
    assert_eq!(e, ("bad-request".into(), Some("payload-required".into())));
    // Someone else's PEP service is not Bob's to publish to.
    let e = ask(
        &mut bob,
        "e5",
        publish("ID", NICK, "1", &nick("Mallory")).replace("<iq ", "<iq to='alice@localhost' "),
    )
    .await;
    assert_eq!(e.0, "forbidden");
    assert_result(
        &alice
            .iq("p", &publish("p", NICK, "1", &nick("Alice")))
            .await,
    );
    // A form field of the wrong type is refused, and nothing changes.
    let configure = format!(
        "<iq type='set' id='ID'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>\
         <configure node='{NICK}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#persist_items'><value>perhaps</value></field></x></configure></pubsub></iq>"
    );
    let e = ask(&mut alice, "e6", configure).await;
    assert_eq!(e.0, "not-acceptable");
    // Subscribing someone else (§6.1.3.1).
    let e = ask(
        &mut bob,
        "e7",
        format!(
            "<iq type='set' id='ID' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
             <subscribe node='{NICK}' jid='carol@localhost'/></pubsub></iq>"
        ),
    )
    .await;
    assert_eq!(e, ("bad-request".into(), Some("invalid-jid".into())));
    // Bob is no contact: the presence model keeps him out.
    let e = ask(
        &mut bob,
        "e8",
        format!(
            "<iq type='set' id='ID' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
             <subscribe node='{NICK}' jid='bob@localhost'/></pubsub></iq>"
        ),
    )
    .await;
    assert_eq!(
        e,
        (
            "not-authorized".into(),
            Some("presence-subscription-required".into())
        )
    );
    let long = publish("ID", NICK, &"i".repeat(2000), &nick("Alice"));
    assert_eq!(ask(&mut alice, "e10", long).await.0, "not-acceptable");
    // Instant nodes do not exist in PEP.
    let e = ask(
        &mut alice,
        "e9",
        format!("<iq type='set' id='ID'><pubsub xmlns='{PUBSUB}'><create/></pubsub></iq>"),
    )
    .await;
    assert_eq!(e, ("not-acceptable".into(), Some("nodeid-required".into())));
}

#[tokio::test]
async fn a_caps_answer_that_does_not_match_its_hash_is_not_cached() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = common::friends(&server, "a", "b").await;
    assert_result(
        &alice
            .iq("p1", &publish("p1", NICK, "1", &nick("Alice")))
            .await,
    );
    let claimed = ver(&[DISCO_INFO, "http://jabber.org/protocol/nick+notify"]);
    bob.send(&caps_presence(&claimed)).await;
    // The answer lists a feature the hash does not cover.
    answer_caps(
        &mut bob,
        &[
            DISCO_INFO,
            "http://jabber.org/protocol/nick+notify",
            "urn:extra",
        ],
    )
    .await;
    assert_no_event(&mut bob).await;
    // A second resource with the same ver is asked again: nothing was cached.
    let mut other = Raw::login_quiet(server.c2s, "bob", "other").await;
    other.send(&caps_presence(&claimed)).await;
    answer_caps(
        &mut other,
        &[DISCO_INFO, "http://jabber.org/protocol/nick+notify"],
    )
    .await;
    // This time it matches: the last item follows.
    let last = parse(&other.stanza_with(&[EVENT]).await);
    assert_eq!(published(&last, "alice@localhost", NICK).1, "Alice");
    assert_eq!(last.attr("to"), Some("bob@localhost/other"));
}

#[tokio::test]
async fn pep_is_in_disco_and_data_survives_a_restart_and_goes_with_the_account() {
    let mut server = TestServer::start().await;
    let (mut alice, mut bob) = common::friends(&server, "a", "b").await;
    assert_result(
        &alice
            .iq("p1", &publish("p1", NICK, "1", &nick("Alice")))
            .await,
    );
    let info = parse(
        &bob.iq(
            "d1",
            &format!(
                "<iq type='get' id='d1' to='alice@localhost'><query xmlns='{DISCO_INFO}'/></iq>"
            ),
        )
        .await,
    );
    let query = info.get_child("query", DISCO_INFO).unwrap();
    assert!(query.children().any(|c| c.is("identity", DISCO_INFO)
        && c.attr("category") == Some("pubsub")
        && c.attr("type") == Some("pep")));
    let items = parse(
        &bob.iq(
            "d2",
            "<iq type='get' id='d2' to='alice@localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await,
    );
    let nodes: Vec<_> = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .children()
        .filter_map(|i| i.attr("node").map(str::to_string))
        .collect();
    assert_eq!(nodes, [NICK]);
    let features = [DISCO_INFO, "http://jabber.org/protocol/nick+notify"];
    advertise(&mut bob, &features).await;
    bob.stanza_with(&[EVENT]).await;
    drop((alice, bob));

    server.restart().await;
    // The verified caps survived: Bob's client is not asked again, and gets the last item.
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "b").await;
    bob.send(&caps_presence(&ver(&features))).await;
    let last = parse(&bob.stanza_with(&[EVENT]).await);
    assert_eq!(published(&last, "alice@localhost", NICK).1, "Alice");
    bob.sync().await;
    let rest = bob.next_stanza_if_any().await;
    assert!(
        !rest.contains("type='get'"),
        "asked again after the restart: {rest}"
    );
    let get = format!(
        "<iq type='get' id='g' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
         <items node='{NICK}'/></pubsub></iq>"
    );
    let reply = parse(&bob.iq("g", &get).await);
    let item = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.get_child("item", PUBSUB))
        .expect("the item survived");
    assert_eq!(
        item.children().next().map(|n| n.text()).as_deref(),
        Some("Alice")
    );

    alice
        .send("<iq type='set' id='rm' to='localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    alice.read_to_close().await;
    bob.sync().await;
    let store = &server.state().router.storage().pubsub;
    assert!(store.nodes("alice@localhost").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_contact_approved_after_its_presence_arrived_gets_the_last_items() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    advertise(
        &mut bob,
        &[DISCO_INFO, "http://jabber.org/protocol/nick+notify"],
    )
    .await;
    bob.sync().await;
    assert_result(
        &alice
            .iq("p1", &publish("p1", NICK, "1", &nick("Alice")))
            .await,
    );
    // Alice asks first: Bob's presence reaches her when he approves, before she approves
    // him in turn; her approval is what lets him see her nick.
    common::befriend(&mut alice, "alice@localhost/a", &mut bob, "bob@localhost/b").await;
    let last = parse(&bob.stanza_with(&[EVENT]).await);
    assert_eq!(published(&last, "alice@localhost", NICK).1, "Alice");
    assert_eq!(last.attr("to"), Some("bob@localhost/b"));
}

#[tokio::test]
async fn own_resources_get_the_last_item_when_they_come_online_and_only_then() {
    let server = TestServer::start().await;
    let mut phone = online(&server, "alice", "phone", 0).await;
    assert_result(
        &phone
            .iq("p1", &publish("p1", NICK, "1", &nick("Alice")))
            .await,
    );
    let features = [DISCO_INFO, "http://jabber.org/protocol/nick+notify"];
    let mut laptop = Raw::login_quiet(server.c2s, "alice", "laptop").await;
    advertise(&mut laptop, &features).await;
    let last = parse(&laptop.stanza_with(&[EVENT]).await);
    assert_eq!(published(&last, "alice@localhost", NICK).1, "Alice");
    assert_eq!(last.attr("to"), Some("alice@localhost/laptop"));
    // A presence update with the same caps is no reason to send it again.
    laptop
        .send(&caps_presence(&ver(&features)).replace("<presence>", "<presence><show>away</show>"))
        .await;
    assert_no_event(&mut laptop).await;
    // A new resource with caps the server already knows is not asked again.
    let mut tablet = Raw::login_quiet(server.c2s, "alice", "tablet").await;
    tablet.send(&caps_presence(&ver(&features))).await;
    let last = parse(&tablet.stanza_with(&[EVENT]).await);
    assert_eq!(last.attr("to"), Some("alice@localhost/tablet"));
    tablet.sync().await;
    let rest = tablet.next_stanza_if_any().await;
    assert!(!rest.contains("disco#info"), "asked again: {rest}");
}

#[tokio::test]
async fn an_explicit_subscriber_with_notify_gets_one_copy() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = common::friends(&server, "a", "b").await;
    advertise(
        &mut bob,
        &[DISCO_INFO, "http://jabber.org/protocol/nick+notify"],
    )
    .await;
    bob.sync().await;
    assert_result(
        &alice
            .iq("p1", &publish("p1", NICK, "1", &nick("Alice")))
            .await,
    );
    bob.stanza_with(&[EVENT]).await;
    let subscribe = format!(
        "<iq type='set' id='s1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
         <subscribe node='{NICK}' jid='bob@localhost'/></pubsub></iq>"
    );
    assert_result(&bob.iq("s1", &subscribe).await);
    // The subscription sends the last item once more (§6.1.7).
    bob.stanza_with(&[EVENT]).await;
    assert_result(
        &alice
            .iq("p2", &publish("p2", NICK, "2", &nick("Alice 2")))
            .await,
    );
    let note = parse(&bob.stanza_with(&[EVENT]).await);
    assert_eq!(note.attr("to"), Some("bob@localhost"));
    assert_no_event(&mut bob).await;
}

#[tokio::test]
async fn a_session_inventing_caps_hashes_runs_out_of_queries() {
    let server = TestServer::start().await;
    let mut bob = online(&server, "bob", "b", 0).await;
    for i in 0..8 {
        let feature = format!("urn:xmppd:test:{i}");
        advertise(&mut bob, &[DISCO_INFO, &feature]).await;
    }
    bob.send(&caps_presence(&ver(&[DISCO_INFO, "urn:xmppd:test:9"])))
        .await;
    bob.sync().await;
    let rest = bob.next_stanza_if_any().await;
    assert!(!rest.contains("type='get'"), "asked a ninth time: {rest}");
}

const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
const LEGACY: &str = "storage:bookmarks";

/// The conferences (jid, name) a private XML read of `storage:bookmarks` returns, and the
/// number of `<url/>`s.
async fn legacy_bookmarks(raw: &mut Raw) -> (Vec<(String, String)>, usize) {
    let reply = parse(
        &raw.iq(
            "pg",
            "<iq type='get' id='pg'><query xmlns='jabber:iq:private'>\
             <storage xmlns='storage:bookmarks'/></query></iq>",
        )
        .await,
    );
    let storage = reply
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", LEGACY))
        .unwrap_or_else(|| panic!("no storage: {reply:?}"))
        .clone();
    let mut conferences: Vec<_> = storage
        .children()
        .filter(|c| c.is("conference", LEGACY))
        .map(|c| {
            (
                c.attr("jid").unwrap().to_string(),
                c.attr("name").unwrap_or_default().to_string(),
            )
        })
        .collect();
    conferences.sort();
    let urls = storage.children().filter(|c| c.is("url", LEGACY)).count();
    (conferences, urls)
}

fn legacy_set(conferences: &[(&str, &str)]) -> String {
    let mut xml = String::from(
        "<iq type='set' id='ps'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
         <url name='Docs' url='https://xmpp.org'/>",
    );
    for (jid, name) in conferences {
        xml.push_str(&format!(
            "<conference jid='{jid}' name='{name}' autojoin='true'><nick>Al</nick></conference>"
        ));
    }
    xml.push_str("</storage></query></iq>");
    xml
}

#[tokio::test]
async fn bookmarks_are_one_list_for_private_xml_and_pep_clients() {
    let server = TestServer::start().await;
    let mut old = online(&server, "alice", "old", 0).await;
    let mut new = online(&server, "alice", "new", 0).await;
    advertise(&mut new, &[DISCO_INFO, "urn:xmpp:bookmarks:1+notify"]).await;
    new.sync().await;
    let info = parse(
        &old.iq(
            "d",
            &format!(
                "<iq type='get' id='d' to='alice@localhost'><query xmlns='{DISCO_INFO}'/></iq>"
            ),
        )
        .await,
    );
    let compat = info
        .get_child("query", DISCO_INFO)
        .unwrap()
        .children()
        .any(|f| f.attr("var") == Some("urn:xmpp:bookmarks:1#compat"));
    assert!(compat, "{info:?}");

    // An old client stores its list through private XML: the new one hears of each room.
    assert_result(
        &old.iq(
            "ps",
            &legacy_set(&[("a@muc.localhost", "A"), ("b@muc.localhost", "B")]),
        )
        .await,
    );
    let mut heard = Vec::new();
    for _ in 0..2 {
        let note = parse(&new.stanza_with(&[EVENT, BOOKMARKS]).await);
        heard.push(published(&note, "alice@localhost", BOOKMARKS).0);
    }
    heard.sort();
    assert_eq!(heard, ["a@muc.localhost", "b@muc.localhost"]);

    // It replaces the list: one room unchanged (no notification), one gone, one new.
    assert_result(
        &old.iq(
            "ps",
            &legacy_set(&[("a@muc.localhost", "A"), ("c@muc.localhost", "C")]),
        )
        .await,
    );
    let note = parse(&new.stanza_with(&[EVENT, "c@muc.localhost"]).await);
    assert_eq!(
        published(&note, "alice@localhost", BOOKMARKS).0,
        "c@muc.localhost"
    );
    let note = parse(&new.stanza_with(&[EVENT, "retract"]).await);
    let items = event(&note, "alice@localhost");
    let retract = items
        .get_child("items", EVENT)
        .and_then(|i| i.get_child("retract", EVENT));
    assert_eq!(retract.and_then(|r| r.attr("id")), Some("b@muc.localhost"));
    assert_no_event(&mut new).await;

    // The new client adds a room natively; the old one reads it back, URL kept.
    let add = format!(
        "<iq type='set' id='n1'><pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS}'>\
         <item id='d@muc.localhost'><conference xmlns='{BOOKMARKS}' name='D' autojoin='1'>\
         <nick>Al</nick></conference></item></publish></pubsub></iq>"
    );
    assert_result(&new.iq("n1", &add).await);
    let (conferences, urls) = legacy_bookmarks(&mut old).await;
    let want: Vec<(String, String)> = [("a", "A"), ("c", "C"), ("d", "D")]
        .iter()
        .map(|(r, n)| (format!("{r}@muc.localhost"), n.to_string()))
        .collect();
    assert_eq!((conferences, urls), (want, 1));
}

#[tokio::test]
async fn bookmarks_stored_before_the_native_node_are_kept_when_it_is_created() {
    let server = TestServer::start().await;
    // What the private XML module stored before this server offered native bookmarks.
    server
        .state()
        .router
        .storage()
        .data
        .put(
            "alice",
            "localhost",
            "private",
            "{storage:bookmarks}storage",
            "<storage xmlns='storage:bookmarks'><conference jid='old@muc.localhost' name='Old'/></storage>",
        )
        .await
        .unwrap();
    let mut alice = online(&server, "alice", "a", 0).await;
    let add = format!(
        "<iq type='set' id='n1'><pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS}'>\
         <item id='new@muc.localhost'><conference xmlns='{BOOKMARKS}' name='New'/></item>\
         </publish></pubsub></iq>"
    );
    assert_result(&alice.iq("n1", &add).await);
    let items = parse(
        &alice
            .iq(
                "g",
                &format!(
                    "<iq type='get' id='g'><pubsub xmlns='{PUBSUB}'><items node='{BOOKMARKS}'/></pubsub></iq>"
                ),
            )
            .await,
    );
    let mut ids: Vec<_> = items
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .unwrap()
        .children()
        .filter_map(|i| i.attr("id").map(str::to_string))
        .collect();
    ids.sort();
    assert_eq!(ids, ["new@muc.localhost", "old@muc.localhost"]);
    let (conferences, _) = legacy_bookmarks(&mut alice).await;
    assert_eq!(conferences.len(), 2);
}

const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";

fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_pep_avatar_becomes_the_vcard_photo() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let photo = b"\x89PNG\r\n\x1a\nnot really a png";
    let (id, b64) = (
        sha1_hex(photo),
        base64::engine::general_purpose::STANDARD.encode(photo),
    );
    let data = format!("<data xmlns='{AVATAR_DATA}'>{b64}</data>");
    assert_result(&alice.iq("d", &publish("d", AVATAR_DATA, &id, &data)).await);
    let metadata = format!(
        "<metadata xmlns='{AVATAR_METADATA}'><info id='{id}' bytes='{}' type='image/png'/></metadata>",
        photo.len()
    );
    assert_result(
        &alice
            .iq("m", &publish("m", AVATAR_METADATA, &id, &metadata))
            .await,
    );
    let vcard = parse(
        &alice
            .iq(
                "v",
                "<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>",
            )
            .await,
    );
    let photo_el = vcard
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("PHOTO", "vcard-temp"))
        .unwrap_or_else(|| panic!("no PHOTO: {vcard:?}"));
    assert_eq!(
        photo_el.get_child("BINVAL", "vcard-temp").unwrap().text(),
        b64
    );
    assert_eq!(
        photo_el.get_child("TYPE", "vcard-temp").unwrap().text(),
        "image/png"
    );
    // XEP-0153: the vCard hash in presence follows.
    alice.send("<presence/>").await;
    let own = parse(
        &alice
            .stanza_with(&["<presence", "vcard-temp:x:update"])
            .await,
    );
    let hash = own
        .get_child("x", "vcard-temp:x:update")
        .and_then(|x| x.get_child("photo", "vcard-temp:x:update"))
        .map(|p| p.text());
    assert_eq!(hash.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn a_vcard_photo_becomes_the_pep_avatar() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = common::friends(&server, "a", "b").await;
    advertise(&mut bob, &[DISCO_INFO, "urn:xmpp:avatar:metadata+notify"]).await;
    bob.sync().await;
    let info = parse(
        &bob.iq(
            "i",
            &format!(
                "<iq type='get' id='i' to='alice@localhost'><query xmlns='{DISCO_INFO}'/></iq>"
            ),
        )
        .await,
    );
    assert!(info
        .get_child("query", DISCO_INFO)
        .unwrap()
        .children()
        .any(|f| f.attr("var") == Some("urn:xmpp:pep-vcard-conversion:0")));
    let photo = b"GIF89a a small picture";
    let (id, b64) = (
        sha1_hex(photo),
        base64::engine::general_purpose::STANDARD.encode(photo),
    );
    let set = format!(
        "<iq type='set' id='vs'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/gif</TYPE>\
         <BINVAL>{b64}</BINVAL></PHOTO></vCard></iq>"
    );
    assert_result(&alice.iq("vs", &set).await);
    let note = parse(&bob.stanza_with(&[EVENT, AVATAR_METADATA]).await);
    let ev = event(&note, "alice@localhost");
    let info = ev
        .get_child("items", EVENT)
        .and_then(|i| i.get_child("item", EVENT))
        .and_then(|i| i.get_child("metadata", AVATAR_METADATA))
        .and_then(|m| m.get_child("info", AVATAR_METADATA))
        .unwrap_or_else(|| panic!("no info: {note:?}"));
    assert_eq!(info.attr("id"), Some(id.as_str()));
    assert_eq!(info.attr("type"), Some("image/gif"));
    assert_eq!(info.attr("bytes"), Some(photo.len().to_string().as_str()));
    let get = format!(
        "<iq type='get' id='g' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
         <items node='{AVATAR_DATA}'><item id='{id}'/></items></pubsub></iq>"
    );
    let reply = parse(&bob.iq("g", &get).await);
    let data = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.get_child("item", PUBSUB))
        .and_then(|i| i.get_child("data", AVATAR_DATA))
        .expect("the avatar data");
    assert_eq!(data.text(), b64);
    // Setting the same vCard again changes nothing: no second notification.
    assert_result(&alice.iq("vs", &set).await);
    assert_no_event(&mut bob).await;
}

/// The `<c/>` in a `<stream:features/>` (XEP-0115 §6.3).
fn features_caps(features: &str) -> Element {
    let open = "<stream:features>";
    let start = features.find(open).expect("features") + open.len();
    let end = features
        .find("</stream:features>")
        .expect("the end of the features");
    let list = parse(&format!("<features>{}</features>", &features[start..end]));
    let c = list
        .get_child("c", CAPS)
        .expect("caps among the stream features");
    assert_eq!(c.attr("hash"), Some("sha-1"));
    c.clone()
}

const CAPS: &str = "http://jabber.org/protocol/caps";

#[tokio::test]
async fn the_server_caps_in_its_stream_features_hash_its_disco_info() {
    // XEP-0157 addresses make an extended form (XEP-0128) part of the hash.
    let server = TestServer::start_with(|c| {
        c.server
            .contact_addresses
            .insert("admin".into(), vec!["xmpp:admin@localhost".into()]);
    })
    .await;
    server.add_user("alice", common::PASSWORD).await;
    let (mut raw, before_auth) = Raw::secure(server.c2s).await;
    let reply = raw.auth_plain("alice", common::PASSWORD).await;
    assert!(reply.contains("<success"), "{reply}");
    let after_auth = features_caps(&raw.open().await);
    assert_eq!(
        features_caps(&before_auth).attr("ver"),
        after_auth.attr("ver")
    );
    raw.bind(Some("r")).await;

    let node = after_auth.attr("node").unwrap().to_string();
    let ver = after_auth.attr("ver").unwrap().to_string();
    let ask = |id: &str, node: Option<&str>| {
        let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
        format!("<iq type='get' id='{id}' to='localhost'><query xmlns='{DISCO_INFO}'{node}/></iq>")
    };
    let info = parse(&raw.iq("d1", &ask("d1", None)).await);
    let query = info.get_child("query", DISCO_INFO).expect("disco#info");
    assert!(query.to_xml().contains("xmpp:admin@localhost"), "{query:?}");
    assert!(query.children().any(|f| f.attr("var") == Some(CAPS)));
    assert_eq!(
        xmppd_modules::pubsub::caps_ver(query).as_deref(),
        Some(ver.as_str())
    );

    // §6.2: node#ver answers the same, naming the node.
    let caps_node = format!("{node}#{ver}");
    let by_node = parse(&raw.iq("d2", &ask("d2", Some(&caps_node))).await);
    let by_node = by_node.get_child("query", DISCO_INFO).expect("disco#info");
    assert_eq!(by_node.attr("node"), Some(caps_node.as_str()));
    assert_eq!(xmppd_modules::pubsub::caps_ver(by_node), Some(ver));
    assert_eq!(by_node.children().count(), query.children().count());
    // Another ver is no node of the server.
    let stale = ask("d3", Some(&format!("{node}#old=")));
    let stale = parse(&raw.iq("d3", &stale).await);
    assert_eq!(stale.attr("type"), Some("error"));
}

#[tokio::test]
async fn a_contact_whose_privacy_list_denies_the_owners_messages_gets_no_notifications() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = common::friends(&server, "a", "b").await;
    let mut carol = online(&server, "carol", "c", 0).await;
    befriend_any(
        &mut alice,
        "alice@localhost/a",
        &mut carol,
        "carol@localhost/c",
    )
    .await;
    let wants = [DISCO_INFO, "http://jabber.org/protocol/nick+notify"];
    advertise(&mut bob, &wants).await;
    // The same client as Bob's: the server knows the hash already.
    carol.send(&caps_presence(&ver(&wants))).await;
    carol.sync().await;
    // Bob still sends presence to Alice but takes no messages from her (XEP-0016 §2.4).
    let list = "<iq type='set' id='l1'><query xmlns='jabber:iq:privacy'><list name='quiet'>\
         <item type='jid' value='alice@localhost' action='deny' order='1'><message/></item>\
         <item action='allow' order='2'/></list></query></iq>";
    assert_result(&bob.iq("l1", list).await);
    let active = "<iq type='set' id='l2'><query xmlns='jabber:iq:privacy'><active name='quiet'/></query></iq>";
    assert_result(&bob.iq("l2", active).await);

    assert_result(
        &alice
            .iq("p1", &publish("p1", NICK, "current", &nick("Alice")))
            .await,
    );
    let note = parse(&carol.stanza_with(&[EVENT]).await);
    assert_eq!(published(&note, "alice@localhost", NICK).1, "Alice");
    assert_eq!(note.attr("to"), Some("carol@localhost/c"));
    assert_no_event(&mut bob).await;
}
