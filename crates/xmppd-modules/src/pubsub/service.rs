//! The XEP-0060 iq protocol, shared by PEP and the generic service: §6 (subscribers), §7
//! (publishers), §8 (owners), and the notifications they cause (§7.1.2, §7.2.2, §8.4.2,
//! §8.5.2, §8.2.5).

use std::collections::HashSet;
use std::sync::Arc;

use xmppd_core::{ns, BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition as C};
use xmppd_storage::{Member, RosterItem, StoredItem};

use super::node::{
    may_access, may_publish, AccessModel, Affiliation, Denied, NodeConfig, Relation, SendLast,
    CONFIG_NS, PUBLISH_OPTIONS_NS,
};
use super::subscriptions::{authorization_form, Decision, SubOptions, SubState};
use super::{bookmarks, PubSub, Service, ERRORS_NS, EVENT_NS, NS, OWNER_NS};
use crate::forms::{Form, FormKind};
use crate::subscription::Sub;
use crate::{account_parts, rsm, storage_error};
use xmppd_server::registry::{Ctx, IqResult};

/// An error with its pubsub-specific condition (§6–§8 name one for almost every case).
pub fn error(condition: C, app: &str) -> StanzaError {
    let mut e = StanzaError::new(condition);
    e.app_condition = Some(Box::new(Element::new(app, ERRORS_NS)));
    e
}

fn denied(d: Denied) -> StanzaError {
    match d {
        Denied::Outcast => StanzaError::new(C::Forbidden),
        Denied::PresenceSubscriptionRequired => {
            error(C::NotAuthorized, "presence-subscription-required")
        }
        Denied::NotInRosterGroup => error(C::NotAuthorized, "not-in-roster-group"),
        Denied::ClosedNode => error(C::NotAllowed, "closed-node"),
        Denied::NotSubscribed => error(C::NotAuthorized, "not-subscribed"),
        Denied::Pending => error(C::NotAuthorized, "pending-subscription"),
    }
}

fn not_acceptable(text: impl Into<String>) -> StanzaError {
    StanzaError::new(C::NotAcceptable).with_text(text)
}

/// A node as loaded for one request.
pub struct Node {
    pub name: String,
    pub config: NodeConfig,
    pub members: Vec<Member>,
}

impl Node {
    fn member(&self, jid: &str) -> Member {
        self.members
            .iter()
            .find(|m| m.jid == jid)
            .cloned()
            .unwrap_or_else(|| Member {
                jid: jid.to_string(),
                affiliation: "none".into(),
                subscription: "none".into(),
                options: String::new(),
            })
    }

    fn subscribed(&self, jid: &Jid) -> bool {
        let bare = jid.to_bare();
        self.members.iter().any(|m| {
            m.subscription == "subscribed" && (m.jid == jid.as_str() || m.jid == bare.as_str())
        })
    }
}

/// What the service knows of requesters: the PEP owner's roster, read once per request.
pub struct Judge {
    svc: Service,
    roster: Arc<Vec<RosterItem>>,
}

impl Judge {
    pub async fn new(cx: &Ctx<'_>, svc: &Service) -> Result<Judge, StanzaError> {
        let roster = match svc {
            Service::Pep(owner) => {
                let (username, domain) = account_parts(owner);
                let (_, items) = cx
                    .storage()
                    .roster
                    .roster(username, domain)
                    .await
                    .map_err(storage_error)?;
                items
            }
            Service::Domain(_) => Arc::default(),
        };
        Ok(Judge {
            svc: svc.clone(),
            roster,
        })
    }

    /// How `jid` stands with `node`, its subscription (bare or full) included.
    pub fn relation_of(&self, node: &Node, jid: &Jid) -> Relation {
        Relation {
            subscribed: node.subscribed(jid),
            ..self.relation(Some(node), &jid.to_bare())
        }
    }

    /// §4.5: how `bare` stands with `node` (owner of a PEP service, contact, affiliate).
    pub fn relation(&self, node: Option<&Node>, bare: &BareJid) -> Relation {
        if let Service::Pep(owner) = &self.svc {
            if owner == bare {
                return Relation {
                    affiliation: Some(Affiliation::Owner),
                    ..Relation::default()
                };
            }
        }
        // Read in place: a publish asks this for every contact.
        let affiliation = node
            .map(|n| {
                let member = n.members.iter().find(|m| m.jid == bare.as_str());
                member.map_or("none", |m| m.affiliation.as_str())
            })
            .and_then(Affiliation::parse);
        let item = self.roster.iter().find(|i| i.contact == bare.as_str());
        // Only the roster access model looks at groups.
        let groups_matter = node.is_none_or(|n| n.config.access_model == AccessModel::Roster);
        Relation {
            affiliation,
            presence_subscribed: item.is_some_and(|i| Sub::parse(&i.subscription).has_from()),
            groups: match item {
                Some(i) if groups_matter => i.groups.clone(),
                _ => Vec::new(),
            },
            subscribed: false,
        }
    }
}

