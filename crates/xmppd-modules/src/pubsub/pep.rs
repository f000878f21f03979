//! What only PEP does (XEP-0163): the account's bare JID is the service, presence and caps
//! stand in for subscriptions (§4.3, §4.4), and the last item goes to whoever becomes
//! available with `NODE+notify` (§4.3.2). Unknown caps are asked of the resource once
//! (XEP-0115 §6.3) by a task, so the presence that brought them is not held up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use xmppd_core::{ns, BareJid, Element, Jid, Stanza, StanzaErrorCondition};

use super::caps::{self, Features};
use super::node::{may_access, may_discover, SendLast};
use super::service::Judge;
use super::{PubSub, Service};
use xmppd_server::registry::{
    Ctx, DiscoProvider, Event, EventHandler, ExtKey, Handled, IqHandler, IqResult, IqTarget,
};

/// How long a client has to answer the caps query.
const CAPS_TIMEOUT: Duration = Duration::from_secs(30);
/// Caps queries to resources on other servers in flight at once, server-wide: a remote
/// server inventing hashes cannot make us ask without end.
pub const MAX_REMOTE_QUERIES: usize = 64;

/// Who a caps query goes to.
enum Asker {
    Local(std::sync::Arc<xmppd_server::router::SessionHandle>),
    /// A resource on another server, and the quota slot the query holds.
    Remote(xmppd_core::FullJid, RemoteQuery),
}

/// One of [`MAX_REMOTE_QUERIES`], given back when dropped.
pub struct RemoteQuery(std::sync::Arc<AtomicUsize>);

impl RemoteQuery {
    fn take(count: &std::sync::Arc<AtomicUsize>) -> Option<RemoteQuery> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let slot = RemoteQuery(count.clone());
        (before < MAX_REMOTE_QUERIES).then_some(slot)
    }
}

impl Drop for RemoteQuery {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
/// Caps queries one session may cause: each verified answer is stored for good, so a
/// client inventing hashes must not fill the database.
pub const MAX_QUERIES_PER_SESSION: usize = 8;

#[async_trait]
impl IqHandler for PubSub {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let IqTarget::Account(user) = target else {
            return Err(StanzaErrorCondition::ServiceUnavailable.into());
        };
        PubSub::handle(self, cx, &Service::Pep(user.clone()), iq).await
    }
}

#[async_trait]
impl EventHandler for PubSub {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        match event {
            Event::PresenceReceived {
                from,
                user,
                presence,
            } => match presence.attr("type").unwrap_or_default() {
                "" | "unavailable" => self.presence(cx, from, user, presence).await,
                "subscribed" => self.approved(cx, from, user).await,
                _ => {}
            },
            Event::AccountRemoved(user) => {
                self.caps.forget(user.as_str());
                if let Err(e) = cx.storage().pubsub.remove_service(user.as_str()).await {
                    tracing::error!(error = %e, "PEP data of a deleted account not removed");
                }
            }
            _ => {}
        }
        Handled::Continue
    }
}

