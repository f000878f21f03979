//! Cutting XML into top-level units for the web framings: a WebSocket message carries one
//! element (RFC 7395 §3.3.3), a BOSH body carries whole elements (XEP-0124 §4).
//!
//! The stream driver writes one continuous XML stream (header, features, stanzas, closing
//! tag), exactly as on TCP; [`Splitter`] cuts that output back into units and gives each the
//! namespace declarations it needs standing alone. It is a tag scanner, not a parser: it only
//! reads what our own serialiser wrote (quoted attributes, escaped `<` and `>`, no comments or
//! DTDs), so a full parse of every outgoing stanza a second time would buy nothing.
//! [`one_element`] checks a client's WebSocket message the same way before the real parser
//! sees it.

use xmppd_core::ns;

/// One unit of our output.
#[derive(Debug, PartialEq, Eq)]
pub enum Unit {
    /// Our stream header's attributes (`id`, `from`, `version`, `xml:lang`), values still
    /// escaped, namespace declarations left out.
    Open(Vec<(String, String)>),
    /// A top-level element, standing alone: `xmlns='jabber:client'` added where the stream's
    /// default namespace applied, `xmlns:stream` where the `stream:` prefix is used.
    Element(Vec<u8>),
    /// Our closing `</stream:stream>`.
    Close,
}

/// What a scanned piece of markup is.
#[derive(Debug, PartialEq, Eq)]
enum Markup {
    Start {
        self_closing: bool,
    },
    End,
    /// `<?…?>`, `<!--…-->`, `<![CDATA[…]]>`, `<!…>`: none changes the depth.
    Other,
}

/// Scans the markup starting with the `<` at `buf[at]`; `None` if it is not complete yet,
/// else its kind and the index just past its end. Quoted attribute values may hold `>`.
fn scan(buf: &[u8], at: usize) -> Option<(Markup, usize)> {
    let rest = &buf[at..];
    let find = |pat: &[u8], from: usize| {
        rest[from..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| at + from + p + pat.len())
    };
    if rest.len() < 2 {
        return None;
    }
    if rest.starts_with(b"<?") {
        return find(b"?>", 2).map(|end| (Markup::Other, end));
    }
    if rest.starts_with(b"<!--") {
        return find(b"-->", 4).map(|end| (Markup::Other, end));
    }
    if rest.starts_with(b"<![CDATA[") {
        return find(b"]]>", 9).map(|end| (Markup::Other, end));
    }
    if rest.starts_with(b"<!") {
        return find(b">", 2).map(|end| (Markup::Other, end));
    }
    let mut quote = None;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'>') => {
                let kind = if rest[1] == b'/' {
                    Markup::End
                } else {
                    Markup::Start {
                        self_closing: rest[i - 1] == b'/',
                    }
                };
                return Some((kind, at + i + 1));
            }
            _ => {}
        }
    }
    None
}

/// The element name of the tag starting at `tag[0] == b'<'` (after `</` for an end tag).
fn tag_name(tag: &[u8]) -> &[u8] {
    let start = if tag.get(1) == Some(&b'/') { 2 } else { 1 };
    let len = tag[start..]
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')
        .unwrap_or(tag.len() - start);
    &tag[start..start + len]
}

/// The `name='value'` pairs of a start tag (values as written, still escaped).
fn attributes(tag: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = &tag[1 + tag_name(tag).len()..];
    loop {
        let Some(eq) = rest.iter().position(|b| *b == b'=') else {
            return out;
        };
        let name = String::from_utf8_lossy(&rest[..eq]).trim().to_string();
        let Some(&quote) = rest.get(eq + 1) else {
            return out;
        };
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].iter().position(|b| *b == quote) else {
            return out;
        };
        let value = String::from_utf8_lossy(&rest[value_start..value_start + len]).into_owned();
        out.push((name, value));
        rest = &rest[value_start + len + 1..];
    }
}

/// A stream header's attributes without its namespace declarations.
fn open_attributes(tag: &[u8]) -> Vec<(String, String)> {
    let mut attrs = attributes(tag);
    attrs.retain(|(n, _)| n != "xmlns" && !n.starts_with("xmlns:"));
    attrs
}

