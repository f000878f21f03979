//! XEP-0199 XMPP Ping, answered for the server and on behalf of accounts.

use async_trait::async_trait;
use xmppd_core::{ns, Stanza};

use super::{IqResult, IqTarget, Module};
use crate::router::Router;

pub struct Ping;

#[async_trait]
impl Module for Ping {
    fn server_namespaces(&self) -> &'static [&'static str] {
        &[ns::PING]
    }

    fn account_namespaces(&self) -> &'static [&'static str] {
        &[ns::PING]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[ns::PING]
    }

    fn account_features(&self) -> &'static [&'static str] {
        &[ns::PING]
    }

    async fn handle_iq(&self, _: &Router, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
        match iq.stanza_type() {
            "get" => Ok(None),
            _ => Err(xmppd_core::StanzaErrorCondition::BadRequest.into()),
        }
    }
}
