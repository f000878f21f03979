//! Presence (RFC 6121 §3, §4): subscriptions, broadcast, probes, directed presence.

use std::sync::Arc;

use xmppd_core::{ns, BareJid, Element, Jid, Stanza};
use xmppd_storage::PendingRequest;

use super::subscription::{self, Kind};
use super::{account_parts, offline, roster, vcard};
use crate::router::{Router, SessionHandle};

fn presence(kind: Option<&str>, from: &str, to: &str) -> Element {
    let mut el = Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to);
    if let Some(kind) = kind {
        el.set_attr("type", kind);
    }
    el
}

/// Routes a server-generated presence stanza.
async fn route(router: &Router, el: Element) {
    if let Ok(stanza) = Stanza::parse(el) {
        router.route_boxed(stanza).await;
    }
}

/// Sends a subscription stanza of `user`'s (from the bare JID) to `contact`.
pub async fn send_subscription(router: &Router, user: &BareJid, contact: &BareJid, kind: Kind) {
    route(
        router,
        presence(Some(kind.as_str()), user.as_str(), contact.as_str()),
    )
    .await;
}

/// Sends the current presence of every available resource of `user` to `contact`.
pub async fn send_current_to(router: &Router, user: &BareJid, contact: &BareJid) {
    for session in router.sessions().resources(user.as_str()) {
        if let Some(mut last) = session.last_presence() {
            last.set_attr("to", contact.as_str());
            route(router, last).await;
        }
    }
}

/// Sends unavailable presence from every available resource of `user` to `contact`.
pub async fn send_unavailable_to(router: &Router, user: &BareJid, contact: &BareJid) {
    for session in router.sessions().resources(user.as_str()) {
        if session.is_available() {
            let el = presence(Some("unavailable"), session.jid.as_str(), contact.as_str());
            route(router, el).await;
        }
    }
}

/// Every presence stanza a client sends, after its stream stamped `from`.
pub async fn from_client(router: &Router, session: &Arc<SessionHandle>, stanza: Stanza) {
    let kind = stanza.stanza_type().to_string();
    match (&stanza.to, kind.as_str()) {
        (None, "" | "unavailable") => own_presence(router, session, stanza).await,
        // Presence without 'to' of any other type means nothing (§4.7.1): ignore it.
        (None, _) => {}
        (Some(to), k) if Kind::parse(k).is_some() => {
            let kind = Kind::parse(k).expect("checked");
            let contact = to.to_bare();
            outbound_subscription(router, session, contact, kind, stanza.into_element()).await
        }
        // §4.3: clients should not probe, but answering from the roster is harmless.
        (Some(to), "probe") => client_probe(router, session, &to.to_bare()).await,
        (Some(to), "" | "unavailable") => {
            // §4.6: directed presence, remembered so that going offline undoes it.
            session.note_directed(to.as_str(), kind.is_empty());
            router.route(stanza).await
        }
        (Some(_), _) => router.route(stanza).await,
    }
}

/// §4.2 and §4.4: initial and subsequent presence; §4.5: unavailable.
async fn own_presence(router: &Router, session: &Arc<SessionHandle>, stanza: Stanza) {
    let user = session.jid.to_bare();
    if stanza.stanza_type() == "unavailable" {
        go_unavailable(router, session, Some(stanza.into_element())).await;
        return;
    }
    let priority = stanza
        .element()
        .get_child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0);
    let mut el = stanza.into_element();
    el.remove_attr("to");
    vcard::stamp_avatar_hash(router, &user, &mut el).await;
    let was_available = session.set_presence(Some((el.clone(), priority)));
    broadcast(router, &user, &el).await;
    if !was_available {
        probe_contacts(router, session, &user).await;
        if priority >= 0 {
            deliver_pending_requests(router, session, &user).await;
            offline::deliver(router, session, &user).await;
        }
    }
}

/// Sends `el` (from a session of `user`) to the subscribed contacts and to the user's own
/// available resources, itself included (§4.2.2). Returns the contacts it went to.
async fn broadcast(router: &Router, user: &BareJid, el: &Element) -> Vec<String> {
    let (username, domain) = account_parts(user);
    let items = match router.storage().roster.roster(username, domain).await {
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
            route(router, copy).await;
            sent.push(item.contact.clone());
        }
    }
    let mut own = el.clone();
    own.set_attr("to", user.as_str());
    for session in router.sessions().resources(user.as_str()) {
        if session.is_available() {
            router.deliver_element(&session, &own);
        }
    }
    sent
}

