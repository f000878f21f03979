//! XEP-0352 Client State Indication: while a client says it is inactive (a phone in a
//! pocket), presence updates and chat states wait on the server instead of waking it; the
//! latest presence of each contact and the waiting chat states go out when it says active.
//! Messages with a body, iq and everything else are never held.
//!
//! Built from the registry alone: a post-auth stream feature, two nonzas, a per-session
//! extension and a delivery filter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use xmppd_core::{ns, Element, Jid, Stanza, StanzaKind};

use xmppd_server::registry::{
    Ctx, ExtKey, Filter, Module, Nonza, Point, Registry, Spec, Stage, Verdict,
};
use xmppd_server::router::SessionHandle;

pub const NS: &str = "urn:xmpp:csi:0";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsiConfig {
    /// Stanzas held for one inactive session before they are all sent anyway.
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { max_held: 256 }
    }
}

pub struct Csi {
    state: ExtKey<SessionState>,
    max_held: usize,
}

#[derive(Default)]
struct SessionState {
    inactive: AtomicBool,
    /// What waits, in arrival order, keyed by kind and sender so only the latest stays.
    held: Mutex<Vec<(String, Bytes)>>,
}

impl Module for Csi {
    const NAME: &'static str = "csi";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0352", "1.0.0")];
    type Config = CsiConfig;

    fn register(config: CsiConfig, r: &mut Registry) -> Result<(), String> {
        if config.max_held == 0 {
            return Err("max_held must be at least 1".into());
        }
        let module = Arc::new(Csi {
            state: r.session_ext(),
            max_held: config.max_held,
        });
        r.stream_feature(Stage::PostAuth, Box::new(|_| Some(Element::new("csi", NS))));
        r.nonza(NS, "active", module.clone());
        r.nonza(NS, "inactive", module.clone());
        // Last: privacy has decided already, so nothing refused is held.
        r.filter(Point::Deliver, -1000, module);
        Ok(())
    }
}

/// What may wait while the client is inactive: presence, and messages whose only content
/// is a chat state (also as a carbon copy).
fn may_wait(stanza: &Stanza) -> bool {
    match stanza.kind {
        StanzaKind::Presence => matches!(stanza.stanza_type(), "" | "unavailable"),
        StanzaKind::Message => only_chat_state(stanza.element()),
        StanzaKind::Iq => false,
    }
}

/// Says who sent a message, not what it says: a room's occupant id (XEP-0421).
const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";

fn only_chat_state(message: &Element) -> bool {
    let mut children = message
        .children()
        .filter(|c| c.ns() != OCCUPANT_ID)
        .peekable();
    if children.peek().is_none() {
        return false;
    }
    children.all(|c| {
        if c.ns() == CHATSTATES {
            return true;
        }
        // A carbon copy (XEP-0280) of a chat-state-only message.
        let inner = (c.ns() == CARBONS)
            .then(|| c.get_child("forwarded", FORWARD))
            .flatten()
            .and_then(|f| f.get_child("message", ns::CLIENT));
        inner.is_some_and(only_chat_state)
    })
}

impl Csi {
    fn flush(&self, cx: &Ctx<'_>, session: &SessionHandle, state: &SessionState) {
        let held = std::mem::take(&mut *state.held.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, data) in held {
            cx.push_bytes(session, data);
        }
    }
}

impl Nonza for Csi {
    fn handle(&self, cx: &Ctx<'_>, session: &Arc<SessionHandle>, el: &Element) {
        let state = session.ext.get_or_default(self.state);
        let inactive = el.name() == "inactive";
        state.inactive.store(inactive, Ordering::Release);
        if !inactive {
            self.flush(cx, session, &state);
        }
    }
}

#[async_trait]
impl Filter for Csi {
    async fn check(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        _: &Jid,
        _: Point,
        session: Option<&Arc<SessionHandle>>,
    ) -> Verdict {
        let Some(session) = session else {
            return Verdict::Allow;
        };
        let Some(state) = session.ext.get(self.state) else {
            return Verdict::Allow;
        };
        if !state.inactive.load(Ordering::Acquire) {
            return Verdict::Allow;
        }
        let from = stanza.from.as_ref().map(|f| f.as_str()).unwrap_or_default();
        let key = match stanza.kind {
            StanzaKind::Presence => format!("p {from}"),
            _ => format!("c {from}"),
        };
        if !may_wait(stanza) {
            if stanza.kind == StanzaKind::Message {
                // The message supersedes the sender's waiting chat state ("composing").
                let mut held = state.held.lock().unwrap_or_else(|e| e.into_inner());
                held.retain(|(k, _)| *k != key);
            }
            return Verdict::Allow;
        }
        let data = xmppd_server::router::encode(stanza.element());
        let full = {
            let mut held = state.held.lock().unwrap_or_else(|e| e.into_inner());
            // Only the latest presence and chat state of each sender matter.
            held.retain(|(k, _)| *k != key);
            held.push((key, data));
            held.len() >= self.max_held
        };
        if full {
            // Too much waits: send it all rather than grow without bound.
            self.flush(cx, session, &state);
        }
        Verdict::Held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chat_states_and_presence_wait() {
        let state = Element::new("composing", CHATSTATES);
        let chat_state = Element::new("message", ns::CLIENT)
            .with_attr("type", "chat")
            .with_child(state.clone());
        assert!(only_chat_state(&chat_state));
        let with_body = chat_state
            .clone()
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert!(!only_chat_state(&with_body));
        let carbon = |inner: &Element| {
            Element::new("message", ns::CLIENT).with_child(
                Element::new("received", CARBONS)
                    .with_child(Element::new("forwarded", FORWARD).with_child(inner.clone())),
            )
        };
        assert!(only_chat_state(&carbon(&chat_state)));
        assert!(!only_chat_state(&carbon(&with_body)));
        assert!(!only_chat_state(&Element::new("message", ns::CLIENT)));
        // A room's chat state carries the sender's occupant id; it still waits.
        let in_room = chat_state
            .clone()
            .with_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", "x"));
        assert!(only_chat_state(&in_room));
    }
}
