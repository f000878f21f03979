//! vcard-temp (XEP-0054) and the vCard avatar hash in presence (XEP-0153).

use async_trait::async_trait;
use base64::Engine;
use sha1::Digest;
use xmppd_core::{BareJid, Element, Stanza, StanzaError, StanzaErrorCondition};

use super::{account_parts, from_owner, storage_error};
use crate::modules::{IqResult, IqTarget, Module};
use crate::router::Router;

pub const NS: &str = "vcard-temp";
const UPDATE_NS: &str = "vcard-temp:x:update";
/// Storage area of the vCard and of the avatar hash derived from it.
const AREA: &str = "vcard";
const HASH_KEY: &str = "avatar-sha1";

/// The SHA-1 of the vCard photo (hex), or "" when it has none (XEP-0153 §3.1).
fn avatar_hash(vcard: &Element) -> String {
    let binval = vcard
        .get_child("PHOTO", NS)
        .and_then(|p| p.get_child("BINVAL", NS))
        .map(|b| b.text());
    let Some(binval) = binval else {
        return String::new();
    };
    let cleaned: String = binval.chars().filter(|c| !c.is_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(cleaned) {
        Ok(bytes) => sha1::Sha1::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => String::new(),
    }
}

/// XEP-0153 §4.3: the server keeps the avatar hash in the user's presence current, so that
/// contacts never see a stale one after a vCard change from another client.
pub async fn stamp_avatar_hash(router: &Router, user: &BareJid, presence: &mut Element) {
    let (username, domain) = account_parts(user);
    let Ok(Some(hash)) = router
        .storage()
        .data
        .get(username, domain, AREA, HASH_KEY)
        .await
    else {
        return;
    };
    presence.remove_children("x", UPDATE_NS);
    let mut photo = Element::new("photo", UPDATE_NS);
    if !hash.is_empty() {
        photo.push_text(hash);
    }
    presence.push_child(Element::new("x", UPDATE_NS).with_child(photo));
}

pub struct VCard;

#[async_trait]
impl Module for VCard {
    fn account_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, router: &Router, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let IqTarget::Account(user) = target else {
            return Err(StanzaErrorCondition::ServiceUnavailable.into());
        };
        let (username, domain) = account_parts(user);
        let data = &router.storage().data;
        if iq.stanza_type() == "get" {
            // Anyone may read a vCard; an account without one has an empty one (§3.1).
            let stored = data
                .get(username, domain, AREA, "")
                .await
                .map_err(storage_error)?;
            let vcard = stored
                .and_then(|text| xmppd_xml::parse_fragment(&text, NS))
                .unwrap_or_else(|| Element::new("vCard", NS));
            return Ok(Some(vcard));
        }
        if !from_owner(iq, user) {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let vcard = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        let text = vcard.to_xml_in(NS);
        if text.len() > router.limits().max_document_size {
            return Err(
                StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("vCard too large")
            );
        }
        data.put(username, domain, AREA, "", &text)
            .await
            .map_err(storage_error)?;
        data.put(username, domain, AREA, HASH_KEY, &avatar_hash(vcard))
            .await
            .map_err(storage_error)?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatar_hash_of_photo() {
        let photo = Element::new("PHOTO", NS)
            .with_child(Element::new("TYPE", NS).with_text("image/png"))
            .with_child(Element::new("BINVAL", NS).with_text("aGVs\nbG8="));
        let vcard = Element::new("vCard", NS).with_child(photo);
        // SHA-1 of "hello".
        assert_eq!(
            avatar_hash(&vcard),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
        assert_eq!(avatar_hash(&Element::new("vCard", NS)), "");
    }
}
