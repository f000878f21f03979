//! A read-through cache of rosters in front of any [`RosterStore`].
//!
//! Every presence change reads the roster of its sender (who gets the broadcast?), so the
//! roster is the hottest read of the server. This node writes every roster change through
//! here, which keeps the cache exact; a cluster will need invalidation across nodes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::roster::{PendingRequest, RosterItem, RosterStore};
use crate::Result;

/// Rosters kept before the cache starts over (a crude but bounded policy).
const MAX_CACHED: usize = 50_000;

type Key = (String, String);
/// A roster with its version, shared with every reader.
type Versioned = (i64, Arc<Vec<RosterItem>>);

pub struct CachedRoster {
    inner: Arc<dyn RosterStore>,
    rosters: RwLock<HashMap<Key, Versioned>>,
}

impl CachedRoster {
    pub fn new(inner: Arc<dyn RosterStore>) -> Self {
        CachedRoster {
            inner,
            rosters: RwLock::new(HashMap::new()),
        }
    }

    fn key(username: &str, domain: &str) -> Key {
        (username.to_string(), domain.to_string())
    }

    fn forget(&self, username: &str, domain: &str) {
        let mut rosters = self.rosters.write().unwrap_or_else(|e| e.into_inner());
        rosters.remove(&Self::key(username, domain));
    }
}

#[async_trait]
impl RosterStore for CachedRoster {
    async fn roster(&self, username: &str, domain: &str) -> Result<Versioned> {
        let key = Self::key(username, domain);
        if let Some(found) = self
            .rosters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(found.clone());
        }
        let loaded = self.inner.roster(username, domain).await?;
        let mut rosters = self.rosters.write().unwrap_or_else(|e| e.into_inner());
        if rosters.len() >= MAX_CACHED {
            rosters.clear();
        }
        rosters.insert(key, loaded.clone());
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
        self.forget(username, domain);
        result
    }

    async fn remove(&self, username: &str, domain: &str, contact: &str) -> Result<i64> {
        let result = self.inner.remove(username, domain, contact).await;
        self.forget(username, domain);
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
