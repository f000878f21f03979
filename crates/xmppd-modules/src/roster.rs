//! Roster management (RFC 6121 §2): get with versioning, set, remove, and pushes.

use std::sync::Arc;

use async_trait::async_trait;
use rand::distributions::Alphanumeric;
use rand::Rng;
use xmppd_core::{ns, BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition};
use xmppd_storage::RosterItem;

use super::subscription::{Kind, State, Sub};
use super::{account_parts, storage_error, NoConfig};
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, Handled, IqHandler, IqResult, IqTarget, Module, On,
    Registry, Spec, Stage,
};

pub const NS: &str = "jabber:iq:roster";
/// RFC 6121 §2.6.1 stream feature for roster versioning.
pub const VERSIONING_FEATURE: &str = "urn:xmpp:features:rosterver";
/// RFC 6121 §3.4 stream feature for subscription pre-approval.
pub const PRE_APPROVAL_FEATURE: &str = "urn:xmpp:features:pre-approval";

/// Longest item name or group name accepted, in bytes.
const MAX_TEXT: usize = 1023;
/// Most groups on one item.
const MAX_GROUPS: usize = 64;

/// The subscription state of `contact` in `user`'s roster, with the item if there is one.
pub async fn load_state(
    cx: &Ctx<'_>,
    user: &BareJid,
    contact: &BareJid,
) -> Result<(Option<RosterItem>, State), StanzaError> {
    let (username, domain) = account_parts(user);
    let store = &cx.storage().roster;
    let item = store
        .item(username, domain, contact.as_str())
        .await
        .map_err(storage_error)?;
    let pending_in = store
        .has_request(username, domain, contact.as_str())
        .await
        .map_err(storage_error)?;
    let state = match &item {
        Some(i) => State {
            sub: Sub::parse(&i.subscription),
            ask: i.ask,
            pending_in,
            approved: i.approved,
        },
        None => State {
            pending_in,
            ..State::default()
        },
    };
    Ok((item, state))
}

/// Persists a subscription change of an item (creating it when the state calls for one) and
/// pushes it to the interested resources.
pub async fn save_state(
    cx: &Ctx<'_>,
    user: &BareJid,
    contact: &BareJid,
    item: Option<RosterItem>,
    before: State,
    after: State,
) -> Result<(), StanzaError> {
    let (username, domain) = account_parts(user);
    let store = &cx.storage().roster;
    if before.pending_in && !after.pending_in {
        store
            .remove_request(username, domain, contact.as_str())
            .await
            .map_err(storage_error)?;
    }
    let item_changed =
        before.sub != after.sub || before.ask != after.ask || before.approved != after.approved;
    if !item_changed {
        return Ok(());
    }
    let mut item = item.unwrap_or_else(|| RosterItem {
        contact: contact.to_string(),
        ..RosterItem::default()
    });
    item.subscription = after.sub.as_str().to_string();
    item.ask = after.ask;
    item.approved = after.approved;
    let version = store
        .put(username, domain, &item)
        .await
        .map_err(storage_error)?;
    push(cx, user, item_element(&item), version);
    Ok(())
}

/// The account's roster version and items, or the error a client sees.
pub async fn load(
    cx: &Ctx<'_>,
    user: &BareJid,
) -> Result<(i64, Arc<Vec<RosterItem>>), StanzaError> {
    let (username, domain) = account_parts(user);
    cx.storage()
        .roster
        .roster(username, domain)
        .await
        .map_err(storage_error)
}

/// The `<item/>` for a stored roster item.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", NS)
        .with_attr("jid", item.contact.clone())
        .with_attr("subscription", item.subscription.clone());
    if let Some(name) = &item.name {
        el.set_attr("name", name.clone());
    }
    if item.ask {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for group in &item.groups {
        el.push_child(Element::new("group", NS).with_text(group.clone()));
    }
    el
}

/// Sends a roster push (RFC 6121 §2.1.6) to every interested resource of `user`.
pub fn push(cx: &Ctx<'_>, user: &BareJid, item: Element, version: i64) {
    let query = Element::new("query", NS)
        .with_attr("ver", version.to_string())
        .with_child(item);
    for session in cx.sessions().resources(user.as_str()) {
        if !session.is_interested() {
            continue;
        }
        let id: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(12)
            .map(char::from)
            .collect();
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push-{id}"))
            .with_attr("to", session.jid.as_str())
            .with_child(query.clone());
        cx.push(&session, &iq);
    }
}

pub struct Roster;

impl Module for Roster {
    const NAME: &'static str = "roster";
    const SPECS: &'static [Spec] = &[
        Spec::xep("RFC 6121", "").note("§2 roster management, with versioning and pre-approval")
    ];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        r.iq(On::Account, NS, "query", Arc::new(Roster));
        // RFC 6121 §2.6.1 and §3.4: versioning and pre-approval are stream features.
        r.stream_feature(
            Stage::PostAuth,
            Box::new(|_| Some(Element::new("ver", VERSIONING_FEATURE))),
        );
        r.stream_feature(
            Stage::PostAuth,
            Box::new(|_| Some(Element::new("sub", PRE_APPROVAL_FEATURE))),
        );
        r.on(EventKind::AccountRemoving, 0, Arc::new(Roster));
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Roster {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let IqTarget::Account(user) = target else {
            return Err(StanzaErrorCondition::ServiceUnavailable.into());
        };
        // RFC 6121 §2.1.5: only the account itself may see or change its roster.
        let from = iq.from.as_ref().ok_or(StanzaErrorCondition::Forbidden)?;
        if from.to_bare() != *user {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let query = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        match iq.stanza_type() {
            "get" => get(cx, user, from, query).await,
            _ => set(cx, user, query).await,
        }
    }
}

