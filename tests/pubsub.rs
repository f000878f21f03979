//! The generic XEP-0060 service at pubsub.localhost end to end: discovery, create and
//! configure, subscribe, publish and notify, items with max_items and RSM, owner management
//! of subscriptions and affiliations, unsubscribe, delete, durability, and the authorize
//! access model (pending subscriptions approved or denied by the owner).

mod common;

use common::{online, parse, Raw, TestServer};
use xmppd_xml::Element;

const SERVICE: &str = "pubsub.localhost";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// An iq to the service; `ID` in `body` is replaced by `id`. Returns the parsed reply.
async fn ask(raw: &mut Raw, id: &str, kind: &str, ns: &str, body: &str) -> Element {
    let iq = format!(
        "<iq type='{kind}' id='{id}' to='{SERVICE}'><pubsub xmlns='{ns}'>{body}</pubsub></iq>"
    );
    parse(&raw.iq(id, &iq).await)
}

fn ok(reply: &Element) -> Option<Element> {
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    reply.children().next().cloned()
}

fn error_of(reply: &Element) -> (String, Option<String>) {
    assert_eq!(reply.attr("type"), Some("error"), "{reply:?}");
    let error = reply.get_child("error", "jabber:client").expect("error");
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

fn publish(item: &str, text: &str) -> String {
    format!(
        "<publish node='news'><item id='{item}'><entry xmlns='urn:test'>{text}</entry></item></publish>"
    )
}

fn publish_to(node: &str, item: &str) -> String {
    format!("<publish node='{node}'><item id='{item}'><entry xmlns='urn:test'/></item></publish>")
}

/// The ids of the items of a notification or items reply, in order.
fn item_ids(items: &Element) -> Vec<String> {
    items
        .children()
        .filter(|c| c.name() == "item")
        .filter_map(|c| c.attr("id").map(str::to_string))
        .collect()
}

/// The `<items/>` of the next notification `raw` receives from the service.
async fn notification(raw: &mut Raw) -> Element {
    let message = parse(&raw.stanza_with(&[EVENT]).await);
    assert_eq!(message.attr("from"), Some(SERVICE));
    assert_eq!(message.attr("type"), Some("headline"));
    message.get_child("event", EVENT).unwrap().clone()
}

async fn assert_no_event(raw: &mut Raw) {
    raw.sync().await;
    let rest = raw.next_stanza_if_any().await;
    assert!(!rest.contains(EVENT), "unexpected notification: {rest}");
}

fn config_form(fields: &[(&str, &str)]) -> String {
    let mut form = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#node_config</value></field>",
    );
    for (var, value) in fields {
        form.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    form.push_str("</x>");
    form
}

#[tokio::test]
async fn the_service_is_discoverable() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let items = parse(
        &alice
            .iq(
                "d1",
                &format!(
                    "<iq type='get' id='d1' to='localhost'><query xmlns='{DISCO_ITEMS}'/></iq>"
                ),
            )
            .await,
    );
    let jids: Vec<_> = items
        .get_child("query", DISCO_ITEMS)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert!(jids.contains(&SERVICE), "{jids:?}");
    let info = parse(
        &alice
            .iq(
                "d2",
                &format!(
                    "<iq type='get' id='d2' to='{SERVICE}'><query xmlns='{DISCO_INFO}'/></iq>"
                ),
            )
            .await,
    );
    let query = info.get_child("query", DISCO_INFO).unwrap();
    let identity = query.get_child("identity", DISCO_INFO).unwrap();
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("pubsub"), Some("service"))
    );
    let features: Vec<_> = query.children().filter_map(|f| f.attr("var")).collect();
    for f in [
        "publish",
        "subscribe",
        "create-nodes",
        "publish-options",
        "rsm",
        "access-authorize",
        "subscription-options",
    ] {
        assert!(
            features.contains(&format!("{PUBSUB}#{f}").as_str()),
            "{f} missing from {features:?}"
        );
    }
    // Not implemented, so not advertised.
    for f in ["multi-subscribe", "collections", "get-pending"] {
        assert!(!features.contains(&format!("{PUBSUB}#{f}").as_str()), "{f}");
    }
}

