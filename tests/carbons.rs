//! XEP-0280 Message Carbons end to end: copies of sent and received chat messages reach the
//! account's other resources that enabled carbons, and only those; `<private/>` and
//! `<no-copy/>` opt out.

mod common;

use common::{parse, Raw, TestServer};
use xmppd_xml::Element;

const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

async fn enable(raw: &mut Raw) {
    let reply = parse(
        &raw.iq(
            "c1",
            "<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        )
        .await,
    );
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

/// The message forwarded inside a carbon copy, checking the wrapper on the way.
fn forwarded(copy: &Element, direction: &str, to: &str) -> Element {
    assert_eq!(copy.attr("from"), Some("alice@localhost"), "{copy:?}");
    assert_eq!(copy.attr("to"), Some(to));
    assert_eq!(copy.attr("type"), Some("chat"));
    copy.get_child(direction, CARBONS)
        .and_then(|d| d.get_child("forwarded", FORWARD))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .unwrap_or_else(|| panic!("no {direction} carbon: {copy:?}"))
        .clone()
}

#[tokio::test]
async fn sent_and_received_messages_are_copied_to_enabled_resources() {
    let server = TestServer::start().await;
    let mut phone = Raw::login_quiet(server.c2s, "alice", "phone").await;
    let mut laptop = Raw::login_quiet(server.c2s, "alice", "laptop").await;
    let mut old = Raw::login_quiet(server.c2s, "alice", "old").await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    enable(&mut phone).await;
    enable(&mut laptop).await;
    // Enabling twice is not an error (§4).
    enable(&mut laptop).await;

    // Received: Bob writes to the phone; the laptop gets a copy, the old client none.
    bob.send("<message to='alice@localhost/phone' id='in1' type='chat'><body>hi</body></message>")
        .await;
    let original = parse(&phone.stanza_with(&["id='in1'"]).await);
    assert!(original.get_child("received", CARBONS).is_none());
    let copy = parse(&laptop.next_stanza().await);
    let inner = forwarded(&copy, "received", "alice@localhost/laptop");
    assert_eq!(inner.attr("id"), Some("in1"));
    assert_eq!(inner.attr("from"), Some("bob@localhost/home"));
    assert_eq!(
        inner.get_child("body", "jabber:client").unwrap().text(),
        "hi"
    );

    // Sent: the phone writes to Bob; the laptop gets a copy, the phone itself none.
    phone
        .send("<message to='bob@localhost/home' id='out1' type='chat'><body>hey</body></message>")
        .await;
    assert_eq!(parse(&bob.next_stanza().await).attr("id"), Some("out1"));
    let copy = parse(&laptop.next_stanza().await);
    let inner = forwarded(&copy, "sent", "alice@localhost/laptop");
    assert_eq!(inner.attr("id"), Some("out1"));
    assert_eq!(inner.attr("to"), Some("bob@localhost/home"));

    // Opting out: neither <private/> nor <no-copy/> messages are copied.
    bob.send("<message to='alice@localhost/phone' id='p1' type='chat'><body>psst</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    phone.stanza_with(&["id='p1'"]).await;
    phone
        .send("<message to='bob@localhost/home' id='p2' type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>")
        .await;
    bob.stanza_with(&["id='p2'"]).await;
    // A marker sent straight to the laptop: anything copied above would arrive before it.
    bob.send("<message to='alice@localhost/laptop' id='mark' type='chat'><body>m</body></message>")
        .await;
    let next = parse(&laptop.next_stanza().await);
    assert_eq!(next.attr("id"), Some("mark"), "{next:?}");
    // The old client never enabled carbons: the first thing it receives is its own marker.
    bob.send("<message to='alice@localhost/old' id='mark2' type='chat'><body>m</body></message>")
        .await;
    assert_eq!(parse(&old.next_stanza().await).attr("id"), Some("mark2"));

    // Disabled again: no more copies.
    let reply = parse(
        &laptop
            .iq(
                "c2",
                "<iq type='set' id='c2'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
            )
            .await,
    );
    assert_eq!(reply.attr("type"), Some("result"));
    phone
        .send("<message to='bob@localhost/home' id='out2' type='chat'><body>2</body></message>")
        .await;
    bob.stanza_with(&["id='out2'"]).await;
    bob.send(
        "<message to='alice@localhost/laptop' id='mark3' type='chat'><body>m</body></message>",
    )
    .await;
    assert_eq!(parse(&laptop.next_stanza().await).attr("id"), Some("mark3"));
    server.stop().await;
}

#[tokio::test]
async fn a_message_to_the_bare_jid_is_copied_to_the_resources_that_did_not_get_it() {
    let server = TestServer::start().await;
    let mut phone = common::online(&server, "alice", "phone", 5).await;
    let mut laptop = common::online(&server, "alice", "laptop", 1).await;
    enable(&mut laptop).await;
    phone.sync().await;
    let mut bob = Raw::login_quiet(server.c2s, "bob", "home").await;
    bob.send("<message to='alice@localhost' id='b1' type='chat'><body>bare</body></message>")
        .await;
    // The highest priority resource gets the message itself…
    phone.stanza_with(&["id='b1'"]).await;
    // …and the lower one, with carbons on, a received copy.
    let copy = parse(&laptop.stanza_with(&["<received"]).await);
    let inner = forwarded(&copy, "received", "alice@localhost/laptop");
    assert_eq!(inner.attr("id"), Some("b1"));
    server.stop().await;
}

#[tokio::test]
async fn carbons_are_advertised_and_refused_for_someone_else() {
    let server = TestServer::start().await;
    let mut alice = Raw::login_quiet(server.c2s, "alice", "home").await;
    let info = parse(
        &alice
            .iq("d", "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            .await,
    );
    let query = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(query
        .children()
        .any(|f| f.name() == "feature" && f.attr("var") == Some(CARBONS)));
    // Enabling carbons for another account is not allowed.
    let reply = parse(
        &alice
            .iq("e", "<iq type='set' id='e' to='bob@localhost'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await,
    );
    assert_eq!(reply.attr("type"), Some("error"));
    server.stop().await;
}
