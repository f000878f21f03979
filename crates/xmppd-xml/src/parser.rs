//! Push parser for one XMPP stream: the header, then one top-level element at a time.

use rxml::{Event, Parse, WithOptions};

use crate::element::Element;

/// Hard limits a peer cannot exceed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum serialised size of one top-level element, in bytes.
    pub max_stanza_size: usize,
    /// Maximum nesting depth below the stream root (a stanza is depth 1).
    pub max_depth: usize,
    /// Maximum number of attributes on one element.
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
        }
    }
}

/// The opening `<stream:stream>` tag.
#[derive(Clone, Debug, Default)]
pub struct StreamHeader {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    /// The default namespace the header declares (`xmlns='…'`), which is the namespace of
    /// the stream's content (RFC 6120 §4.8.2); none if it declares none.
    pub default_ns: Option<String>,
}

impl StreamHeader {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the parser found in the bytes fed so far.
#[derive(Debug)]
pub enum StreamEvent {
    Header(StreamHeader),
    Stanza(Element),
    /// The peer closed its stream (`</stream:stream>`).
    Close,
}

/// Why a stream cannot go on; each maps to one RFC 6120 §4.9.3 condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not well-formed XML (`not-well-formed`).
    NotWellFormed(String),
    /// A construct RFC 6120 §11 forbids: DTD, comment, PI, entity (`restricted-xml`).
    Restricted(String),
    /// A stanza larger than the limit (`policy-violation`).
    TooLarge,
    /// A name or attribute value longer than [`MAX_TOKEN`] (`policy-violation`).
    TooLong,
    /// Elements nested deeper than the limit (`policy-violation`).
    TooDeep,
    /// More attributes than the limit (`policy-violation`).
    TooManyAttributes,
    /// Character data directly inside the stream root (`bad-format`).
    TextAtStreamLevel,
    /// An XML declaration naming an encoding other than UTF-8 (`unsupported-encoding`).
    UnsupportedEncoding,
}

/// Longest name or attribute value accepted, in bytes (a JID is at most 3071, RFC 7622 §3.1).
///
/// rxml reserves a scratch buffer of this size for the life of the parser, one per connection,
/// so it must stay small. Longer text is not refused: rxml hands it over in pieces, which
/// [`Element::push_text`] joins (the stanza size limit still applies).
pub const MAX_TOKEN: usize = 4096;

