//! XML namespaces used across the server.

pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
pub const COMPONENT: &str = "jabber:component:accept";
pub const DIALBACK: &str = "jabber:server:dialback";
pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const SASL_CB: &str = "urn:xsf:sasl-cb:0";
pub const PING: &str = "urn:xmpp:ping";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const VERSION: &str = "jabber:iq:version";
