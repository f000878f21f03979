//! XEP-0115 as a test client does it: a caps presence, and the answer to the server's
//! disco#info query about it.

use base64::Engine;
use sha1::Digest;

use super::{parse, Raw};

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// The XEP-0115 `ver` of a client with one identity and `features` (§5.1).
pub fn ver(features: &[&str]) -> String {
    let mut sorted = features.to_vec();
    sorted.sort();
    let mut s = String::from("client/pc//xmppd-test<");
    for f in sorted {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

pub fn caps_presence(ver: &str) -> String {
    format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='https://xmppd.test' ver='{ver}'/></presence>"
    )
}

/// Answers the server's disco#info query about our caps with `features`.
pub async fn answer_caps(raw: &mut Raw, features: &[&str]) {
    let query = parse(&raw.stanza_with(&["type='get'", DISCO_INFO]).await);
    let node = query
        .get_child("query", DISCO_INFO)
        .and_then(|q| q.attr("node"))
        .expect("the query names node#ver")
        .to_string();
    assert!(node.starts_with("https://xmppd.test#"), "{node}");
    let mut answer = format!(
        "<iq type='result' id='{}' to='{}'><query xmlns='{DISCO_INFO}' node='{node}'>\
         <identity category='client' type='pc' name='xmppd-test'/>",
        query.attr("id").unwrap(),
        query.attr("from").unwrap()
    );
    for f in features {
        answer.push_str(&format!("<feature var='{f}'/>"));
    }
    answer.push_str("</query></iq>");
    raw.send(&answer).await;
}

/// Sends caps presence and answers the query the server then sends.
pub async fn advertise(raw: &mut Raw, features: &[&str]) {
    raw.send(&caps_presence(&ver(features))).await;
    answer_caps(raw, features).await;
}
