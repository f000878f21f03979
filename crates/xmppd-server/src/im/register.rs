//! In-band registration (XEP-0077) for logged-in users: change the password, or delete the
//! account with everything stored for it.

use async_trait::async_trait;
use xmppd_core::{BareJid, Element, Stanza, StanzaError, StanzaErrorCondition};

use super::{account_parts, storage_error};
use crate::modules::{IqResult, IqTarget, Module};
use crate::router::{Kick, Router};
use crate::sasl::credentials;

pub const NS: &str = "jabber:iq:register";
/// Stream feature advertising in-band registration (XEP-0077 §4).
pub const FEATURE: &str = "http://jabber.org/features/iq-register";

/// Fresh SCRAM keys for a password, computed off the async workers.
async fn derive_account(
    router: &Router,
    username: &str,
    domain: &str,
    password: String,
) -> Result<xmppd_storage::Account, StanzaError> {
    let (u, d, iterations) = (
        username.to_string(),
        domain.to_string(),
        router.scram_iterations(),
    );
    tokio::task::spawn_blocking(move || credentials::new_account(&u, &d, &password, iterations))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| StanzaError::new(StanzaErrorCondition::NotAcceptable))
}

/// XEP-0077 §3.1: registration of a new account by a client that has not logged in.
/// `throttle` limits successful registrations per address.
pub async fn register_new(
    router: &Router,
    domain: &str,
    iq: &Stanza,
    ip: std::net::IpAddr,
    throttle: &crate::sasl::AuthThrottle,
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
    if throttle.is_blocked(ip) {
        return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
            .with_text("too many registrations from your address; try later"));
    }
    let (username, domain) = account_parts(&bare);
    let account = derive_account(router, username, domain, password).await?;
    let created = router
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

pub struct Register;

#[async_trait]
impl Module for Register {
    fn server_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, router: &Router, _: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let from = iq.from.as_ref().ok_or(StanzaErrorCondition::Forbidden)?;
        let user = from.to_bare();
        if !router.is_local_domain(user.domain().as_str()) || user.node().is_none() {
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
            delete_account(router, &user).await?;
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
        let account = derive_account(router, username, domain, password).await?;
        router
            .storage()
            .accounts
            .set_credentials(&account)
            .await
            .map_err(storage_error)?;
        tracing::info!(account = %user, "password changed in-band");
        Ok(None)
    }
}

/// Deletes an account and everything it owns (XEP-0077 §3.2, and `xmppd user del` through
/// the admin socket). Contacts are unsubscribed first, while the roster still says who they
/// are; then the data goes, the server forgets what it cached, and the sessions end.
pub async fn delete_account(router: &Router, user: &BareJid) -> Result<(), StanzaError> {
    let (username, domain) = account_parts(user);
    super::roster::remove_all(router, user).await?;
    router
        .storage()
        .accounts
        .delete(username, domain)
        .await
        .map_err(storage_error)?;
    router.privacy().forget(user);
    router.avatars().forget(user);
    for session in router.sessions().resources(user.as_str()) {
        session.kick(Kick::AccountRemoved);
    }
    Ok(())
}