/// An account being deleted: every contact is removed, so they are told (unavailable,
/// unsubscribe, unsubscribed) and their own rosters follow.
#[async_trait]
impl EventHandler for Roster {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        if let Event::AccountRemoving(user) = event {
            if let Err(e) = remove_all(cx, user).await {
                tracing::warn!(account = %user, error = ?e, "contacts not unsubscribed");
            }
        }
        Handled::Continue
    }
}

async fn get(cx: &Ctx<'_>, user: &BareJid, from: &Jid, query: &Element) -> IqResult {
    if let Ok(full) = from.try_as_full() {
        if let Some(session) = cx.sessions().get(full) {
            session.set_interested();
        }
    }
    let (version, items) = load(cx, user).await?;
    // §2.6.3: an unchanged roster is an empty result; pushes carry later changes.
    if query.attr("ver") == Some(version.to_string().as_str()) {
        return Ok(None);
    }
    let mut result = Element::new("query", NS).with_attr("ver", version.to_string());
    for item in items.iter() {
        result.push_child(item_element(item));
    }
    Ok(Some(result))
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

/// Validates the single item of a roster set (RFC 6121 §2.3.3).
fn parse_set_item(query: &Element) -> Result<(BareJid, &Element), StanzaError> {
    let mut items = query.children().filter(|c| c.is("item", NS));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaError::new(StanzaErrorCondition::BadRequest)
            .with_text("a roster set carries exactly one item"));
    };
    let jid = item
        .attr("jid")
        .and_then(|j| Jid::new(j).ok())
        .ok_or(StanzaErrorCondition::BadRequest)?;
    Ok((jid.to_bare(), item))
}

async fn set(cx: &mut Ctx<'_>, user: &BareJid, query: &Element) -> IqResult {
    let (contact, item_el) = parse_set_item(query)?;
    if item_el.attr("subscription") == Some("remove") {
        remove(cx, user, &contact).await?;
        return Ok(None);
    }
    let name = item_el.attr("name").map(str::to_string);
    if name.as_ref().is_some_and(|n| n.len() > MAX_TEXT) {
        return Err(not_acceptable("name too long"));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item_el.children().filter(|c| c.is("group", NS)) {
        let g = g.text();
        if g.is_empty() || g.len() > MAX_TEXT || g.contains('\n') {
            return Err(not_acceptable(
                "group names must be 1 to 1023 bytes on one line",
            ));
        }
        if groups.contains(&g) {
            return Err(
                StanzaError::new(StanzaErrorCondition::BadRequest).with_text("duplicate group")
            );
        }
        groups.push(g);
    }
    if groups.len() > MAX_GROUPS {
        return Err(not_acceptable("too many groups"));
    }
    let (username, domain) = account_parts(user);
    let store = &cx.storage().roster;
    let _locked = cx.account_locks().lock(user).await;
    // The subscription attribute of a set is ignored: only presence changes subscriptions.
    let mut item = match store
        .item(username, domain, contact.as_str())
        .await
        .map_err(storage_error)?
    {
        Some(existing) => existing,
        None => {
            let count = store.count(username, domain).await.map_err(storage_error)?;
            if count >= cx.limits().max_roster_items {
                return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_text("roster is full"));
            }
            RosterItem {
                contact: contact.to_string(),
                subscription: "none".into(),
                ..RosterItem::default()
            }
        }
    };
    item.name = name;
    item.groups = groups;
    let version = store
        .put(username, domain, &item)
        .await
        .map_err(storage_error)?;
    push(cx, user, item_element(&item), version);
    Ok(None)
}

/// Removes every contact of an account.
async fn remove_all(cx: &mut Ctx<'_>, user: &BareJid) -> Result<(), StanzaError> {
    let (_, items) = load(cx, user).await?;
    for item in items.iter() {
        if let Ok(contact) = BareJid::new(&item.contact) {
            remove(cx, user, &contact).await?;
        }
    }
    Ok(())
}

/// §2.5: removing an item also cancels both directions of the subscription.
async fn remove(cx: &mut Ctx<'_>, user: &BareJid, contact: &BareJid) -> Result<(), StanzaError> {
    let locked = cx.account_locks().lock(user).await;
    let (item, state) = load_state(cx, user, contact).await?;
    if item.is_none() {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    let (username, domain) = account_parts(user);
    let store = &cx.storage().roster;
    if state.pending_in {
        store
            .remove_request(username, domain, contact.as_str())
            .await
            .map_err(storage_error)?;
    }
    let version = store
        .remove(username, domain, contact.as_str())
        .await
        .map_err(storage_error)?;
    let removed = Element::new("item", NS)
        .with_attr("jid", contact.as_str())
        .with_attr("subscription", "remove");
    push(cx, user, removed, version);
    drop(locked);
    if state.sub.has_to() || state.ask {
        super::presence::send_subscription(cx, user, contact, Kind::Unsubscribe);
    }
    if state.sub.has_from() || state.pending_in {
        super::presence::send_subscription(cx, user, contact, Kind::Unsubscribed);
        super::presence::send_unavailable_to(cx, user, contact);
    }
    Ok(())
}