/// Incremental parser; feed it whatever the socket gave.
pub struct StreamParser {
    parser: rxml::Parser,
    limits: Limits,
    /// Elements open below the root; the first one is the stanza being built.
    stack: Vec<Element>,
    root_open: bool,
    stanza_bytes: usize,
    failed: Option<ParseError>,
    /// Nothing but whitespace was fed yet.
    at_start: bool,
    /// The bytes fed until the root element opened: rxml resolves namespace declarations
    /// without reporting them, so the header's default namespace is read from these.
    header_bytes: Vec<u8>,
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        let options = rxml::Options {
            max_token_length: MAX_TOKEN,
            ..Default::default()
        };
        StreamParser {
            parser: rxml::Parser::with_options(options),
            limits,
            stack: Vec::new(),
            root_open: false,
            stanza_bytes: 0,
            failed: None,
            at_start: true,
            header_bytes: Vec::new(),
        }
    }

    /// Frees scratch memory while the stream is idle (the next event allocates it again).
    pub fn release_temporaries(&mut self) {
        rxml::Parse::release_temporaries(&mut self.parser);
        if self.stack.is_empty() {
            self.stack = Vec::new();
        }
    }

    /// Parses from `buf`, advancing it. Returns `Ok(None)` once `buf` is used up without a
    /// complete event; call again with more data.
    pub fn feed(&mut self, buf: &mut &[u8]) -> Result<Option<StreamEvent>, ParseError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.at_start {
            // Whitespace before the XML declaration of a restarted stream is what clients
            // send after `</auth>` or `<proceed/>` (go-sendxmpp does): RFC 6120 §11.5 lets
            // whitespace sit between top-level elements, and it carries nothing, so it is
            // skipped rather than handed to the XML parser, which would refuse it.
            let skip = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            *buf = &buf[skip..];
            if buf.is_empty() {
                return Ok(None);
            }
            self.at_start = false;
        }
        loop {
            let before = *buf;
            let parsed = self.parser.parse(buf, false);
            if !self.root_open && self.header_bytes.len() < MAX_HEADER_BYTES {
                let consumed = &before[..before.len() - buf.len()];
                self.header_bytes.extend_from_slice(consumed);
            }
            let event = match parsed {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(rxml::error::EndOrError::NeedMoreData) => return Ok(None),
                Err(rxml::error::EndOrError::Error(e)) => return Err(self.fail(map_error(e))),
            };
            match self.handle(event) {
                Ok(Some(out)) => return Ok(Some(out)),
                Ok(None) => continue,
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, e: ParseError) -> ParseError {
        self.failed = Some(e.clone());
        self.stack = Vec::new();
        e
    }

    fn handle(&mut self, event: Event) -> Result<Option<StreamEvent>, ParseError> {
        if !self.stack.is_empty() {
            self.stanza_bytes += event.metrics().len();
            if self.stanza_bytes > self.limits.max_stanza_size {
                return Err(ParseError::TooLarge);
            }
        }
        match event {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(metrics, (ns, name), attrs) => {
                if attrs.len() > self.limits.max_attributes {
                    return Err(ParseError::TooManyAttributes);
                }
                let attrs: Vec<(String, String)> = attrs
                    .into_iter()
                    .map(|((ans, aname), value)| (attr_key(&ans, &aname), value))
                    .collect();
                if !self.root_open {
                    self.root_open = true;
                    let default_ns = default_namespace(&self.header_bytes);
                    self.header_bytes = Vec::new();
                    return Ok(Some(StreamEvent::Header(StreamHeader {
                        name: name.to_string(),
                        ns: ns.to_string(),
                        attrs,
                        default_ns,
                    })));
                }
                if self.stack.len() >= self.limits.max_depth {
                    return Err(ParseError::TooDeep);
                }
                if self.stack.is_empty() {
                    self.stanza_bytes = metrics.len();
                    if self.stanza_bytes > self.limits.max_stanza_size {
                        return Err(ParseError::TooLarge);
                    }
                }
                let mut el = Element::new(name.as_str(), ns.as_str());
                for (k, v) in attrs {
                    el.set_attr(k, v);
                }
                self.stack.push(el);
                Ok(None)
            }
            Event::Text(_, text) => match self.stack.last_mut() {
                Some(top) => {
                    top.push_text(text);
                    Ok(None)
                }
                None if text.bytes().all(|b| b.is_ascii_whitespace()) => Ok(None),
                None => Err(ParseError::TextAtStreamLevel),
            },
            Event::EndElement(_) => match self.stack.pop() {
                None => Ok(Some(StreamEvent::Close)),
                Some(done) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.push_child(done);
                        Ok(None)
                    }
                    None => {
                        self.stanza_bytes = 0;
                        Ok(Some(StreamEvent::Stanza(done)))
                    }
                },
            },
        }
    }
}

fn attr_key(ns: &rxml::Namespace, name: &rxml::NcName) -> String {
    if ns.is_none() {
        name.to_string()
    } else if *ns == rxml::Namespace::XML {
        format!("xml:{name}")
    } else {
        format!("{{{ns}}}{name}")
    }
}

/// Most header bytes kept to find its default namespace.
const MAX_HEADER_BYTES: usize = 8192;

/// The `xmlns='…'` of the first start tag in `bytes` (after the XML declaration).
fn default_namespace(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let start = text
        .match_indices('<')
        .map(|(i, _)| i)
        .find(|&i| !matches!(text.as_bytes().get(i + 1), Some(b'?' | b'!')))?;
    // The tag ends at the first '>' outside quotes.
    let mut quote = None;
    let mut end = text.len();
    for (i, c) in text[start..].char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => {
                end = start + i;
                break;
            }
            _ => {}
        }
    }
    let tag = &text[start..end];
    let mut rest = tag;
    while let Some(at) = rest.find("xmlns") {
        let after = &rest[at + 5..];
        let preceded_by_space = rest[..at].ends_with(|c: char| c.is_ascii_whitespace());
        let value = after.trim_start().strip_prefix('=').map(str::trim_start);
        if let (true, Some(value)) = (preceded_by_space, value) {
            let q = value.chars().next()?;
            if q == '\'' || q == '"' {
                let inner = &value[1..];
                return inner.find(q).map(|close| inner[..close].to_string());
            }
        }
        rest = after;
    }
    None
}

