//! A read-through cache of pubsub nodes (configuration, members, a service's node names)
//! in front of any [`PubSubStore`].
//!
//! Every PEP publish reads its node's configuration and members, and every available
//! presence with `+notify` caps reads the names of the contact's nodes: two or three
//! SELECTs per publish, a quarter of the server's CPU in the PEP benchmark. They change
//! only through the writes of this trait, which go through here and keep the cache exact
//! (as [`crate::CachedRoster`] does for rosters). Items are not cached: they are read only
//! for retrieval and last-item sends.

use std::sync::Arc;

use async_trait::async_trait;

use crate::cache::CacheMap;
use crate::pubsub::{Member, PubSubStore, StoredItem};
use crate::Result;

/// Nodes (and services) kept before the cache starts evicting.
const MAX_CACHED: usize = 50_000;

/// `service` and `node`, apart: a NUL is in neither (both are XML attribute values).
fn key(service: &str, node: &str) -> String {
    format!("{service}\0{node}")
}

pub struct CachedPubSub {
    inner: Arc<dyn PubSubStore>,
    configs: CacheMap<String, Option<String>>,
    members: CacheMap<String, Arc<Vec<Member>>>,
    /// A service's node names.
    names: CacheMap<String, Arc<Vec<String>>>,
}

impl CachedPubSub {
    pub fn new(inner: Arc<dyn PubSubStore>) -> Self {
        CachedPubSub {
            inner,
            configs: CacheMap::new(MAX_CACHED),
            members: CacheMap::new(MAX_CACHED),
            names: CacheMap::new(MAX_CACHED),
        }
    }

    /// A node appeared or went: its configuration, members and service's names are stale.
    fn forget_node(&self, service: &str, node: &str) {
        let key = key(service, node);
        self.configs.forget(&key);
        self.members.forget(&key);
        self.names.forget(service);
    }
}

#[async_trait]
impl PubSubStore for CachedPubSub {
    async fn node(&self, service: &str, node: &str) -> Result<Option<String>> {
        let key = key(service, node);
        let miss = match self.configs.lookup(&key) {
            Ok(found) => return Ok(found),
            Err(miss) => miss,
        };
        // The service's names (read at a `+notify` login) already tell of a node that does
        // not exist: PEP asks for that before each node's first publish.
        if let Ok(names) = self.names.lookup(service) {
            if !names.iter().any(|n| n == node) {
                return Ok(None);
            }
        }
        let loaded = self.inner.node(service, node).await?;
        self.configs.fill(key, loaded.clone(), miss);
        Ok(loaded)
    }

    async fn nodes(&self, service: &str) -> Result<Vec<String>> {
        let miss = match self.names.lookup(service) {
            Ok(found) => return Ok(found.to_vec()),
            Err(miss) => miss,
        };
        let loaded = Arc::new(self.inner.nodes(service).await?);
        self.names.fill(service.to_string(), loaded.clone(), miss);
        Ok(loaded.to_vec())
    }

