//! The stream parser fed the input in pieces whose sizes the input chooses: it must never
//! panic, and every stanza it yields must serialise to XML that parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmppd_xml::{parse_fragment, Limits, StreamEvent, StreamParser};

fuzz_target!(|data: &[u8]| {
    let Some((&splits, rest)) = data.split_first() else {
        return;
    };
    let mut parser = StreamParser::new(Limits {
        max_stanza_size: 16 * 1024,
        max_depth: 16,
        max_attributes: 16,
    });
    // Piece sizes cycle through 1..=16 as chosen by the first byte.
    let mut size = (splits % 16) as usize + 1;
    let mut input = rest;
    while !input.is_empty() {
        let take = size.min(input.len());
        let mut piece = &input[..take];
        input = &input[take..];
        loop {
            match parser.feed(&mut piece) {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    let xml = el.to_xml_in("jabber:client");
                    let again = parse_fragment(&xml, "jabber:client")
                        .unwrap_or_else(|| panic!("our own output does not parse: {xml}"));
                    assert_eq!(again.name(), el.name());
                    assert_eq!(again.ns(), el.ns());
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Releasing scratch memory between pieces must lose nothing.
        parser.release_temporaries();
        size = size % 16 + 1;
    }
});
