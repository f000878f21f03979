//! XEP-0402 §5.3 compatibility: bookmarks stored through XEP-0049 private XML
//! (`storage:bookmarks`, XEP-0048) and PEP native bookmarks (`urn:xmpp:bookmarks:1`) are one
//! list, so old and new clients of one account see the same rooms.
//!
//! The native node is the truth once it exists: a private XML read of `storage:bookmarks`
//! answers from it (keeping the `<url/>`s only XEP-0048 has), a private XML write updates it
//! item by item (notifications only for what changed), and the node created by a first
//! native publish takes over the bookmarks stored before. Every other private XML request
//! goes to the private module unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{BareJid, Element, Stanza, StanzaError, StanzaErrorCondition};

use super::node::{AccessModel, MaxItems, NodeConfig, SendLast};
use super::service::Node;
use super::{PubSub, Service, EVENT_NS};
use crate::private::NS as PRIVATE;
use crate::{from_owner, storage_error};
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget};

pub const NATIVE: &str = "urn:xmpp:bookmarks:1";
pub const LEGACY: &str = "storage:bookmarks";
pub const COMPAT: &str = "urn:xmpp:bookmarks:1#compat";

/// XEP-0402 §5: the node's configuration (private, every bookmark kept).
pub fn native_config() -> NodeConfig {
    NodeConfig {
        access_model: AccessModel::Whitelist,
        max_items: MaxItems::Max,
        send_last_published_item: SendLast::Never,
        ..NodeConfig::pep_default()
    }
}

/// A XEP-0048 `<conference jid=…/>` as a native item: its id and payload.
pub fn to_native(conference: &Element) -> Option<(String, Element)> {
    let jid = BareJid::new(conference.attr("jid")?).ok()?;
    let mut native = Element::new("conference", NATIVE);
    for attr in ["name", "autojoin"] {
        if let Some(v) = conference.attr(attr) {
            native.set_attr(attr, v);
        }
    }
    for child in ["nick", "password"] {
        if let Some(c) = conference.get_child(child, LEGACY) {
            native.push_child(Element::new(child, NATIVE).with_text(c.text()));
        }
    }
    Some((jid.to_string(), native))
}

/// A native item as a XEP-0048 `<conference/>` (§5.3.1: the item id becomes `jid`).
pub fn to_legacy(id: &str, native: &Element) -> Element {
    let mut conference = Element::new("conference", LEGACY).with_attr("jid", id);
    for attr in ["name", "autojoin"] {
        if let Some(v) = native.attr(attr) {
            conference.set_attr(attr, v);
        }
    }
    for child in ["nick", "password"] {
        if let Some(c) = native.get_child(child, NATIVE) {
            conference.push_child(Element::new(child, LEGACY).with_text(c.text()));
        }
    }
    conference
}

/// The private XML handler with bookmarks unified (registered in the private module's
/// place, whose handler it calls for everything else).
pub struct Compat(pub Arc<PubSub>);

impl PubSub {
    /// The private module's own handler (present whenever [`Compat`] is registered).
    async fn private(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        match &self.wrapped.private {
            Some(private) => private.handle(cx, target, iq).await,
            None => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        }
    }
}

/// The `<storage xmlns='storage:bookmarks'/>` a private XML request is about, if that.
fn bookmarks_of(iq: &Stanza) -> Option<&Element> {
    let query = iq.iq_payload()?;
    let mut children = query.children();
    match (children.next(), children.next()) {
        (Some(storage), None) if storage.is("storage", LEGACY) => Some(storage),
        _ => None,
    }
}

#[async_trait]
impl IqHandler for Compat {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let (IqTarget::Account(user), Some(storage)) = (target, bookmarks_of(iq)) else {
            return self.0.private(cx, target, iq).await;
        };
        if !from_owner(iq, user) {
            return self.0.private(cx, target, iq).await;
        }
        let svc = Service::Pep(user.clone());
        if iq.stanza_type() == "set" {
            let stored = self.0.private(cx, target, iq).await?;
            self.0.sync_native(cx, &svc, user, storage).await?;
            return Ok(stored);
        }
        let stored = self.0.private(cx, target, iq).await?;
        let Some(node) = self.0.load(cx, &svc, NATIVE).await? else {
            return Ok(stored);
        };
        // The native list, with the URL bookmarks only XEP-0048 knows.
        let mut view = Element::new("storage", LEGACY);
        let items = cx
            .storage()
            .pubsub
            .items(svc.jid(), &node.name, self.0.config.max_items)
            .await
            .map_err(storage_error)?;
        for item in items.iter().rev() {
            if let Some(native) = xmppd_xml::parse_fragment(&item.payload, "") {
                view.push_child(to_legacy(&item.id, &native));
            }
        }
        let urls = stored
            .as_ref()
            .and_then(|q| q.get_child("storage", LEGACY))
            .map(|s| {
                s.children()
                    .filter(|c| c.is("url", LEGACY))
                    .cloned()
                    .collect()
            })
            .unwrap_or_else(Vec::new);
        for url in urls {
            view.push_child(url);
        }
        Ok(Some(Element::new("query", PRIVATE).with_child(view)))
    }
}

