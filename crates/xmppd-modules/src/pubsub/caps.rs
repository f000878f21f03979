//! XEP-0115 entity capabilities, as the server uses them for PEP's `+notify` filtering
//! (XEP-0163 §4.4): the `ver` each available resource advertises, the features behind each
//! verified `ver` (cached, bounded, durable), and the verification of a disco#info answer.
//!
//! Only `hash='sha-1'` is understood; other hashes (and XEP-0390) are ignored for now: such
//! a resource simply gets no filtered notifications until its hash is supported.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use sha1::Digest;
use xmppd_core::{ns, Element};
use xmppd_storage::CacheMap;

pub const NS: &str = "http://jabber.org/protocol/caps";

/// Features behind a `ver`; `None` caches "not verified (yet)".
pub type Features = Arc<HashSet<String>>;

/// The `(node, ver)` of a presence's `<c/>`, when it uses SHA-1.
pub fn advertised(presence: &Element) -> Option<(String, String)> {
    let c = presence.get_child("c", NS)?;
    if !c.attr("hash")?.eq_ignore_ascii_case("sha-1") {
        return None;
    }
    Some((c.attr("node")?.to_string(), c.attr("ver")?.to_string()))
}

/// The verification string of a disco#info `<query/>` (§5.1), or `None` when the answer is
/// one §5.4 says not to trust (repeated identities, features or forms, a form without a hidden
/// FORM_TYPE).
pub fn verification_string(query: &Element) -> Option<String> {
    let mut identities = Vec::new();
    let mut features = Vec::new();
    let mut forms = Vec::new();
    for child in query.children() {
        if child.is("identity", ns::DISCO_INFO) {
            identities.push(format!(
                "{}/{}/{}/{}",
                child.attr("category").unwrap_or_default(),
                child.attr("type").unwrap_or_default(),
                child.attr("xml:lang").unwrap_or_default(),
                child.attr("name").unwrap_or_default()
            ));
        } else if child.is("feature", ns::DISCO_INFO) {
            features.push(child.attr("var").unwrap_or_default().to_string());
        } else if child.is("x", crate::forms::NS) {
            forms.push(form_string(child)?);
        }
    }
    let mut s = String::new();
    for list in [&mut identities, &mut features, &mut forms] {
        list.sort();
        let before = list.len();
        list.dedup();
        if list.len() != before {
            return None;
        }
    }
    for part in identities.iter().chain(&features) {
        s.push_str(part);
        s.push('<');
    }
    // Forms are sorted by FORM_TYPE, which each string starts with.
    for form in &forms {
        s.push_str(form);
    }
    Some(s)
}

fn values(field: &Element) -> impl Iterator<Item = String> + '_ {
    field
        .children()
        .filter(|v| v.is("value", crate::forms::NS))
        .map(Element::text)
}

/// One extended-information form's part of the string: FORM_TYPE, then fields by var.
fn form_string(x: &Element) -> Option<String> {
    let fields: Vec<&Element> = x
        .children()
        .filter(|f| f.is("field", crate::forms::NS))
        .collect();
    let form_type = fields
        .iter()
        .find(|f| f.attr("var") == Some("FORM_TYPE") && f.attr("type") == Some("hidden"))?;
    let mut s = String::new();
    for value in values(form_type) {
        s.push_str(&value);
        s.push('<');
    }
    let mut rest: Vec<(String, Vec<String>)> = fields
        .iter()
        .filter(|f| f.attr("var") != Some("FORM_TYPE"))
        .map(|f| {
            let mut sorted: Vec<String> = values(f).collect();
            sorted.sort();
            (f.attr("var").unwrap_or_default().to_string(), sorted)
        })
        .collect();
    rest.sort();
    for (var, values) in rest {
        s.push_str(&var);
        s.push('<');
        for v in values {
            s.push_str(&v);
            s.push('<');
        }
    }
    Some(s)
}

/// The SHA-1 `ver` of a disco#info answer (§5.1 steps 8–9).
pub fn ver_of(query: &Element) -> Option<String> {
    let s = verification_string(query)?;
    Some(base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes())))
}

/// Most verified hashes kept in memory (storage keeps them all).
const MAX_HASHES: usize = 4_096;
/// Most features of one cached hash: real clients list dozens; more is not kept.
const MAX_FEATURES: usize = 256;
/// Most (account, resource) pairs whose `ver` is tracked.
const MAX_TRACKED: usize = 200_000;
/// Most disco#info queries in flight at once, and most presences waiting on one.
const MAX_PENDING: usize = 1_000;
const MAX_WAITERS: usize = 1_000;

