//! A read-through cache of rosters in front of any [`RosterStore`].
//!
//! Every presence change reads the roster of its sender (who gets the broadcast?), so the
//! roster is the hottest read of the server. This node writes every roster change through
//! here, which keeps the cache exact; a cluster will need invalidation across nodes.

use std::sync::Arc;

use async_trait::async_trait;

use crate::accounts::{Account, AccountStore};
use crate::cache::CacheMap;
use crate::roster::{PendingRequest, RosterItem, RosterStore};
use crate::Result;

/// Rosters kept before the cache starts over.
const MAX_CACHED: usize = 50_000;

type Key = (String, String);
/// A roster with its version, shared with every reader.
type Versioned = (i64, Arc<Vec<RosterItem>>);

pub struct CachedRoster {
    inner: Arc<dyn RosterStore>,
    rosters: CacheMap<Key, Versioned>,
}

impl CachedRoster {
    pub fn new(inner: Arc<dyn RosterStore>) -> Self {
        CachedRoster {
            inner,
            rosters: CacheMap::new(MAX_CACHED),
        }
    }

    fn key(username: &str, domain: &str) -> Key {
        (username.to_string(), domain.to_string())
    }

    /// Applies a write that made the roster `written` to the cached copy, if that copy is
    /// the version just before it; else drops it. A roster being built (a subscription
    /// storm writes one item at a time) is not read back from storage after every item.
    fn patch(
        &self,
        username: &str,
        domain: &str,
        written: &Result<i64>,
        change: impl FnOnce(&mut Vec<RosterItem>),
    ) {
        let key = Self::key(username, domain);
        let Ok(version) = *written else {
            return self.rosters.forget(&key);
        };
        self.rosters.update(key, |cached| {
            let (old, items) = cached?;
            if old == version {
                // Nothing changed (the removal of an item that was not there).
                return Some((old, items));
            }
            if old + 1 != version {
                return None;
            }
            let mut items = Vec::clone(&items);
            change(&mut items);
            Some((version, Arc::new(items)))
        });
    }
}

#[async_trait]
impl RosterStore for CachedRoster {
    async fn roster(&self, username: &str, domain: &str) -> Result<Versioned> {
        let key = Self::key(username, domain);
        let miss = match self.rosters.lookup(&key) {
            Ok(found) => return Ok(found),
            Err(miss) => miss,
        };
        let loaded = self.inner.roster(username, domain).await?;
        self.rosters.fill(key, loaded.clone(), miss);
        Ok(loaded)
    }

    async fn item(
        &self,
        username: &str,
        domain: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>> {
        let (_, items) = self.roster(username, domain).await?;
        Ok(items.iter().find(|i| i.contact == contact).cloned())
    }

    async fn count(&self, username: &str, domain: &str) -> Result<usize> {
        Ok(self.roster(username, domain).await?.1.len())
    }

    async fn put(&self, username: &str, domain: &str, item: &RosterItem) -> Result<i64> {
        let result = self.inner.put(username, domain, item).await;
        self.patch(username, domain, &result, |items| {
            match items.binary_search_by(|i| i.contact.cmp(&item.contact)) {
                Ok(at) => items[at] = item.clone(),
                Err(at) => items.insert(at, item.clone()),
            }
        });
        result
    }

    async fn remove(&self, username: &str, domain: &str, contact: &str) -> Result<i64> {
        let result = self.inner.remove(username, domain, contact).await;
        self.patch(username, domain, &result, |items| {
            items.retain(|i| i.contact != contact)
        });
        result
    }

    async fn add_request(
        &self,
        username: &str,
        domain: &str,
        request: &PendingRequest,
    ) -> Result<()> {
        self.inner.add_request(username, domain, request).await
    }

    async fn remove_request(&self, username: &str, domain: &str, contact: &str) -> Result<bool> {
        self.inner.remove_request(username, domain, contact).await
    }

    async fn has_request(&self, username: &str, domain: &str, contact: &str) -> Result<bool> {
        self.inner.has_request(username, domain, contact).await
    }

    async fn requests(&self, username: &str, domain: &str) -> Result<Vec<PendingRequest>> {
        self.inner.requests(username, domain).await
    }
}

/// The account store, telling the roster cache of deletions: an account's roster goes with
/// it in the same transaction, past [`CachedRoster`].
pub struct AccountsForgettingRosters {
    pub inner: Arc<dyn AccountStore>,
    pub rosters: Arc<CachedRoster>,
}

#[async_trait]
impl AccountStore for AccountsForgettingRosters {
    async fn create(&self, account: &Account) -> Result<bool> {
        self.inner.create(account).await
    }

    async fn get(&self, username: &str, domain: &str) -> Result<Option<Account>> {
        self.inner.get(username, domain).await
    }

