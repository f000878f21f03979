//! XEP-0352 Client State Indication end to end: an inactive session gets no presence and no
//! chat states until it says active, then the latest of each; messages with a body arrive
//! at once.

mod common;

use common::{friends, parse};

const CSI: &str = "urn:xmpp:csi:0";

fn status(presence: &xmppd_xml::Element) -> String {
    presence
        .get_child("status", "jabber:client")
        .map(|s| s.text())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_inactive_session_gets_presence_only_when_active_again() {
    let server = common::TestServer::start().await;
    let (mut alice, mut bob) = friends(&server, "home", "phone").await;
    // What the subscription handshake left unread is not part of this test.
    bob.next_stanza_if_any().await;
    bob.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    bob.sync().await;

    alice
        .send("<presence><status>one</status></presence>")
        .await;
    alice
        .send("<presence><status>two</status></presence>")
        .await;
    alice
        .send("<message to='bob@localhost' id='c1' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    alice
        .send("<message to='bob@localhost' id='m1' type='chat'><body>wake up</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost' id='c2' type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    alice.sync().await;
    // The message with a body comes at once, before anything held: its presence and chat
    // states were sent earlier, so had they not been held they would have come first.
    let first = parse(&bob.next_stanza().await);
    assert_eq!(first.name(), "message");
    assert_eq!(first.attr("id"), Some("m1"));
    // Pings still work while inactive; nothing else is waiting in the stream.
    bob.sync().await;
    assert_eq!(bob.next_stanza_if_any().await, "");

    bob.send(&format!("<active xmlns='{CSI}'/>")).await;
    // Only the latest presence of Alice's session, then her latest chat state.
    let presence = parse(&bob.next_stanza().await);
    assert_eq!(presence.name(), "presence");
    assert_eq!(presence.attr("from"), Some("alice@localhost/home"));
    assert_eq!(status(&presence), "two");
    let state = parse(&bob.next_stanza().await);
    assert_eq!(state.attr("id"), Some("c2"), "{state:?}");
    bob.sync().await;
    assert_eq!(bob.next_stanza_if_any().await, "");

    // Active again: presence flows at once.
    alice
        .send("<presence><status>three</status></presence>")
        .await;
    let presence = parse(&bob.stanza_with(&["<presence"]).await);
    assert_eq!(status(&presence), "three");
    server.stop().await;
}
