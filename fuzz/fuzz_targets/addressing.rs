//! JIDs and stanza addressing: any `to`/`from`/`type` strings, any payload; parsing a
//! stanza and building its error reply must never panic, and replies must be well-formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmppd_core::{Jid, Stanza, StanzaErrorCondition};
use xmppd_xml::{parse_fragment, Element};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // What reaches stanzas went through the XML parser: only characters XML allows
    // (XML 1.0 §2.2). NUL separates the fields below.
    let allowed = |c: char| {
        matches!(c, '\0' | '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if !text.chars().all(allowed) {
        return;
    }
    let mut fields = text.splitn(4, '\u{0}');
    let (to, from, kind) = (fields.next(), fields.next(), fields.next());
    for s in [to, from].into_iter().flatten() {
        if let Ok(jid) = Jid::new(s) {
            let bare = jid.to_bare();
            assert_eq!(Jid::new(jid.as_str()).ok().as_ref(), Some(&jid));
            assert!(jid.as_str().starts_with(bare.as_str()));
        }
    }
    for name in ["message", "presence", "iq"] {
        let mut el = Element::new(name, "jabber:client");
        if let Some(to) = to {
            el.set_attr("to", to);
        }
        if let Some(from) = from {
            el.set_attr("from", from);
        }
        if let Some(kind) = kind {
            el.set_attr("type", kind);
        }
        el.set_attr("id", "x");
        if let Some(payload) = fields.clone().next() {
            el.push_text(payload);
        }
        let el = match Stanza::parse(el) {
            Ok(stanza) => {
                let _ = stanza.is_iq_request();
                let _ = stanza.iq_payload();
                stanza.into_element()
            }
            Err(failed) => failed.0,
        };
        if let Some(reply) =
            xmppd_core::stanza::error_reply(&el, &StanzaErrorCondition::BadRequest.into())
        {
            let xml = reply.to_xml_in("jabber:client");
            assert!(parse_fragment(&xml, "jabber:client").is_some(), "{xml}");
        }
    }
});
