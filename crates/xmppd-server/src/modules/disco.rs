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

const DATA: &str = "jabber:x:data";

/// XEP-0157 contact addresses as a XEP-0128 extended-information form.
fn contact_form(addresses: &std::collections::BTreeMap<String, Vec<String>>) -> Element {
    let field = |var: String, kind: Option<&str>| {
        let mut f = Element::new("field", DATA).with_attr("var", var);
        if let Some(kind) = kind {
            f.set_attr("type", kind);
        }
        f
    };
    let mut form_type = field("FORM_TYPE".into(), Some("hidden"));
    form_type
        .push_child(Element::new("value", DATA).with_text("http://jabber.org/network/serverinfo"));
    let mut form = Element::new("x", DATA)
        .with_attr("type", "result")
        .with_child(form_type);
    for (kind, values) in addresses {
        let mut f = field(format!("{kind}-addresses"), None);
        for v in values {
            f.push_child(Element::new("value", DATA).with_text(v.clone()));
        }
        form.push_child(f);
    }
    form
}

#[async_trait]
impl Module for Disco {
    fn server_namespaces(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    fn account_namespaces(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    fn account_features(&self) -> &'static [&'static str] {
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
        let addresses = &router.config().server.contact_addresses;
        if server && !addresses.is_empty() {
            query.push_child(contact_form(addresses));
        }
        Ok(Some(query))
    }
}