impl Judge {
    /// XEP-0163 §4.3: whether `bare` gets `node`'s notifications by presence alone: the
    /// owner, or a contact subscribed to the owner's presence whom the access model lets in
    /// (an open node does not reach everyone who happens to send presence, a MUC occupant
    /// say).
    pub fn implicitly_subscribed(&self, node: &Node, bare: &BareJid) -> bool {
        let relation = self.relation(Some(node), bare);
        let owner = relation.affiliation == Some(Affiliation::Owner);
        (owner || relation.presence_subscribed) && may_access(&node.config, &relation).is_ok()
    }
}

/// `<message type=headline><event>child</event></message>` from the service (§7.1.2.1),
/// to whom the caller says.
pub fn event_message(svc: &Service, child: Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", svc.jid())
        .with_attr("type", "headline")
        .with_attr("id", xmppd_server::stream::random_id(12))
        .with_child(Element::new("event", EVENT_NS).with_child(child))
}

/// `<items node><item id>payload</item></items>`, in the namespace `ns`.
pub(super) fn items_element(ns: &str, node: &str, items: &[StoredItem], payloads: bool) -> Element {
    let mut el = Element::new("items", ns).with_attr("node", node);
    for item in items {
        let mut i = Element::new("item", ns).with_attr("id", item.id.clone());
        if payloads {
            if let Some(payload) = xmppd_xml::parse_fragment(&item.payload, "") {
                i.push_child(payload);
            }
        }
        el.push_child(i);
    }
    el
}

/// §8.6: asks every owner of `node` to approve `jid`'s subscription.
fn ask_owners(cx: &mut Ctx<'_>, svc: &Service, node: &Node, jid: &str) {
    let form = authorization_form(&node.name, jid).to_element();
    let body = format!("{jid} asks to subscribe to {}.", node.name);
    for owner in node.members.iter().filter(|m| m.affiliation == "owner") {
        cx.route_element(
            Element::new("message", ns::CLIENT)
                .with_attr("from", svc.jid())
                .with_attr("to", owner.jid.clone())
                .with_attr("id", xmppd_server::stream::random_id(12))
                .with_child(Element::new("body", ns::CLIENT).with_text(body.clone()))
                .with_child(form.clone()),
        );
    }
}

/// Longest node name or item id: names, not documents.
const MAX_NAME: usize = 1024;

/// The node attribute an action needs (`nodeid-required` otherwise, e.g. §6.1.3.9).
fn node_attr(action: &Element) -> Result<&str, StanzaError> {
    match action.attr("node") {
        Some(n) if n.len() > MAX_NAME => Err(not_acceptable("node name too long")),
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(error(C::BadRequest, "nodeid-required")),
    }
}

/// A submitted form among `parent`'s children, if any (a cancelled one counts as none).
fn submitted(parent: Option<&Element>) -> Result<Option<Form>, StanzaError> {
    match parent.and_then(Form::find_in) {
        None => Ok(None),
        Some(Err(e)) => Err(StanzaError::new(C::BadRequest).with_text(e.0)),
        Some(Ok(f)) if f.kind == FormKind::Cancel => Ok(None),
        Some(Ok(f)) if f.kind == FormKind::Submit => Ok(Some(f)),
        Some(Ok(_)) => Err(StanzaError::new(C::BadRequest).with_text("form must be submitted")),
    }
}

/// Subscription options submitted in `parent` over `base` (§6.3.5); `bad-request` with
/// `invalid-options` for a form that asks for what is not offered (§6.3.6).
fn submitted_options(parent: &Element, base: SubOptions) -> Result<SubOptions, StanzaError> {
    let invalid = |text: String| error(C::BadRequest, "invalid-options").with_text(text);
    match submitted(Some(parent)).map_err(|e| invalid(e.text.unwrap_or_default()))? {
        Some(form) => base.apply(&form).map_err(|e| invalid(e.0)),
        None => Ok(base),
    }
}

fn pubsub(ns: &str, child: Element) -> Option<Element> {
    Some(Element::new("pubsub", ns).with_child(child))
}

impl PubSub {
    /// One `<pubsub/>` or `<pubsub xmlns=#owner/>` request to `svc`.
    pub async fn handle(&self, cx: &mut Ctx<'_>, svc: &Service, iq: &Stanza) -> IqResult {
        let from = iq.from.clone().ok_or(C::BadRequest)?;
        let payload = iq.iq_payload().ok_or(C::BadRequest)?;
        let set = iq.stanza_type() == "set";
        let mut children = payload.children();
        let action = children.next().ok_or(C::BadRequest)?;
        let extra = children.next();
        match (payload.ns(), action.name(), set) {
            (NS, "create", true) => self.create(cx, svc, &from, action, extra).await,
            (NS, "publish", true) => self.publish(cx, svc, &from, action, extra).await,
            (NS, "retract", true) => self.retract(cx, svc, &from, action).await,
            (NS, "subscribe", true) => self.subscribe(cx, svc, &from, action, extra).await,
            (NS, "unsubscribe", true) => self.unsubscribe(cx, svc, &from, action).await,
            (NS, "options", _) => self.options(cx, svc, &from, action, set).await,
            (NS, "items", false) => self.items(cx, svc, &from, action, payload).await,
            (NS, "subscriptions", false) => self.own(cx, svc, &from, action, true).await,
            (NS, "affiliations", false) => self.own(cx, svc, &from, action, false).await,
            (OWNER_NS, "configure", _) => self.configure(cx, svc, &from, action, set).await,
            (OWNER_NS, "default", false) => Ok(pubsub(
                OWNER_NS,
                Element::new("default", OWNER_NS)
                    .with_child(svc.defaults().to_form(FormKind::Form).to_element()),
            )),
            (OWNER_NS, "delete", true) => self.delete(cx, svc, &from, action).await,
            (OWNER_NS, "purge", true) => self.purge(cx, svc, &from, action).await,
            (OWNER_NS, "subscriptions" | "affiliations", _) => {
                self.manage(cx, svc, &from, action, set).await
            }
            _ => Err(C::BadRequest.into()),
        }
    }

