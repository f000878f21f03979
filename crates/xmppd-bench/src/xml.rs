//! A tiny XML scanner for the stream level of XMPP: it finds where the stream header and each
//! top-level stanza end, and reads attributes and child text out of a stanza's raw bytes.
//! The bench only needs to recognise the stanzas it expects, so there is no tree, no namespace
//! handling and no entity decoding: that keeps the receive path free of per-stanza allocation.

/// What the start of a buffer holds once it is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// `<stream:stream …>` (the opening tag only), possibly preceded by `<?xml …?>`.
    StreamOpen,
    /// `</stream:stream>`.
    StreamClose,
    /// A whole top-level element (`<stream:features>`, `<message>`, …).
    Stanza,
}

#[derive(Debug, PartialEq, Eq)]
pub struct MalformedXml;

/// Looks for one complete item at the start of `buf`. Returns the item and the range of its
/// bytes (leading whitespace keepalives and XML declarations are skipped), or `None` when more
/// bytes are needed.
pub fn next_item(buf: &[u8]) -> Result<Option<(Item, usize, usize)>, MalformedXml> {
    let mut pos = 0;
    loop {
        while pos < buf.len() && buf[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'<' {
            return Err(MalformedXml);
        }
        if buf[pos..].starts_with(b"<?") {
            match find(&buf[pos..], b"?>") {
                Some(end) => pos += end + 2,
                None => return Ok(None),
            }
            continue;
        }
        break;
    }
    let start = pos;
    let Some(open_end) = tag_end(buf, start)? else {
        return Ok(None);
    };
    let tag = &buf[start..open_end];
    if tag.starts_with(b"</") {
        // The only closing tag at the top level is the stream's own.
        return Ok(Some((Item::StreamClose, start, open_end)));
    }
    if local_name(tag_name(tag)) == b"stream" {
        return Ok(Some((Item::StreamOpen, start, open_end)));
    }
    if tag.ends_with(b"/>") {
        return Ok(Some((Item::Stanza, start, open_end)));
    }
    // Walk the element's tags until its depth returns to zero.
    let mut depth = 1usize;
    let mut pos = open_end;
    while depth > 0 {
        let Some(lt) = buf[pos..].iter().position(|&b| b == b'<') else {
            return Ok(None);
        };
        let at = pos + lt;
        let rest = &buf[at..];
        if rest.starts_with(b"<!--") {
            match find(rest, b"-->") {
                Some(end) => pos = at + end + 3,
                None => return Ok(None),
            }
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            match find(rest, b"]]>") {
                Some(end) => pos = at + end + 3,
                None => return Ok(None),
            }
            continue;
        }
        let Some(end) = tag_end(buf, at)? else {
            return Ok(None);
        };
        if rest.starts_with(b"</") {
            depth -= 1;
        } else if buf[end - 2] != b'/' {
            depth += 1;
        }
        pos = end;
    }
    Ok(Some((Item::Stanza, start, pos)))
}

/// The index just past the `>` closing the tag that starts at `start`, honouring quotes
/// (a `>` inside an attribute value does not end the tag).
pub fn tag_end(buf: &[u8], start: usize) -> Result<Option<usize>, MalformedXml> {
    let mut quote = 0u8;
    for (i, &b) in buf.iter().enumerate().skip(start + 1) {
        match b {
            b'<' if quote == 0 => return Err(MalformedXml),
            b'"' | b'\'' if quote == 0 => quote = b,
            _ if b == quote => quote = 0,
            b'>' if quote == 0 => return Ok(Some(i + 1)),
            _ => {}
        }
    }
    Ok(None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The qualified name of the tag at the start of `tag` (`<stream:features …>` → `stream:features`).
fn tag_name(tag: &[u8]) -> &[u8] {
    let body = tag.strip_prefix(b"</").or_else(|| tag.strip_prefix(b"<"));
    let body = body.unwrap_or(tag);
    let end = body
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
        .unwrap_or(body.len());
    &body[..end]
}

fn local_name(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(colon) => &name[colon + 1..],
        None => name,
    }
}

/// A borrowed view of one complete stanza's raw bytes.
#[derive(Clone, Copy)]
pub struct Stanza<'a> {
    raw: &'a [u8],
}

impl<'a> Stanza<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Stanza { raw }
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Local name of the top element: `message`, `presence`, `iq`, `features`, `success`…
    pub fn name(&self) -> &'a [u8] {
        local_name(tag_name(self.raw))
    }

    /// Raw (not unescaped) value of an attribute of the top element.
    pub fn attr(&self, name: &[u8]) -> Option<&'a [u8]> {
        let end = tag_end(self.raw, 0).ok().flatten()?;
        attr_in(&self.raw[..end], name)
    }

    /// Text directly inside the top element, up to its first child or end: the payload of
    /// `<challenge>` or `<success>`. Empty for `<success/>`.
    pub fn text(&self) -> Option<&'a [u8]> {
        let end = tag_end(self.raw, 0).ok().flatten()?;
        if self.raw[end - 2] == b'/' {
            return Some(&self.raw[end..end]);
        }
        let close = self.raw[end..].iter().position(|&b| b == b'<')?;
        Some(&self.raw[end..end + close])
    }

    /// Text content of the first descendant element with this local name and no prefix,
    /// e.g. `body` or `jid`. Empty for `<name/>`.
    pub fn child_text(&self, name: &[u8]) -> Option<&'a [u8]> {
        let inner = self.child_tag(name, 1)?;
        let end = tag_end(self.raw, inner).ok().flatten()?;
        if self.raw[end - 2] == b'/' {
            return Some(&self.raw[end..end]);
        }
        let close = self.raw[end..].iter().position(|&b| b == b'<')?;
        Some(&self.raw[end..end + close])
    }

    /// Whether a descendant element with this local name exists.
    pub fn has_child(&self, name: &[u8]) -> bool {
        self.child_tag(name, 1).is_some()
    }

    /// Calls `f` with the raw opening tag of every descendant element with this local name
    /// (e.g. every roster `<item …>`); read its attributes with [`attr_in`].
    pub fn for_each_child(&self, name: &[u8], mut f: impl FnMut(&'a [u8])) {
        let mut from = 1;
        while let Some(at) = self.child_tag(name, from) {
            let Some(end) = tag_end(self.raw, at).ok().flatten() else {
                return;
            };
            f(&self.raw[at..end]);
            from = end;
        }
    }

    /// Index of the `<` of the next opening tag named `name` at or after `from`.
    fn child_tag(&self, name: &[u8], from: usize) -> Option<usize> {
        let mut pos = from;
        while let Some(lt) = self.raw.get(pos..)?.iter().position(|&b| b == b'<') {
            let at = pos + lt;
            let after = &self.raw[at + 1..];
            if after.starts_with(name)
                && matches!(
                    after.get(name.len()),
                    Some(b'>' | b'/' | b' ' | b'\t' | b'\n' | b'\r')
                )
            {
                return Some(at);
            }
            pos = at + 1;
        }
        None
    }
}

