//! The generic service at `pubsub.<domain>` (XEP-0060 as a component-like host), and its
//! entry in the domain's disco#items.

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{ns, Element, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};

use super::{PubSub, Service, FEATURES, NS, OWNER_NS, SERVICE_FEATURES};
use xmppd_server::registry::{Ctx, DiscoProvider, Host, IqResult, IqTarget};

pub struct ServiceHost {
    module: Arc<PubSub>,
    svc: Service,
}

impl ServiceHost {
    pub fn new(module: Arc<PubSub>, jid: String) -> ServiceHost {
        ServiceHost {
            module,
            svc: Service::Domain(jid),
        }
    }

    async fn answer(&self, cx: &mut Ctx<'_>, iq: &Stanza) -> IqResult {
        let payload = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        let node = payload.attr("node");
        let get = iq.stanza_type() == "get";
        match (payload.ns(), get) {
            (NS | OWNER_NS, _) if payload.name() == "pubsub" => {
                self.module.handle(cx, &self.svc, iq).await
            }
            (ns::DISCO_INFO, true) => match node {
                Some(node) => self
                    .module
                    .disco_node(cx, &self.svc, node, iq.from.as_ref())
                    .await
                    .map(Some)
                    .ok_or_else(|| StanzaErrorCondition::ItemNotFound.into()),
                None => Ok(Some(service_info())),
            },
            (ns::DISCO_ITEMS, true) => {
                let items = self
                    .module
                    .disco_items(cx, &self.svc, node, iq.from.as_ref())
                    .await;
                let mut query = Element::new("query", ns::DISCO_ITEMS);
                if let Some(node) = node {
                    query.set_attr("node", node);
                }
                for item in items {
                    query.push_child(item);
                }
                Ok(Some(query))
            }
            _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        }
    }
}

/// disco#info of the service itself (XEP-0060 §5.1).
fn service_info() -> Element {
    let mut query = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "pubsub")
            .with_attr("type", "service"),
    );
    for feature in [ns::DISCO_INFO, ns::DISCO_ITEMS]
        .iter()
        .chain(FEATURES)
        .chain(SERVICE_FEATURES)
    {
        query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *feature));
    }
    query
}

#[async_trait]
impl Host for ServiceHost {
    async fn handle(&self, cx: &mut Ctx<'_>, stanza: Stanza) {
        match stanza.kind {
            StanzaKind::Iq if stanza.is_iq_request() => match self.answer(cx, &stanza).await {
                Ok(payload) => cx.reply(stanza.iq_result(payload)),
                Err(e) => cx.bounce(&stanza, e),
            },
            // Results, errors (of notifications) and presence end here.
            StanzaKind::Iq | StanzaKind::Presence => {}
            // Owners' answers to approval requests (XEP-0060 §8.6); errors are not answered.
            StanzaKind::Message if stanza.is_error() => {}
            StanzaKind::Message => {
                if let Err(e) = self.module.authorization(cx, &self.svc, &stanza).await {
                    cx.bounce(&stanza, e);
                }
            }
        }
    }
}

/// `pubsub.<domain>` in the domain's disco#items (XEP-0060 §5.1).
pub struct Listing(pub String);

#[async_trait]
impl DiscoProvider for Listing {
    async fn items(
        &self,
        _: &mut Ctx<'_>,
        target: IqTarget<'_>,
        node: Option<&str>,
        _: Option<&Jid>,
    ) -> Vec<Element> {
        match (target, node) {
            (IqTarget::Server(domain), None) => vec![Element::new("item", ns::DISCO_ITEMS)
                .with_attr("jid", format!("{}.{domain}", self.0))],
            _ => Vec::new(),
        }
    }

    async fn node_info(
        &self,
        _: &mut Ctx<'_>,
        _: IqTarget<'_>,
        _: &str,
        _: Option<&Jid>,
    ) -> Option<Result<Element, StanzaError>> {
        None
    }
}
