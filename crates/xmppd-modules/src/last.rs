//! Last Activity (XEP-0012): the server's uptime and when an account was last online.

use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::{BareJid, Element, Stanza, StanzaErrorCondition};

use super::{account_parts, roster, storage_error, NoConfig};
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget, Module, On, Registry, Spec};
use xmppd_server::time::unix_now;

pub const NS: &str = "jabber:iq:last";
const AREA: &str = "last";

/// Remembers when the last resource of `user` went offline, and its status.
pub async fn record_logout(cx: &Ctx<'_>, user: &BareJid, status: &str) {
    let (username, domain) = account_parts(user);
    let value = format!("{}\n{status}", unix_now());
    if let Err(e) = cx
        .storage()
        .data
        .put(username, domain, AREA, "", &value)
        .await
    {
        tracing::warn!(error = %e, "last activity not recorded");
    }
}

fn query(seconds: i64, status: &str) -> Element {
    let mut q = Element::new("query", NS).with_attr("seconds", seconds.max(0).to_string());
    if !status.is_empty() {
        q.push_text(status);
    }
    q
}

pub struct LastActivity;

impl Module for LastActivity {
    const NAME: &'static str = "last";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0012", "2.0")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        for on in [On::Server, On::Account] {
            r.iq(on, NS, "query", Arc::new(LastActivity));
            r.disco_feature(on, NS);
        }
        Ok(())
    }
}

#[async_trait]
impl IqHandler for LastActivity {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        if iq.stanza_type() != "get" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        let user = match target {
            // §6: for a server, the time since it started.
            IqTarget::Server(_) => return Ok(Some(query(cx.uptime_secs(), ""))),
            IqTarget::Account(user) => user,
        };
        let requester = iq.from.as_ref().map(|f| f.to_bare());
        let allowed = match &requester {
            Some(r) if r == user => true,
            // §4: only contacts subscribed to the user's presence may ask.
            Some(r) => roster::load_state(cx, user, r)
                .await
                .map(|(_, s)| s.sub.has_from())
                .unwrap_or(false),
            None => false,
        };
        if !allowed {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        if cx
            .sessions()
            .resources(user.as_str())
            .iter()
            .any(|s| s.is_available())
        {
            return Ok(Some(query(0, "")));
        }
        let (username, domain) = account_parts(user);
        let stored = cx
            .storage()
            .data
            .get(username, domain, AREA, "")
            .await
            .map_err(storage_error)?;
        let Some((when, status)) = stored.as_deref().and_then(|s| s.split_once('\n')) else {
            return Err(StanzaErrorCondition::ItemNotFound.into());
        };
        let when: i64 = when.parse().unwrap_or(0);
        Ok(Some(query(unix_now() - when, status)))
    }
}