/// Raw value of attribute `name` in an opening tag such as `<item jid='a@b' subscription='both'>`.
pub fn attr_in<'a>(tag: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut pos = tag.iter().position(|b| b.is_ascii_whitespace())?;
    loop {
        while pos < tag.len() && tag[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let eq = pos + tag[pos..].iter().position(|&b| b == b'=')?;
        let key = tag[pos..eq].trim_ascii_end();
        let mut vstart = eq + 1;
        while vstart < tag.len() && tag[vstart].is_ascii_whitespace() {
            vstart += 1;
        }
        let quote = *tag.get(vstart)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let vend = vstart + 1 + tag[vstart + 1..].iter().position(|&b| b == quote)?;
        if key == name {
            return Some(&tag[vstart + 1..vend]);
        }
        pos = vend + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_header_with_declaration() {
        let buf = b"<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' id='a>b'><stream:features/>";
        let (item, start, end) = next_item(buf).unwrap().unwrap();
        assert_eq!(item, Item::StreamOpen);
        assert!(buf[start..end].starts_with(b"<stream:stream"));
        let (item, start, end) = next_item(&buf[end..]).unwrap().unwrap();
        assert_eq!(item, Item::Stanza);
        assert_eq!(end - start, b"<stream:features/>".len());
    }

    #[test]
    fn nested_stanza_and_incomplete_input() {
        let msg = b" <message from='a@b/c' type=\"chat\"><body>1 2</body><x a='>'/></message><iq/>";
        let (item, start, end) = next_item(msg).unwrap().unwrap();
        assert_eq!(item, Item::Stanza);
        assert_eq!(start, 1);
        assert!(msg[start..end].ends_with(b"</message>"));
        for cut in 1..end {
            assert_eq!(next_item(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn stream_close() {
        let (item, _, end) = next_item(b"\n</stream:stream>").unwrap().unwrap();
        assert_eq!((item, end), (Item::StreamClose, 17));
    }

    #[test]
    fn rejects_text_at_top_level() {
        assert_eq!(next_item(b"hello"), Err(MalformedXml));
    }

    #[test]
    fn attributes_and_children() {
        let s = Stanza::new(
            b"<iq type='result' id=\"b1\"><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u@localhost/r</jid></bind></iq>",
        );
        assert_eq!(s.name(), b"iq");
        assert_eq!(s.attr(b"type"), Some(&b"result"[..]));
        assert_eq!(s.attr(b"id"), Some(&b"b1"[..]));
        assert_eq!(s.attr(b"to"), None);
        assert_eq!(s.child_text(b"jid"), Some(&b"u@localhost/r"[..]));
        assert!(s.has_child(b"bind"));
        assert!(!s.has_child(b"bin"));
        assert_eq!(
            Stanza::new(b"<success xmlns='s'>dj0x</success>").text(),
            Some(&b"dj0x"[..])
        );
        assert_eq!(Stanza::new(b"<success xmlns='s'/>").text(), Some(&b""[..]));
        let f = Stanza::new(b"<stream:features><starttls xmlns='x'/></stream:features>");
        assert_eq!(f.name(), b"features");
        assert_eq!(f.child_text(b"starttls"), Some(&b""[..]));
    }

    #[test]
    fn iterates_roster_items() {
        let s = Stanza::new(
            b"<iq><query xmlns='jabber:iq:roster'><item jid='a@l' subscription='both'/>\
              <item subscription='to' jid='b@l'><group>g</group></item></query></iq>",
        );
        let mut seen = Vec::new();
        s.for_each_child(b"item", |tag| {
            seen.push((
                attr_in(tag, b"jid").unwrap(),
                attr_in(tag, b"subscription").unwrap(),
            ))
        });
        assert_eq!(
            seen,
            vec![(&b"a@l"[..], &b"both"[..]), (&b"b@l"[..], &b"to"[..])]
        );
    }
}