/// §4.2.2: on initial presence, ask for the presence of every contact we subscribe to.
async fn probe_contacts(router: &Router, session: &Arc<SessionHandle>, user: &BareJid) {
    let (username, domain) = account_parts(user);
    let Ok((_, items)) = router.storage().roster.roster(username, domain).await else {
        return;
    };
    for item in items.iter() {
        if !subscription::Sub::parse(&item.subscription).has_to() {
            continue;
        }
        let Ok(contact) = BareJid::new(&item.contact) else {
            continue;
        };
        client_probe_known(router, session, user, &contact).await;
    }
}

/// Delivers subscription requests that arrived while the user was offline (§3.1.3).
async fn deliver_pending_requests(router: &Router, session: &Arc<SessionHandle>, user: &BareJid) {
    let (username, domain) = account_parts(user);
    let Ok(requests) = router.storage().roster.requests(username, domain).await else {
        return;
    };
    for request in requests {
        router.deliver_bytes(session, bytes::Bytes::from(request.stanza.into_bytes()));
    }
}

/// The session becomes unavailable, by its own presence or by going away (§4.5).
async fn go_unavailable(router: &Router, session: &Arc<SessionHandle>, el: Option<Element>) {
    let user = session.jid.to_bare();
    let directed = session.take_directed();
    let was_available = session.set_presence(None);
    let mut el = el.unwrap_or_else(|| presence(Some("unavailable"), session.jid.as_str(), ""));
    el.remove_attr("to");
    el.set_attr("from", session.jid.as_str());
    let mut told = Vec::new();
    if was_available {
        // Recorded before anyone hears of it, so a last-activity query that follows the
        // unavailable presence sees this logout.
        if !router
            .sessions()
            .resources(user.as_str())
            .iter()
            .any(|s| s.is_available() && !Arc::ptr_eq(s, session))
        {
            let status = el
                .get_child("status", ns::CLIENT)
                .map(|s| s.text())
                .unwrap_or_default();
            super::last::record_logout(router, &user, &status).await;
        }
        told = broadcast(router, &user, &el).await;
    }
    // §4.6.3: directed-presence recipients hear it too, unless the broadcast reached them.
    for to in directed {
        let already = Jid::new(&to).is_ok_and(|j| told.iter().any(|t| *t == j.to_bare().as_str()));
        if !already {
            let mut copy = el.clone();
            copy.set_attr("to", to);
            route(router, copy).await;
        }
    }
}

/// The session has closed: behave as if it had sent unavailable presence.
pub async fn session_ended(router: &Router, session: &Arc<SessionHandle>) {
    go_unavailable(router, session, None).await;
}

/// §3: a subscription stanza from the user to a contact.
async fn outbound_subscription(
    router: &Router,
    session: &Arc<SessionHandle>,
    contact: BareJid,
    kind: Kind,
    mut el: Element,
) {
    let user = session.jid.to_bare();
    let locked = router.account_locks().lock(&user).await;
    let (item, before) = match roster::load_state(router, &user, &contact).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(error = ?e, "subscription state unavailable");
            return;
        }
    };
    let out = subscription::outbound(before, kind);
    if let Err(e) = roster::save_state(router, &user, &contact, item, before, out.state).await {
        tracing::warn!(error = ?e, "subscription state not saved");
        return;
    }
    drop(locked);
    if out.route {
        // §3.1.2: subscription stanzas are stamped with bare JIDs; the client's status and
        // extensions travel with it.
        el.set_attr("from", user.as_str());
        el.set_attr("to", contact.as_str());
        route(router, el).await;
    }
    if !before.sub.has_from() && out.state.sub.has_from() {
        // §3.1.5: the contact now receives our presence: send the current one.
        send_current_to(router, &user, &contact).await;
    }
    if before.sub.has_from() && !out.state.sub.has_from() {
        // §3.2.2: it no longer does: tell it we are gone.
        send_unavailable_to(router, &user, &contact).await;
    }
}