    async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
        limit: usize,
        first: Option<&StoredItem>,
    ) -> Result<bool> {
        let result = self
            .inner
            .create_node(service, node, config, owner, limit, first)
            .await;
        self.forget_node(service, node);
        if let Ok(true) = result {
            // What was just written: a PEP node is created by its first publish, which
            // reads the node right back.
            let key = key(service, node);
            self.configs.store(key.clone(), Some(config.to_string()));
            let owner = Member {
                jid: owner.to_string(),
                affiliation: "owner".into(),
                subscription: "none".into(),
                options: String::new(),
            };
            self.members.store(key, Arc::new(vec![owner]));
        }
        result
    }

    async fn set_config(&self, service: &str, node: &str, config: &str) -> Result<()> {
        let result = self.inner.set_config(service, node, config).await;
        self.configs.forget(&key(service, node));
        result
    }

    async fn delete_node(&self, service: &str, node: &str) -> Result<bool> {
        let result = self.inner.delete_node(service, node).await;
        self.forget_node(service, node);
        result
    }

    async fn publish(
        &self,
        service: &str,
        node: &str,
        item: &StoredItem,
        keep: usize,
    ) -> Result<()> {
        self.inner.publish(service, node, item, keep).await
    }

    async fn items(&self, service: &str, node: &str, limit: usize) -> Result<Vec<StoredItem>> {
        self.inner.items(service, node, limit).await
    }

    async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<StoredItem>> {
        self.inner.item(service, node, id).await
    }

    async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool> {
        self.inner.retract(service, node, id).await
    }

    async fn purge(&self, service: &str, node: &str) -> Result<()> {
        self.inner.purge(service, node).await
    }

    async fn members(&self, service: &str, node: &str) -> Result<Vec<Member>> {
        let key = key(service, node);
        let miss = match self.members.lookup(&key) {
            Ok(found) => return Ok(found.to_vec()),
            Err(miss) => miss,
        };
        let loaded = Arc::new(self.inner.members(service, node).await?);
        self.members.fill(key, loaded.clone(), miss);
        Ok(loaded.to_vec())
    }

    async fn set_member(&self, service: &str, node: &str, member: &Member) -> Result<()> {
        let result = self.inner.set_member(service, node, member).await;
        self.members.forget(&key(service, node));
        result
    }

    async fn memberships(&self, service: &str, jid: &str) -> Result<Vec<(String, Member)>> {
        self.inner.memberships(service, jid).await
    }

    async fn remove_service(&self, service: &str) -> Result<()> {
        let result = self.inner.remove_service(service).await;
        // The account's memberships at every other node went too: rare (an account
        // deletion), so everything is read afresh.
        self.configs.forget_all();
        self.members.forget_all();
        self.names.forget_all();
        result
    }

    async fn caps(&self, ver: &str) -> Result<Option<Vec<String>>> {
        self.inner.caps(ver).await
    }

    async fn put_caps(&self, ver: &str, features: &[String]) -> Result<()> {
        self.inner.put_caps(ver, features).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStorage;

    fn owner(jid: &str) -> Member {
        Member {
            jid: jid.into(),
            affiliation: "owner".into(),
            subscription: "none".into(),
            options: String::new(),
        }
    }

    #[tokio::test]
    async fn every_write_is_seen_by_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let db: Arc<dyn PubSubStore> = Arc::new(SqliteStorage::open(&url).await.unwrap());
        let store = CachedPubSub::new(db.clone());
        let svc = "a@localhost";

        assert_eq!(store.node(svc, "n").await.unwrap(), None);
        assert!(store.nodes(svc).await.unwrap().is_empty());
        assert!(store
            .create_node(svc, "n", "c1", svc, 10, None)
            .await
            .unwrap());
        assert_eq!(store.node(svc, "n").await.unwrap().as_deref(), Some("c1"));
        assert_eq!(store.nodes(svc).await.unwrap(), ["n"]);
        assert_eq!(store.members(svc, "n").await.unwrap(), [owner(svc)]);
        // What creation cached is what it stored.
        assert_eq!(db.members(svc, "n").await.unwrap(), [owner(svc)]);
        assert_eq!(db.node(svc, "n").await.unwrap().as_deref(), Some("c1"));

        store.set_config(svc, "n", "c2").await.unwrap();
        assert_eq!(store.node(svc, "n").await.unwrap().as_deref(), Some("c2"));

        let sub = Member {
            subscription: "subscribed".into(),
            affiliation: "none".into(),
            ..owner("b@localhost")
        };
        store.set_member(svc, "n", &sub).await.unwrap();
        assert_eq!(store.members(svc, "n").await.unwrap().len(), 2);

        // b's account goes: its subscription at a's node with it.
        store.remove_service("b@localhost").await.unwrap();
        assert_eq!(store.members(svc, "n").await.unwrap(), [owner(svc)]);

        assert!(store.delete_node(svc, "n").await.unwrap());
        assert_eq!(store.node(svc, "n").await.unwrap(), None);
        assert!(store.nodes(svc).await.unwrap().is_empty());
        assert!(store.members(svc, "n").await.unwrap().is_empty());

        // With the names cached, a node they lack is known absent until one is made.
        assert!(store.nodes(svc).await.unwrap().is_empty());
        assert_eq!(store.node(svc, "m").await.unwrap(), None);
        db.create_node(svc, "m", "c3", svc, 10, None).await.unwrap();
        assert!(store
            .create_node(svc, "o", "c4", svc, 10, None)
            .await
            .unwrap());
        assert_eq!(store.node(svc, "m").await.unwrap().as_deref(), Some("c3"));
    }
}
