//! XEP-0202 Entity Time of the server (always UTC).

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{Element, Stanza, StanzaErrorCondition};

use super::NoConfig;
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec};
use xmppd_server::time::{iso8601, unix_now};

const NS: &str = "urn:xmpp:time";

pub struct Time;

impl Module for Time {
    const NAME: &'static str = "time";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0202", "2.0")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        r.iq(On::Server, NS, "time", Arc::new(Time));
        r.disco_feature(On::Server, NS);
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Time {
    async fn handle(&self, _: &mut Ctx<'_>, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
        if iq.stanza_type() != "get" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        Ok(Some(
            Element::new("time", NS)
                .with_child(Element::new("tzo", NS).with_text("+00:00"))
                .with_child(Element::new("utc", NS).with_text(iso8601(unix_now()))),
        ))
    }
}