/// Presence addressed to a local account (`to` is its bare or a full JID).
pub async fn inbound(router: &Router, stanza: Stanza, to: &Jid) {
    let user = to.to_bare();
    let kind = stanza.stanza_type();
    let from = stanza.from.clone();
    if let Some(kind) = Kind::parse(kind) {
        if let Some(from) = from {
            inbound_subscription(router, stanza, &user, &from.to_bare(), kind).await;
        }
        return;
    }
    match kind {
        "probe" => {
            if let Some(from) = from {
                answer_probe(router, &user, &from).await;
            }
        }
        "" | "unavailable" | "error" => {
            let mut targets = Vec::new();
            match to.try_as_full() {
                Ok(full) => targets.extend(router.sessions().get(full)),
                Err(_) => {
                    for session in router.sessions().resources(user.as_str()) {
                        let privacy = router.privacy();
                        if session.is_available()
                            && privacy.session_accepts(router, &stanza, &session).await
                        {
                            targets.push(session);
                        }
                    }
                }
            }
            if !targets.is_empty() {
                let data = crate::router::encode(stanza.element());
                for session in targets {
                    router.deliver_bytes(&session, data.clone());
                }
            }
        }
        // Unknown types are an error the sender made; RFC 6121 §4.7.1 says ignore.
        _ => {}
    }
}

/// §4.3.2: a probe from `prober` about `user`: each available resource's presence if the
/// prober is subscribed, unavailable if none is online, unsubscribed if it is not subscribed.
async fn answer_probe(router: &Router, user: &BareJid, prober: &Jid) {
    let subscribed = roster::load_state(router, user, &prober.to_bare())
        .await
        .map(|(_, s)| s.sub.has_from())
        .unwrap_or(false);
    if !subscribed {
        route(
            router,
            presence(Some("unsubscribed"), user.as_str(), prober.as_str()),
        )
        .await;
        return;
    }
    let mut any = false;
    for session in router.sessions().resources(user.as_str()) {
        if let Some(mut last) = session.last_presence() {
            last.set_attr("to", prober.as_str());
            route(router, last).await;
            any = true;
        }
    }
    if !any {
        route(
            router,
            presence(Some("unavailable"), user.as_str(), prober.as_str()),
        )
        .await;
    }
}

/// A client's own probe of a contact: answered only for contacts it subscribes to.
async fn client_probe(router: &Router, session: &Arc<SessionHandle>, contact: &BareJid) {
    let user = session.jid.to_bare();
    let subscribed = roster::load_state(router, &user, contact)
        .await
        .map(|(_, s)| s.sub.has_to())
        .unwrap_or(false);
    if subscribed {
        client_probe_known(router, session, &user, contact).await;
    }
}

/// Gets a subscribed contact's presence for `session`: at once for a local contact, by a
/// probe for a remote one.
async fn client_probe_known(
    router: &Router,
    session: &Arc<SessionHandle>,
    user: &BareJid,
    contact: &BareJid,
) {
    if router.is_local_domain(contact.domain().as_str()) {
        for other in router.sessions().resources(contact.as_str()) {
            if let Some(mut last) = other.last_presence() {
                last.set_attr("to", session.jid.as_str());
                router.deliver_element(session, &last);
            }
        }
    } else {
        route(
            router,
            presence(Some("probe"), user.as_str(), contact.as_str()),
        )
        .await;
    }
}

/// §3: a subscription stanza from a contact to the user.
async fn inbound_subscription(
    router: &Router,
    stanza: Stanza,
    user: &BareJid,
    contact: &BareJid,
    kind: Kind,
) {
    if !router.account_exists(user).await {
        // §3.1.3: a request to an account that does not exist is answered unsubscribed.
        if kind == Kind::Subscribe {
            send_subscription(router, user, contact, Kind::Unsubscribed).await;
        }
        return;
    }
    let locked = router.account_locks().lock(user).await;
    let (item, before) = match roster::load_state(router, user, contact).await {
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
        if let Err(e) = router
            .storage()
            .roster
            .add_request(username, domain, &request)
            .await
        {
            tracing::warn!(error = %e, "subscription request not stored");
            return;
        }
    }
    if let Err(e) = roster::save_state(router, user, contact, item, before, out.state).await {
        tracing::warn!(error = ?e, "subscription state not saved");
        return;
    }
    drop(locked);
    if out.deliver {
        // Subscription stanzas go to every available resource of non-negative priority.
        let mut el = stanza.into_element();
        el.set_attr("from", contact.as_str());
        el.set_attr("to", user.as_str());
        let data = crate::router::encode(&el);
        for session in router.sessions().resources(user.as_str()) {
            if session.is_available() && session.priority() >= 0 {
                router.deliver_bytes(&session, data.clone());
            }
        }
    }
    if let Some(reply) = out.auto_reply {
        send_subscription(router, user, contact, reply).await;
        if reply == Kind::Subscribed && !before.sub.has_from() {
            send_current_to(router, user, contact).await;
        }
    }
}
