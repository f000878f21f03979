//! Privacy lists (XEP-0016) and the blocking command (XEP-0191) over one store.
//!
//! The model: the blocklist *is* the default privacy list (XEP-0191 §6). Blocking a JID adds
//! a "deny everything to and from this JID" rule at the top of the default list (creating a
//! default list named `blocklist` if there is none); the blocklist a client sees is the set of
//! such rules in the default list. Editing the default list with XEP-0016 therefore changes
//! the blocklist, and vice versa; rules the blocklist cannot express (groups, subscription
//! states, single stanza kinds) stay invisible to it.
//!
//! Enforcement happens in one place, the router: [`Privacy::outbound`] on the way out of a
//! local sender (its session's active list, else its default list) and [`Privacy::inbound`]
//! on the way into a local recipient (the addressed session's active list, else the default).

mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{
    bare_str, ns, BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind,
};
use xmppd_storage::CacheMap;

use super::subscription::Sub;
use super::{account_parts, roster, storage_error};
use crate::modules::{IqResult, IqTarget, Module};
use crate::router::{Router, SessionHandle, Verdict};
pub use rules::{Contact, Kind, PrivacyList, NS};

pub const BLOCKING_NS: &str = "urn:xmpp:blocking";
const BLOCKING_ERRORS_NS: &str = "urn:xmpp:blocking:errors";
/// Storage areas: one document per list, and the name of the default list.
const AREA: &str = "privacy";
const DEFAULT_AREA: &str = "privacy-default";
/// Name of the default list created by the first block command.
const BLOCKLIST_NAME: &str = "blocklist";

/// One account's lists, as cached.
#[derive(Clone, Debug, Default)]
struct AccountLists {
    lists: BTreeMap<String, Arc<PrivacyList>>,
    default: Option<String>,
}

/// The privacy lists of every account seen, loaded on first use and kept in step with
/// every change made through this server.
pub struct Privacy {
    /// Keyed by the bare JID's string, so lookups need not build a `BareJid`.
    cache: CacheMap<String, Arc<AccountLists>>,
}

/// Accounts whose lists are remembered before the cache starts over.
const MAX_CACHED: usize = 50_000;

impl Default for Privacy {
    fn default() -> Self {
        Privacy {
            cache: CacheMap::new(MAX_CACHED),
        }
    }
}

fn kind_of(stanza: &Stanza, outbound: bool) -> Kind {
    match stanza.kind {
        StanzaKind::Message => Kind::Message,
        StanzaKind::Iq => Kind::Iq,
        StanzaKind::Presence => match (stanza.stanza_type(), outbound) {
            ("" | "unavailable", true) => Kind::PresenceOut,
            ("" | "unavailable", false) => Kind::PresenceIn,
            _ => Kind::Other,
        },
    }
}

impl Privacy {
    /// The lists of the account whose bare JID is `user`.
    async fn load(&self, router: &Router, user: &str) -> Arc<AccountLists> {
        let miss = match self.cache.lookup(user) {
            Ok(found) => return found,
            Err(miss) => miss,
        };
        let Ok(bare) = BareJid::new(user) else {
            return Arc::default();
        };
        let (username, domain) = account_parts(&bare);
        let data = &router.storage().data;
        let mut loaded = AccountLists::default();
        // Lists are few and small; the keys of the area are the list names.
        if let Ok(Some(index)) = data.get(username, domain, DEFAULT_AREA, "index").await {
            for name in index.lines().filter(|n| !n.is_empty()) {
                let stored = data.get(username, domain, AREA, name).await.ok().flatten();
                let parsed = stored
                    .and_then(|t| xmppd_xml::parse_fragment(&t, NS))
                    .and_then(|el| PrivacyList::parse(&el).ok());
                if let Some(list) = parsed {
                    loaded.lists.insert(name.to_string(), Arc::new(list));
                }
            }
        }
        loaded.default = data
            .get(username, domain, DEFAULT_AREA, "")
            .await
            .ok()
            .flatten()
            .filter(|d| loaded.lists.contains_key(d));
        let loaded = Arc::new(loaded);
        self.cache.fill(user.to_string(), loaded.clone(), miss);
        loaded
    }