    pub async fn load(
        &self,
        cx: &Ctx<'_>,
        svc: &Service,
        name: &str,
    ) -> Result<Option<Node>, StanzaError> {
        let store = &cx.storage().pubsub;
        let Some(text) = store.node(svc.jid(), name).await.map_err(storage_error)? else {
            return Ok(None);
        };
        Ok(Some(Node {
            name: name.to_string(),
            config: self.configs.parse(&text, &svc.defaults()),
            members: store
                .members(svc.jid(), name)
                .await
                .map_err(storage_error)?,
        }))
    }

    async fn existing(&self, cx: &Ctx<'_>, svc: &Service, name: &str) -> Result<Node, StanzaError> {
        self.load(cx, svc, name)
            .await?
            .ok_or_else(|| C::ItemNotFound.into())
    }

    /// The node named `name`, if `from` owns it (§8: `forbidden` otherwise).
    async fn owned(
        &self,
        cx: &Ctx<'_>,
        svc: &Service,
        from: &Jid,
        name: &str,
    ) -> Result<Node, StanzaError> {
        let node = self.existing(cx, svc, name).await?;
        let judge = Judge::new(cx, svc).await?;
        if judge.relation(Some(&node), &from.to_bare()).affiliation != Some(Affiliation::Owner) {
            return Err(C::Forbidden.into());
        }
        Ok(node)
    }

    /// A configuration from a submitted form over `base` (§8.2.4), or the form's error.
    fn configured(
        &self,
        svc: &Service,
        base: &NodeConfig,
        form: &Form,
        form_type: &str,
    ) -> Result<NodeConfig, String> {
        let config = base
            .apply(form, form_type, self.config.max_items)
            .map_err(|e| e.0)?;
        // Presence and roster access need a roster: only PEP has one. Authorize needs an
        // owner who can answer approval forms (§8.6), which a PEP owner cannot: the form
        // would come from, and go back to, the owner's own bare JID.
        match (config.access_model, svc) {
            (AccessModel::Presence | AccessModel::Roster, Service::Domain(_)) => {
                Err("this service has no presence or roster access".into())
            }
            (AccessModel::Authorize, Service::Pep(_)) => {
                Err("PEP has no authorize access model".into())
            }
            _ => Ok(config),
        }
    }

    /// Creates `name` for `owner` (§8.1): `conflict` if it exists, `not-allowed` with
    /// `max-nodes-exceeded` past the limit.
    async fn create_node(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        name: &str,
        owner: &BareJid,
        config: &NodeConfig,
        first: Option<&StoredItem>,
    ) -> Result<(), StanzaError> {
        let store = &cx.storage().pubsub;
        let created = store
            .create_node(
                svc.jid(),
                name,
                &self.configs.text(config),
                owner.as_str(),
                self.config.max_nodes,
                first,
            )
            .await
            .map_err(storage_error)?;
        if created {
            return match svc {
                Service::Pep(owner)
                    if self.wrapped.private.is_some() && name == bookmarks::NATIVE =>
                {
                    self.import_legacy(cx, owner).await
                }
                _ => Ok(()),
            };
        }
        match store.node(svc.jid(), name).await.map_err(storage_error)? {
            Some(_) => Err(C::Conflict.into()),
            None => Err(error(C::NotAllowed, "max-nodes-exceeded")),
        }
    }

    /// Who may create nodes: the PEP owner; on the generic service, local users.
    fn may_create(&self, cx: &Ctx<'_>, svc: &Service, from: &Jid) -> bool {
        match svc {
            Service::Pep(owner) => from.to_bare() == *owner,
            Service::Domain(_) => cx.is_local_domain(from.domain().as_str()),
        }
    }

    async fn create(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        configure: Option<&Element>,
    ) -> IqResult {
        if !self.may_create(cx, svc, from) {
            return Err(C::Forbidden.into());
        }
        let instant = action.attr("node").is_none_or(str::is_empty);
        let name = match (instant, svc) {
            // §8.1.3: PEP nodes are named after their payload, never generated.
            (true, Service::Pep(_)) => return Err(error(C::NotAcceptable, "nodeid-required")),
            (true, Service::Domain(_)) => xmppd_server::stream::random_id(16),
            (false, _) => node_attr(action)?.to_string(),
        };
        let config = match submitted(configure.filter(|c| c.is("configure", NS)))? {
            Some(form) => self
                .configured(svc, &svc.defaults(), &form, CONFIG_NS)
                .map_err(not_acceptable)?,
            None => svc.defaults(),
        };
        self.create_node(cx, svc, &name, &from.to_bare(), &config, None)
            .await?;
        // §8.1.2: an instant node's name goes back to its creator.
        Ok(if instant {
            pubsub(NS, Element::new("create", NS).with_attr("node", name))
        } else {
            None
        })
    }

