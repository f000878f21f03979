//! Privacy lists (XEP-0016) and the blocking command (XEP-0191) over one store.
//!
//! The model: the blocklist *is* the default privacy list (XEP-0191 §6). Blocking a JID adds
//! a "deny everything to and from this JID" rule at the top of the default list (creating a
//! default list named `blocklist` if there is none); the blocklist a client sees is the set of
//! such rules in the default list. Editing the default list with XEP-0016 therefore changes
//! the blocklist, and vice versa; rules the blocklist cannot express (groups, subscription
//! states, single stanza kinds) stay invisible to it.
//!
//! Enforcement is this module's filters: [`Lists::outbound`] on the way out of a local
//! sender (its session's active list, else its default list), [`Lists::inbound`] on the way
//! into a local recipient (the addressed session's active list, else the default),
//! [`Lists::session_accepts`] for each session a bare-JID stanza goes to, and the account's
//! default list for a message no session took, before offline storage.

mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use xmppd_core::{
    bare_str, ns, BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind,
};
use xmppd_storage::CacheMap;

use super::subscription::Sub;
use super::{account_parts, roster, storage_error, NoConfig};
pub use rules::{Contact, Kind, PrivacyList, NS};
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, ExtKey, Filter, Handled, IqHandler, IqResult, IqTarget,
    Module, On, Point, Registry, Spec, Verdict,
};
use xmppd_server::router::SessionHandle;

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
pub struct Lists {
    /// Keyed by the bare JID's string, so lookups need not build a `BareJid`.
    cache: CacheMap<String, Arc<AccountLists>>,
    session: ExtKey<SessionPrivacy>,
}

/// What one session chose.
#[derive(Default)]
struct SessionPrivacy {
    /// Its XEP-0016 active list, if it chose one.
    active: Mutex<Option<String>>,
    /// Requested the blocklist, so it gets blocking pushes (XEP-0191 §3.3).
    blocklist_interested: AtomicBool,
}

/// Accounts whose lists are remembered before the cache starts over.
const MAX_CACHED: usize = 50_000;

/// The module: privacy lists and the blocking command share [`Lists`].
pub struct Privacy;

impl Module for Privacy {
    const NAME: &'static str = "privacy";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0016", "1.7"), Spec::xep("XEP-0191", "1.3")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        let im = &r.server_config().im;
        let (privacy_lists, blocking) = (im.privacy_lists, im.blocking);
        if !privacy_lists && !blocking {
            return Ok(());
        }
        let lists = Arc::new(Lists {
            cache: CacheMap::new(MAX_CACHED),
            session: r.session_ext(),
        });
        if privacy_lists {
            r.iq(
                On::Account,
                NS,
                "query",
                Arc::new(PrivacyLists(lists.clone())),
            );
            r.disco_feature(On::Server, NS);
        }
        if blocking {
            let handler = Arc::new(Blocking(lists.clone()));
            for name in ["blocklist", "block", "unblock"] {
                r.iq(On::Account, BLOCKING_NS, name, handler.clone());
            }
            r.disco_feature(On::Server, BLOCKING_NS);
        }
        // Early on every point: a refused stanza should cost the other modules nothing.
        for point in [Point::Outbound, Point::Inbound, Point::Deliver] {
            r.filter(point, 100, lists.clone());
        }
        // Before offline storage: the default list may refuse what no session took.
        r.on(EventKind::Undelivered, 100, lists.clone());
        r.on(EventKind::AccountRemoved, 0, lists);
        Ok(())
    }
}

#[async_trait]
impl Filter for Lists {
    async fn check(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        to: &Jid,
        point: Point,
        session: Option<&Arc<SessionHandle>>,
    ) -> Verdict {
        match (point, session) {
            (Point::Outbound, _) => self.outbound(cx, stanza).await,
            (Point::Inbound, _) => self.inbound(cx, stanza, to).await,
            // Only bare-JID deliveries are decided per session; a full JID's session was
            // judged at the inbound point already.
            (Point::Deliver, Some(session)) if to.try_as_full().is_err() => {
                if self.session_accepts(cx, stanza, session).await {
                    Verdict::Allow
                } else {
                    Verdict::Drop
                }
            }
            (Point::Deliver, _) => Verdict::Allow,
        }
    }
}

