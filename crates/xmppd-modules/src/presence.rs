//! Presence (RFC 6121 §3, §4): subscriptions, broadcast, probes, directed presence.
//!
//! Takes over every presence stanza, from a session and to a local account, and makes a
//! closing session unavailable.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use xmppd_core::{ns, BareJid, Element, Jid, Stanza, StanzaErrorCondition, StanzaKind};
use xmppd_storage::PendingRequest;

use super::subscription::{self, Kind};
use super::{account_parts, roster, NoConfig};
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, ExtKey, Handled, Intercept, Module, Registry, Spec,
    StanzaHandler, Via,
};
use xmppd_server::router::SessionHandle;

pub struct Presence {
    directed: ExtKey<Directed>,
}

/// Entities a session sent directed available presence to (RFC 6121 §4.6), to be told when
/// it becomes unavailable.
#[derive(Default)]
struct Directed(Mutex<HashSet<String>>);

/// Most directed-presence recipients remembered per session.
const MAX_DIRECTED: usize = 1000;

impl Directed {
    fn note(&self, to: &str, available: bool) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if available && set.len() < MAX_DIRECTED {
            set.insert(to.to_string());
        } else if !available {
            set.remove(to);
        }
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Module for Presence {
    const NAME: &'static str = "presence";
    const SPECS: &'static [Spec] = &[Spec::xep("RFC 6121", "")
        .note("§3–§4 subscriptions and presence, directed presence, probes")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        let module = Arc::new(Presence {
            directed: r.session_ext(),
        });
        r.intercept(Intercept::FromSession, StanzaKind::Presence, module.clone());
        r.intercept(Intercept::ToAccount, StanzaKind::Presence, module.clone());
        r.on(EventKind::SessionClosing, 0, module);
        Ok(())
    }
}

#[async_trait]
impl StanzaHandler for Presence {
    async fn handle(&self, cx: &mut Ctx<'_>, stanza: Stanza, via: Via<'_>) {
        match via {
            Via::Session(session) => self.sent_by_session(cx, session, stanza).await,
            Via::Account(to) => inbound(cx, stanza, to).await,
        }
    }
}

/// The session has closed: behave as if it had sent unavailable presence.
#[async_trait]
impl EventHandler for Presence {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        if let Event::SessionClosing(session) = event {
            self.go_unavailable(cx, session, None).await;
        }
        Handled::Continue
    }
}

fn presence(kind: Option<&str>, from: &str, to: &str) -> Element {
    let mut el = Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to);
    if let Some(kind) = kind {
        el.set_attr("type", kind);
    }
    el
}

/// Sends a subscription stanza of `user`'s (from the bare JID) to `contact`.
pub fn send_subscription(cx: &mut Ctx<'_>, user: &BareJid, contact: &BareJid, kind: Kind) {
    cx.route_element(presence(
        Some(kind.as_str()),
        user.as_str(),
        contact.as_str(),
    ));
}

/// Sends the current presence of every available resource of `user` to `contact`.
pub fn send_current_to(cx: &mut Ctx<'_>, user: &BareJid, contact: &BareJid) {
    for session in cx.sessions().resources(user.as_str()) {
        if let Some(mut last) = session.last_presence() {
            last.set_attr("to", contact.as_str());
            cx.route_element(last);
        }
    }
}

/// Sends unavailable presence from every available resource of `user` to `contact`.
pub fn send_unavailable_to(cx: &mut Ctx<'_>, user: &BareJid, contact: &BareJid) {
    for el in unavailable_from(cx, user, contact) {
        cx.route_element(el);
    }
}

/// Unavailable presence from every available resource of `user` to `contact`.
pub fn unavailable_from(cx: &Ctx<'_>, user: &BareJid, contact: &BareJid) -> Vec<Element> {
    cx.sessions()
        .resources(user.as_str())
        .iter()
        .filter(|s| s.is_available())
        .map(|s| presence(Some("unavailable"), s.jid.as_str(), contact.as_str()))
        .collect()
}

/// Queues a presence stanza for one session, through the delivery filters.
async fn deliver(cx: &Ctx<'_>, session: &Arc<SessionHandle>, el: Element) {
    if let Ok(stanza) = Stanza::parse(el) {
        let to = Jid::from(session.jid.clone());
        cx.deliver(session, &stanza, &to).await;
    }
}

/// The presence types of RFC 6121 §4.7.1 (and "error").
fn known_type(kind: &str) -> bool {
    matches!(kind, "" | "unavailable" | "probe" | "error") || Kind::parse(kind).is_some()
}

