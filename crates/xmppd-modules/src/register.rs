//! In-band registration (XEP-0077) for logged-in users: change the password, or delete the
//! account with everything stored for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use xmppd_core::{Element, Stanza, StanzaError, StanzaErrorCondition};

use super::{account_parts, storage_error, NoConfig};
use xmppd_server::registry::{
    Ctx, IqHandler, IqResult, IqTarget, Module, On, PreAuthIq, Registry, Spec, Stage,
};
use xmppd_server::sasl::{credentials, AuthThrottle};

pub const NS: &str = "jabber:iq:register";
/// Stream feature advertising in-band registration (XEP-0077 §4).
pub const FEATURE: &str = "http://jabber.org/features/iq-register";

/// Fresh SCRAM keys for a password, computed off the async workers.
async fn derive_account(
    cx: &Ctx<'_>,
    username: &str,
    domain: &str,
    password: String,
) -> Result<xmppd_storage::Account, StanzaError> {
    let (u, d, iterations) = (
        username.to_string(),
        domain.to_string(),
        cx.config().sasl.scram_iterations,
    );
    tokio::task::spawn_blocking(move || credentials::new_account(&u, &d, &password, iterations))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| StanzaError::new(StanzaErrorCondition::NotAcceptable))
}

pub struct Register {
    /// Counts successful in-band registrations per address.
    registrations: AuthThrottle,
}

impl Module for Register {
    const NAME: &'static str = "register";
    const SPECS: &'static [Spec] = &[Spec::xep("XEP-0077", "2.4")
        .note("account creation off by default (`im.allow_registration`)")];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        let im = &r.server_config().im;
        let open = im.allow_registration;
        let module = Arc::new(Register {
            registrations: AuthThrottle::new(
                im.registrations_per_ip_per_hour,
                Duration::from_secs(3600),
            ),
        });
        r.iq(On::Server, NS, "query", module.clone());
        r.disco_feature(On::Server, NS);
        if open {
            r.pre_auth_iq(NS, "query", module);
            r.stream_feature(
                Stage::PreAuth,
                Box::new(|_| Some(Element::new("register", FEATURE))),
            );
        }
        Ok(())
    }
}

/// XEP-0077 §3.1: registration of a new account by a client that has not logged in.
#[async_trait]
impl PreAuthIq for Register {
    async fn handle(&self, cx: &mut Ctx<'_>, domain: &str, ip: IpAddr, iq: &Stanza) -> IqResult {
        register_new(cx, domain, iq, ip, &self.registrations).await
    }
}

async fn register_new(
    cx: &Ctx<'_>,
    domain: &str,
    iq: &Stanza,
    ip: IpAddr,
    throttle: &AuthThrottle,
) -> IqResult {
    let query = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
    if iq.stanza_type() == "get" {
        return Ok(Some(
            Element::new("query", NS)
                .with_child(
                    Element::new("instructions", NS)
                        .with_text("Choose a username and password for this server."),
                )
                .with_child(Element::new("username", NS))
                .with_child(Element::new("password", NS)),
        ));
    }
    if query.has_child("remove", NS) {
        return Err(StanzaErrorCondition::NotAuthorized.into());
    }
    let name = query.get_child("username", NS).map(|e| e.text());
    let password = query.get_child("password", NS).map(|e| e.text());
    let (Some(name), Some(password)) = (name, password) else {
        return Err(StanzaErrorCondition::NotAcceptable.into());
    };
    let bare = xmppd_core::BareJid::new(&format!("{name}@{domain}")).map_err(|_| {
        StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("invalid username")
    })?;
    if bare.node().is_none() || password.is_empty() {
        return Err(StanzaErrorCondition::NotAcceptable.into());
    }
    if throttle.is_blocked(&ip) {
        return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
            .with_text("too many registrations from your address; try later"));
    }
    let (username, domain) = account_parts(&bare);
    let account = derive_account(cx, username, domain, password).await?;
    let created = cx
        .storage()
        .accounts
        .create(&account)
        .await
        .map_err(storage_error)?;
    if !created {
        return Err(StanzaErrorCondition::Conflict.into());
    }
    throttle.record_failure(ip);
    tracing::info!(account = %bare, %ip, "account registered in-band");
    Ok(None)
}

#[async_trait]
impl IqHandler for Register {
    async fn handle(&self, cx: &mut Ctx<'_>, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let from = iq.from.as_ref().ok_or(StanzaErrorCondition::Forbidden)?;
        let user = from.to_bare();
        if !cx.is_local_domain(user.domain().as_str()) || user.node().is_none() {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let (username, domain) = account_parts(&user);
        let query = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        if iq.stanza_type() == "get" {
            // §3.2.1: a registered user sees <registered/> and the current username.
            return Ok(Some(
                Element::new("query", NS)
                    .with_child(Element::new("registered", NS))
                    .with_child(Element::new("username", NS).with_text(username))
                    .with_child(Element::new("password", NS)),
            ));
        }
        if query.has_child("remove", NS) {
            xmppd_server::accounts::delete(cx, &user).await?;
            tracing::info!(account = %user, "account deleted in-band");
            return Ok(None);
        }
        let name = query.get_child("username", NS).map(|e| e.text());
        let password = query.get_child("password", NS).map(|e| e.text());
        let (Some(name), Some(password)) = (name, password) else {
            return Err(StanzaErrorCondition::BadRequest.into());
        };
        // §3.3: the username must be the account's own.
        if !name.eq_ignore_ascii_case(username) {
            return Err(StanzaError::new(StanzaErrorCondition::NotAllowed)
                .with_text("the username cannot be changed"));
        }
        if password.is_empty() {
            return Err(StanzaErrorCondition::NotAcceptable.into());
        }
        let account = derive_account(cx, username, domain, password).await?;
        cx.storage()
            .accounts
            .set_credentials(&account)
            .await
            .map_err(storage_error)?;
        tracing::info!(account = %user, "password changed in-band");
        Ok(None)
    }
}