impl PubSub {
    /// `user` heard presence from `from`: track its caps; send last items when it is newly
    /// available (or its caps changed).
    async fn presence(&self, cx: &mut Ctx<'_>, from: &Jid, user: &BareJid, presence: &Element) {
        let available = presence.attr("type").is_none_or(str::is_empty);
        let advertised = caps::advertised(presence).filter(|_| available);
        let ver = advertised.as_ref().map(|(_, v)| v.clone());
        if !self.caps.note(user.as_str(), from.as_str(), ver) {
            return;
        }
        let Some((node, ver)) = advertised else {
            return;
        };
        if let Some(features) = self.caps.features(cx.storage(), &ver).await {
            return self.last_items(cx, user, from, &features).await;
        }
        let Ok(full) = from.try_as_full() else {
            return;
        };
        // A local resource is asked directly (and has a quota per session); a remote one
        // through federation, with a quota over all remote queries in flight.
        let asker = match cx.sessions().get(full) {
            Some(session) => {
                let asked = session.ext.get_or_default(self.queries);
                if asked.load(Ordering::Relaxed) >= MAX_QUERIES_PER_SESSION {
                    return tracing::debug!(jid = %from, "caps queries used up for this session");
                }
                asked.fetch_add(1, Ordering::Relaxed);
                Asker::Local(session)
            }
            None if cx.is_local_domain(full.domain().as_str()) => return,
            None => match RemoteQuery::take(&self.remote_queries) {
                Some(slot) => Asker::Remote(full.clone(), slot),
                None => return tracing::debug!(jid = %from, "too many remote caps queries"),
            },
        };
        if !self
            .caps
            .wait_for(&ver, (user.to_string(), from.to_string()))
        {
            return;
        }
        let domain = user.domain().to_string();
        let (Some(me), handle, requests) =
            (self.me.upgrade(), cx.server_handle(), cx.requests().clone())
        else {
            return;
        };
        tokio::spawn(async move {
            let query =
                Element::new("query", ns::DISCO_INFO).with_attr("node", format!("{node}#{ver}"));
            let Some(state) = handle.upgrade() else {
                return;
            };
            let answer = match asker {
                Asker::Local(session) => requests.get(&session, query, CAPS_TIMEOUT).await,
                Asker::Remote(to, _slot) => {
                    let router = &state.router;
                    requests
                        .get_routed(router, &domain, &to, query, CAPS_TIMEOUT)
                        .await
                }
            };
            let info = answer
                .filter(|a| a.stanza_type() == "result")
                .and_then(|a| {
                    a.iq_payload()
                        .filter(|q| q.is("query", ns::DISCO_INFO))
                        .cloned()
                });
            let features = match info {
                Some(q) => me.caps.verify(state.router.storage(), &ver, &q).await,
                None => None,
            };
            let waiting = me.caps.answered(&ver);
            let Some(features) = features else { return };
            let mut cx = state.router.context();
            for (account, full) in waiting {
                if let (Ok(user), Ok(jid)) = (BareJid::new(&account), Jid::new(&full)) {
                    me.last_items(&mut cx, &user, &jid, &features).await;
                }
            }
            state.router.apply(cx).await;
        });
    }

    /// `approver` (a local account) let `contact` see its presence, so its PEP too: the
    /// contact's resources it already heard from get the last items now, not at their next
    /// presence (their presence may have come before the approval).
    async fn approved(&self, cx: &mut Ctx<'_>, approver: &Jid, contact: &BareJid) {
        if !cx.is_local_domain(approver.domain().as_str()) {
            return;
        }
        let owner = approver.to_bare();
        for (full, ver) in self.caps.heard_by(owner.as_str()) {
            let Ok(jid) = Jid::new(&full) else { continue };
            if jid.to_bare() != *contact {
                continue;
            }
            if let Some(features) = self.caps.features(cx.storage(), &ver).await {
                self.last_items(cx, &owner, &jid, &features).await;
            }
        }
    }

    /// §4.3.2: the last item of every node of `user` that `to` asks for with `+notify` and
    /// may see, sent to its full JID.
    async fn last_items(&self, cx: &mut Ctx<'_>, user: &BareJid, to: &Jid, features: &Features) {
        let svc = Service::Pep(user.clone());
        let names = match cx.storage().pubsub.nodes(user.as_str()).await {
            Ok(names) => names,
            Err(e) => return tracing::warn!(error = %e, "PEP nodes unavailable"),
        };
        let wanted: Vec<String> = names
            .into_iter()
            .filter(|n| features.contains(&format!("{n}+notify")))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Ok(judge) = Judge::new(cx, &svc).await else {
            return;
        };
        for name in wanted {
            let Ok(Some(node)) = self.load(cx, &svc, &name).await else {
                continue;
            };
            if node.config.send_last_published_item == SendLast::OnSubAndPresence
                && judge.implicitly_subscribed(&node, &to.to_bare())
            {
                let _ = self.send_last(cx, &svc, &node, to.as_str()).await;
            }
        }
    }