impl Presence {
    /// Every presence stanza a client sends, after its stream stamped `from`.
    async fn sent_by_session(
        &self,
        cx: &mut Ctx<'_>,
        session: &Arc<SessionHandle>,
        stanza: Stanza,
    ) {
        let kind = stanza.stanza_type().to_string();
        if !known_type(&kind) {
            // RFC 6120 §8.3.3.1 / RFC 6121 §4.7.1: a type we do not know is a bad request.
            let error = xmppd_core::StanzaError::new(StanzaErrorCondition::BadRequest)
                .with_text("unknown presence type");
            return cx.bounce(&stanza, error);
        }
        match (&stanza.to, kind.as_str()) {
            (None, "" | "unavailable") => self.own_presence(cx, session, stanza).await,
            // Presence without 'to' of any other type means nothing (§4.7.1): ignore it.
            (None, _) => {}
            (Some(to), k) if Kind::parse(k).is_some() => {
                let kind = Kind::parse(k).expect("checked");
                let contact = to.to_bare();
                outbound_subscription(cx, session, contact, kind, stanza.into_element()).await
            }
            // §4.3: clients should not probe, but answering from the roster is harmless.
            (Some(to), "probe") => client_probe(cx, session, &to.to_bare()).await,
            (Some(to), "" | "unavailable") => {
                // §4.6: directed presence, remembered so that going offline undoes it.
                let directed = session.ext.get_or_default(self.directed);
                directed.note(to.as_str(), kind.is_empty());
                cx.route(stanza)
            }
            (Some(_), _) => cx.route(stanza),
        }
    }

    /// §4.2 and §4.4: initial and subsequent presence; §4.5: unavailable.
    async fn own_presence(&self, cx: &mut Ctx<'_>, session: &Arc<SessionHandle>, stanza: Stanza) {
        let user = session.jid.to_bare();
        if stanza.stanza_type() == "unavailable" {
            self.go_unavailable(cx, session, Some(stanza.into_element()))
                .await;
            return;
        }
        let priority = stanza
            .element()
            .get_child("priority", ns::CLIENT)
            .and_then(|p| p.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        let mut el = stanza.into_element();
        el.remove_attr("to");
        for amender in cx.hooks().amenders() {
            amender.amend(cx, &user, &mut el).await;
        }
        let was_available = session.set_presence(Some((el.clone(), priority)));
        broadcast(cx, &user, &el).await;
        received(cx, &Jid::from(session.jid.clone()), &user, &el).await;
        if !was_available {
            probe_contacts(cx, session, &user).await;
            if priority >= 0 {
                deliver_pending_requests(cx, session, &user).await;
                cx.fire(Event::InitialPresence(session)).await;
            }
        }
    }

    /// The session becomes unavailable, by its own presence or by going away (§4.5).
    async fn go_unavailable(
        &self,
        cx: &mut Ctx<'_>,
        session: &Arc<SessionHandle>,
        el: Option<Element>,
    ) {
        let user = session.jid.to_bare();
        let directed = session
            .ext
            .get(self.directed)
            .map(|d| d.take())
            .unwrap_or_default();
        let was_available = session.set_presence(None);
        let mut el = el.unwrap_or_else(|| presence(Some("unavailable"), session.jid.as_str(), ""));
        el.remove_attr("to");
        el.set_attr("from", session.jid.as_str());
        let mut told = Vec::new();
        if was_available {
            // Recorded before anyone hears of it, so a last-activity query that follows the
            // unavailable presence sees this logout.
            if !cx
                .sessions()
                .resources(user.as_str())
                .iter()
                .any(|s| s.is_available() && !Arc::ptr_eq(s, session))
            {
                let status = el
                    .get_child("status", ns::CLIENT)
                    .map(|s| s.text())
                    .unwrap_or_default();
                super::last::record_logout(cx, &user, &status).await;
            }
            told = broadcast(cx, &user, &el).await;
            received(cx, &Jid::from(session.jid.clone()), &user, &el).await;
        }
        // §4.6.3: directed-presence recipients hear it too, unless the broadcast reached them.
        for to in directed {
            let already =
                Jid::new(&to).is_ok_and(|j| told.iter().any(|t| *t == j.to_bare().as_str()));
            if !already {
                let mut copy = el.clone();
                copy.set_attr("to", to);
                cx.route_element(copy);
            }
        }
    }
}

/// Tells the modules that presence from `from` reached `user`: available, unavailable, or a
/// subscription stanza once its state change is saved.
async fn received(cx: &mut Ctx<'_>, from: &Jid, user: &BareJid, presence: &Element) {
    cx.fire(Event::PresenceReceived {
        from,
        user,
        presence,
    })
    .await;
}

/// Sends `el` (from a session of `user`) to the subscribed contacts and to the user's own
/// available resources, itself included (§4.2.2). Returns the contacts it went to.
async fn broadcast(cx: &mut Ctx<'_>, user: &BareJid, el: &Element) -> Vec<String> {
    let (username, domain) = account_parts(user);
    let items = match cx.storage().roster.roster(username, domain).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::error!(error = %e, "roster read failed during presence broadcast");
            Default::default()
        }
    };
    let mut sent = Vec::new();
    for item in items.iter() {
        if subscription::Sub::parse(&item.subscription).has_from() {
            let mut copy = el.clone();
            copy.set_attr("to", item.contact.clone());
            cx.route_element(copy);
            sent.push(item.contact.clone());
        }
    }
    let mut own = el.clone();
    own.set_attr("to", user.as_str());
    if let Ok(own) = Stanza::parse(own) {
        let to = Jid::from(user.clone());
        let data = xmppd_server::router::encode(own.element());
        for session in cx.sessions().resources(user.as_str()) {
            if session.is_available() {
                cx.deliver_encoded(&session, &own, &to, Some(&data)).await;
            }
        }
    }
    sent
}

