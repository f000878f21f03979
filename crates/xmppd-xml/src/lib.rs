//! XML layer of xmppd.
//!
//! * [`StreamParser`]: a push parser for one XMPP stream, on top of `rxml` (which already rejects
//!   DTDs, entity declarations, processing instructions and, by default, comments — RFC 6120 §11).
//!   It adds the XMPP framing (stream header, one top-level element at a time) and the limits a
//!   server needs (stanza size, depth).
//! * [`Element`]: a small owned element tree with a serialiser that writes each namespace once.
//!
//! The tree is hand written rather than `minidom` because the serialiser must know the namespace
//! in scope of the stream (so stanzas are written without a redundant `xmlns`) and because the
//! router wants cheap attribute reads and writes.

mod element;
mod escape;
mod parser;

pub use element::{Element, Node};
pub use escape::{attr_string, escape_attr, escape_text};
pub use parser::{parse_fragment, Limits, ParseError, StreamEvent, StreamHeader, StreamParser};
