//! vcard-temp (XEP-0054) and the vCard avatar hash in presence (XEP-0153).

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use sha1::Digest;
use xmppd_core::{BareJid, Element, Stanza, StanzaError, StanzaErrorCondition};
use xmppd_storage::CacheMap;

use super::{account_parts, from_owner, storage_error, NoConfig};
use xmppd_server::registry::{
    Ctx, Event, EventHandler, EventKind, Handled, IqHandler, IqResult, IqTarget, Module, On,
    PresenceAmender, Registry, Spec,
};

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

/// The avatar hash of each account seen, so that presence does not read storage.
struct AvatarHashes {
    known: CacheMap<BareJid, Option<String>>,
}

/// Accounts remembered before the cache starts over.
const MAX_CACHED: usize = 50_000;

impl Default for AvatarHashes {
    fn default() -> Self {
        AvatarHashes {
            known: CacheMap::new(MAX_CACHED),
        }
    }
}

impl AvatarHashes {
    async fn get(&self, cx: &Ctx<'_>, user: &BareJid) -> Option<String> {
        let miss = match self.known.lookup(user) {
            Ok(found) => return found,
            Err(miss) => miss,
        };
        let (username, domain) = account_parts(user);
        let stored = cx
            .storage()
            .data
            .get(username, domain, AREA, HASH_KEY)
            .await;
        let hash = stored.ok().flatten();
        self.known.fill(user.clone(), hash.clone(), miss);
        hash
    }
}

/// XEP-0398 §5: the server puts the hash of the stored vCard photo into the user's presence
/// when the client left it out (no `<x/>`, or one without `<photo/>`), and corrects a stale
/// one, so contacts never see an outdated avatar. An explicit empty `<photo/>` is the
/// client's own statement and is left alone.
#[async_trait]
impl PresenceAmender for VCard {
    async fn amend(&self, cx: &Ctx<'_>, user: &BareJid, presence: &mut Element) {
        let photo = presence
            .get_child("x", UPDATE_NS)
            .and_then(|x| x.get_child("photo", UPDATE_NS));
        if photo.is_some_and(|p| p.text().trim().is_empty()) {
            return;
        }
        let Some(hash) = self.avatars.get(cx, user).await else {
            return;
        };
        presence.remove_children("x", UPDATE_NS);
        let mut photo = Element::new("photo", UPDATE_NS);
        if !hash.is_empty() {
            photo.push_text(hash);
        }
        presence.push_child(Element::new("x", UPDATE_NS).with_child(photo));
    }
}

pub struct VCard {
    avatars: AvatarHashes,
}

impl Module for VCard {
    const NAME: &'static str = "vcard";
    const SPECS: &'static [Spec] = &[
        Spec::xep("XEP-0054", "1.3.0"),
        Spec::xep("XEP-0153", "1.1.1").note("the server adds the photo hash to presence"),
    ];
    type Config = NoConfig;

    fn register(_: NoConfig, r: &mut Registry) -> Result<(), String> {
        let module = Arc::new(VCard {
            avatars: AvatarHashes::default(),
        });
        r.iq(On::Account, NS, "vCard", module.clone());
        r.disco_feature(On::Server, NS);
        r.amend_presence(module.clone());
        r.on(EventKind::AccountRemoved, 0, module);
        Ok(())
    }
}

#[async_trait]
impl EventHandler for VCard {
    async fn on(&self, _: &mut Ctx<'_>, event: &Event<'_>) -> Handled {
        if let Event::AccountRemoved(user) = event {
            self.avatars.known.forget(*user);
        }
        Handled::Continue
    }
}

#[async_trait]
impl IqHandler for VCard {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let IqTarget::Account(user) = target else {
            return Err(StanzaErrorCondition::ServiceUnavailable.into());
        };
        let (username, domain) = account_parts(user);
        let data = &cx.storage().data;
        if iq.stanza_type() == "get" {
            let stored = data
                .get(username, domain, AREA, "")
                .await
                .map_err(storage_error)?;
            let vcard = match stored.and_then(|text| xmppd_xml::parse_fragment(&text, NS)) {
                Some(vcard) => vcard,
                // One's own missing vCard is an empty one (§3.1)…
                None if from_owner(iq, user) => Element::new("vCard", NS),
                // …another's is service-unavailable, the same answer as for an account that
                // does not exist, so nobody learns which accounts exist (§3.3).
                None => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
            };
            return Ok(Some(vcard));
        }
        if !from_owner(iq, user) {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let vcard = iq.iq_payload().ok_or(StanzaErrorCondition::BadRequest)?;
        let text = vcard.to_xml_in(NS);
        if text.len() > cx.limits().max_document_size {
            return Err(
                StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("vCard too large")
            );
        }
        data.put(username, domain, AREA, "", &text)
            .await
            .map_err(storage_error)?;
        let hash = avatar_hash(vcard);
        data.put(username, domain, AREA, HASH_KEY, &hash)
            .await
            .map_err(storage_error)?;
        self.avatars.known.store(user.clone(), Some(hash));
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
