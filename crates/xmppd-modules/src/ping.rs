//! XEP-0199 XMPP Ping, answered for the server and on behalf of accounts.

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{ns, Stanza, StanzaErrorCondition};

use super::NoConfig;
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec};

pub struct Ping;

impl Module for Ping {
    const NAME: &'static str = "ping";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0199", "2.0.1")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        for on in [On::Server, On::Account] {
            r.iq(on, ns::PING, "ping", Arc::new(Ping));
            r.disco_feature(on, ns::PING);
        }
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Ping {
    async fn handle(&self, _: &mut Ctx<'_>, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
        match iq.stanza_type() {
            "get" => Ok(None),
            _ => Err(StanzaErrorCondition::BadRequest.into()),
        }
    }
}
