//! Escaping of character data and attribute values for output.

/// Appends `text` to `out`, escaping `&`, `<` and `>`.
pub fn escape_text(out: &mut Vec<u8>, text: &str) {
    escape(out, text, false)
}

/// Appends `value` to `out` for use inside single quotes.
pub fn escape_attr(out: &mut Vec<u8>, value: &str) {
    escape(out, value, true)
}

/// `value` escaped for use inside single quotes, as a string.
pub fn attr_string(value: &str) -> String {
    let mut out = Vec::with_capacity(value.len());
    escape_attr(&mut out, value);
    String::from_utf8(out).unwrap_or_default()
}

fn escape(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' if attr => b"&apos;",
            b'"' if attr => b"&quot;",
            // Attribute value normalisation would turn these into spaces: keep them.
            b'\t' if attr => b"&#9;",
            b'\n' if attr => b"&#10;",
            b'\r' => b"&#13;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        let mut out = Vec::new();
        escape_text(&mut out, "a<b>&'\"");
        assert_eq!(out, b"a&lt;b&gt;&amp;'\"");
        out.clear();
        escape_attr(&mut out, "it's \"x\"\n");
        assert_eq!(out, b"it&apos;s &quot;x&quot;&#10;");
    }
}