    /// Writes an account's lists and default, then updates the cache. The caller holds the
    /// account's lock from the load its change is based on.
    async fn save(
        &self,
        router: &Router,
        user: &BareJid,
        lists: AccountLists,
    ) -> Result<(), StanzaError> {
        let (username, domain) = account_parts(user);
        let data = &router.storage().data;
        let old = self.load(router, user.as_str()).await;
        for name in old.lists.keys().filter(|n| !lists.lists.contains_key(*n)) {
            data.delete(username, domain, AREA, name)
                .await
                .map_err(storage_error)?;
        }
        for (name, list) in &lists.lists {
            if old.lists.get(name) != Some(list) {
                let text = list.to_element().to_xml_in(NS);
                data.put(username, domain, AREA, name, &text)
                    .await
                    .map_err(storage_error)?;
            }
        }
        let index: Vec<&str> = lists.lists.keys().map(String::as_str).collect();
        data.put(username, domain, DEFAULT_AREA, "index", &index.join("\n"))
            .await
            .map_err(storage_error)?;
        match &lists.default {
            Some(d) => data.put(username, domain, DEFAULT_AREA, "", d).await,
            None => data
                .delete(username, domain, DEFAULT_AREA, "")
                .await
                .map(|_| ()),
        }
        .map_err(storage_error)?;
        self.cache.store(user.to_string(), Arc::new(lists));
        Ok(())
    }

    /// Forgets an account (deleted).
    pub fn forget(&self, user: &BareJid) {
        self.cache.forget(user.as_str());
    }

    /// The list that applies to `session` (its active list), else the account's default.
    async fn applicable(
        &self,
        router: &Router,
        user: &str,
        session: Option<&SessionHandle>,
    ) -> Option<Arc<PrivacyList>> {
        let lists = self.load(router, user).await;
        let name = session
            .and_then(|s| s.active_list())
            .or_else(|| lists.default.clone())?;
        lists.lists.get(&name).cloned()
    }

    /// Evaluates `list` for a stanza exchanged with `other`; returns the matching rule.
    async fn decide(
        router: &Router,
        list: &PrivacyList,
        user: &str,
        kind: Kind,
        other: &Jid,
    ) -> Option<rules::Rule> {
        let contact = match BareJid::new(user) {
            Ok(bare) if list.needs_roster() => {
                // The cached roster item; pending requests play no part in privacy rules.
                let (username, domain) = account_parts(&bare);
                let item = router
                    .storage()
                    .roster
                    .item(username, domain, bare_str(other))
                    .await;
                match item {
                    Ok(Some(item)) => Contact {
                        sub: Sub::parse(&item.subscription),
                        groups: item.groups,
                    },
                    _ => Contact::default(),
                }
            }
            _ => Contact::default(),
        };
        list.first_match(kind, other, &contact).cloned()
    }

    /// The sender's own lists, for a stanza leaving a local account.
    pub async fn outbound(&self, router: &Router, stanza: &Stanza) -> Verdict {
        let (Some(from), Some(to)) = (&stanza.from, &stanza.to) else {
            return Verdict::Allow;
        };
        let user = bare_str(from);
        // A user's resources may always talk to each other (XEP-0016 §2.1).
        if from.node().is_none()
            || bare_str(to) == user
            || !router.is_local_domain(from.domain().as_str())
        {
            return Verdict::Allow;
        }
        let session = from
            .try_as_full()
            .ok()
            .and_then(|f| router.sessions().get(f));
        let Some(list) = self.applicable(router, user, session.as_deref()).await else {
            return Verdict::Allow;
        };
        let kind = kind_of(stanza, true);
        match Self::decide(router, &list, user, kind, to).await {
            Some(rule) if !rule.allow => {
                if stanza.kind == StanzaKind::Presence {
                    return Verdict::Drop;
                }
                // XEP-0016 §2.13 / XEP-0191 §3.5: not-acceptable, with <blocked/> for a
                // blocklist entry.
                let mut error = StanzaError::new(StanzaErrorCondition::NotAcceptable);
                if rule.blocked_jid().is_some() {
                    error.app_condition =
                        Some(Box::new(Element::new("blocked", BLOCKING_ERRORS_NS)));
                }
                Verdict::Reject(error)
            }
            _ => Verdict::Allow,
        }
    }