impl PubSub {
    /// Makes the native node hold exactly the conferences of `storage` (§5.3.2): new and
    /// changed ones published, missing ones retracted, each notified.
    async fn sync_native(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        owner: &BareJid,
        storage: &Element,
    ) -> Result<(), StanzaError> {
        let node = self.native_node(cx, svc, owner).await?;
        let store = &cx.storage().pubsub;
        let existing: HashMap<String, String> = store
            .items(svc.jid(), NATIVE, self.config.max_items)
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|i| (i.id, i.payload))
            .collect();
        let wanted: Vec<(String, Element)> = storage
            .children()
            .filter(|c| c.is("conference", LEGACY))
            .filter_map(to_native)
            .take(self.config.max_items)
            .collect();
        for (id, native) in &wanted {
            let payload = native.to_xml();
            if existing.get(id) != Some(&payload) {
                self.store_and_notify(cx, svc, &node, owner, id, payload)
                    .await?;
            }
        }
        for id in existing.keys() {
            if !wanted.iter().any(|(w, _)| w == id) {
                cx.storage()
                    .pubsub
                    .retract(svc.jid(), NATIVE, id)
                    .await
                    .map_err(storage_error)?;
                let child = Element::new("items", EVENT_NS)
                    .with_attr("node", NATIVE)
                    .with_child(Element::new("retract", EVENT_NS).with_attr("id", id.clone()));
                self.notify(cx, svc, &node, child).await;
            }
        }
        Ok(())
    }

    /// The native node, created with XEP-0402's configuration if missing.
    async fn native_node(
        &self,
        cx: &mut Ctx<'_>,
        svc: &Service,
        owner: &BareJid,
    ) -> Result<Node, StanzaError> {
        self.node_or_create(cx, svc, NATIVE, owner, &native_config())
            .await
    }

    /// The native node was just created by a publish: the bookmarks stored before through
    /// private XML become its first items, so no client loses them.
    pub async fn import_legacy(
        &self,
        cx: &mut Ctx<'_>,
        owner: &BareJid,
    ) -> Result<(), StanzaError> {
        let svc = Service::Pep(owner.clone());
        let query = Element::new("query", PRIVATE).with_child(Element::new("storage", LEGACY));
        let Some(request) = super::own_iq(owner, "get", query) else {
            return Ok(());
        };
        let target = IqTarget::Account(owner);
        let stored = self.private(cx, target, &request).await?;
        let Some(storage) = stored.as_ref().and_then(|q| q.get_child("storage", LEGACY)) else {
            return Ok(());
        };
        // Just created by the caller.
        let Some(node) = self.load(cx, &svc, NATIVE).await? else {
            return Ok(());
        };
        let conferences: Vec<(String, Element)> = storage
            .children()
            .filter(|c| c.is("conference", LEGACY))
            .filter_map(to_native)
            .take(self.config.max_items)
            .collect();
        for (id, native) in conferences {
            self.store_and_notify(cx, &svc, &node, owner, &id, native.to_xml())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conferences_convert_both_ways() {
        let legacy = xmppd_xml::parse_fragment(
            "<conference xmlns='storage:bookmarks' jid='room@muc.example' name='Room' \
             autojoin='true'><nick>JC</nick><password>pw</password></conference>",
            "jabber:client",
        )
        .unwrap();
        let (id, native) = to_native(&legacy).unwrap();
        assert_eq!(id, "room@muc.example");
        assert!(native.is("conference", NATIVE));
        assert_eq!(native.attr("autojoin"), Some("true"));
        assert_eq!(native.get_child("nick", NATIVE).unwrap().text(), "JC");
        let back = to_legacy(&id, &native);
        for attr in ["jid", "name", "autojoin"] {
            assert_eq!(back.attr(attr), legacy.attr(attr), "{attr}");
        }
        assert_eq!(
            back.children().collect::<Vec<_>>(),
            legacy.children().collect::<Vec<_>>()
        );
        assert_eq!(to_native(&back), Some((id, native)));
        let no_jid = Element::new("conference", LEGACY);
        assert!(to_native(&no_jid).is_none());
    }
}
