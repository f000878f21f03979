//! XEP-0030 Service Discovery: identities and the features the loaded modules implement.

use async_trait::async_trait;
use xmppd_core::{ns, Element, Stanza, StanzaErrorCondition};

use super::{IqResult, IqTarget, Module};
use crate::router::Router;

pub struct Disco;

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut el = Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(name) = name {
        el.set_attr("name", name);
    }
    el
}

#[async_trait]
impl Module for Disco {
    fn namespaces(&self, _server: bool) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    fn features(&self, _server: bool) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    async fn handle_iq(&self, router: &Router, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let payload = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        if iq.stanza_type() != "get" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        if payload.attr("node").is_some() {
            return Err(StanzaErrorCondition::ItemNotFound.into());
        }
        if payload.ns() == ns::DISCO_ITEMS {
            return Ok(Some(Element::new("query", ns::DISCO_ITEMS)));
        }
        let server = matches!(target, IqTarget::Server(_));
        let mut query = Element::new("query", ns::DISCO_INFO);
        query.push_child(if server {
            identity("server", "im", Some("xmppd"))
        } else {
            identity("account", "registered", None)
        });
        for feature in router.modules().features(server) {
            query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", feature));
        }
        Ok(Some(query))
    }
}