/// §4.2.2: on initial presence, ask for the presence of every contact we subscribe to.
async fn probe_contacts(cx: &mut Ctx<'_>, session: &Arc<SessionHandle>, user: &BareJid) {
    let (username, domain) = account_parts(user);
    let Ok((_, items)) = cx.storage().roster.roster(username, domain).await else {
        return;
    };
    for item in items.iter() {
        if !subscription::Sub::parse(&item.subscription).has_to() {
            continue;
        }
        let Ok(contact) = BareJid::new(&item.contact) else {
            continue;
        };
        client_probe_known(cx, session, user, &contact).await;
    }
}

/// Delivers subscription requests that arrived while the user was offline (§3.1.3).
async fn deliver_pending_requests(cx: &Ctx<'_>, session: &Arc<SessionHandle>, user: &BareJid) {
    let (username, domain) = account_parts(user);
    let Ok(requests) = cx.storage().roster.requests(username, domain).await else {
        return;
    };
    for request in requests {
        cx.push_bytes(session, bytes::Bytes::from(request.stanza.into_bytes()));
    }
}

/// §3: a subscription stanza from the user to a contact.
async fn outbound_subscription(
    cx: &mut Ctx<'_>,
    session: &Arc<SessionHandle>,
    contact: BareJid,
    kind: Kind,
    mut el: Element,
) {
    let user = session.jid.to_bare();
    let locked = cx.account_locks().lock(&user).await;
    let (item, before) = match roster::load_state(cx, &user, &contact).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(error = ?e, "subscription state unavailable");
            return;
        }
    };
    let out = subscription::outbound(before, kind);
    if let Err(e) = roster::save_state(cx, &user, &contact, item, before, out.state).await {
        tracing::warn!(error = ?e, "subscription state not saved");
        return;
    }
    drop(locked);
    if out.route {
        // §3.1.2: subscription stanzas are stamped with bare JIDs; the client's status and
        // extensions travel with it.
        el.set_attr("from", user.as_str());
        el.set_attr("to", contact.as_str());
        cx.route_element(el);
    }
    if !before.sub.has_from() && out.state.sub.has_from() {
        // §3.1.5: the contact now receives our presence: send the current one.
        send_current_to(cx, &user, &contact);
    }
    if before.sub.has_from() && !out.state.sub.has_from() {
        // §3.2.2: it no longer does: tell it we are gone.
        send_unavailable_to(cx, &user, &contact);
    }
}

/// Presence addressed to a local account (`to` is its bare or a full JID).
async fn inbound(cx: &mut Ctx<'_>, stanza: Stanza, to: &Jid) {
    let user = to.to_bare();
    let kind = stanza.stanza_type();
    let from = stanza.from.clone();
    if let Some(kind) = Kind::parse(kind) {
        if let Some(from) = from {
            let el = stanza.element().clone();
            inbound_subscription(cx, stanza, &user, &from.to_bare(), kind).await;
            received(cx, &from, &user, &el).await;
        }
        return;
    }
    match kind {
        "probe" => {
            if let Some(from) = from {
                answer_probe(cx, &user, &from).await;
            }
        }
        "" | "unavailable" | "error" => {
            if let (Some(from), "" | "unavailable") = (&from, kind) {
                received(cx, from, &user, stanza.element()).await;
            }
            let targets = match to.try_as_full() {
                Ok(full) => cx.sessions().get(full).into_iter().collect(),
                Err(_) => cx.sessions().resources(user.as_str()),
            };
            let data = xmppd_server::router::encode(stanza.element());
            for session in targets {
                if session.is_available() || to.try_as_full().is_ok() {
                    cx.deliver_encoded(&session, &stanza, to, Some(&data)).await;
                }
            }
        }
        // Unknown types are an error the sender made; RFC 6121 §4.7.1 says ignore.
        _ => {}
    }
}