/// Cuts the driver's output into [`Unit`]s as it is written.
#[derive(Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Where scanning resumes.
    scanned: usize,
    /// Where the top-level element being scanned began.
    start: usize,
    /// 0 before our header, 1 between top-level elements, more inside one.
    depth: u32,
}

impl Splitter {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete unit, if one has been written.
    pub fn next_unit(&mut self) -> Option<Unit> {
        let mut i = self.scanned;
        while i < self.buf.len() {
            if self.buf[i] != b'<' {
                // Text between top-level elements is a whitespace keepalive: no unit.
                i += 1;
                if self.depth <= 1 {
                    self.start = i;
                }
                continue;
            }
            let Some((markup, end)) = scan(&self.buf, i) else {
                break;
            };
            // A restarted stream (after SASL) opens with a new header at the same level.
            let header = self.depth <= 1 && tag_name(&self.buf[i..end]) == b"stream:stream";
            let unit = match (markup, self.depth) {
                (Markup::Other, _) => None,
                (Markup::Start { .. }, 1) if header => {
                    Some(Unit::Open(open_attributes(&self.buf[i..end])))
                }
                (Markup::Start { .. }, 0) => {
                    self.depth = 1;
                    Some(Unit::Open(open_attributes(&self.buf[i..end])))
                }
                (Markup::End, 1) => {
                    self.depth = 0;
                    Some(Unit::Close)
                }
                (Markup::Start { self_closing: true }, 1) => {
                    Some(Unit::Element(standalone(&self.buf[i..end])))
                }
                (Markup::Start { self_closing: true }, _) => None,
                (Markup::Start { .. }, depth) => {
                    if depth == 1 {
                        self.start = i;
                    }
                    self.depth += 1;
                    None
                }
                (Markup::End, depth) => {
                    self.depth = depth.saturating_sub(1);
                    (self.depth == 1).then(|| Unit::Element(standalone(&self.buf[self.start..end])))
                }
            };
            i = end;
            if self.depth <= 1 {
                self.start = end;
            }
            if let Some(unit) = unit {
                self.consume(i);
                return Some(unit);
            }
        }
        self.scanned = i;
        if self.depth <= 1 && self.start == self.buf.len() {
            // Nothing pending: give the memory back (this is in every idle session).
            self.buf = Vec::new();
            self.scanned = 0;
            self.start = 0;
        }
        None
    }

    fn consume(&mut self, upto: usize) {
        self.buf.drain(..upto);
        self.scanned = 0;
        self.start = 0;
    }
}

/// A top-level element of a `jabber:client` stream as a document of its own: the stream's
/// default namespace and the `stream:` prefix declared on it where it relies on them.
fn standalone(element: &[u8]) -> Vec<u8> {
    let name = tag_name(element);
    let tag_end = 1 + name.len();
    let declaration: String = if name.starts_with(b"stream:") {
        format!(" xmlns:stream='{}'", ns::STREAM)
    } else {
        let (_, end) = scan(element, 0).unwrap_or((Markup::Other, element.len()));
        let start_tag = &element[..end];
        let declared = start_tag
            .windows(8)
            .any(|w| w == b" xmlns='" || w == b" xmlns=\"");
        if declared {
            return element.to_vec();
        }
        format!(" xmlns='{}'", ns::CLIENT)
    };
    let mut out = Vec::with_capacity(element.len() + declaration.len());
    out.extend_from_slice(&element[..tag_end]);
    out.extend_from_slice(declaration.as_bytes());
    out.extend_from_slice(&element[tag_end..]);
    out
}

/// Why a client's WebSocket message is not one element.
#[derive(Debug, PartialEq, Eq)]
pub enum NotOneElement {
    /// Two or more top-level elements (RFC 7395 §3.3.3: one per message).
    Several,
    /// Text outside the element, or nothing but text.
    Text,
    /// The element does not end within the message.
    Unfinished,
}

