//! A read-through cache of rosters in front of any [`RosterStore`].
//!
//! Every presence change reads the roster of its sender (who gets the broadcast?), so the
//! roster is the hottest read of the server. This node writes every roster change through
//! here, which keeps the cache exact; a cluster will need invalidation across nodes.

use std::sync::Arc;

use async_trait::async_trait;

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
        self.rosters.forget(&Self::key(username, domain));
        result
    }

    async fn remove(&self, username: &str, domain: &str, contact: &str) -> Result<i64> {
        let result = self.inner.remove(username, domain, contact).await;
        self.rosters.forget(&Self::key(username, domain));
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
}