    async fn configure(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        set: bool,
    ) -> IqResult {
        let node = self.owned(cx, svc, from, node_attr(action)?).await?;
        if !set {
            let form = node.config.to_form(FormKind::Form).to_element();
            return Ok(pubsub(
                OWNER_NS,
                Element::new("configure", OWNER_NS)
                    .with_attr("node", node.name.clone())
                    .with_child(form),
            ));
        }
        let Some(form) = submitted(Some(action))? else {
            return Ok(None);
        };
        let config = self
            .configured(svc, &node.config, &form, CONFIG_NS)
            .map_err(not_acceptable)?;
        cx.storage()
            .pubsub
            .set_config(svc.jid(), &node.name, &self.configs.text(&config))
            .await
            .map_err(storage_error)?;
        if config.notify_config {
            let node = Node { config, ..node };
            let child =
                Element::new("configuration", EVENT_NS).with_attr("node", node.name.clone());
            self.notify(cx, svc, &node, child).await;
        }
        Ok(None)
    }

    async fn delete(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
    ) -> IqResult {
        let node = self.owned(cx, svc, from, node_attr(action)?).await?;
        // Subscribers are told before the subscriptions go with the node.
        if node.config.notify_delete {
            let mut child = Element::new("delete", EVENT_NS).with_attr("node", node.name.clone());
            // §8.4.1: the owner may point subscribers to a replacement.
            if let Some(uri) = action
                .get_child("redirect", OWNER_NS)
                .and_then(|r| r.attr("uri"))
            {
                child.push_child(Element::new("redirect", EVENT_NS).with_attr("uri", uri));
            }
            self.notify(cx, svc, &node, child).await;
        }
        cx.storage()
            .pubsub
            .delete_node(svc.jid(), &node.name)
            .await
            .map_err(storage_error)?;
        Ok(None)
    }

    async fn purge(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
    ) -> IqResult {
        let node = self.owned(cx, svc, from, node_attr(action)?).await?;
        cx.storage()
            .pubsub
            .purge(svc.jid(), &node.name)
            .await
            .map_err(storage_error)?;
        if node.config.notify_retract {
            let child = Element::new("purge", EVENT_NS).with_attr("node", node.name.clone());
            self.notify(cx, svc, &node, child).await;
        }
        Ok(None)
    }

    async fn publish(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        options: Option<&Element>,
    ) -> IqResult {
        let name = node_attr(action)?;
        let options = submitted(options.filter(|o| o.is("publish-options", NS)))?;
        let mut items = action.children().filter(|c| c.is("item", NS));
        let (item, None) = (items.next(), items.next()) else {
            return Err(error(C::BadRequest, "invalid-payload"));
        };
        let payload = match item {
            None => return Err(error(C::BadRequest, "item-required")),
            Some(item) => {
                let mut payloads = item.children();
                match (payloads.next(), payloads.next()) {
                    // Standalone, namespace declared: it is stored and sent apart from its stanza.
                    (Some(p), None) => p.to_xml(),
                    (None, _) => return Err(error(C::BadRequest, "payload-required")),
                    (Some(_), Some(_)) => return Err(error(C::BadRequest, "invalid-payload")),
                }
            }
        };
        if payload.len() > self.config.max_item_size {
            return Err(error(C::NotAcceptable, "payload-too-big"));
        }
        let id = match item.and_then(|i| i.attr("id")) {
            Some(id) if id.len() > MAX_NAME => return Err(not_acceptable("item id too long")),
            Some(id) if !id.is_empty() => id.to_string(),
            _ => xmppd_server::stream::random_id(16),
        };
        let precondition = || error(C::Conflict, "precondition-not-met");
        let stored = StoredItem {
            id,
            publisher: from.to_bare().to_string(),
            payload,
        };
        let node = match self.load(cx, svc, name).await? {
            Some(node) => {
                if options
                    .as_ref()
                    .is_some_and(|o| !node.config.satisfies(o, self.config.max_items))
                {
                    return Err(precondition());
                }
                let judge = Judge::new(cx, svc).await?;
                let relation = judge.relation(Some(&node), &from.to_bare());
                if !may_publish(&node.config, &relation, node.subscribed(from)) {
                    return Err(C::Forbidden.into());
                }
                self.store(cx, svc, &node, &stored).await?;
                node
            }
            // XEP-0163 §3: PEP creates the node on first publish, with the publish-options
            // as its configuration (§7.1.5); its owner publishes, and the item is stored
            // with the node.
            None if matches!(svc, Service::Pep(_)) && self.may_create(cx, svc, from) => {
                let config = match &options {
                    Some(o) => self
                        .configured(svc, &svc.defaults(), o, PUBLISH_OPTIONS_NS)
                        .map_err(|_| precondition())?,
                    // Bookmarks are private even when a client forgets to say so.
                    None if name == bookmarks::NATIVE => bookmarks::native_config(),
                    None => svc.defaults(),
                };
                // Legacy bookmarks are imported into a new bookmarks node before its item.
                let importing = name == bookmarks::NATIVE && self.wrapped.private.is_some();
                let first = (!importing).then_some(&stored);
                self.create_node(cx, svc, name, &from.to_bare(), &config, first)
                    .await?;
                let node = self.existing(cx, svc, name).await?;
                if importing {
                    self.store(cx, svc, &node, &stored).await?;
                }
                node
            }
            // Someone else's PEP: only its owner creates nodes there.
            None if matches!(svc, Service::Pep(_)) => return Err(C::Forbidden.into()),
            None => return Err(C::ItemNotFound.into()),
        };
        self.announce(cx, svc, &node, &stored).await;
        let (id, payload) = (stored.id, stored.payload);
        // XEP-0398: the owner's own avatar (not one an open node let someone else publish).
        if let Service::Pep(owner) = svc {
            if node.name == super::avatars::METADATA && from.to_bare() == *owner {
                self.pep_to_vcard(cx, owner, &payload).await;
            }
        }
        Ok(pubsub(
            NS,
            Element::new("publish", NS)
                .with_attr("node", node.name)
                .with_child(Element::new("item", NS).with_attr("id", id)),
        ))
    }