#[tokio::test]
async fn create_subscribe_publish_notify_unsubscribe_delete() {
    let mut server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;

    let create = format!(
        "<create node='news'/><configure>{}</configure>",
        config_form(&[("pubsub#max_items", "2"), ("pubsub#title", "News")])
    );
    ok(&ask(&mut alice, "c1", "set", PUBSUB, &create).await);
    let again = ask(&mut alice, "c2", "set", PUBSUB, "<create node='news'/>").await;
    assert_eq!(error_of(&again).0, "conflict");
    // §8.1.2 instant node: the service names it.
    let instant = ok(&ask(&mut alice, "c3", "set", PUBSUB, "<create/>").await).unwrap();
    let name = instant
        .get_child("create", PUBSUB)
        .and_then(|c| c.attr("node"));
    assert!(name.is_some_and(|n| !n.is_empty()), "{instant:?}");

    let sub = ask(
        &mut bob,
        "s1",
        "set",
        PUBSUB,
        "<subscribe node='news' jid='bob@localhost'/>",
    )
    .await;
    let sub = ok(&sub).unwrap();
    let sub = sub.get_child("subscription", PUBSUB).unwrap();
    assert_eq!(sub.attr("subscription"), Some("subscribed"));
    // Subscribing another entity is refused (§6.1.3.1).
    let spoofed = ask(
        &mut carol,
        "s2",
        "set",
        PUBSUB,
        "<subscribe node='news' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(
        error_of(&spoofed),
        ("bad-request".into(), Some("invalid-jid".into()))
    );

    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let id = format!("i{i}");
        ok(&ask(&mut alice, &id, "set", PUBSUB, &publish(&id, text)).await);
        let event = notification(&mut bob).await;
        let items = event.get_child("items", EVENT).unwrap();
        assert_eq!(items.attr("node"), Some("news"));
        assert_eq!(item_ids(items), [id.as_str()]);
    }
    assert_no_event(&mut carol).await;
    // Bob is no publisher.
    let denied = ask(&mut bob, "bp", "set", PUBSUB, &publish("x", "spam")).await;
    assert_eq!(error_of(&denied).0, "forbidden");

    // max_items=2 kept the newest two; max_items and RSM page through them.
    let all = ok(&ask(&mut carol, "g1", "get", PUBSUB, "<items node='news'/>").await).unwrap();
    assert_eq!(
        item_ids(all.get_child("items", PUBSUB).unwrap()),
        ["i2", "i1"]
    );
    let one = ok(&ask(
        &mut carol,
        "g2",
        "get",
        PUBSUB,
        "<items node='news' max_items='1'/>",
    )
    .await)
    .unwrap();
    assert_eq!(item_ids(one.get_child("items", PUBSUB).unwrap()), ["i2"]);
    let paged = ok(&ask(
        &mut carol,
        "g3",
        "get",
        PUBSUB,
        "<items node='news'/><set xmlns='http://jabber.org/protocol/rsm'><max>1</max><after>i2</after></set>",
    )
    .await)
    .unwrap();
    assert_eq!(item_ids(paged.get_child("items", PUBSUB).unwrap()), ["i1"]);
    let set = paged
        .get_child("set", "http://jabber.org/protocol/rsm")
        .unwrap();
    assert_eq!(
        set.get_child("count", "http://jabber.org/protocol/rsm")
            .unwrap()
            .text(),
        "2"
    );
    let by_id = ok(&ask(
        &mut carol,
        "g4",
        "get",
        PUBSUB,
        "<items node='news'><item id='i1'/></items>",
    )
    .await)
    .unwrap();
    let item = by_id
        .get_child("items", PUBSUB)
        .and_then(|i| i.get_child("item", PUBSUB))
        .unwrap();
    let entry = item.children().next().unwrap();
    assert!(entry.is("entry", "urn:test"), "{entry:?}");
    assert_eq!(entry.text(), "two");

    // Owners see and manage subscriptions and affiliations (§8.8, §8.9).
    let subs = ok(&ask(
        &mut alice,
        "o1",
        "get",
        OWNER,
        "<subscriptions node='news'/>",
    )
    .await)
    .unwrap();
    let subs: Vec<_> = subs
        .get_child("subscriptions", OWNER)
        .unwrap()
        .children()
        .map(|s| {
            (
                s.attr("jid").unwrap().to_string(),
                s.attr("subscription").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        subs,
        [("bob@localhost".to_string(), "subscribed".to_string())]
    );
    let not_owner = ask(&mut bob, "o2", "get", OWNER, "<subscriptions node='news'/>").await;
    assert_eq!(error_of(&not_owner).0, "forbidden");
    ok(&ask(
        &mut alice,
        "o3",
        "set",
        OWNER,
        "<affiliations node='news'><affiliation jid='bob@localhost' affiliation='publisher'/>\
         <affiliation jid='carol@localhost' affiliation='outcast'/></affiliations>",
    )
    .await);
    ok(&ask(&mut bob, "bp2", "set", PUBSUB, &publish("b1", "from bob")).await);
    notification(&mut bob).await;
    let outcast = ask(
        &mut carol,
        "s3",
        "set",
        PUBSUB,
        "<subscribe node='news' jid='carol@localhost'/>",
    )
    .await;
    assert_eq!(error_of(&outcast).0, "forbidden");
    let mine = ok(&ask(&mut bob, "a1", "get", PUBSUB, "<affiliations/>").await).unwrap();
    let aff = mine
        .get_child("affiliations", PUBSUB)
        .and_then(|a| a.get_child("affiliation", PUBSUB))
        .unwrap();
    assert_eq!(
        (aff.attr("node"), aff.attr("affiliation")),
        (Some("news"), Some("publisher"))
    );

    // Subscriptions are durable.
    drop((alice, bob, carol));
    server.restart().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let mine = ok(&ask(&mut bob, "s4", "get", PUBSUB, "<subscriptions/>").await).unwrap();
    let sub = mine
        .get_child("subscriptions", PUBSUB)
        .and_then(|s| s.get_child("subscription", PUBSUB))
        .unwrap();
    assert_eq!(
        (sub.attr("node"), sub.attr("subscription")),
        (Some("news"), Some("subscribed"))
    );
    ok(&ask(
        &mut alice,
        "i9",
        "set",
        PUBSUB,
        &publish("i9", "after restart"),
    )
    .await);
    notification(&mut bob).await;

    ok(&ask(
        &mut bob,
        "u1",
        "set",
        PUBSUB,
        "<unsubscribe node='news' jid='bob@localhost'/>",
    )
    .await);
    let twice = ask(
        &mut bob,
        "u2",
        "set",
        PUBSUB,
        "<unsubscribe node='news' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(
        error_of(&twice),
        ("unexpected-request".into(), Some("not-subscribed".into()))
    );
    ok(&ask(&mut alice, "i10", "set", PUBSUB, &publish("i10", "unheard")).await);
    assert_no_event(&mut bob).await;

    // Subscribed again, Bob hears of the deletion and where the news went.
    ok(&ask(
        &mut bob,
        "s5",
        "set",
        PUBSUB,
        "<subscribe node='news' jid='bob@localhost/b'/>",
    )
    .await);
    // send_last_published_item=on_sub by default: the newest item comes at once.
    let last = notification(&mut bob).await;
    assert_eq!(item_ids(last.get_child("items", EVENT).unwrap()), ["i10"]);
    ok(&ask(
        &mut alice,
        "del",
        "set",
        OWNER,
        "<delete node='news'><redirect uri='xmpp:pubsub.localhost?;node=news2'/></delete>",
    )
    .await);
    let event = notification(&mut bob).await;
    let delete = event.get_child("delete", EVENT).unwrap();
    assert_eq!(delete.attr("node"), Some("news"));
    let gone = ask(&mut alice, "g5", "get", PUBSUB, "<items node='news'/>").await;
    assert_eq!(error_of(&gone).0, "item-not-found");
}

#[tokio::test]
async fn configuration_forms_round_trip_and_bad_values_are_refused() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    ok(&ask(&mut alice, "c1", "set", PUBSUB, "<create node='n'/>").await);
    let form = ok(&ask(&mut alice, "f1", "get", OWNER, "<configure node='n'/>").await).unwrap();
    let x = form
        .get_child("configure", OWNER)
        .and_then(|c| c.get_child("x", "jabber:x:data"))
        .unwrap();
    let access = x
        .children()
        .find(|f| f.attr("var") == Some("pubsub#access_model"))
        .unwrap();
    assert_eq!(
        access.get_child("value", "jabber:x:data").unwrap().text(),
        "open"
    );
    // The generic service has no rosters: presence access would be a promise it cannot keep.
    for bad in [
        ("pubsub#access_model", "presence"),
        ("pubsub#max_items", "many"),
        ("pubsub#deliver_payloads", "maybe"),
    ] {
        let reply = ask(
            &mut alice,
            "f2",
            "set",
            OWNER,
            &format!("<configure node='n'>{}</configure>", config_form(&[bad])),
        )
        .await;
        assert_eq!(error_of(&reply).0, "not-acceptable", "{bad:?}");
    }
    ok(&ask(
        &mut bob,
        "s1",
        "set",
        PUBSUB,
        "<subscribe node='n' jid='bob@localhost'/>",
    )
    .await);
    ok(&ask(
        &mut alice,
        "f3",
        "set",
        OWNER,
        &format!(
            "<configure node='n'>{}</configure>",
            config_form(&[
                ("pubsub#notify_config", "1"),
                ("pubsub#access_model", "whitelist")
            ])
        ),
    )
    .await);
    let event = notification(&mut bob).await;
    assert_eq!(
        event
            .get_child("configuration", EVENT)
            .and_then(|c| c.attr("node")),
        Some("n")
    );
    // Whitelisted now: Bob, no member, may no longer read.
    let closed = ask(&mut bob, "g1", "get", PUBSUB, "<items node='n'/>").await;
    assert_eq!(
        error_of(&closed),
        ("not-allowed".into(), Some("closed-node".into()))
    );
}

