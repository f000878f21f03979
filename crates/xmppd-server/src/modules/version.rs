//! XEP-0092 Software Version of the server.

use async_trait::async_trait;
use xmppd_core::{ns, Element, Stanza, StanzaErrorCondition};

use super::{IqResult, IqTarget, Module};
use crate::router::Router;

pub struct Version;

#[async_trait]
impl Module for Version {
    fn server_namespaces(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }

    async fn handle_iq(&self, _: &Router, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
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