    /// Keeps an item as the node's newest and tells whoever should hear of it (§7.1.2).
    pub async fn store_and_notify(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        node: &Node,
        publisher: &BareJid,
        id: &str,
        payload: String,
    ) -> Result<(), StanzaError> {
        let stored = StoredItem {
            id: id.to_string(),
            publisher: publisher.to_string(),
            payload,
        };
        self.store(cx, svc, node, &stored).await?;
        self.announce(cx, svc, node, &stored).await;
        Ok(())
    }

    /// Keeps an item as the node's newest.
    async fn store(
        &self,
        cx: &Ctx<'_>,
        svc: &Service,
        node: &Node,
        item: &StoredItem,
    ) -> Result<(), StanzaError> {
        cx.storage()
            .pubsub
            .publish(
                svc.jid(),
                &node.name,
                item,
                node.config.keep(self.config.max_items),
            )
            .await
            .map_err(storage_error)
    }

    /// Tells whoever should hear of a stored item (§7.1.2).
    async fn announce(&self, cx: &mut Ctx<'_>, svc: &Service, node: &Node, item: &StoredItem) {
        let child = items_element(
            EVENT_NS,
            &node.name,
            std::slice::from_ref(item),
            node.config.deliver_payloads,
        );
        self.notify(cx, svc, node, child).await;
    }