    /// disco#items of a service (XEP-0060 §5.2, §5.5): its nodes, or the items of one,
    /// as far as `from` may see them.
    pub async fn disco_items(
        &self,
        cx: &Ctx<'_>,
        svc: &Service,
        node: Option<&str>,
        from: Option<&Jid>,
    ) -> Vec<Element> {
        let Some(from) = from else { return Vec::new() };
        let Ok(judge) = Judge::new(cx, svc).await else {
            return Vec::new();
        };
        let names = match node {
            Some(n) => vec![n.to_string()],
            None => cx
                .storage()
                .pubsub
                .nodes(svc.jid())
                .await
                .unwrap_or_default(),
        };
        let mut out = Vec::new();
        for name in names {
            let Ok(Some(n)) = self.load(cx, svc, &name).await else {
                continue;
            };
            let relation = judge.relation_of(&n, from);
            // The node itself is listed to whoever may ask to subscribe; its items to
            // whoever may read them.
            let visible = match node {
                None => may_discover(&n.config, &relation),
                Some(_) => may_access(&n.config, &relation).is_ok(),
            };
            if !visible {
                continue;
            }
            if node.is_none() {
                out.push(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", svc.jid())
                        .with_attr("node", name),
                );
                continue;
            }
            let items = cx
                .storage()
                .pubsub
                .items(svc.jid(), &name, self.config.max_items)
                .await
                .unwrap_or_default();
            out.extend(items.into_iter().map(|i| {
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", svc.jid())
                    .with_attr("name", i.id)
            }));
        }
        out
    }

    /// disco#info of a node (§5.3): a leaf, if `from` may see it.
    pub async fn disco_node(
        &self,
        cx: &Ctx<'_>,
        svc: &Service,
        node: &str,
        from: Option<&Jid>,
    ) -> Option<Element> {
        let n = self.load(cx, svc, node).await.ok()??;
        let judge = Judge::new(cx, svc).await.ok()?;
        may_discover(&n.config, &judge.relation_of(&n, from?)).then_some(())?;
        Some(
            Element::new("query", ns::DISCO_INFO)
                .with_attr("node", node)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "leaf"),
                )
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", super::NS)),
        )
    }
}

/// An account's PEP nodes in its disco#items (XEP-0163 §7).
#[async_trait]
impl DiscoProvider for PubSub {
    async fn items(
        &self,
        cx: &mut Ctx<'_>,
        target: IqTarget<'_>,
        node: Option<&str>,
        from: Option<&Jid>,
    ) -> Vec<Element> {
        match target {
            IqTarget::Account(user) => {
                self.disco_items(cx, &Service::Pep(user.clone()), node, from)
                    .await
            }
            IqTarget::Server(_) => Vec::new(),
        }
    }

    async fn node_info(
        &self,
        cx: &mut Ctx<'_>,
        target: IqTarget<'_>,
        node: &str,
        from: Option<&Jid>,
    ) -> Option<Result<Element, xmppd_core::StanzaError>> {
        let IqTarget::Account(user) = target else {
            return None;
        };
        self.disco_node(cx, &Service::Pep(user.clone()), node, from)
            .await
            .map(Ok)
    }
}

/// Keeps the module reachable from the tasks it starts.
pub type Weak = std::sync::Weak<PubSub>;

/// The module, built so that it can hand itself to a task.
pub fn new(
    config: super::Config,
    queries: ExtKey<AtomicUsize>,
    wrapped: super::Wrapped,
) -> Arc<PubSub> {
    Arc::new_cyclic(|me| PubSub {
        config,
        caps: super::Caps::default(),
        configs: super::node::ConfigTexts::default(),
        queries,
        remote_queries: Arc::default(),
        wrapped,
        me: me.clone(),
    })
}