    async fn exists(&self, username: &str, domain: &str) -> Result<bool> {
        self.inner.exists(username, domain).await
    }

    async fn set_credentials(&self, account: &Account) -> Result<bool> {
        self.inner.set_credentials(account).await
    }

    async fn delete(&self, username: &str, domain: &str) -> Result<bool> {
        let result = self.inner.delete(username, domain).await;
        self.rosters
            .rosters
            .forget(&CachedRoster::key(username, domain));
        result
    }

    async fn list(&self, domain: &str) -> Result<Vec<String>> {
        self.inner.list(domain).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{Mutex as AsyncMutex, Notify};

    /// A store whose reads take a snapshot and then wait on `gate`, so a test can land a
    /// write between a read's load and its return.
    #[derive(Default)]
    struct SlowStore {
        roster: std::sync::Mutex<(i64, Vec<RosterItem>)>,
        gate: AsyncMutex<()>,
        loaded: Notify,
    }

    #[async_trait]
    impl RosterStore for SlowStore {
        async fn roster(&self, _: &str, _: &str) -> Result<Versioned> {
            let (version, items) = self.roster.lock().unwrap().clone();
            self.loaded.notify_one();
            let _open = self.gate.lock().await;
            Ok((version, Arc::new(items)))
        }
        async fn item(&self, _: &str, _: &str, _: &str) -> Result<Option<RosterItem>> {
            unreachable!("the cache answers items from rosters")
        }
        async fn count(&self, _: &str, _: &str) -> Result<usize> {
            unreachable!("the cache answers counts from rosters")
        }
        async fn put(&self, _: &str, _: &str, item: &RosterItem) -> Result<i64> {
            let mut roster = self.roster.lock().unwrap();
            roster.0 += 1;
            roster.1.push(item.clone());
            Ok(roster.0)
        }
        async fn remove(&self, _: &str, _: &str, _: &str) -> Result<i64> {
            unreachable!("not used here")
        }
        async fn add_request(&self, _: &str, _: &str, _: &PendingRequest) -> Result<()> {
            unreachable!("not used here")
        }
        async fn remove_request(&self, _: &str, _: &str, _: &str) -> Result<bool> {
            unreachable!("not used here")
        }
        async fn has_request(&self, _: &str, _: &str, _: &str) -> Result<bool> {
            unreachable!("not used here")
        }
        async fn requests(&self, _: &str, _: &str) -> Result<Vec<PendingRequest>> {
            unreachable!("not used here")
        }
    }

    #[tokio::test]
    async fn a_read_racing_a_write_does_not_cache_the_old_roster() {
        let store = Arc::new(SlowStore::default());
        let cache = Arc::new(CachedRoster::new(store.clone()));
        let gate = store.gate.lock().await;
        let reader = tokio::spawn({
            let cache = cache.clone();
            async move { cache.roster("alice", "example.org").await.unwrap() }
        });
        // The reader has loaded the empty roster and waits; a write lands meanwhile.
        store.loaded.notified().await;
        let item = RosterItem {
            contact: "bob@example.org".into(),
            subscription: "both".into(),
            ..RosterItem::default()
        };
        assert_eq!(cache.put("alice", "example.org", &item).await.unwrap(), 1);
        drop(gate);
        assert_eq!(reader.await.unwrap().0, 0);
        let (version, items) = cache.roster("alice", "example.org").await.unwrap();
        assert_eq!((version, items.len()), (1, 1));
    }

    #[tokio::test]
    async fn writes_patch_the_cached_roster_to_what_storage_holds() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let db = Arc::new(crate::SqliteStorage::open(&url).await.unwrap());
        let cache = CachedRoster::new(db.clone());
        let item = |contact: &str, subscription: &str| RosterItem {
            contact: contact.into(),
            subscription: subscription.into(),
            ..RosterItem::default()
        };
        cache.roster("a", "x").await.unwrap();
        let writes: [(&str, Option<&str>); 5] = [
            ("c@x", Some("to")),
            ("b@x", Some("none")),
            ("c@x", Some("both")),
            ("b@x", None),
            ("nobody@x", None),
        ];
        for (contact, subscription) in writes {
            match subscription {
                Some(sub) => cache.put("a", "x", &item(contact, sub)).await.unwrap(),
                None => cache.remove("a", "x", contact).await.unwrap(),
            };
            let (version, items) = cache.roster("a", "x").await.unwrap();
            let (stored_version, stored) = db.roster("a", "x").await.unwrap();
            assert_eq!(
                (version, &items),
                (stored_version, &stored),
                "after {contact}"
            );
        }
        assert_eq!(
            cache.roster("a", "x").await.unwrap().1[0],
            item("c@x", "both")
        );
    }
}
