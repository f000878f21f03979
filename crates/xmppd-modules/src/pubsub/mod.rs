//! Publish-subscribe (XEP-0060), used twice: PEP (XEP-0163) on every account's bare JID and a
//! generic service at `pubsub.<domain>`; entity capabilities (XEP-0115) filter PEP's
//! notifications.
//!
//! `node.rs` holds the rules (configuration, access and publish models), `subscriptions.rs`
//! a subscription's states (approval by owners) and options, `service.rs` the iq protocol
//! both services share, `pep.rs` what only PEP does (implicit subscriptions by presence and
//! caps, last items on presence), `host.rs` the generic service's address, `caps.rs` the
//! capabilities cache, `bookmarks.rs` and `avatars.rs` the unification of PEP with the
//! private XML and vCard modules (XEP-0402 §5.3, XEP-0398), when those are loaded.

mod avatars;
mod bookmarks;
mod caps;
mod host;
mod node;
mod pep;
mod service;
mod subscriptions;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Deserialize;
use xmppd_core::BareJid;
use xmppd_server::registry::{EventKind, ExtKey, Identity, IqHandler, Module, On, Registry, Spec};

pub use caps::{ver_of as caps_ver, Caps, NS as CAPS_NS};
pub use node::NodeConfig;

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const OWNER_NS: &str = "http://jabber.org/protocol/pubsub#owner";
pub const EVENT_NS: &str = "http://jabber.org/protocol/pubsub#event";
pub const ERRORS_NS: &str = "http://jabber.org/protocol/pubsub#errors";

/// `[modules.pubsub]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The generic service runs at `<service_prefix>.<domain>`; "" turns it off.
    pub service_prefix: String,
    /// Most nodes per PEP account, and per generic service.
    pub max_nodes: usize,
    /// Most items a node keeps; `max_items = max` means this.
    pub max_items: usize,
    /// Largest item payload, in bytes of XML.
    pub max_item_size: usize,
    /// Most subscriptions per node (pending ones included).
    pub max_subscriptions: usize,
    /// Most subscription requests per node waiting for an owner's approval.
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            service_prefix: "pubsub".into(),
            max_nodes: 100,
            max_items: 256,
            max_item_size: 64 * 1024,
            max_subscriptions: 1000,
            max_pending: 100,
        }
    }
}

/// A pubsub service: a PEP account or a generic service domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    Pep(BareJid),
    Domain(String),
}

impl Service {
    pub fn jid(&self) -> &str {
        match self {
            Service::Pep(owner) => owner.as_str(),
            Service::Domain(domain) => domain,
        }
    }

    fn defaults(&self) -> NodeConfig {
        match self {
            Service::Pep(_) => NodeConfig::pep_default(),
            Service::Domain(_) => NodeConfig::service_default(),
        }
    }
}

/// The features both services implement (XEP-0060 §10), advertised exactly.
const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#rsm",
    "http://jabber.org/protocol/pubsub#subscribe",
    "http://jabber.org/protocol/pubsub#subscription-options",
];

/// What only PEP does (XEP-0163 §1, §4).
const PEP_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#presence-notifications",
];

/// What only the generic service does (§8.1.2 instant nodes; §4.5 authorize, whose approval
/// forms a PEP owner could not answer).
const SERVICE_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#access-authorize",
    "http://jabber.org/protocol/pubsub#instant-nodes",
];

pub struct PubSub {
    config: Config,
    caps: Caps,
    configs: node::ConfigTexts,
    /// Caps queries each session has had, against [`pep::MAX_QUERIES_PER_SESSION`].
    queries: ExtKey<AtomicUsize>,
    /// Caps queries to other servers' resources in flight ([`pep::MAX_REMOTE_QUERIES`]).
    remote_queries: Arc<AtomicUsize>,
    /// The handlers this module wraps, when their modules are loaded: private XML
    /// (XEP-0402 bookmarks compat) and vcard-temp (XEP-0398 avatar conversion).
    wrapped: Wrapped,
    me: pep::Weak,
}