/// §4.3.2: a probe from `prober` about `user`: each available resource's presence if the
/// prober is subscribed, unavailable if none is online, unsubscribed if it is not subscribed.
async fn answer_probe(cx: &mut Ctx<'_>, user: &BareJid, prober: &Jid) {
    let subscribed = roster::load_state(cx, user, &prober.to_bare())
        .await
        .map(|(_, s)| s.sub.has_from())
        .unwrap_or(false);
    if !subscribed {
        cx.route_element(presence(
            Some("unsubscribed"),
            user.as_str(),
            prober.as_str(),
        ));
        return;
    }
    let mut any = false;
    for session in cx.sessions().resources(user.as_str()) {
        if let Some(mut last) = session.last_presence() {
            last.set_attr("to", prober.as_str());
            cx.route_element(last);
            any = true;
        }
    }
    if !any {
        cx.route_element(presence(
            Some("unavailable"),
            user.as_str(),
            prober.as_str(),
        ));
    }
}

/// A client's own probe of a contact: answered only for contacts it subscribes to.
async fn client_probe(cx: &mut Ctx<'_>, session: &Arc<SessionHandle>, contact: &BareJid) {
    let user = session.jid.to_bare();
    let subscribed = roster::load_state(cx, &user, contact)
        .await
        .map(|(_, s)| s.sub.has_to())
        .unwrap_or(false);
    if subscribed {
        client_probe_known(cx, session, &user, contact).await;
    }
}

/// Gets a subscribed contact's presence for `session`: at once for a local contact, by a
/// probe for a remote one.
async fn client_probe_known(
    cx: &mut Ctx<'_>,
    session: &Arc<SessionHandle>,
    user: &BareJid,
    contact: &BareJid,
) {
    if cx.is_local_domain(contact.domain().as_str()) {
        for other in cx.sessions().resources(contact.as_str()) {
            if let Some(mut last) = other.last_presence() {
                last.set_attr("to", session.jid.as_str());
                deliver(cx, session, last).await;
            }
        }
    } else {
        cx.route_element(presence(Some("probe"), user.as_str(), contact.as_str()));
    }
}

/// §3: a subscription stanza from a contact to the user.
async fn inbound_subscription(
    cx: &mut Ctx<'_>,
    stanza: Stanza,
    user: &BareJid,
    contact: &BareJid,
    kind: Kind,
) {
    if !cx.account_exists(user).await {
        // §3.1.3: a request to an account that does not exist is answered unsubscribed.
        if kind == Kind::Subscribe {
            send_subscription(cx, user, contact, Kind::Unsubscribed);
        }
        return;
    }
    let locked = cx.account_locks().lock(user).await;
    let (item, before) = match roster::load_state(cx, user, contact).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(error = ?e, "subscription state unavailable");
            return;
        }
    };
    let out = subscription::inbound(before, kind);
    if out.state.pending_in && !before.pending_in {
        let (username, domain) = account_parts(user);
        // Keep the request, addressed to the bare JID, for delivery at the next login.
        let mut el = stanza.element().clone();
        el.set_attr("from", contact.as_str());
        el.set_attr("to", user.as_str());
        let request = PendingRequest {
            contact: contact.to_string(),
            stanza: el.to_xml_in(ns::CLIENT),
        };
        if let Err(e) = cx
            .storage()
            .roster
            .add_request(username, domain, &request)
            .await
        {
            tracing::warn!(error = %e, "subscription request not stored");
            return;
        }
    }
    if let Err(e) = roster::save_state(cx, user, contact, item, before, out.state).await {
        tracing::warn!(error = ?e, "subscription state not saved");
        return;
    }
    drop(locked);
    if out.deliver {
        // Subscription stanzas go to every available resource of non-negative priority.
        let mut el = stanza.into_element();
        el.set_attr("from", contact.as_str());
        el.set_attr("to", user.as_str());
        let data = xmppd_server::router::encode(&el);
        for session in cx.sessions().resources(user.as_str()) {
            if session.is_available() && session.priority() >= 0 {
                cx.push_bytes(&session, data.clone());
            }
        }
    }
    if let Some(reply) = out.auto_reply {
        send_subscription(cx, user, contact, reply);
        if reply == Kind::Subscribed && !before.sub.has_from() {
            send_current_to(cx, user, contact);
        }
    }
}