    /// The node, created with `config` for `owner` if it does not exist yet.
    pub async fn node_or_create(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        name: &str,
        owner: &BareJid,
        config: &NodeConfig,
    ) -> Result<Node, StanzaError> {
        if let Some(node) = self.load(cx, svc, name).await? {
            return Ok(node);
        }
        match self.create_node(cx, svc, name, owner, config, None).await {
            // Someone else created it meanwhile: fine.
            Ok(())
            | Err(StanzaError {
                condition: C::Conflict,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.existing(cx, svc, name).await
    }

    async fn retract(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
    ) -> IqResult {
        let node = self.existing(cx, svc, node_attr(action)?).await?;
        let id = action
            .get_child("item", NS)
            .and_then(|i| i.attr("id"))
            .filter(|id| !id.is_empty())
            .ok_or_else(|| error(C::BadRequest, "item-required"))?;
        let judge = Judge::new(cx, svc).await?;
        let affiliation = judge.relation(Some(&node), &from.to_bare()).affiliation;
        // §7.2.3.1: publishers and owners retract.
        if affiliation < Some(Affiliation::Publisher) {
            return Err(C::Forbidden.into());
        }
        let store = &cx.storage().pubsub;
        if !store
            .retract(svc.jid(), &node.name, id)
            .await
            .map_err(storage_error)?
        {
            return Err(C::ItemNotFound.into());
        }
        let asked = action
            .attr("notify")
            .and_then(crate::forms::parse_boolean)
            .unwrap_or(false);
        if node.config.notify_retract || asked {
            let child = Element::new("items", EVENT_NS)
                .with_attr("node", node.name.clone())
                .with_child(Element::new("retract", EVENT_NS).with_attr("id", id));
            self.notify(cx, svc, &node, child).await;
        }
        Ok(None)
    }

    /// §6.1.3.1 / §6.2.3.3: the subscriber's JID must be the requester's own.
    fn subscriber(from: &Jid, action: &Element) -> Result<Jid, StanzaError> {
        let jid = action
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| error(C::BadRequest, "invalid-jid"))?;
        if jid.to_bare() != from.to_bare() {
            return Err(error(C::BadRequest, "invalid-jid"));
        }
        Ok(jid)
    }

    async fn subscribe(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        options: Option<&Element>,
    ) -> IqResult {
        let name = node_attr(action)?;
        let jid = Self::subscriber(from, action)?;
        // §6.3.7: options to subscribe with follow, naming neither node nor JID.
        let options = options
            .map(|o| {
                let named = o.attr("node").is_some() || o.attr("jid").is_some();
                if o.is("options", NS) && !named {
                    submitted_options(o, SubOptions::default())
                } else {
                    Err(StanzaError::new(C::BadRequest))
                }
            })
            .transpose()?;
        let node = self.existing(cx, svc, name).await?;
        let judge = Judge::new(cx, svc).await?;
        let mut member = node.member(jid.as_str());
        let before = SubState::parse(&member.subscription);
        let after = before
            .subscribe(&node.config, &judge.relation_of(&node, &jid))
            .map_err(denied)?;
        if before != after {
            self.check_room(&node, after)?;
        }
        let stored = member.clone();
        member.subscription = after.as_str().into();
        if let Some(options) = options {
            member.options = options.to_text();
        }
        if member != stored {
            cx.storage()
                .pubsub
                .set_member(svc.jid(), &node.name, &member)
                .await
                .map_err(storage_error)?;
        }
        if after == SubState::Pending {
            ask_owners(cx, svc, &node, jid.as_str());
        } else {
            self.welcome(cx, svc, &node, &member).await?;
        }
        // §6.1.2: options are supported (not required).
        let subscription = Element::new("subscription", NS)
            .with_attr("node", node.name)
            .with_attr("jid", jid.as_str())
            .with_attr("subscription", after.as_str())
            .with_child(Element::new("subscribe-options", NS));
        let mut reply = Element::new("pubsub", NS).with_child(subscription);
        if let Some(options) = options {
            reply.push_child(
                Element::new("options", NS)
                    .with_child(options.to_form(FormKind::Result).to_element()),
            );
        }
        Ok(Some(reply))
    }

    /// §6.3: a subscriber reads or changes the options of its subscription.
    async fn options(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        set: bool,
    ) -> IqResult {
        let name = node_attr(action)?;
        let jid = match action.attr("jid") {
            None | Some("") => return Err(error(C::BadRequest, "jid-required")),
            Some(j) => Jid::new(j).map_err(|_| C::JidMalformed)?,
        };
        // §6.3.4.1: the bare JIDs must match.
        if jid.to_bare() != from.to_bare() {
            return Err(C::Forbidden.into());
        }
        let node = self.existing(cx, svc, name).await?;
        let mut member = node.member(jid.as_str());
        if member.subscription == "none" {
            return Err(error(C::UnexpectedRequest, "not-subscribed"));
        }
        // §6.3.4.4: this service hands out no SubIDs, so none is valid.
        if action.attr("subid").is_some() {
            return Err(error(C::NotAcceptable, "invalid-subid"));
        }
        let current = SubOptions::from_text(&member.options);
        if !set {
            let options = Element::new("options", NS)
                .with_attr("node", node.name)
                .with_attr("jid", jid.as_str())
                .with_child(current.to_form(FormKind::Form).to_element());
            return Ok(pubsub(NS, options));
        }
        member.options = submitted_options(action, current)?.to_text();
        cx.storage()
            .pubsub
            .set_member(svc.jid(), &node.name, &member)
            .await
            .map_err(storage_error)?;
        Ok(None)
    }

    /// Whether a new subscription, or request for one, fits under the limits.
    fn check_room(&self, node: &Node, state: SubState) -> Result<(), StanzaError> {
        let count = |s: &str| node.members.iter().filter(|m| m.subscription == s).count();
        let subscriptions = count("subscribed") + count("pending");
        if subscriptions >= self.config.max_subscriptions {
            return Err(StanzaError::new(C::PolicyViolation).with_text("too many subscribers"));
        }
        if state == SubState::Pending && count("pending") >= self.config.max_pending {
            return Err(StanzaError::new(C::PolicyViolation)
                .with_text("too many subscription requests wait for approval"));
        }
        Ok(())
    }

    /// §6.1.7: a new subscriber gets the last item, if the node says so and its options
    /// do not turn delivery off.
    async fn welcome(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        node: &Node,
        member: &Member,
    ) -> Result<(), StanzaError> {
        let never = node.config.send_last_published_item == SendLast::Never;
        if never || !SubOptions::from_text(&member.options).deliver {
            return Ok(());
        }
        self.send_last(cx, svc, node, &member.jid).await
    }

    /// Stores an owner's change of `member`'s subscription and tells the subscriber (§8.6,
    /// §8.8.4), who gets the last item if newly subscribed.
    async fn change_subscription(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        node: &Node,
        mut member: Member,
        state: SubState,
    ) -> Result<(), StanzaError> {
        member.subscription = state.as_str().into();
        if state == SubState::None {
            member.options.clear();
        }
        cx.storage()
            .pubsub
            .set_member(svc.jid(), &node.name, &member)
            .await
            .map_err(storage_error)?;
        let child = Element::new("subscription", EVENT_NS)
            .with_attr("node", node.name.clone())
            .with_attr("jid", member.jid.clone())
            .with_attr("subscription", state.as_str());
        cx.route_element(event_message(svc, child).with_attr("to", member.jid.clone()));
        if state == SubState::Subscribed {
            self.welcome(cx, svc, node, &member).await?;
        }
        Ok(())
    }

    /// §8.6: an owner's answer to an approval request, a message with the submitted form.
    /// `service-unavailable` for a message that is not one (the service takes no others).
    pub async fn authorization(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        message: &Stanza,
    ) -> Result<(), StanzaError> {
        let from = message.from.as_ref().ok_or(C::BadRequest)?;
        let bad = |e: crate::forms::FormError| StanzaError::new(C::BadRequest).with_text(e.0);
        let form = match Form::find_in(message.element()) {
            Some(form) => form.map_err(bad)?,
            None => return Err(C::ServiceUnavailable.into()),
        };
        let Some(decision) = Decision::parse(&form).map_err(bad)? else {
            return Ok(());
        };
        let node = self.owned(cx, svc, from, &decision.node).await?;
        let jid = Jid::new(&decision.jid).map_err(|_| C::JidMalformed)?;
        let member = node.member(jid.as_str());
        match SubState::parse(&member.subscription).decide(decision.allow) {
            Some(state) => {
                self.change_subscription(cx, svc, &node, member, state)
                    .await
            }
            None => Ok(()),
        }
    }

    async fn unsubscribe(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
    ) -> IqResult {
        let name = node_attr(action)?;
        let jid = Self::subscriber(from, action)?;
        let node = self.existing(cx, svc, name).await?;
        let mut member = node.member(jid.as_str());
        if member.subscription == "none" {
            return Err(error(C::UnexpectedRequest, "not-subscribed"));
        }
        member.subscription = "none".into();
        member.options.clear();
        cx.storage()
            .pubsub
            .set_member(svc.jid(), &node.name, &member)
            .await
            .map_err(storage_error)?;
        Ok(None)
    }

    /// Routes the newest item of `node` to `to` (§6.1.7), if there is one.
    pub async fn send_last(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        node: &Node,
        to: &str,
    ) -> Result<(), StanzaError> {
        let last = cx
            .storage()
            .pubsub
            .items(svc.jid(), &node.name, 1)
            .await
            .map_err(storage_error)?;
        if !last.is_empty() {
            let child = items_element(EVENT_NS, &node.name, &last, node.config.deliver_payloads);
            cx.route_element(event_message(svc, child).with_attr("to", to));
        }
        Ok(())
    }

    async fn items(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        payload: &Element,
    ) -> IqResult {
        let node = self.existing(cx, svc, node_attr(action)?).await?;
        let judge = Judge::new(cx, svc).await?;
        may_access(&node.config, &judge.relation_of(&node, from)).map_err(denied)?;
        let store = &cx.storage().pubsub;
        let cap = self.config.max_items;
        let wanted: Vec<&str> = action
            .children()
            .filter(|c| c.is("item", NS))
            .filter_map(|c| c.attr("id"))
            .collect();
        let mut set = None;
        let items = if !wanted.is_empty() {
            // §6.5.8: specific items; the ones that are gone are left out.
            let mut found = Vec::new();
            for id in wanted.iter().take(cap) {
                if let Some(item) = store
                    .item(svc.jid(), &node.name, id)
                    .await
                    .map_err(storage_error)?
                {
                    found.push(item);
                }
            }
            found
        } else {
            let max = action
                .attr("max_items")
                .map(|m| m.trim().parse::<usize>())
                .transpose()
                .map_err(|_| StanzaError::new(C::BadRequest).with_text("max_items"))?;
            let all = store
                .items(svc.jid(), &node.name, max.unwrap_or(cap).min(cap))
                .await
                .map_err(storage_error)?;
            match rsm::Query::find_in(payload)
                .map_err(|e| StanzaError::new(C::BadRequest).with_text(e.0))?
            {
                // XEP-0059 over the items, newest first.
                Some(query) => {
                    let keys: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
                    let page = query
                        .page(&keys, cap)
                        .map_err(|_| StanzaError::new(C::ItemNotFound))?;
                    set = Some(page.to_element());
                    all[page.range].to_vec()
                }
                None => all,
            }
        };
        let mut reply =
            Element::new("pubsub", NS).with_child(items_element(NS, &node.name, &items, true));
        if let Some(set) = set {
            reply.push_child(set);
        }
        Ok(Some(reply))
    }

    /// §5.6 and §5.7: the requester's own subscriptions or affiliations at this service.
    async fn own(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        subscriptions: bool,
    ) -> IqResult {
        let store = &cx.storage().pubsub;
        let bare = from.to_bare();
        let mut rows = store
            .memberships(svc.jid(), bare.as_str())
            .await
            .map_err(storage_error)?;
        if from.try_as_full().is_ok() {
            rows.extend(
                store
                    .memberships(svc.jid(), from.as_str())
                    .await
                    .map_err(storage_error)?,
            );
        }
        let only = action.attr("node");
        let (name, attr) = if subscriptions {
            ("subscription", "subscription")
        } else {
            ("affiliation", "affiliation")
        };
        let mut list = Element::new(action.name(), NS);
        for (node, m) in rows {
            let value = if subscriptions {
                &m.subscription
            } else {
                &m.affiliation
            };
            if value == "none" || only.is_some_and(|o| o != node) {
                continue;
            }
            let mut el = Element::new(name, NS)
                .with_attr("node", node)
                .with_attr(attr, value.clone());
            if subscriptions {
                el.set_attr("jid", m.jid.clone());
            }
            list.push_child(el);
        }
        Ok(pubsub(NS, list))
    }

    /// §8.8 and §8.9: an owner reads or changes the subscriptions or affiliations of a node.
    async fn manage(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        from: &Jid,
        action: &Element,
        set: bool,
    ) -> IqResult {
        let node = self.owned(cx, svc, from, node_attr(action)?).await?;
        let subscriptions = action.name() == "subscriptions";
        let (name, attr) = if subscriptions {
            ("subscription", "subscription")
        } else {
            ("affiliation", "affiliation")
        };
        if !set {
            let mut list =
                Element::new(action.name(), OWNER_NS).with_attr("node", node.name.clone());
            for m in &node.members {
                let value = if subscriptions {
                    &m.subscription
                } else {
                    &m.affiliation
                };
                if value != "none" {
                    list.push_child(
                        Element::new(name, OWNER_NS)
                            .with_attr("jid", m.jid.clone())
                            .with_attr(attr, value.clone()),
                    );
                }
            }
            return Ok(pubsub(OWNER_NS, list));
        }
        let mut changes = Vec::new();
        for entry in action.children().filter(|c| c.is(name, OWNER_NS)) {
            let jid = entry
                .attr("jid")
                .and_then(|j| Jid::new(j).ok())
                .ok_or(C::JidMalformed)?;
            let value = entry.attr(attr).unwrap_or_default();
            let mut member = node.member(jid.as_str());
            if subscriptions {
                // An owner subscribes or unsubscribes; approving a pending request is the former.
                let state = match value {
                    "none" => SubState::None,
                    "subscribed" => SubState::Subscribed,
                    _ => return Err(not_acceptable(format!("subscription {value:?}"))),
                };
                changes.push((member, Some(state)));
            } else {
                // Affiliations are of bare JIDs (§4.1); a PEP owner stays the owner.
                let valid = Affiliation::parse(value).is_some() && jid.try_as_full().is_err();
                if !valid || matches!(svc, Service::Pep(o) if o.as_str() == jid.as_str()) {
                    return Err(not_acceptable(format!("affiliation {value:?} of {jid}")));
                }
                member.affiliation = value.to_string();
                changes.push((member, None));
            }
        }
        // Validated all before changing any.
        for (member, state) in changes {
            match state {
                Some(state) if state.as_str() == member.subscription => {}
                Some(state) => {
                    self.change_subscription(cx, svc, &node, member, state)
                        .await?
                }
                None => cx
                    .storage()
                    .pubsub
                    .set_member(svc.jid(), &node.name, &member)
                    .await
                    .map_err(storage_error)?,
            }
        }
        Ok(None)
    }

    /// Sends a notification about `node` to everyone who should hear of it: explicit
    /// subscribers, and for PEP the presence-based interested resources (XEP-0163 §4).
    pub async fn notify(&self, cx: &mut Ctx<'_>, svc: &Service, node: &Node, child: Element) {
        let explicit: Vec<&str> = node
            .members
            .iter()
            .filter(|m| m.subscription == "subscribed")
            .filter(|m| SubOptions::from_text(&m.options).deliver)
            .map(|m| m.jid.as_str())
            .collect();
        let interested = match svc {
            Service::Pep(_) => match Judge::new(cx, svc).await {
                Ok(judge) => self.interested(cx, &judge, node).await,
                Err(_) => {
                    tracing::warn!("PEP notifications without the roster");
                    Vec::new()
                }
            },
            Service::Domain(_) => Vec::new(),
        };
        // The interested resources are distinct full JIDs: only explicit subscriptions can
        // repeat them. A bare JID's subscription reaches all its resources: no second copy
        // to one of them.
        let recipients = if explicit.is_empty() {
            interested
        } else {
            let bare: HashSet<&str> = explicit
                .iter()
                .copied()
                .filter(|j| !j.contains('/'))
                .collect();
            let mut sent = HashSet::new();
            let mut recipients = Vec::new();
            let candidates = explicit
                .iter()
                .filter_map(|j| Jid::new(j).ok())
                .chain(interested);
            for jid in candidates {
                let covered = jid.resource().is_some() && bare.contains(jid.to_bare().as_str());
                if !covered && sent.insert(jid.as_str().to_string()) {
                    recipients.push(jid);
                }
            }
            recipients
        };
        // One serialisation for every contact (a publish reaches dozens), routed as if the
        // owner sent each copy: its privacy lists and the contacts' apply.
        if let Ok(message) = Stanza::parse(event_message(svc, child)) {
            cx.fan_out(message, &recipients, true).await;
        }
    }

    /// XEP-0163 §4.3: the full JIDs the PEP owner heard available presence from whose
    /// caps ask for `node+notify` and who may see the node.
    async fn interested(&self, cx: &Ctx<'_>, judge: &Judge, node: &Node) -> Vec<Jid> {
        let Service::Pep(owner) = &judge.svc else {
            return Vec::new();
        };
        let notify = format!("{}+notify", node.name);
        let heard = self.caps.heard_by(owner.as_str());
        // Contacts mostly run a few clients: each `ver` is looked up once per publish.
        let mut wanted: Vec<(&str, bool)> = Vec::new();
        let mut out = Vec::new();
        for (full, ver) in &heard {
            let wants = match wanted.iter().find(|(v, _)| v == ver) {
                Some(&(_, wants)) => wants,
                None => {
                    let features = self.caps.features(cx.storage(), ver).await;
                    let wants = features.is_some_and(|f| f.contains(&notify));
                    wanted.push((ver, wants));
                    wants
                }
            };
            if !wants {
                continue;
            }
            let Ok(jid) = Jid::new(full) else { continue };
            if judge.implicitly_subscribed(node, &jid.to_bare()) {
                out.push(jid);
            }
        }
        out
    }
}