    /// Whether `user` itself or the server sent it: never filtered (XEP-0016 §2.1).
    fn exempt(router: &Router, from: &Jid, user: &str) -> bool {
        bare_str(from) == user
            || from.node().is_none() && router.is_local_domain(from.domain().as_str())
    }

    /// For a stanza to an account's bare JID on its way to `session`: whether the list that
    /// applies to that session (its active list, else the account's default) lets it in. The
    /// router asks this for each session it would deliver to.
    pub async fn session_accepts(
        &self,
        router: &Router,
        stanza: &Stanza,
        session: &SessionHandle,
    ) -> bool {
        let Some(from) = &stanza.from else {
            return true;
        };
        let user = bare_str(&session.jid);
        if Self::exempt(router, from, user) {
            return true;
        }
        let Some(list) = self.applicable(router, user, Some(session)).await else {
            return true;
        };
        let kind = kind_of(stanza, false);
        Self::decide(router, &list, user, kind, from)
            .await
            .is_none_or(|rule| rule.allow)
    }

    /// Whether a stanza to `to` (a bare JID) is decided session by session: messages and
    /// presence that go on to the account's sessions, when one of them has an active list.
    /// XEP-0016 §2.2 (business rules) allows no layering: such a session's active list
    /// replaces the default list, so the default must not refuse the stanza for everyone first.
    fn decided_per_session(router: &Router, stanza: &Stanza, to: &Jid) -> bool {
        to.try_as_full().is_err()
            && matches!(kind_of(stanza, false), Kind::Message | Kind::PresenceIn)
            && router
                .sessions()
                .resources(bare_str(to))
                .iter()
                .any(|s| s.is_available() && s.active_list().is_some())
    }

    /// The recipient's lists, for a stanza arriving for a local account.
    pub async fn inbound(&self, router: &Router, stanza: &Stanza, to: &Jid) -> Verdict {
        let session = to.try_as_full().ok().and_then(|f| router.sessions().get(f));
        if session.is_none() && Self::decided_per_session(router, stanza, to) {
            // Each session's own list decides ([`Self::session_accepts`]); what none takes
            // meets the default in [`Self::inbound_for_account`].
            return Verdict::Allow;
        }
        self.check_inbound(router, stanza, bare_str(to), session.as_deref())
            .await
    }

    /// The account's default list, for a stanza to the bare JID that no session took (it is
    /// about to be stored offline).
    pub async fn inbound_for_account(
        &self,
        router: &Router,
        stanza: &Stanza,
        user: &BareJid,
    ) -> Verdict {
        self.check_inbound(router, stanza, user.as_str(), None)
            .await
    }