/// Checks that a client's message is exactly one element (with nothing but whitespace, a
/// declaration or comments around it, which the parser then judges), and returns its name.
pub fn one_element(message: &[u8]) -> Result<&[u8], NotOneElement> {
    let mut depth = 0u32;
    let mut found = None;
    let mut i = 0;
    while i < message.len() {
        if message[i] != b'<' {
            if depth == 0 && !message[i].is_ascii_whitespace() {
                return Err(NotOneElement::Text);
            }
            i += 1;
            continue;
        }
        let Some((markup, end)) = scan(message, i) else {
            return Err(NotOneElement::Unfinished);
        };
        match markup {
            Markup::Other => {}
            Markup::Start { self_closing } => {
                if depth == 0 {
                    if found.is_some() {
                        return Err(NotOneElement::Several);
                    }
                    found = Some(tag_name(&message[i..end]));
                }
                if !self_closing {
                    depth += 1;
                }
            }
            Markup::End => depth = depth.saturating_sub(1),
        }
        i = end;
    }
    match found {
        Some(name) if depth == 0 => Ok(name),
        Some(_) => Err(NotOneElement::Unfinished),
        None => Err(NotOneElement::Text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='localhost' \
        version='1.0' xml:lang='en'>";

    fn units(chunks: &[&str]) -> Vec<Unit> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk.as_bytes());
            while let Some(u) = s.next_unit() {
                out.push(u);
            }
        }
        out
    }

    fn element(xml: &str) -> Unit {
        Unit::Element(xml.as_bytes().to_vec())
    }

    #[test]
    fn cuts_a_stream_into_units() {
        let stream = format!(
            "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
             <mechanism>PLAIN</mechanism></mechanisms></stream:features> \
             <message to='a@b' title='x>y'><body>1 &gt; 0</body></message><presence/>\
             <success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<presence/></stream:stream>"
        );
        let expected = vec![
            Unit::Open(vec![
                ("id".into(), "abc".into()),
                ("from".into(), "localhost".into()),
                ("version".into(), "1.0".into()),
                ("xml:lang".into(), "en".into()),
            ]),
            element(
                "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms \
                 xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>\
                 </mechanisms></stream:features>",
            ),
            element(
                "<message xmlns='jabber:client' to='a@b' title='x>y'><body>1 &gt; 0</body></message>",
            ),
            element("<presence xmlns='jabber:client'/>"),
            element("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
            Unit::Open(vec![
                ("id".into(), "abc".into()),
                ("from".into(), "localhost".into()),
                ("version".into(), "1.0".into()),
                ("xml:lang".into(), "en".into()),
            ]),
            element("<presence xmlns='jabber:client'/>"),
            Unit::Close,
        ];
        // Whole, and split at every byte: the result must not depend on how writes fall.
        let mut open = expected.into_iter();
        let open_attrs = match open.next() {
            Some(Unit::Open(a)) => a,
            _ => unreachable!(),
        };
        let rest: Vec<Unit> = open.collect();
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            let got = units(&[a, b]);
            assert_eq!(got[0], Unit::Open(open_attrs.clone()), "split at {split}");
            assert_eq!(got[1..], rest[..], "split at {split}");
        }
    }

    #[test]
    fn checks_a_message_is_one_element() {
        assert_eq!(
            one_element(b"<message><body>hi</body></message>"),
            Ok(&b"message"[..])
        );
        assert_eq!(one_element(b" <presence/>\n"), Ok(&b"presence"[..]));
        assert_eq!(
            one_element(b"<presence/><presence/>"),
            Err(NotOneElement::Several)
        );
        assert_eq!(one_element(b"<a><b/>"), Err(NotOneElement::Unfinished));
        assert_eq!(one_element(b"<a"), Err(NotOneElement::Unfinished));
        assert_eq!(one_element(b"hello"), Err(NotOneElement::Text));
        assert_eq!(one_element(b"<a/>x"), Err(NotOneElement::Text));
        assert_eq!(
            one_element(b"<a t='<b/>'><![CDATA[<c/>]]></a>"),
            Ok(&b"a"[..])
        );
    }
}
