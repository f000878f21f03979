//! XEP-0280 Message Carbons: every resource that enabled carbons sees the chat messages the
//! account's other resources send and receive, wrapped in `<sent/>` or `<received/>`.
//!
//! Built from the registry alone: a per-session flag, an iq handler for enable/disable, an
//! outbound filter that copies what a session sends, and a `Delivered` handler that copies
//! what the account received to the resources that did not get the original.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{ns, BareJid, Element, Jid, Stanza, StanzaErrorCondition, StanzaKind};

use super::NoConfig;
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, ExtKey, Filter, Handled, IqHandler, IqResult, IqTarget,
    Module, On, Point, Registry, Spec, Verdict,
};
use xmppd_server::router::SessionHandle;

pub const NS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const RECEIPTS: &str = "urn:xmpp:receipts";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const MARKERS: &str = "urn:xmpp:chat-markers:0";

pub struct Carbons {
    enabled: ExtKey<AtomicBool>,
}

impl Module for Carbons {
    const NAME: &'static str = "carbons";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0280", "1.0.1")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        let module = Arc::new(Carbons {
            enabled: r.session_ext(),
        });
        // Clients address the request to their account (no 'to'); some send it to the
        // server domain: both are the same request.
        for on in [On::Account, On::Server] {
            r.iq(on, NS, "enable", module.clone());
            r.iq(on, NS, "disable", module.clone());
        }
        r.disco_feature(On::Server, NS);
        // Late: only what the other filters let through is copied.
        r.filter(Point::Outbound, -100, module.clone());
        r.on(EventKind::Delivered, 0, module);
        Ok(())
    }
}

/// §6.1: the messages worth copying.
fn eligible(message: &Element) -> bool {
    // §7: the sender opted out for this message.
    if message.has_child("private", NS) {
        return false;
    }
    let has_im_payload = message.children().any(|c| {
        matches!(c.ns(), RECEIPTS | CHATSTATES | MARKERS) || c.is("x", "jabber:x:conference")
    });
    match message.attr("type").unwrap_or("normal") {
        "chat" => true,
        "normal" => message.has_child("body", ns::CLIENT) || has_im_payload,
        "groupchat" => false,
        _ => has_im_payload,
    }
}

/// `<message from=bare to=session><sent|received><forwarded>original…`.
fn wrap(direction: &str, user: &BareJid, session: &SessionHandle, original: &Element) -> Element {
    let mut copy = Element::new("message", ns::CLIENT)
        .with_attr("from", user.as_str())
        .with_attr("to", session.jid.as_str())
        .with_child(
            Element::new(direction, NS)
                .with_child(Element::new("forwarded", FORWARD).with_child(original.clone())),
        );
    if let Some(kind) = original.attr("type") {
        copy.set_attr("type", kind);
    }
    copy
}

impl Carbons {
    fn is_enabled(&self, session: &SessionHandle) -> bool {
        session
            .ext
            .get(self.enabled)
            .is_some_and(|e| e.load(Ordering::Relaxed))
    }

    /// Sends a copy of `original` to each carbons-enabled session of `user` that `skip`
    /// does not exclude.
    async fn copy_to(
        &self,
        cx: &Ctx<'_>,
        direction: &str,
        user: &BareJid,
        original: &Element,
        skip: impl Fn(&Arc<SessionHandle>) -> bool,
    ) {
        for session in cx.sessions().resources(user.as_str()) {
            if skip(&session) || !self.is_enabled(&session) {
                continue;
            }
            let Ok(copy) = Stanza::parse(wrap(direction, user, &session, original)) else {
                continue;
            };
            let to = Jid::from(session.jid.clone());
            cx.deliver(&session, &copy, &to).await;
        }
    }
}

#[async_trait]
impl IqHandler for Carbons {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let from = iq.from.as_ref().ok_or(StanzaErrorCondition::Forbidden)?;
        let own = match target {
            IqTarget::Account(user) => from.to_bare() == *user,
            IqTarget::Server(domain) => from.domain().as_str() == domain,
        };
        let session = from.try_as_full().ok().and_then(|f| cx.sessions().get(f));
        let (true, Some(session), "set") = (own, session, iq.stanza_type()) else {
            // §3: only a session itself turns carbons on or off for itself.
            return Err(StanzaErrorCondition::NotAllowed.into());
        };
        let enable = iq.iq_payload().is_some_and(|p| p.name() == "enable");
        // Enabling twice, or disabling what is off, is not an error (§4).
        session
            .ext
            .get_or_default(self.enabled)
            .store(enable, Ordering::Relaxed);
        Ok(None)
    }
}

/// What a session sends: the sender's other enabled resources get `<sent/>` (§5).
#[async_trait]
impl Filter for Carbons {
    async fn check(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        to: &Jid,
        _: Point,
        _: Option<&Arc<SessionHandle>>,
    ) -> Verdict {
        let Some(Ok(from)) = stanza.from.as_ref().map(|f| f.try_as_full()) else {
            return Verdict::Allow;
        };
        let user = from.to_bare();
        let copy = stanza.kind == StanzaKind::Message
            && cx.is_local_domain(user.domain().as_str())
            // Messages to oneself are seen by every resource anyway.
            && to.to_bare() != user
            && !stanza.element().has_child("no-copy", HINTS)
            && eligible(stanza.element());
        if copy {
            let original = stanza.element();
            self.copy_to(cx, "sent", &user, original, |s| s.jid == *from)
                .await;
        }
        Verdict::Allow
    }
}

/// What the account received: enabled resources that did not get it get `<received/>` (§6).
#[async_trait]
impl EventHandler for Carbons {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        let Event::Delivered {
            stanza,
            user,
            sessions,
        } = event
        else {
            return Handled::Continue;
        };
        let original = stanza.element();
        let from = stanza.from.as_ref();
        // §6.1: a private message from a MUC occupant is already sent to every joined
        // client by the room; one's own messages between resources need no copy.
        let from_muc_occupant = original.has_child("x", MUC_USER);
        // Compared by parts: every copy of a room's fan-out passes here.
        let from_self =
            from.is_some_and(|f| f.node() == user.node() && f.domain() == user.domain());
        if from_muc_occupant || from_self || original.has_child("no-copy", HINTS) {
            return Handled::Continue;
        }
        if eligible(original) {
            self.copy_to(cx, "received", user, original, |s| {
                sessions.iter().any(|d| Arc::ptr_eq(d, s))
            })
            .await;
        }
        Handled::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: &str, child: Option<(&str, &str)>) -> Element {
        let mut m = Element::new("message", ns::CLIENT).with_attr("type", kind);
        if let Some((name, ns)) = child {
            m.push_child(Element::new(name, ns));
        }
        m
    }

    #[test]
    fn which_messages_are_copied() {
        assert!(eligible(&message("chat", None)));
        assert!(eligible(&message("normal", Some(("body", ns::CLIENT)))));
        assert!(!eligible(&message("normal", None)));
        assert!(eligible(&message("normal", Some(("received", RECEIPTS)))));
        assert!(!eligible(&message("groupchat", Some(("body", ns::CLIENT)))));
        assert!(!eligible(&message("headline", Some(("body", ns::CLIENT)))));
        let private = message("chat", Some(("private", NS)));
        assert!(!eligible(&private));
    }
}
