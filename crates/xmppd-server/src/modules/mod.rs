//! Protocol modules. Each one says which iq payload namespaces it answers (for the server
//! domain and for accounts' bare JIDs) and which disco features it brings; the router
//! dispatches to it and the disco module lists its features. Adding a XEP is adding a module.

mod disco;
mod ping;
mod time;
mod version;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{BareJid, Element, Stanza, StanzaError};

use crate::router::Router;

/// The answer to an iq request: a result payload (or none), or an error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// Who an iq request is addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqTarget<'a> {
    /// The server domain itself.
    Server(&'a str),
    /// A local account's bare JID, answered by the server on its behalf (RFC 6121 §1).
    Account(&'a BareJid),
}

#[async_trait]
pub trait Module: Send + Sync {
    /// Payload namespaces answered for the server domain.
    fn server_namespaces(&self) -> &'static [&'static str] {
        &[]
    }

    /// Payload namespaces answered on behalf of accounts (their bare JIDs).
    fn account_namespaces(&self) -> &'static [&'static str] {
        &[]
    }

    /// Disco features this module brings to the server domain.
    fn server_features(&self) -> &'static [&'static str] {
        &[]
    }

    /// Disco features this module brings to accounts.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }

    /// Answers an iq request whose payload is in one of the module's namespaces.
    async fn handle_iq(&self, router: &Router, target: IqTarget<'_>, iq: &Stanza) -> IqResult;
}

/// All modules, indexed by the namespaces they answer.
pub struct Modules {
    all: Vec<Arc<dyn Module>>,
    server: HashMap<&'static str, Arc<dyn Module>>,
    account: HashMap<&'static str, Arc<dyn Module>>,
}

impl Modules {
    /// The modules every server runs, and those `config` switches on.
    pub fn standard(config: &crate::config::Config) -> Self {
        use crate::im;
        let mut all: Vec<Arc<dyn Module>> = vec![
            Arc::new(disco::Disco),
            Arc::new(ping::Ping),
            Arc::new(version::Version),
            Arc::new(time::Time),
            Arc::new(im::roster::Roster),
            Arc::new(im::vcard::VCard),
            Arc::new(im::private::Private),
            Arc::new(im::last::LastActivity),
            Arc::new(im::register::Register),
        ];
        if config.im.privacy_lists {
            all.push(Arc::new(im::privacy::PrivacyLists));
        }
        if config.im.blocking {
            all.push(Arc::new(im::privacy::Blocking));
        }
        Self::new(all)
    }

    pub fn new(all: Vec<Arc<dyn Module>>) -> Self {
        let mut server = HashMap::new();
        let mut account = HashMap::new();
        for m in &all {
            for ns in m.server_namespaces() {
                server.insert(*ns, m.clone());
            }
            for ns in m.account_namespaces() {
                account.insert(*ns, m.clone());
            }
        }
        Modules {
            all,
            server,
            account,
        }
    }

    /// The module answering `ns` for this kind of target.
    pub fn for_iq(&self, target: IqTarget<'_>, ns: &str) -> Option<&Arc<dyn Module>> {
        match target {
            IqTarget::Server(_) => self.server.get(ns),
            IqTarget::Account(_) => self.account.get(ns),
        }
    }

    /// Every feature the modules bring, sorted and without repeats.
    pub fn features(&self, server: bool) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self
            .all
            .iter()
            .flat_map(|m| {
                if server {
                    m.server_features()
                } else {
                    m.account_features()
                }
            })
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}