#[async_trait]
impl EventHandler for Lists {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        match event {
            Event::Undelivered { stanza, user } => {
                match self.inbound_for_account(cx, stanza, user).await {
                    Verdict::Allow => Handled::Continue,
                    Verdict::Drop | Verdict::Held => Handled::Stop,
                    Verdict::Reject(e) => {
                        cx.bounce(stanza, e);
                        Handled::Stop
                    }
                }
            }
            Event::AccountRemoved(user) => {
                self.cache.forget(user.as_str());
                Handled::Continue
            }
            _ => Handled::Continue,
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

impl Lists {
    fn session_state(&self, session: &SessionHandle) -> Arc<SessionPrivacy> {
        session.ext.get_or_default(self.session)
    }

    fn blocklist_interested(&self, session: &SessionHandle) -> bool {
        session
            .ext
            .get(self.session)
            .is_some_and(|s| s.blocklist_interested.load(Ordering::Relaxed))
    }

    /// The active list a session chose, if any.
    fn active_list(&self, session: &SessionHandle) -> Option<String> {
        let state = session.ext.get(self.session)?;
        let active = state.active.lock().unwrap_or_else(|e| e.into_inner());
        active.clone()
    }

    /// The lists of the account whose bare JID is `user`.
    async fn load(&self, cx: &Ctx<'_>, user: &str) -> Arc<AccountLists> {
        let miss = match self.cache.lookup(user) {
            Ok(found) => return found,
            Err(miss) => miss,
        };
        let Ok(bare) = BareJid::new(user) else {
            return Arc::default();
        };
        let (username, domain) = account_parts(&bare);
        let data = &cx.storage().data;
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
        cx: &Ctx<'_>,
        user: &BareJid,
        lists: AccountLists,
    ) -> Result<(), StanzaError> {
        let (username, domain) = account_parts(user);
        let data = &cx.storage().data;
        let old = self.load(cx, user.as_str()).await;
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

    /// The list that applies to `session` (its active list), else the account's default.
    async fn applicable(
        &self,
        cx: &Ctx<'_>,
        user: &str,
        session: Option<&SessionHandle>,
    ) -> Option<Arc<PrivacyList>> {
        let lists = self.load(cx, user).await;
        let name = session
            .and_then(|s| self.active_list(s))
            .or_else(|| lists.default.clone())?;
        lists.lists.get(&name).cloned()
    }

    /// Evaluates `list` for a stanza exchanged with `other`; returns the matching rule.
    async fn decide(
        cx: &Ctx<'_>,
        list: &PrivacyList,
        user: &str,
        kind: Kind,
        other: &Jid,
    ) -> Option<rules::Rule> {
        let contact = match BareJid::new(user) {
            Ok(bare) if list.needs_roster() => {
                // The cached roster item; pending requests play no part in privacy rules.
                let (username, domain) = account_parts(&bare);
                let item = cx
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
    pub async fn outbound(&self, cx: &Ctx<'_>, stanza: &Stanza) -> Verdict {
        let (Some(from), Some(to)) = (&stanza.from, &stanza.to) else {
            return Verdict::Allow;
        };
        let user = bare_str(from);
        // A user's resources may always talk to each other (XEP-0016 §2.1).
        if from.node().is_none()
            || bare_str(to) == user
            || !cx.is_local_domain(from.domain().as_str())
        {
            return Verdict::Allow;
        }
        if self.load(cx, user).await.lists.is_empty() {
            return Verdict::Allow;
        }
        let session = from.try_as_full().ok().and_then(|f| cx.sessions().get(f));
        let Some(list) = self.applicable(cx, user, session.as_deref()).await else {
            return Verdict::Allow;
        };
        let kind = kind_of(stanza, true);
        match Self::decide(cx, &list, user, kind, to).await {
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
    fn exempt(cx: &Ctx<'_>, from: &Jid, user: &str) -> bool {
        bare_str(from) == user
            || from.node().is_none() && cx.is_local_domain(from.domain().as_str())
    }

    /// For a stanza to an account's bare JID on its way to `session`: whether the list that
    /// applies to that session (its active list, else the account's default) lets it in. The
    /// router asks this for each session it would deliver to.
    pub async fn session_accepts(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        session: &SessionHandle,
    ) -> bool {
        let Some(from) = &stanza.from else {
            return true;
        };
        let user = bare_str(&session.jid);
        if Self::exempt(cx, from, user) {
            return true;
        }
        let Some(list) = self.applicable(cx, user, Some(session)).await else {
            return true;
        };
        let kind = kind_of(stanza, false);
        Self::decide(cx, &list, user, kind, from)
            .await
            .is_none_or(|rule| rule.allow)
    }

    /// Whether a stanza to `to` (a bare JID) is decided session by session: messages and
    /// presence that go on to the account's sessions, when one of them has an active list.
    /// XEP-0016 §2.2 (business rules) allows no layering: such a session's active list
    /// replaces the default list, so the default must not refuse the stanza for everyone first.
    fn decided_per_session(&self, cx: &Ctx<'_>, stanza: &Stanza, to: &Jid) -> bool {
        to.try_as_full().is_err()
            && matches!(kind_of(stanza, false), Kind::Message | Kind::PresenceIn)
            && cx
                .sessions()
                .resources(bare_str(to))
                .iter()
                .any(|s| s.is_available() && self.active_list(s).is_some())
    }

    /// The recipient's lists, for a stanza arriving for a local account.
    pub async fn inbound(&self, cx: &Ctx<'_>, stanza: &Stanza, to: &Jid) -> Verdict {
        // Most accounts have no list: then no session needs looking up (a room's fan-out
        // asks this for each of its occupants).
        if self.load(cx, bare_str(to)).await.lists.is_empty() {
            return Verdict::Allow;
        }
        let session = to.try_as_full().ok().and_then(|f| cx.sessions().get(f));
        if session.is_none() && self.decided_per_session(cx, stanza, to) {
            // Each session's own list decides ([`Self::session_accepts`]); what none takes
            // meets the default in [`Self::inbound_for_account`].
            return Verdict::Allow;
        }
        self.check_inbound(cx, stanza, bare_str(to), session.as_deref())
            .await
    }

    /// The account's default list, for a stanza to the bare JID that no session took (it is
    /// about to be stored offline).
    pub async fn inbound_for_account(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        user: &BareJid,
    ) -> Verdict {
        self.check_inbound(cx, stanza, user.as_str(), None).await
    }

    async fn check_inbound(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        user: &str,
        session: Option<&SessionHandle>,
    ) -> Verdict {
        let Some(from) = &stanza.from else {
            return Verdict::Allow;
        };
        if Self::exempt(cx, from, user) {
            return Verdict::Allow;
        }
        let Some(list) = self.applicable(cx, user, session).await else {
            return Verdict::Allow;
        };
        let kind = kind_of(stanza, false);
        match Self::decide(cx, &list, user, kind, from).await {
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
fn push(cx: &Ctx<'_>, user: &BareJid, payload: Element, wants: impl Fn(&SessionHandle) -> bool) {
    for session in cx.sessions().resources(user.as_str()) {
        if !wants(&session) {
            continue;
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push-{}", rand::random::<u32>()))
            .with_attr("to", session.jid.as_str())
            .with_child(payload.clone());
        cx.push(&session, &iq);
    }
}

/// XEP-0016 §2.2: every connected resource hears that a list changed (by name only).
fn push_list_name(cx: &Ctx<'_>, user: &BareJid, name: &str) {
    let query =
        Element::new("query", NS).with_child(Element::new("list", NS).with_attr("name", name));
    push(cx, user, query, |_| true);
}

/// The requesting account and session, if the iq is addressed to the requester's own
/// account (lists are private: anything else is forbidden).
fn owner_session(
    cx: &Ctx<'_>,
    target: IqTarget<'_>,
    iq: &Stanza,
) -> Result<(BareJid, Option<Arc<SessionHandle>>), StanzaError> {
    let from = iq.from.as_ref().ok_or(StanzaErrorCondition::Forbidden)?;
    let user = from.to_bare();
    if target != IqTarget::Account(&user) {
        return Err(StanzaErrorCondition::Forbidden.into());
    }
    let session = from.try_as_full().ok().and_then(|f| cx.sessions().get(f));
    Ok((user, session))
}

/// Whether `jid` may receive `user`'s presence (a 'from' or 'both' subscription).
async fn may_see_presence(cx: &Ctx<'_>, user: &BareJid, jid: &Jid) -> bool {
    roster::load_state(cx, user, &jid.to_bare())
        .await
        .is_ok_and(|(_, s)| s.sub.has_from())
}

/// XEP-0016: the jabber:iq:privacy protocol.
struct PrivacyLists(Arc<Lists>);

#[async_trait]
impl IqHandler for PrivacyLists {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let (user, session) = owner_session(cx, target, iq)?;
        let privacy = &*self.0;
        let query = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        // A set changes what it loads; nothing below routes, so the lock spans it all.
        let _locked = match iq.stanza_type() {
            "set" => Some(cx.account_locks().lock(&user).await),
            _ => None,
        };
        let lists = privacy.load(cx, user.as_str()).await;
        let mut children = query.children();
        let (first, second) = (children.next(), children.next());
        if iq.stanza_type() == "get" {
            return match (first, second) {
                (None, _) => {
                    let active = session.as_ref().and_then(|s| privacy.active_list(s));
                    Ok(Some(names(&lists, active)))
                }
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
            cx.sessions()
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
                    let state = privacy.session_state(s);
                    *state.active.lock().unwrap_or_else(|e| e.into_inner()) = name;
                }
                Ok(None)
            }
            "default" => {
                if name.as_ref().is_some_and(|n| !lists.lists.contains_key(n)) {
                    return Err(StanzaErrorCondition::ItemNotFound.into());
                }
                // §2.4: not while the default applies to another connected resource.
                if lists.default.is_some()
                    && others().iter().any(|s| privacy.active_list(s).is_none())
                {
                    return Err(StanzaErrorCondition::Conflict.into());
                }
                let mut updated = (*lists).clone();
                updated.default = name;
                privacy.save(cx, &user, updated).await?;
                Ok(None)
            }
            "list" if child.children().next().is_none() => {
                let name = name.ok_or(StanzaErrorCondition::BadRequest)?;
                if !lists.lists.contains_key(&name) {
                    return Err(StanzaErrorCondition::ItemNotFound.into());
                }
                // §2.2: a list in use by another resource cannot be removed.
                let in_use = others().iter().any(|s| match privacy.active_list(s) {
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
                privacy.save(cx, &user, updated).await?;
                push_list_name(cx, &user, &name);
                Ok(None)
            }
            "list" => {
                let list = PrivacyList::parse(child)?;
                check_groups(cx, &user, &list).await?;
                let name = list.name.clone();
                let mut updated = (*lists).clone();
                updated.lists.insert(name.clone(), Arc::new(list));
                privacy.save(cx, &user, updated).await?;
                push_list_name(cx, &user, &name);
                Ok(None)
            }
            _ => Err(StanzaErrorCondition::BadRequest.into()),
        }
    }
}

/// §2.1: a group rule must name a group of the user's roster.
async fn check_groups(cx: &Ctx<'_>, user: &BareJid, list: &PrivacyList) -> Result<(), StanzaError> {
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
    let (_, items) = roster::load(cx, user).await?;
    for g in groups {
        if !items.iter().any(|i| i.groups.contains(g)) {
            return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)
                .with_text(format!("no roster group {g:?}")));
        }
    }
    Ok(())
}

fn names(lists: &AccountLists, active_name: Option<String>) -> Element {
    let mut query = Element::new("query", NS);
    let mut active = Element::new("active", NS);
    if let Some(a) = active_name {
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
struct Blocking(Arc<Lists>);

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
impl IqHandler for Blocking {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let (user, session) = owner_session(cx, target, iq)?;
        let privacy = &*self.0;
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
            // §3.3: the blocked entity sees us go offline. It is routed after the block is
            // saved, so it must pass the user's own (new) lists.
            for jid in &jids {
                if may_see_presence(cx, &user, jid).await {
                    for el in super::presence::unavailable_from(cx, &user, &jid.to_bare()) {
                        if let Ok(stanza) = Stanza::parse(el) {
                            cx.route_past_sender_lists(stanza);
                        }
                    }
                }
            }
        }
        // Held from the load to the save; released before anything is routed.
        let locked = cx.account_locks().lock(&user).await;
        let lists = privacy.load(cx, user.as_str()).await;
        let default = lists
            .default
            .as_ref()
            .and_then(|d| lists.lists.get(d))
            .cloned();
        match kind {
            ("get", "blocklist") => {
                if let Some(s) = &session {
                    let state = privacy.session_state(s);
                    state.blocklist_interested.store(true, Ordering::Relaxed);
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
                privacy.save(cx, &user, updated).await?;
                push(cx, &user, item_list("block", &jids), |s| {
                    privacy.blocklist_interested(s)
                });
                push_list_name(cx, &user, &name);
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
                privacy.save(cx, &user, updated).await?;
                push(cx, &user, item_list("unblock", &jids), |s| {
                    privacy.blocklist_interested(s)
                });
                push_list_name(cx, &user, &name);
                drop(locked);
                // §3.4: those who may see our presence get it again.
                for jid in &unblocked {
                    if may_see_presence(cx, &user, jid).await {
                        super::presence::send_current_to(cx, &user, &jid.to_bare());
                    }
                }
                Ok(None)
            }
            _ => Err(StanzaErrorCondition::BadRequest.into()),
        }
    }
}
