//! An owned XML element tree.
//!
//! Attribute names are stored as written for unqualified attributes, as `xml:lang` style for the
//! `xml` namespace and in Clark notation (`{uri}local`) for any other namespace. The serialiser
//! turns the last form back into a prefixed attribute with its own declaration.

use crate::escape::{escape_attr, escape_text};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element with its namespace resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    name: String,
    ns: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    /// A new element `name` in namespace `ns` (empty string for none).
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`Element::push_child`].
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder form of [`Element::push_text`].
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// True when this element is `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(n, _)| n == name)?;
        Some(self.attrs.remove(pos).1)
    }

    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// The child elements, in document order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Removes the child elements named `name` in namespace `ns`.
    pub fn remove_children(&mut self, name: &str, ns: &str) {
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.is(name, ns)));
    }

    /// Removes all children and returns them.
    pub fn take_children(&mut self) -> Vec<Node> {
        std::mem::take(&mut self.children)
    }

    /// The first child element named `name` in namespace `ns`.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// The concatenated direct text content.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialises the element, writing `xmlns` only where it differs from `parent_ns`.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        self.write_mapped(out, parent_ns, None);
    }

    /// Serialises the element for a stream whose content namespace is `stream_ns`, writing
    /// elements in `content_ns` as if they were in `stream_ns`: a stanza the server holds in
    /// `jabber:client` goes out as `jabber:server` on a server-to-server stream.
    pub fn write_as(&self, out: &mut Vec<u8>, content_ns: &str, stream_ns: &str) {
        self.write_mapped(out, stream_ns, Some((content_ns, stream_ns)));
    }

    /// Moves this element and every descendant in namespace `from` to namespace `to` (a
    /// stanza read from a server-to-server stream, held as `jabber:client` inside).
    pub fn rename_ns(&mut self, from: &str, to: &str) {
        if self.ns == from {
            self.ns = to.to_string();
        }
        for child in &mut self.children {
            if let Node::Element(e) = child {
                e.rename_ns(from, to);
            }
        }
    }

    fn write_mapped(&self, out: &mut Vec<u8>, parent_ns: &str, map: Option<(&str, &str)>) {
        let ns = match map {
            Some((from, to)) if self.ns == from => to,
            _ => &self.ns,
        };
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if ns != parent_ns {
            out.extend_from_slice(b" xmlns='");
            escape_attr(out, ns);
            out.push(b'\'');
        }
        for (i, (name, value)) in self.attrs.iter().enumerate() {
            out.push(b' ');
            match split_clark(name) {
                Some((ns, local)) if ns == XML_NS => {
                    out.extend_from_slice(b"xml:");
                    out.extend_from_slice(local.as_bytes());
                }
                Some((ns, local)) => {
                    // A prefix per attribute keeps the writer stateless; such attributes are rare.
                    let prefix = format!("a{i}");
                    out.extend_from_slice(b"xmlns:");
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(b"='");
                    escape_attr(out, ns);
                    out.extend_from_slice(b"' ");
                    out.extend_from_slice(prefix.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(local.as_bytes());
                }
                None => out.extend_from_slice(name.as_bytes()),
            }
            out.extend_from_slice(b"='");
            escape_attr(out, value);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_mapped(out, ns, map),
                Node::Text(t) => escape_text(out, t),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    /// Serialises the element as a standalone string (declares its namespace).
    pub fn to_xml(&self) -> String {
        self.to_xml_in("")
    }

    /// Serialises the element for a context whose default namespace is `parent_ns`.
    pub fn to_xml_in(&self, parent_ns: &str) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out, parent_ns);
        // The writer only ever emits valid UTF-8 from valid UTF-8 input.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Splits `{uri}local` into its parts; `xml:lang` style names map to the XML namespace.
fn split_clark(name: &str) -> Option<(&str, &str)> {
    if let Some(rest) = name.strip_prefix('{') {
        let close = rest.find('}')?;
        return Some((&rest[..close], &rest[close + 1..]));
    }
    name.strip_prefix("xml:").map(|local| (XML_NS, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_inherited_namespace() {
        let el = Element::new("message", "jabber:client")
            .with_attr("to", "a@b")
            .with_attr("xml:lang", "en")
            .with_child(Element::new("body", "jabber:client").with_text("1 < 2"))
            .with_child(Element::new("x", "urn:x").with_attr("{urn:y}k", "v"));
        let mut out = Vec::new();
        el.write_to(&mut out, "jabber:client");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<message to='a@b' xml:lang='en'><body>1 &lt; 2</body>\
             <x xmlns='urn:x' xmlns:a0='urn:y' a0:k='v'/></message>"
        );
    }

    #[test]
    fn a_client_stanza_goes_out_in_the_server_namespace_and_back() {
        let mut el = Element::new("message", "jabber:client")
            .with_child(Element::new("body", "jabber:client").with_text("hi"))
            .with_child(Element::new("x", "urn:x").with_child(Element::new("y", "jabber:client")));
        let mut out = Vec::new();
        el.write_as(&mut out, "jabber:client", "jabber:server");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<message><body>hi</body><x xmlns='urn:x'><y xmlns='jabber:server'/></x></message>"
        );
        el.rename_ns("jabber:client", "jabber:server");
        assert!(el.is("message", "jabber:server"));
        assert!(el.get_child("body", "jabber:server").is_some());
        let inner = el.get_child("x", "urn:x").unwrap();
        assert!(inner.get_child("y", "jabber:server").is_some());
    }

    #[test]
    fn attribute_edit() {
        let mut el = Element::new("iq", "jabber:client").with_attr("id", "1");
        el.set_attr("id", "2");
        assert_eq!(el.attr("id"), Some("2"));
        assert_eq!(el.remove_attr("id").as_deref(), Some("2"));
        assert_eq!(el.attr("id"), None);
    }
}