fn map_error(e: rxml::Error) -> ParseError {
    match e {
        rxml::Error::RestrictedXml(what) if what.contains("long") => ParseError::TooLong,
        // RFC 6120 §11.6: UTF-8 only; another declared encoding has its own condition.
        rxml::Error::RestrictedXml(what) if what.contains("encoding") => {
            ParseError::UnsupportedEncoding
        }
        rxml::Error::RestrictedXml(what) => ParseError::Restricted(what.to_string()),
        // RFC 6120 §11.1: no entity references beyond the five predefined ones.
        rxml::Error::UndeclaredEntity => ParseError::Restricted("entity reference".into()),
        // rxml reports any `<!` that opens neither a comment nor CDATA as a syntax error; such a
        // markup declaration (DOCTYPE, ENTITY, ELEMENT, ATTLIST) is a DTD, which §11.1 forbids.
        // The unit test below pins this wording of rxml's.
        rxml::Error::InvalidSyntax(what) if what.contains("cdata or comment section start") => {
            ParseError::Restricted("DTD".into())
        }
        other => ParseError::NotWellFormed(other.to_string()),
    }
}

/// Parses one serialised element (as the server stored it) in the context of a stream whose
/// default namespace is `default_ns`.
pub fn parse_fragment(text: &str, default_ns: &str) -> Option<Element> {
    let mut parser = StreamParser::new(Limits {
        max_stanza_size: text.len() + 1024,
        max_depth: 64,
        max_attributes: 256,
    });
    let wrapped = format!(
        "<stream:stream xmlns='{}' xmlns:stream='http://etherx.jabber.org/streams'>{text}<x/>",
        crate::escape::attr_string(default_ns)
    );
    let mut buf = wrapped.as_bytes();
    let mut found = None;
    while let Ok(Some(event)) = parser.feed(&mut buf) {
        if let StreamEvent::Stanza(el) = event {
            if found.is_none() {
                found = Some(el);
            } else {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

    fn parse_all(input: &[u8], limits: Limits) -> Vec<Result<StreamEvent, ParseError>> {
        let mut parser = StreamParser::new(limits);
        let mut out = Vec::new();
        let mut buf = input;
        loop {
            match parser.feed(&mut buf) {
                Ok(Some(ev)) => out.push(Ok(ev)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn header_stanzas_and_close() {
        let doc = format!(
            "{HEADER} <message to='a@b'><body>hi &amp; bye</body></message>\n<presence/></stream:stream>"
        );
        let events = parse_all(doc.as_bytes(), Limits::default());
        assert_eq!(events.len(), 4);
        match &events[0] {
            Ok(StreamEvent::Header(h)) => {
                assert_eq!(h.name, "stream");
                assert_eq!(h.ns, "http://etherx.jabber.org/streams");
                assert_eq!(h.attr("to"), Some("localhost"));
                assert_eq!(h.attr("xml:lang"), Some("en"));
            }
            other => panic!("{other:?}"),
        }
        match &events[1] {
            Ok(StreamEvent::Stanza(m)) => {
                assert!(m.is("message", "jabber:client"));
                assert_eq!(
                    m.get_child("body", "jabber:client").unwrap().text(),
                    "hi & bye"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(events[3], Ok(StreamEvent::Close)));
    }

    #[test]
    fn the_header_reports_its_default_namespace() {
        let header = |xml: &str| {
            let mut parser = StreamParser::new(Limits::default());
            let mut buf = xml.as_bytes();
            match parser.feed(&mut buf) {
                Ok(Some(StreamEvent::Header(h))) => h.default_ns,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(header(HEADER).as_deref(), Some("jabber:client"));
        let server = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
            xmlns=\"jabber:server\" to='x'><message/>";
        assert_eq!(header(server).as_deref(), Some("jabber:server"));
        let none = "<?xml version='1.0'?><stream:stream \
            xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><m xmlns='a'/>";
        assert_eq!(header(none), None, "a child's declaration does not count");
        // Split anywhere, the answer is the same.
        for cut in 1..HEADER.len() {
            let mut parser = StreamParser::new(Limits::default());
            let (a, b) = HEADER.as_bytes().split_at(cut);
            let mut first = a;
            assert!(parser.feed(&mut first).unwrap().is_none());
            let mut second = b;
            match parser.feed(&mut second) {
                Ok(Some(StreamEvent::Header(h))) => {
                    assert_eq!(h.default_ns.as_deref(), Some("jabber:client"), "cut {cut}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn whitespace_before_the_declaration_is_skipped() {
        for lead in ["\n", " \r\n\t ", ""] {
            let doc = format!("{lead}{HEADER}<presence/>");
            // Whitespace alone, then the rest: as a client that sends "\n" after </auth>.
            let mut parser = StreamParser::new(Limits::default());
            let mut first = lead.as_bytes();
            assert!(parser.feed(&mut first).unwrap().is_none());
            let events = parse_all(doc.as_bytes(), Limits::default());
            assert!(matches!(events[0], Ok(StreamEvent::Header(_))), "{lead:?}");
            assert!(matches!(events[1], Ok(StreamEvent::Stanza(_))), "{lead:?}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_result() {
        let doc = format!("{HEADER}<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>");
        let mut parser = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        for b in doc.as_bytes() {
            let mut one = std::slice::from_ref(b);
            while let Some(ev) = parser.feed(&mut one).unwrap() {
                events.push(ev);
            }
        }
        assert_eq!(events.len(), 2);
        match &events[1] {
            StreamEvent::Stanza(iq) => assert!(iq.has_child("ping", "urn:xmpp:ping")),
            other => panic!("{other:?}"),
        }
    }

    fn last_error(doc: &str, limits: Limits) -> ParseError {
        match parse_all(doc.as_bytes(), limits).pop() {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn restricted_constructs_are_rejected() {
        for bad in [
            "<!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            &format!("{HEADER}<!-- hi -->"),
            &format!("{HEADER}<?pi data?>"),
            &format!("{HEADER}<message>&foo;</message>"),
        ] {
            assert!(
                matches!(last_error(bad, Limits::default()), ParseError::Restricted(_)),
                "{bad}: {:?}",
                last_error(bad, Limits::default())
            );
        }
    }

    #[test]
    fn malformed_xml_is_not_well_formed() {
        for bad in [
            format!("{HEADER}<message></presence>"),
            format!("{HEADER}<message a='1' a='2'/>"),
            format!("{HEADER}<x:message/>"),
            format!("{HEADER}<message>\u{1}</message>"),
        ] {
            assert!(
                matches!(
                    last_error(&bad, Limits::default()),
                    ParseError::NotWellFormed(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_stanza_size: 2000,
            max_depth: 4,
            max_attributes: 3,
        };
        let big = format!(
            "{HEADER}<message><body>{}</body></message>",
            "a".repeat(5000)
        );
        assert_eq!(last_error(&big, limits), ParseError::TooLarge);
        let deep = format!("{HEADER}<a><b><c><d><e/></d></c></b></a>");
        assert_eq!(last_error(&deep, limits), ParseError::TooDeep);
        let attrs = format!("{HEADER}<a b='1' c='2' d='3' e='4'/>");
        assert_eq!(last_error(&attrs, limits), ParseError::TooManyAttributes);
        let text = format!("{HEADER}hello<a/>");
        assert_eq!(last_error(&text, limits), ParseError::TextAtStreamLevel);
        let long_attr = format!("{HEADER}<message id='{}'/>", "i".repeat(MAX_TOKEN + 1));
        assert_eq!(
            last_error(&long_attr, Limits::default()),
            ParseError::TooLong
        );
    }

    /// Releasing scratch memory between reads, even in the middle of a name, an attribute
    /// value or text, loses nothing.
    #[test]
    fn releasing_temporaries_mid_stanza_loses_nothing() {
        let doc = format!(
            "{HEADER}<message to='someone@example.org' id='abc'><body>hello world</body></message>"
        );
        for cut in 1..doc.len() {
            let mut parser = StreamParser::new(Limits::default());
            let mut stanzas = Vec::new();
            for part in [&doc.as_bytes()[..cut], &doc.as_bytes()[cut..]] {
                let mut part = part;
                while let Some(event) = parser.feed(&mut part).unwrap() {
                    if let StreamEvent::Stanza(el) = event {
                        stanzas.push(el);
                    }
                }
                parser.release_temporaries();
            }
            let [message] = &stanzas[..] else {
                panic!("cut at {cut}: {stanzas:?}");
            };
            assert_eq!(
                message.attr("to"),
                Some("someone@example.org"),
                "cut at {cut}"
            );
            let body = message.get_child("body", "jabber:client").unwrap().text();
            assert_eq!(body, "hello world", "cut at {cut}");
        }
    }

    /// Text longer than the token limit arrives whole, in one text node, even when it comes in
    /// small reads.
    #[test]
    fn long_text_is_joined() {
        let body = "0123456789abcdef".repeat(MAX_TOKEN / 4);
        let doc = format!("{HEADER}<message><body>{body}</body></message>");
        let mut parser = StreamParser::new(Limits::default());
        let mut stanzas = Vec::new();
        for chunk in doc.as_bytes().chunks(700) {
            let mut chunk = chunk;
            while let Some(event) = parser.feed(&mut chunk).unwrap() {
                if let StreamEvent::Stanza(el) = event {
                    stanzas.push(el);
                }
            }
        }
        let [message] = &stanzas[..] else {
            panic!("one stanza expected, got {stanzas:?}");
        };
        let text = message.get_child("body", "jabber:client").unwrap();
        assert_eq!(text.nodes().len(), 1);
        assert_eq!(text.text(), body);
    }

    /// A deterministic stand-in for fuzzing: mutated and random input, fed in random chunk
    /// sizes, must only ever produce events or typed errors, never a panic or a hang.
    #[test]
    fn hostile_input_never_panics() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = format!(
            "{HEADER}<message to='a@b' xml:lang='en'><body>x &amp; y</body><x xmlns='urn:a' \
             xmlns:p='urn:p' p:k='v'><y/></x></message><iq type='get' id='1'><q xmlns='urn:q'/></iq>"
        );
        for round in 0..400 {
            let mut input = valid.clone().into_bytes();
            if round % 4 == 0 {
                input = (0..(next() % 600)).map(|_| next() as u8).collect();
            } else {
                for _ in 0..(1 + next() % 8) {
                    let at = (next() as usize) % input.len();
                    match next() % 3 {
                        0 => input[at] = next() as u8,
                        1 => {
                            input.remove(at);
                        }
                        _ => input.insert(at, b"<>&'\"/:=!?-["[(next() % 12) as usize]),
                    }
                }
            }
            let mut parser = StreamParser::new(Limits {
                max_stanza_size: 1 << 12,
                max_depth: 8,
                max_attributes: 8,
            });
            let mut rest: &[u8] = &input;
            'feed: while !rest.is_empty() {
                let n = 1 + (next() as usize) % 64;
                let (chunk, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                let mut chunk = chunk;
                loop {
                    match parser.feed(&mut chunk) {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    #[test]
    fn fragments_round_trip() {
        let el = Element::new("vCard", "vcard-temp")
            .with_child(Element::new("FN", "vcard-temp").with_text("A & B"));
        let text = el.to_xml_in("jabber:client");
        assert_eq!(parse_fragment(&text, "jabber:client"), Some(el));
        assert_eq!(parse_fragment("<unclosed>", "jabber:client"), None);
        assert_eq!(parse_fragment("<!-- x -->", "jabber:client"), None);
    }

    #[test]
    fn many_small_stanzas_within_limit() {
        let limits = Limits {
            max_stanza_size: 200,
            ..Limits::default()
        };
        let mut doc = HEADER.to_string();
        for i in 0..100 {
            doc.push_str(&format!("<message id='{i}'><body>x</body></message>"));
        }
        let events = parse_all(doc.as_bytes(), limits);
        assert_eq!(events.len(), 101);
        assert!(events.iter().all(|e| e.is_ok()));
    }
}
