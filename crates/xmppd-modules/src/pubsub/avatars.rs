//! XEP-0398: one avatar for vCard clients (XEP-0054/0153) and PEP clients (XEP-0084).
//!
//! A vCard set with a photo publishes it to the avatar data and metadata nodes (unless the
//! metadata already names that photo); an avatar published through PEP becomes the vCard's
//! photo, written through the vcard module's own handler so its presence hash follows.
//! Neither direction triggers the other: the PEP side is written directly, the vCard side
//! through the wrapped handler, and each skips what is already in place.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use sha1::Digest;
use xmppd_core::{BareJid, Element, Stanza, StanzaErrorCondition};

use super::{PubSub, Service};
use crate::from_owner;
use crate::vcard::NS as VCARD;
use xmppd_server::registry::{Ctx, IqHandler, IqResult, IqTarget};

pub const DATA: &str = "urn:xmpp:avatar:data";
pub const METADATA: &str = "urn:xmpp:avatar:metadata";
pub const CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";

/// The vcard-temp handler with avatar conversion (registered in the vcard module's place,
/// whose handler does the vCard work).
pub struct Conversion(pub Arc<PubSub>);

#[async_trait]
impl IqHandler for Conversion {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        let result = self.0.vcard(cx, target, iq).await?;
        if let (IqTarget::Account(user), "set", Some(vcard)) =
            (target, iq.stanza_type(), iq.iq_payload())
        {
            if from_owner(iq, user) {
                self.0.vcard_to_pep(cx, user, vcard).await;
            }
        }
        Ok(result)
    }
}

/// A vCard photo: its type, its bytes' SHA-1 (hex, the XEP-0084 id) and size, and the
/// base64 text (whitespace removed).
struct Photo {
    mime: String,
    id: String,
    bytes: usize,
    base64: String,
}

fn photo_of(vcard: &Element) -> Option<Photo> {
    let photo = vcard.get_child("PHOTO", VCARD)?;
    let base64: String = photo
        .get_child("BINVAL", VCARD)?
        .text()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&base64)
        .ok()?;
    Some(Photo {
        mime: photo
            .get_child("TYPE", VCARD)
            .map(|t| t.text())
            .unwrap_or_else(|| "image/png".into()),
        id: hex_sha1(&bytes),
        bytes: bytes.len(),
        base64,
    })
}

fn hex_sha1(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first `<info/>` of a metadata payload that is stored here (no `url`), if any.
fn inline_info(metadata: &Element) -> Option<&Element> {
    metadata
        .children()
        .find(|c| c.is("info", METADATA) && c.attr("url").is_none())
}

impl PubSub {
    /// The vcard module's own handler (present whenever [`Conversion`] is registered).
    async fn vcard(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult {
        match &self.wrapped.vcard {
            Some(vcard) => vcard.handle(cx, target, iq).await,
            None => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        }
    }

    /// The avatar id the metadata node names now: `Some("")` for "no avatar".
    async fn current_avatar(&self, cx: &Ctx<'_>, svc: &Service) -> Option<String> {
        let items = cx
            .storage()
            .pubsub
            .items(svc.jid(), METADATA, 1)
            .await
            .ok()?;
        let metadata = xmppd_xml::parse_fragment(&items.first()?.payload, "")?;
        Some(
            inline_info(&metadata)
                .and_then(|i| i.attr("id"))
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// A vCard was stored: its photo becomes the PEP avatar (errors are logged: the vCard
    /// itself was saved and the client is told so).
    async fn vcard_to_pep(&self, cx: &mut Ctx<'_>, user: &BareJid, vcard: &Element) {
        let svc = Service::Pep(user.clone());
        let current = self.current_avatar(cx, &svc).await;
        let photo = photo_of(vcard);
        let metadata = match &photo {
            Some(p) if current.as_deref() == Some(p.id.as_str()) => return,
            Some(p) => Element::new("metadata", METADATA).with_child(
                Element::new("info", METADATA)
                    .with_attr("id", p.id.clone())
                    .with_attr("bytes", p.bytes.to_string())
                    .with_attr("type", p.mime.clone()),
            ),
            // No photo: an empty metadata says "no avatar" (XEP-0084 §4.5), once.
            None if current.as_deref().is_none_or(str::is_empty) => return,
            None => Element::new("metadata", METADATA),
        };
        let mut items = Vec::new();
        if let Some(p) = &photo {
            let data = Element::new("data", DATA)
                .with_text(p.base64.clone())
                .to_xml();
            if data.len() > self.config.max_item_size {
                return tracing::debug!(%user, "vCard photo too large for the PEP avatar");
            }
            items.push((DATA, p.id.clone(), data));
        }
        let id = photo
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_else(|| "current".into());
        items.push((METADATA, id, metadata.to_xml()));
        let defaults = svc.defaults();
        for (name, id, payload) in items {
            let stored = match self.node_or_create(cx, &svc, name, user, &defaults).await {
                Ok(node) => {
                    self.store_and_notify(cx, &svc, &node, user, &id, payload)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                return tracing::warn!(%user, error = ?e.condition, "vCard avatar not published");
            }
        }
    }

    /// Avatar metadata was published: its photo (from the data node) becomes the vCard's.
    pub async fn pep_to_vcard(&self, cx: &mut Ctx<'_>, user: &BareJid, metadata: &str) {
        if self.wrapped.vcard.is_none() {
            return;
        }
        let Some(metadata) = xmppd_xml::parse_fragment(metadata, "") else {
            return;
        };
        let target = IqTarget::Account(user);
        let Some(get) = super::own_iq(user, "get", Element::new("vCard", VCARD)) else {
            return;
        };
        let Ok(Some(mut vcard)) = self.vcard(cx, target, &get).await else {
            return;
        };
        let wanted = match inline_info(&metadata) {
            Some(info) => {
                let (Some(id), mime) = (info.attr("id"), info.attr("type")) else {
                    return;
                };
                let data = cx.storage().pubsub.item(user.as_str(), DATA, id).await;
                let Some(data) = data.ok().flatten() else {
                    // XEP-0084 §4.1: data comes first; without it there is nothing to copy.
                    return;
                };
                let Some(data) = xmppd_xml::parse_fragment(&data.payload, "") else {
                    return;
                };
                Some((
                    id.to_string(),
                    mime.unwrap_or("image/png").to_string(),
                    data.text(),
                ))
            }
            None => None,
        };
        let now = photo_of(&vcard).map(|p| p.id);
        if now == wanted.as_ref().map(|(id, _, _)| id.clone()) {
            return;
        }
        vcard.remove_children("PHOTO", VCARD);
        if let Some((_, mime, base64)) = wanted {
            vcard.push_child(
                Element::new("PHOTO", VCARD)
                    .with_child(Element::new("TYPE", VCARD).with_text(mime))
                    .with_child(Element::new("BINVAL", VCARD).with_text(base64)),
            );
        }
        let Some(set) = super::own_iq(user, "set", vcard) else {
            return;
        };
        if let Err(e) = self.vcard(cx, target, &set).await {
            tracing::warn!(%user, error = ?e.condition, "PEP avatar not copied to the vCard");
        }
    }
}
