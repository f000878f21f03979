//! XEP-0030 Service Discovery: the identities and features the loaded modules registered;
//! and the server's own XEP-0115 capabilities, a hash of that answer, in its stream features
//! (XEP-0115 §6.3).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use xmppd_core::{ns, Element, Stanza, StanzaErrorCondition};

use super::{pubsub, roster, NoConfig};
use xmppd_server::registry::{
    Ctx, Hooks, Identity, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec, Stage,
};

/// The XEP-0115 node naming this software.
pub const CAPS_NODE: &str = "https://github.com/xmppd/xmppd";

pub struct Disco {
    /// XEP-0157 addresses, from `[server]` (a reload does not change them).
    addresses: BTreeMap<String, Vec<String>>,
    /// The `ver` of the server's disco#info, computed once: what is registered is frozen.
    ver: OnceLock<String>,
}

impl Disco {
    /// The server's disco#info `<query/>` (§3.1), as every domain answers it.
    fn server_info(&self, hooks: &Hooks) -> Element {
        let mut query = registered_info(hooks, On::Server);
        if !self.addresses.is_empty() {
            query.push_child(contact_form(&self.addresses));
        }
        query
    }

    /// XEP-0115 §5: the hash of [`Disco::server_info`].
    fn ver(&self, hooks: &Hooks) -> &str {
        self.ver.get_or_init(|| {
            // Only a module registering one feature twice could make it unhashable (§5.4).
            pubsub::caps_ver(&self.server_info(hooks)).unwrap_or_default()
        })
    }

    /// `<c/>` for the stream features (XEP-0115 §6.3).
    fn caps(&self, hooks: &Hooks) -> Element {
        Element::new("c", pubsub::CAPS_NS)
            .with_attr("hash", "sha-1")
            .with_attr("node", CAPS_NODE)
            .with_attr("ver", self.ver(hooks))
    }
}

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut el = Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(name) = name {
        el.set_attr("name", name);
    }
    el
}

/// The identities and features the loaded modules registered for `on`.
fn registered_info(hooks: &Hooks, on: On) -> Element {
    let mut query = Element::new("query", ns::DISCO_INFO);
    for i in hooks.identities(on) {
        query.push_child(identity(i.category, i.kind, i.name));
    }
    for feature in hooks.features(on) {
        query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *feature));
    }
    query
}

const DATA: &str = "jabber:x:data";

/// XEP-0157 contact addresses as a XEP-0128 extended-information form.
fn contact_form(addresses: &BTreeMap<String, Vec<String>>) -> Element {
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
        let disco = Arc::new(Disco {
            addresses: r.server_config().server.contact_addresses.clone(),
            ver: OnceLock::new(),
        });
        for on in [On::Server, On::Account] {
            for (ns, name) in [(ns::DISCO_INFO, "query"), (ns::DISCO_ITEMS, "query")] {
                r.iq(on, ns, name, disco.clone());
                r.disco_feature(on, ns);
            }
        }
        // XEP-0115 §7: an entity that advertises caps lists the feature. §6.3: the caps go
        // in the stream features before and after authentication.
        r.disco_feature(On::Server, pubsub::CAPS_NS);
        for stage in [Stage::PreAuth, Stage::PostAuth] {
            let disco = disco.clone();
            r.stream_feature(stage, Box::new(move |info| Some(disco.caps(info.hooks))));
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
        if on == On::Server {
            // XEP-0115 §6.2: `node#ver` is the same answer, naming the node.
            let caps_node = node.is_some_and(|n| n == format!("{CAPS_NODE}#{}", self.ver(hooks)));
            if node.is_none() || caps_node {
                let mut query = self.server_info(hooks);
                if let Some(node) = node {
                    query.set_attr("node", node);
                }
                return Ok(Some(query));
            }
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
        Ok(Some(registered_info(hooks, on)))
    }
}