    async fn check_inbound(
        &self,
        router: &Router,
        stanza: &Stanza,
        user: &str,
        session: Option<&SessionHandle>,
    ) -> Verdict {
        let Some(from) = &stanza.from else {
            return Verdict::Allow;
        };
        if Self::exempt(router, from, user) {
            return Verdict::Allow;
        }
        let Some(list) = self.applicable(router, user, session).await else {
            return Verdict::Allow;
        };
        let kind = kind_of(stanza, false);
        match Self::decide(router, &list, user, kind, from).await {
            Some(rule) if !rule.allow => match stanza.kind {
                // XEP-0016 §2.13: presence (of any type) vanishes without a word…
                StanzaKind::Presence => Verdict::Drop,
                // …messages and iq requests get service-unavailable, as if we were offline.
                StanzaKind::Message => {
                    Verdict::Reject(StanzaErrorCondition::ServiceUnavailable.into())
                }
                StanzaKind::Iq if stanza.is_iq_request() => {
                    Verdict::Reject(StanzaErrorCondition::ServiceUnavailable.into())
                }
                StanzaKind::Iq => Verdict::Drop,
            },
            _ => Verdict::Allow,
        }
    }
}

/// Sends an iq push to the sessions of `user` that `wants` it.
fn push(router: &Router, user: &BareJid, payload: Element, wants: impl Fn(&SessionHandle) -> bool) {
    for session in router.sessions().resources(user.as_str()) {
        if !wants(&session) {
            continue;
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push-{}", rand::random::<u32>()))
            .with_attr("to", session.jid.as_str())
            .with_child(payload.clone());
        router.deliver_element(&session, &iq);
    }
}

/// XEP-0016 §2.2: every connected resource hears that a list changed (by name only).
fn push_list_name(router: &Router, user: &BareJid, name: &str) {
    let query =
        Element::new("query", NS).with_child(Element::new("list", NS).with_attr("name", name));
    push(router, user, query, |_| true);
}

/// The requesting account and session, if the iq is addressed to the requester's own
/// account (lists are private: anything else is forbidden).
fn owner_session(
    router: &Router,
    target: IqTarget<'_>,
    iq: &Stanza,
) -> Result<(BareJid, Option<Arc<SessionHandle>>), StanzaError> {
    let from = iq.from.as_ref().ok_or(StanzaErrorCondition::Forbidden)?;
    let user = from.to_bare();
    if target != IqTarget::Account(&user) {
        return Err(StanzaErrorCondition::Forbidden.into());
    }
    let session = from
        .try_as_full()
        .ok()
        .and_then(|f| router.sessions().get(f));
    Ok((user, session))
}

/// Whether `jid` may receive `user`'s presence (a 'from' or 'both' subscription).
async fn may_see_presence(router: &Router, user: &BareJid, jid: &Jid) -> bool {
    roster::load_state(router, user, &jid.to_bare())
        .await
        .is_ok_and(|(_, s)| s.sub.has_from())
}

/// XEP-0016: the jabber:iq:privacy protocol.
pub struct PrivacyLists;

#[async_trait]
impl Module for PrivacyLists {
    fn account_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, router: &Router, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let (user, session) = owner_session(router, target, iq)?;
        let privacy = router.privacy();
        let query = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        // A set changes what it loads; nothing below routes, so the lock spans it all.
        let _locked = match iq.stanza_type() {
            "set" => Some(router.account_locks().lock(&user).await),
            _ => None,
        };
        let lists = privacy.load(router, user.as_str()).await;
        let mut children = query.children();
        let (first, second) = (children.next(), children.next());
        if iq.stanza_type() == "get" {
            return match (first, second) {
                (None, _) => Ok(Some(names(&lists, session.as_deref()))),
                (Some(list), None) if list.is("list", NS) => {
                    let name = list.attr("name").unwrap_or_default();
                    let found = lists
                        .lists
                        .get(name)
                        .ok_or(StanzaErrorCondition::ItemNotFound)?;
                    Ok(Some(
                        Element::new("query", NS).with_child(found.to_element()),
                    ))
                }
                _ => Err(StanzaErrorCondition::BadRequest.into()),
            };
        }
        // §2.1: a set carries exactly one child.
        let (Some(child), None) = (first, second) else {
            return Err(StanzaErrorCondition::BadRequest.into());
        };
        let name = child.attr("name").map(str::to_string);
        let others = || {
            router
                .sessions()
                .resources(user.as_str())
                .into_iter()
                .filter(|s| !session.as_ref().is_some_and(|me| Arc::ptr_eq(s, me)))
                .collect::<Vec<_>>()
        };
        match child.name() {
            "active" => {
                if let Some(n) = &name {
                    if !lists.lists.contains_key(n) {
                        return Err(StanzaErrorCondition::ItemNotFound.into());
                    }
                }
                if let Some(s) = &session {
                    s.set_active_list(name);
                }
                Ok(None)
            }
            "default" => {
                if name.as_ref().is_some_and(|n| !lists.lists.contains_key(n)) {
                    return Err(StanzaErrorCondition::ItemNotFound.into());
                }
                // §2.4: not while the default applies to another connected resource.
                if lists.default.is_some() && others().iter().any(|s| s.active_list().is_none()) {
                    return Err(StanzaErrorCondition::Conflict.into());
                }
                let mut updated = (*lists).clone();
                updated.default = name;
                privacy.save(router, &user, updated).await?;
                Ok(None)
            }
            "list" if child.children().next().is_none() => {
                let name = name.ok_or(StanzaErrorCondition::BadRequest)?;
                if !lists.lists.contains_key(&name) {
                    return Err(StanzaErrorCondition::ItemNotFound.into());
                }
                // §2.2: a list in use by another resource cannot be removed.
                let in_use = others().iter().any(|s| match s.active_list() {
                    Some(active) => active == name,
                    None => lists.default.as_deref() == Some(name.as_str()),
                });
                if in_use {
                    return Err(StanzaErrorCondition::Conflict.into());
                }
                let mut updated = (*lists).clone();
                updated.lists.remove(&name);
                if updated.default.as_deref() == Some(name.as_str()) {
                    updated.default = None;
                }
                privacy.save(router, &user, updated).await?;
                push_list_name(router, &user, &name);
                Ok(None)
            }
            "list" => {
                let list = PrivacyList::parse(child)?;
                check_groups(router, &user, &list).await?;
                let name = list.name.clone();
                let mut updated = (*lists).clone();
                updated.lists.insert(name.clone(), Arc::new(list));
                privacy.save(router, &user, updated).await?;
                push_list_name(router, &user, &name);
                Ok(None)
            }
            _ => Err(StanzaErrorCondition::BadRequest.into()),
        }
    }
}

