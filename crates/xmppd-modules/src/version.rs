//! XEP-0092 Software Version of the server.

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{ns, Element, Stanza, StanzaErrorCondition};

use super::NoConfig;
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec};

pub struct Version;

impl Module for Version {
    const NAME: &'static str = "version";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0092", "1.1")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        r.iq(On::Server, ns::VERSION, "query", Arc::new(Version));
        r.disco_feature(On::Server, ns::VERSION);
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Version {
    async fn handle(&self, _: &mut Ctx<'_>, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
        if iq.stanza_type() != "get" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        // No OS on purpose: it helps attackers more than admins.
        Ok(Some(
            Element::new("query", ns::VERSION)
                .with_child(Element::new("name", ns::VERSION).with_text("xmppd"))
                .with_child(
                    Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")),
                ),
        ))
    }
}