#[tokio::test]
async fn node_and_subscription_limits_hold() {
    let server = TestServer::start_with(|c| {
        let mut section = toml::Table::new();
        section.insert("max_nodes".into(), toml::Value::Integer(2));
        section.insert("max_subscriptions".into(), toml::Value::Integer(1));
        c.modules.insert("pubsub".into(), section);
    })
    .await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    for node in ["one", "two"] {
        ok(&ask(
            &mut alice,
            node,
            "set",
            PUBSUB,
            &format!("<create node='{node}'/>"),
        )
        .await);
    }
    let third = ask(&mut alice, "three", "set", PUBSUB, "<create node='three'/>").await;
    assert_eq!(
        error_of(&third),
        ("not-allowed".into(), Some("max-nodes-exceeded".into()))
    );
    ok(&ask(
        &mut alice,
        "s1",
        "set",
        PUBSUB,
        "<subscribe node='one' jid='alice@localhost'/>",
    )
    .await);
    let full = ask(
        &mut bob,
        "s2",
        "set",
        PUBSUB,
        "<subscribe node='one' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(error_of(&full).0, "policy-violation");
}

#[tokio::test]
async fn a_deleted_account_leaves_no_subscriptions_behind() {
    let server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;
    ok(&ask(&mut alice, "c1", "set", PUBSUB, "<create node='n'/>").await);
    ok(&ask(
        &mut carol,
        "s1",
        "set",
        PUBSUB,
        "<subscribe node='n' jid='carol@localhost/c'/>",
    )
    .await);
    carol
        .send("<iq type='set' id='rm' to='localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    carol.read_to_close().await;
    alice.sync().await;
    let subs = ok(&ask(&mut alice, "o1", "get", OWNER, "<subscriptions node='n'/>").await).unwrap();
    let subs = subs.get_child("subscriptions", OWNER).unwrap();
    assert_eq!(subs.children().count(), 0, "{subs:?}");
}

const AUTHORIZATION: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

/// The state in the `<subscription/>` of a subscribe result.
fn subscription_state(reply: &Element) -> String {
    let pubsub = ok(reply).expect("a pubsub payload");
    let sub = pubsub
        .get_child("subscription", PUBSUB)
        .expect("subscription");
    sub.attr("subscription").unwrap().to_string()
}

/// `(jid, subscription)` of every subscription in an owner's or a subscriber's list.
fn subscriptions(reply: &Element, ns: &str) -> Vec<(String, String)> {
    let pubsub = ok(reply).expect("a pubsub payload");
    let list = pubsub
        .get_child("subscriptions", ns)
        .expect("subscriptions");
    list.children()
        .map(|s| {
            let attr = |a| s.attr(a).unwrap_or_default().to_string();
            (attr("jid"), attr("subscription"))
        })
        .collect()
}

/// The owner's next approval request (§8.6): its form's node and subscriber, and the id the
/// answer must carry.
async fn approval_request(owner: &mut Raw) -> (String, String, String) {
    let message = parse(&owner.stanza_with(&[AUTHORIZATION]).await);
    assert_eq!(message.attr("from"), Some(SERVICE));
    let x = message.get_child("x", "jabber:x:data").expect("a form");
    assert_eq!(x.attr("type"), Some("form"));
    let value = |var: &str| {
        x.children()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.children().next())
            .map(Element::text)
            .unwrap_or_else(|| panic!("no {var} in {x:?}"))
    };
    assert_eq!(value("pubsub#allow"), "0");
    let id = message.attr("id").unwrap().to_string();
    (value("pubsub#node"), value("pubsub#subscriber_jid"), id)
}

/// The owner submits the approval form back (§8.6).
async fn answer_request(owner: &mut Raw, id: &str, node: &str, jid: &str, allow: bool) {
    owner
        .send(&format!(
            "<message to='{SERVICE}' id='{id}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{AUTHORIZATION}</value></field>\
             <field var='pubsub#node'><value>{node}</value></field>\
             <field var='pubsub#subscriber_jid'><value>{jid}</value></field>\
             <field var='pubsub#allow'><value>{allow}</value></field></x></message>"
        ))
        .await;
}

/// The subscription state change the service tells `raw` of (§8.6, §8.8.4).
async fn subscription_event(raw: &mut Raw) -> (String, String) {
    let event = notification(raw).await;
    let sub = event
        .get_child("subscription", EVENT)
        .expect("a subscription event");
    let attr = |a| sub.attr(a).unwrap_or_default().to_string();
    assert_eq!(attr("node"), "closed");
    (attr("jid"), attr("subscription"))
}

#[tokio::test]
async fn the_owner_approves_or_denies_subscriptions_to_an_authorize_node() {
    let mut server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;
    let create = format!(
        "<create node='closed'/><configure>{}</configure>",
        config_form(&[("pubsub#access_model", "authorize")])
    );
    ok(&ask(&mut alice, "c1", "set", PUBSUB, &create).await);
    ok(&ask(&mut alice, "p1", "set", PUBSUB, &publish_to("closed", "i1")).await);

    // §6.1.2.2: Bob's request waits for the owner, who is asked with a form (§8.6).
    let subscribe = "<subscribe node='closed' jid='bob@localhost'/>";
    let pending = ask(&mut bob, "s1", "set", PUBSUB, subscribe).await;
    assert_eq!(subscription_state(&pending), "pending");
    let (node, jid, _) = approval_request(&mut alice).await;
    assert_eq!((node.as_str(), jid.as_str()), ("closed", "bob@localhost"));
    let carol_sub = "<subscribe node='closed' jid='carol@localhost'/>";
    let pending = ask(&mut carol, "s2", "set", PUBSUB, carol_sub).await;
    assert_eq!(subscription_state(&pending), "pending");
    let (_, _, carol_request) = approval_request(&mut alice).await;

    // Pending requests outlive a restart.
    server.restart().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;
    // §5.6 and §8.8.1: both lists say pending.
    let own = ask(
        &mut bob,
        "l1",
        "get",
        PUBSUB,
        "<subscriptions node='closed'/>",
    )
    .await;
    assert_eq!(
        subscriptions(&own, PUBSUB),
        [("bob@localhost".into(), "pending".into())]
    );
    let all = ask(
        &mut alice,
        "l2",
        "get",
        OWNER,
        "<subscriptions node='closed'/>",
    )
    .await;
    assert_eq!(
        subscriptions(&all, OWNER),
        [
            ("bob@localhost".into(), "pending".into()),
            ("carol@localhost".into(), "pending".into())
        ]
    );
    // A pending subscriber reads no items (§6.5.9.3) and hears no publishes; asking again
    // is an error, not a second request to the owner (§6.1.3.7).
    let items = ask(&mut bob, "g1", "get", PUBSUB, "<items node='closed'/>").await;
    assert_eq!(
        error_of(&items),
        ("not-authorized".into(), Some("not-subscribed".into()))
    );
    let again = ask(&mut bob, "s3", "set", PUBSUB, subscribe).await;
    assert_eq!(
        error_of(&again),
        ("not-authorized".into(), Some("pending-subscription".into()))
    );
    ok(&ask(&mut alice, "p2", "set", PUBSUB, &publish_to("closed", "i2")).await);
    assert_no_event(&mut bob).await;
    // Nobody but an owner decides.
    answer_request(&mut carol, "x1", "closed", "carol@localhost", true).await;
    let refused = parse(&carol.stanza_with(&["id='x1'"]).await);
    assert_eq!(refused.attr("type"), Some("error"));
    assert!(refused.to_xml().contains("forbidden"), "{refused:?}");

    // Approved: Bob is told (§8.6), gets the last item (send_last on_sub) and reads items.
    answer_request(&mut alice, "a1", "closed", "bob@localhost", true).await;
    assert_eq!(
        subscription_event(&mut bob).await,
        ("bob@localhost".into(), "subscribed".into())
    );
    let last = notification(&mut bob).await;
    assert_eq!(item_ids(last.get_child("items", EVENT).unwrap()), ["i2"]);
    let items = ok(&ask(&mut bob, "g2", "get", PUBSUB, "<items node='closed'/>").await);
    assert_eq!(
        item_ids(items.unwrap().get_child("items", PUBSUB).unwrap()),
        ["i2", "i1"]
    );
    ok(&ask(&mut alice, "p3", "set", PUBSUB, &publish_to("closed", "i3")).await);
    let event = notification(&mut bob).await;
    assert_eq!(item_ids(event.get_child("items", EVENT).unwrap()), ["i3"]);

    // Denied (with the id of the request, as §8.6 asks): Carol is told, and has nothing.
    answer_request(
        &mut alice,
        &carol_request,
        "closed",
        "carol@localhost",
        false,
    )
    .await;
    assert_eq!(
        subscription_event(&mut carol).await,
        ("carol@localhost".into(), "none".into())
    );
    let own = ask(
        &mut carol,
        "l3",
        "get",
        PUBSUB,
        "<subscriptions node='closed'/>",
    )
    .await;
    assert!(subscriptions(&own, PUBSUB).is_empty());
    // An answer to a request no longer pending changes nothing.
    answer_request(&mut alice, "a2", "closed", "carol@localhost", true).await;
    alice.sync().await;
    assert_no_event(&mut carol).await;

    // The owner may also approve through subscription management (§8.8.2).
    let pending = ask(&mut carol, "s4", "set", PUBSUB, carol_sub).await;
    assert_eq!(subscription_state(&pending), "pending");
    approval_request(&mut alice).await;
    ok(&ask(
        &mut alice,
        "m1",
        "set",
        OWNER,
        "<subscriptions node='closed'><subscription jid='carol@localhost' subscription='subscribed'/></subscriptions>",
    )
    .await);
    assert_eq!(
        subscription_event(&mut carol).await,
        ("carol@localhost".into(), "subscribed".into())
    );
}

#[tokio::test]
async fn pending_requests_are_limited_per_node_and_authorize_is_not_for_pep() {
    let server = TestServer::start_with(|c| {
        let mut section = toml::Table::new();
        section.insert("max_pending".into(), toml::Value::Integer(1));
        c.modules.insert("pubsub".into(), section);
    })
    .await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;
    let create = format!(
        "<create node='closed'/><configure>{}</configure>",
        config_form(&[("pubsub#access_model", "authorize")])
    );
    ok(&ask(&mut alice, "c1", "set", PUBSUB, &create).await);
    let first = ask(
        &mut bob,
        "s1",
        "set",
        PUBSUB,
        "<subscribe node='closed' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(subscription_state(&first), "pending");
    let second = ask(
        &mut carol,
        "s2",
        "set",
        PUBSUB,
        "<subscribe node='closed' jid='carol@localhost'/>",
    )
    .await;
    assert_eq!(error_of(&second).0, "policy-violation");
    // Withdrawing a request makes room.
    ok(&ask(
        &mut bob,
        "u1",
        "set",
        PUBSUB,
        "<unsubscribe node='closed' jid='bob@localhost'/>",
    )
    .await);
    let second = ask(
        &mut carol,
        "s3",
        "set",
        PUBSUB,
        "<subscribe node='closed' jid='carol@localhost'/>",
    )
    .await;
    assert_eq!(subscription_state(&second), "pending");
    // The node is listed to those who may ask, though its items are not theirs to see.
    let listed = parse(
        &bob.iq(
            "d1",
            &format!("<iq type='get' id='d1' to='{SERVICE}'><query xmlns='{DISCO_ITEMS}'/></iq>"),
        )
        .await,
    );
    let nodes: Vec<_> = listed
        .get_child("query", DISCO_ITEMS)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("node"))
        .collect();
    assert_eq!(nodes, ["closed"]);

    // PEP refuses the model: its owner could not answer the forms.
    let pep = format!(
        "<iq type='set' id='pep1'><pubsub xmlns='{PUBSUB}'><create node='urn:test'/>\
         <configure>{}</configure></pubsub></iq>",
        config_form(&[("pubsub#access_model", "authorize")])
    );
    let refused = parse(&alice.iq("pep1", &pep).await);
    assert_eq!(error_of(&refused).0, "not-acceptable");
}

const SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";

/// A submitted `pubsub#subscribe_options` form.
fn options_form(fields: &[(&str, &str)]) -> String {
    let mut form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>{SUBSCRIBE_OPTIONS}</value></field>"
    );
    for (var, value) in fields {
        form.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    form + "</x>"
}

/// `pubsub#deliver` in the form of an `<options/>`.
fn deliver_of(options: &Element) -> String {
    let x = options.get_child("x", "jabber:x:data").expect("a form");
    x.children()
        .find(|f| f.attr("var") == Some("pubsub#deliver"))
        .and_then(|f| f.children().next())
        .map(Element::text)
        .expect("pubsub#deliver")
}

#[tokio::test]
async fn subscription_options_turn_delivery_off_and_outlive_a_restart() {
    let mut server = TestServer::start().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let mut carol = online(&server, "carol", "c", 0).await;
    ok(&ask(&mut alice, "c1", "set", PUBSUB, "<create node='news'/>").await);
    ok(&ask(&mut alice, "p0", "set", PUBSUB, &publish("i0", "zero")).await);

    // §6.3.7: subscribe and configure at once; the result shows the options.
    let subscribe = format!(
        "<subscribe node='news' jid='bob@localhost'/><options>{}</options>",
        options_form(&[("pubsub#deliver", "0"), ("pubsub#digest", "false")])
    );
    let reply = ok(&ask(&mut bob, "s1", "set", PUBSUB, &subscribe).await).unwrap();
    let sub = reply.get_child("subscription", PUBSUB).unwrap();
    assert_eq!(sub.attr("subscription"), Some("subscribed"));
    assert!(sub.get_child("subscribe-options", PUBSUB).is_some());
    let options = reply.get_child("options", PUBSUB).expect("the options");
    assert_eq!(deliver_of(options), "0");
    // Delivery off: not the last item (§6.1.7), not new ones.
    ok(&ask(&mut alice, "p1", "set", PUBSUB, &publish("i1", "one")).await);
    assert_no_event(&mut bob).await;
    // A plain subscription says options are supported (§6.1.2).
    let plain = ok(&ask(
        &mut carol,
        "s2",
        "set",
        PUBSUB,
        "<subscribe node='news' jid='carol@localhost'/>",
    )
    .await)
    .unwrap();
    let sub = plain.get_child("subscription", PUBSUB).unwrap();
    assert!(sub.get_child("subscribe-options", PUBSUB).is_some());

    // §6.3.4 errors.
    let get = |jid: &str| format!("<options node='news' jid='{jid}'/>");
    let errors = [
        ("carol", get("bob@localhost"), ("forbidden", None)),
        (
            "bob",
            "<options node='news'/>".into(),
            ("bad-request", Some("jid-required")),
        ),
        (
            "bob",
            "<options node='news' jid='bob@localhost' subid='x'/>".into(),
            ("not-acceptable", Some("invalid-subid")),
        ),
        (
            "bob",
            "<options node='gone' jid='bob@localhost'/>".into(),
            ("item-not-found", None),
        ),
    ];
    for (i, (who, body, (condition, app))) in errors.into_iter().enumerate() {
        let raw = if who == "bob" { &mut bob } else { &mut carol };
        let reply = ask(raw, &format!("e{i}"), "get", PUBSUB, &body).await;
        assert_eq!(
            error_of(&reply),
            (condition.to_string(), app.map(str::to_string)),
            "{body}"
        );
    }
    // The owner has no subscription of its own.
    let stranger = ask(&mut alice, "e9", "get", PUBSUB, &get("alice@localhost")).await;
    assert_eq!(
        error_of(&stranger),
        ("unexpected-request".into(), Some("not-subscribed".into()))
    );
    // §6.3.6: what the service does not offer is refused, and nothing changes.
    let digest = format!(
        "<options node='news' jid='bob@localhost'>{}</options>",
        options_form(&[("pubsub#deliver", "1"), ("pubsub#digest", "1")])
    );
    let refused = ask(&mut bob, "o1", "set", PUBSUB, &digest).await;
    assert_eq!(
        error_of(&refused),
        ("bad-request".into(), Some("invalid-options".into()))
    );
    // §6.3.7: the options of a subscribe name neither node nor JID.
    let named = format!(
        "<subscribe node='news' jid='carol@localhost'/><options node='news'>{}</options>",
        options_form(&[])
    );
    let named = ask(&mut carol, "s3", "set", PUBSUB, &named).await;
    assert_eq!(error_of(&named).0, "bad-request");

    // Kept across a restart.
    server.restart().await;
    let mut alice = online(&server, "alice", "a", 0).await;
    let mut bob = online(&server, "bob", "b", 0).await;
    let form = ok(&ask(&mut bob, "o2", "get", PUBSUB, &get("bob@localhost")).await).unwrap();
    let options = form.get_child("options", PUBSUB).unwrap();
    assert_eq!(options.attr("jid"), Some("bob@localhost"));
    assert_eq!(deliver_of(options), "0");
    ok(&ask(&mut alice, "p2", "set", PUBSUB, &publish("i2", "two")).await);
    assert_no_event(&mut bob).await;

    // §6.3.5: delivery on again.
    let on = format!(
        "<options node='news' jid='bob@localhost'>{}</options>",
        options_form(&[("pubsub#deliver", "true")])
    );
    ok(&ask(&mut bob, "o3", "set", PUBSUB, &on).await);
    ok(&ask(&mut alice, "p3", "set", PUBSUB, &publish("i3", "three")).await);
    let event = notification(&mut bob).await;
    assert_eq!(item_ids(event.get_child("items", EVENT).unwrap()), ["i3"]);
}
