//! Private XML storage (XEP-0049).

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{Element, Stanza, StanzaError, StanzaErrorCondition};

use super::{account_parts, from_owner, storage_error, NoConfig};
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec};

pub const NS: &str = "jabber:iq:private";
const AREA: &str = "private";

pub struct Private;

impl Module for Private {
    const NAME: &'static str = "private";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0049", "1.2")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        r.iq(On::Account, NS, "query", Arc::new(Private));
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Private {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let IqTarget::Account(user) = target else {
            return Err(StanzaErrorCondition::ServiceUnavailable.into());
        };
        // §3: only the owner may read or write its private data.
        if !from_owner(iq, user) {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let query = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        let mut children = query.children();
        let (Some(item), None) = (children.next(), children.next()) else {
            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("exactly one child element is required"));
        };
        // §3: data in jabber:* namespaces (such as jabber:iq:private itself) is refused.
        if item.ns().is_empty() || item.ns().starts_with("jabber:") {
            return Err(StanzaErrorCondition::NotAcceptable.into());
        }
        let key = format!("{{{}}}{}", item.ns(), item.name());
        let (username, domain) = account_parts(user);
        let data = &cx.storage().data;
        if iq.stanza_type() == "get" {
            let stored = data
                .get(username, domain, AREA, &key)
                .await
                .map_err(storage_error)?;
            let found = stored
                .and_then(|t| xmppd_xml::parse_fragment(&t, item.ns()))
                .unwrap_or_else(|| item.clone());
            return Ok(Some(Element::new("query", NS).with_child(found)));
        }
        let text = item.to_xml_in(item.ns());
        if text.len() > cx.limits().max_document_size {
            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("private XML too large"));
        }
        data.put(username, domain, AREA, &key, &text)
            .await
            .map_err(storage_error)?;
        Ok(None)
    }
}