/// Other modules' iq handlers, as registered before this one (see [`Registry::iq_handler`]).
#[derive(Default)]
pub struct Wrapped {
    pub private: Option<Arc<dyn IqHandler>>,
    pub vcard: Option<Arc<dyn IqHandler>>,
}

impl Module for PubSub {
    const NAME: &'static str = "pubsub";
    const SPECS: &'static [Spec] = &[
        Spec::xep("XEP-0060", "1.30.0").partial(
            "authorize access on the generic service only, pending requests not by ad-hoc \
             command; subscription options: deliver only; no SubIDs, no collections",
        ),
        Spec::xep("XEP-0084", "1.1.4"),
        Spec::xep("XEP-0115", "1.6.0").note(
            "tracked for PEP notifications; unknown hashes queried, over federation too; \
             the server's own in its stream features",
        ),
        Spec::xep("XEP-0163", "1.2.2"),
        Spec::xep("XEP-0172", ""),
        Spec::xep("XEP-0223", "1.1.1"),
        Spec::xep("XEP-0398", "").note("vCard and PEP avatars kept in step"),
        Spec::xep("XEP-0402", "1.2.0").note("with #compat for XEP-0048 private XML"),
    ];
    type Config = Config;

    fn register(config: Config, r: &mut Registry) -> Result<(), String> {
        if config.max_items == 0 || config.max_nodes == 0 || config.max_item_size == 0 {
            return Err("max_items, max_nodes and max_item_size must be above 0".into());
        }
        let domains = r.server_config().server.domains.clone();
        let prefix = config.service_prefix.clone();
        // Private XML and vCards register first (see `standard`); their handlers are wrapped.
        let wrapped = Wrapped {
            private: r.iq_handler(On::Account, crate::private::NS, "query"),
            vcard: r.iq_handler(On::Account, crate::vcard::NS, "vCard"),
        };
        let (compat, conversion) = (wrapped.private.is_some(), wrapped.vcard.is_some());
        let module = pep::new(config, r.session_ext(), wrapped);
        if compat {
            let wrapper = Arc::new(bookmarks::Compat(module.clone()));
            r.iq(On::Account, crate::private::NS, "query", wrapper);
            r.disco_feature(On::Account, bookmarks::COMPAT);
        }
        if conversion {
            let wrapper = Arc::new(avatars::Conversion(module.clone()));
            r.iq(On::Account, crate::vcard::NS, "vCard", wrapper);
            r.disco_feature(On::Account, avatars::CONVERSION);
        }
        for ns in [NS, OWNER_NS] {
            r.iq(On::Account, ns, "pubsub", module.clone());
        }
        r.disco_identity(
            On::Account,
            Identity {
                category: "pubsub",
                kind: "pep",
                name: None,
            },
        );
        for feature in FEATURES.iter().chain(PEP_FEATURES) {
            r.disco_feature(On::Account, feature);
        }
        r.disco_provider(On::Account, module.clone());
        r.on(EventKind::PresenceReceived, 0, module.clone());
        r.on(EventKind::AccountRemoved, 0, module.clone());
        if !prefix.is_empty() {
            for domain in domains {
                let jid = format!("{prefix}.{domain}");
                r.host(
                    &jid,
                    Arc::new(host::ServiceHost::new(module.clone(), jid.clone())),
                );
            }
            r.disco_provider(On::Server, Arc::new(host::Listing(prefix)));
        }
        Ok(())
    }
}

/// An iq of `kind` from an account to itself, for calling a wrapped module's handler on the
/// account's behalf.
fn own_iq(user: &BareJid, kind: &str, payload: xmppd_core::Element) -> Option<xmppd_core::Stanza> {
    let iq = xmppd_core::Element::new("iq", xmppd_core::ns::CLIENT)
        .with_attr("type", kind)
        .with_attr("id", "xmppd-pubsub")
        .with_attr("from", user.as_str())
        .with_attr("to", user.as_str())
        .with_child(payload);
    xmppd_core::Stanza::parse(iq).ok()
}