/// Who heard from whom: an account, and the full JID whose presence reached it.
pub type Heard = (String, String);

/// How many pairs are tracked, and account → full JID → `ver`.
type HeardMap = (usize, HashMap<String, HashMap<String, String>>);

/// What the server knows of its users' and their contacts' capabilities.
pub struct Caps {
    /// Account → full JID it heard available presence with caps from → that `ver`. The
    /// account's own resources are in its own map.
    heard: Mutex<HeardMap>,
    verified: CacheMap<String, Option<Features>>,
    /// The `ver`s being asked about (§6.3: once, from one resource), with the presences
    /// that wait for the answer.
    pending: Mutex<HashMap<String, Vec<Heard>>>,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            heard: Mutex::new((0, HashMap::new())),
            verified: CacheMap::new(MAX_HASHES),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl Caps {
    /// Records the `ver` `account` last heard from `full` (`None`: unavailable, or no
    /// caps). True when `full` is newly available to it or changed its `ver`.
    pub fn note(&self, account: &str, full: &str, ver: Option<String>) -> bool {
        let mut guard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let (count, map) = &mut *guard;
        let Some(ver) = ver else {
            if let Some(entry) = map.get_mut(account) {
                if entry.remove(full).is_some() {
                    *count -= 1;
                }
                if entry.is_empty() {
                    map.remove(account);
                }
            }
            return false;
        };
        let entry = map.entry(account.to_string()).or_default();
        match entry.get_mut(full) {
            Some(old) if *old == ver => false,
            Some(old) => {
                *old = ver;
                true
            }
            None if *count >= MAX_TRACKED => {
                tracing::warn!("too many resources with caps; not tracking {full}");
                false
            }
            None => {
                *count += 1;
                entry.insert(full.to_string(), ver);
                true
            }
        }
    }

    /// `(full JID, ver)` of everyone available `account` heard caps from.
    pub fn heard_by(&self, account: &str) -> Vec<(String, String)> {
        let guard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .1
            .get(account)
            .map(|m| m.iter().map(|(j, v)| (j.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Forgets what a deleted account heard.
    pub fn forget(&self, account: &str) {
        let mut guard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let (count, map) = &mut *guard;
        if let Some(entry) = map.remove(account) {
            *count -= entry.len();
        }
    }

    /// The features of a verified `ver`: from memory, else from storage.
    pub async fn features(&self, storage: &xmppd_storage::Storage, ver: &str) -> Option<Features> {
        let miss = match self.verified.lookup(ver) {
            Ok(found) => return found,
            Err(miss) => miss,
        };
        let stored = match storage.pubsub.caps(ver).await {
            Ok(found) => found.map(|f| Arc::new(f.into_iter().collect::<HashSet<_>>())),
            Err(e) => {
                tracing::warn!(error = %e, "caps lookup failed");
                return None;
            }
        };
        // An unknown hash is not cached as unknown: it is about to be asked for.
        if stored.is_some() {
            self.verified.fill(ver.to_string(), stored.clone(), miss);
        }
        stored
    }

    /// Puts a presence in line for the answer about `ver`; true when nobody asks yet, so
    /// the caller is the one to ask.
    pub fn wait_for(&self, ver: &str, heard: Heard) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = pending.get_mut(ver) {
            if waiting.len() < MAX_WAITERS {
                waiting.push(heard);
            }
            return false;
        }
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.insert(ver.to_string(), vec![heard]);
        true
    }

    /// The presences that waited for the answer about `ver`, which is in (or failed).
    pub fn answered(&self, ver: &str) -> Vec<Heard> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ver)
            .unwrap_or_default()
    }

    /// Keeps the features of a disco#info answer if it hashes to `ver` (§5.4); returns them.
    pub async fn verify(
        &self,
        storage: &xmppd_storage::Storage,
        ver: &str,
        query: &Element,
    ) -> Option<Features> {
        if ver_of(query).as_deref() != Some(ver) {
            tracing::debug!(ver, "caps answer does not match its hash; not cached");
            return None;
        }
        let features: Vec<String> = query
            .children()
            .filter(|c| c.is("feature", ns::DISCO_INFO))
            .filter_map(|c| c.attr("var"))
            .filter(|v| !v.contains('\n'))
            .map(str::to_string)
            .collect();
        if features.len() > MAX_FEATURES {
            tracing::debug!(ver, "caps answer with too many features; not cached");
            return None;
        }
        if let Err(e) = storage.pubsub.put_caps(ver, &features).await {
            tracing::warn!(error = %e, "caps not stored");
        }
        let features = Arc::new(features.into_iter().collect::<HashSet<_>>());
        self.verified.store(ver.to_string(), Some(features.clone()));
        Some(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(xml: &str) -> Element {
        xmppd_xml::parse_fragment(xml, "jabber:client").expect("valid xml")
    }

    #[test]
    fn simple_generation_example() {
        // XEP-0115 §5.2.
        let q = query(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        );
        assert_eq!(ver_of(&q).as_deref(), Some("QgayPKawpkPSDYmwT/WM94uAlu0="));
    }

    #[test]
    fn complex_generation_example() {
        // XEP-0115 §5.3, feature order shuffled: sorting is the hash's job.
        let q = query(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='\u{3a8} 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version' type='text-multi'><value>ipv6</value><value>ipv4</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field>\
             </x></query>",
        );
        assert_eq!(ver_of(&q).as_deref(), Some("q07IKJEyjvHSyhy//CH0CxmKi8w="));
    }

    #[test]
    fn answers_section_5_4_distrusts_have_no_hash() {
        let repeated = query(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <feature var='a'/><feature var='a'/></query>",
        );
        assert_eq!(ver_of(&repeated), None);
        let no_form_type = query(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <x xmlns='jabber:x:data' type='result'><field var='os'><value>x</value></field></x>\
             </query>",
        );
        assert_eq!(ver_of(&no_form_type), None);
    }

    #[test]
    fn presences_are_tracked_until_unavailable() {
        let caps = Caps::default();
        assert!(caps.note("a@x", "b@x/1", Some("v1".into())));
        assert!(!caps.note("a@x", "b@x/1", Some("v1".into())));
        assert!(caps.note("a@x", "b@x/1", Some("v2".into())));
        assert!(caps.note("a@x", "a@x/2", Some("v1".into())));
        let mut seen = caps.heard_by("a@x");
        seen.sort();
        assert_eq!(
            seen,
            [("a@x/2".into(), "v1".into()), ("b@x/1".into(), "v2".into())]
        );
        caps.note("a@x", "b@x/1", None);
        assert_eq!(caps.heard_by("a@x").len(), 1);
        caps.forget("a@x");
        assert!(caps.heard_by("a@x").is_empty());
        assert_eq!(caps.heard.lock().unwrap().0, 0);
    }

    #[tokio::test]
    async fn only_answers_matching_their_hash_and_of_sane_size_are_kept() {
        let dir = std::env::temp_dir().join(format!("xmppd-caps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.display());
        let storage = xmppd_storage::Storage::open(&url).await.unwrap();
        let caps = Caps::default();
        let small = query(
            "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='a'/></query>",
        );
        let ver = ver_of(&small).unwrap();
        assert!(caps.verify(&storage, "wrong=", &small).await.is_none());
        assert!(caps.features(&storage, "wrong=").await.is_none());
        assert!(caps.verify(&storage, &ver, &small).await.is_some());
        // From storage, as after a restart.
        let fresh = Caps::default();
        assert!(fresh.features(&storage, &ver).await.unwrap().contains("a"));
        let mut big = String::from("<query xmlns='http://jabber.org/protocol/disco#info'>");
        for i in 0..=MAX_FEATURES {
            big.push_str(&format!("<feature var='f{i}'/>"));
        }
        big.push_str("</query>");
        let big = query(&big);
        let big_ver = ver_of(&big).unwrap();
        assert!(caps.verify(&storage, &big_ver, &big).await.is_none());
        assert!(fresh.features(&storage, &big_ver).await.is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn one_query_per_ver_and_everyone_waiting_hears_the_answer() {
        let caps = Caps::default();
        assert!(caps.wait_for("v", ("a@x".into(), "b@x/1".into())));
        assert!(!caps.wait_for("v", ("c@x".into(), "b@x/1".into())));
        assert_eq!(caps.answered("v").len(), 2);
        assert!(caps.wait_for("v", ("a@x".into(), "b@x/1".into())));
    }
}
