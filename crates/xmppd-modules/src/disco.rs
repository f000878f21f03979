//! XEP-0030 Service Discovery: the identities and features the loaded modules registered.

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{ns, Element, Stanza, StanzaErrorCondition};

use super::{roster, NoConfig};
use xmppd_server::registry::{
    Ctx, Identity, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec,
};

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

impl Module for Disco {
    const NAME: &'static str = "disco";
    const SPECS: &'static [Spec] = &[
        Spec::xep("XEP-0030", "2.5.0"),
        Spec::xep("XEP-0128", "1.0.1"),
        Spec::xep("XEP-0157", "1.1.1"),
    ];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        for on in [On::Server, On::Account] {
            for (ns, name) in [(ns::DISCO_INFO, "query"), (ns::DISCO_ITEMS, "query")] {
                r.iq(on, ns, name, Arc::new(Disco));
                r.disco_feature(on, ns);
            }
        }
        r.disco_identity(
            On::Server,
            Identity {
                category: "server",
                kind: "im",
                name: Some("xmppd"),
            },
        );
        r.disco_identity(
            On::Account,
            Identity {
                category: "account",
                kind: "registered",
                name: None,
            },
        );
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Disco {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let payload = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        if iq.stanza_type() != "get" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        if let IqTarget::Account(user) = target {
            // XEP-0030 §8 (directory harvesting): the server answers for an account only to
            // the account itself and to contacts subscribed to its presence; to anyone else
            // it looks like an account that does not exist.
            let requester = iq.from.as_ref().map(|f| f.to_bare());
            let allowed = match &requester {
                Some(r) if r == user => true,
                Some(r) => roster::load_state(cx, user, r)
                    .await
                    .is_ok_and(|(_, state)| state.sub.has_from()),
                None => false,
            };
            if !allowed {
                return match payload.ns() {
                    ns::DISCO_ITEMS => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
                    _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
                };
            }
        }
        let on = target.on();
        let hooks = cx.hooks();
        let node = payload.attr("node");
        let from = iq.from.as_ref();
        if payload.ns() == ns::DISCO_ITEMS {
            let mut query = Element::new("query", ns::DISCO_ITEMS);
            if let Some(node) = node {
                query.set_attr("node", node);
            }
            for provider in hooks.disco_providers(on) {
                for item in provider.items(cx, target, node, from).await {
                    query.push_child(item);
                }
            }
            return Ok(Some(query));
        }
        if let Some(node) = node {
            // XEP-0030 §3.2: info about a node belongs to whoever owns the node.
            for provider in hooks.disco_providers(on) {
                if let Some(info) = provider.node_info(cx, target, node, from).await {
                    return info.map(Some);
                }
            }
            return Err(StanzaErrorCondition::ItemNotFound.into());
        }
        let mut query = Element::new("query", ns::DISCO_INFO);
        for i in hooks.identities(on) {
            query.push_child(identity(i.category, i.kind, i.name));
        }
        for feature in hooks.features(on) {
            query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *feature));
        }
        let addresses = &cx.config().server.contact_addresses;
        if on == On::Server && !addresses.is_empty() {
            query.push_child(contact_form(addresses));
        }
        Ok(Some(query))
    }
}