/// §2.1: a group rule must name a group of the user's roster.
async fn check_groups(
    router: &Router,
    user: &BareJid,
    list: &PrivacyList,
) -> Result<(), StanzaError> {
    let groups: Vec<&String> = list
        .rules
        .iter()
        .filter_map(|r| match &r.matcher {
            rules::Matcher::Group(g) => Some(g),
            _ => None,
        })
        .collect();
    if groups.is_empty() {
        return Ok(());
    }
    let (username, domain) = account_parts(user);
    let (_, items) = router
        .storage()
        .roster
        .roster(username, domain)
        .await
        .map_err(storage_error)?;
    for g in groups {
        if !items.iter().any(|i| i.groups.contains(g)) {
            return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)
                .with_text(format!("no roster group {g:?}")));
        }
    }
    Ok(())
}

fn names(lists: &AccountLists, session: Option<&SessionHandle>) -> Element {
    let mut query = Element::new("query", NS);
    let mut active = Element::new("active", NS);
    if let Some(a) = session.and_then(|s| s.active_list()) {
        active.set_attr("name", a);
    }
    query.push_child(active);
    let mut default = Element::new("default", NS);
    if let Some(d) = &lists.default {
        default.set_attr("name", d.clone());
    }
    query.push_child(default);
    for name in lists.lists.keys() {
        query.push_child(Element::new("list", NS).with_attr("name", name.clone()));
    }
    query
}

/// XEP-0191: the blocking command.
pub struct Blocking;

