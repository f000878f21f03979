//! XEP-0202 Entity Time of the server (always UTC).

use async_trait::async_trait;
use xmppd_core::{Element, Stanza, StanzaErrorCondition};

use super::{IqResult, IqTarget, Module};
use crate::router::Router;
use crate::time::{iso8601, unix_now};

const NS: &str = "urn:xmpp:time";

pub struct Time;

#[async_trait]
impl Module for Time {
    fn server_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, _: &Router, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
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