fn blocking_items(el: &Element) -> Result<Vec<Jid>, StanzaError> {
    el.children()
        .filter(|c| c.is("item", BLOCKING_NS))
        .map(|i| {
            i.attr("jid")
                .and_then(|j| Jid::new(j).ok())
                .ok_or_else(|| StanzaError::new(StanzaErrorCondition::JidMalformed))
        })
        .collect()
}

fn item_list(name: &str, jids: &[Jid]) -> Element {
    let mut el = Element::new(name, BLOCKING_NS);
    for j in jids {
        el.push_child(Element::new("item", BLOCKING_NS).with_attr("jid", j.as_str()));
    }
    el
}

#[async_trait]
impl Module for Blocking {
    fn account_namespaces(&self) -> &'static [&'static str] {
        &[BLOCKING_NS]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[BLOCKING_NS]
    }

    async fn handle_iq(&self, router: &Router, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let (user, session) = owner_session(router, target, iq)?;
        let privacy = router.privacy();
        let payload = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        let kind = (iq.stanza_type(), payload.name());
        let jids = match kind {
            ("set", "block" | "unblock") => blocking_items(payload)?,
            _ => Vec::new(),
        };
        if kind == ("set", "block") {
            if jids.is_empty() {
                return Err(StanzaErrorCondition::BadRequest.into());
            }
            // §3.3: the blocked entity sees us go offline (while it still may).
            for jid in &jids {
                if may_see_presence(router, &user, jid).await {
                    super::presence::send_unavailable_to(router, &user, &jid.to_bare()).await;
                }
            }
        }
        // Held from the load to the save; released before anything is routed.
        let locked = router.account_locks().lock(&user).await;
        let lists = privacy.load(router, user.as_str()).await;
        let default = lists
            .default
            .as_ref()
            .and_then(|d| lists.lists.get(d))
            .cloned();
        match kind {
            ("get", "blocklist") => {
                if let Some(s) = &session {
                    s.set_blocklist_interested();
                }
                let blocked: Vec<Jid> = default.iter().flat_map(|l| l.blocked().cloned()).collect();
                Ok(Some(item_list("blocklist", &blocked)))
            }
            ("set", "block") => {
                let mut updated = (*lists).clone();
                let name = updated
                    .default
                    .clone()
                    .unwrap_or_else(|| BLOCKLIST_NAME.to_string());
                let mut list = default
                    .map(|l| (*l).clone())
                    .unwrap_or_else(|| PrivacyList {
                        name: name.clone(),
                        rules: Vec::new(),
                    });
                list.block(&jids);
                updated.lists.insert(name.clone(), Arc::new(list));
                updated.default = Some(name.clone());
                privacy.save(router, &user, updated).await?;
                push(
                    router,
                    &user,
                    item_list("block", &jids),
                    SessionHandle::is_blocklist_interested,
                );
                push_list_name(router, &user, &name);
                Ok(None)
            }
            ("set", "unblock") => {
                let Some(list) = default else {
                    return Ok(None);
                };
                let mut list = (*list).clone();
                let unblocked: Vec<Jid> = if jids.is_empty() {
                    list.blocked().cloned().collect()
                } else {
                    jids.clone()
                };
                list.unblock(if jids.is_empty() { None } else { Some(&jids) });
                let name = list.name.clone();
                let mut updated = (*lists).clone();
                updated.lists.insert(name.clone(), Arc::new(list));
                privacy.save(router, &user, updated).await?;
                push(
                    router,
                    &user,
                    item_list("unblock", &jids),
                    SessionHandle::is_blocklist_interested,
                );
                push_list_name(router, &user, &name);
                drop(locked);
                // §3.4: those who may see our presence get it again.
                for jid in &unblocked {
                    if may_see_presence(router, &user, jid).await {
                        super::presence::send_current_to(router, &user, &jid.to_bare()).await;
                    }
                }
                Ok(None)
            }
            _ => Err(StanzaErrorCondition::BadRequest.into()),
        }
    }
}
