//! Publish-subscribe nodes, items, subscriptions and affiliations (XEP-0060), and the
//! entity-capabilities cache (XEP-0115) that PEP filters notifications with.
//!
//! A `service` is a PEP account's bare JID or a pubsub domain; the storage does not care.

use crate::Result;
use async_trait::async_trait;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    pub id: String,
    pub publisher: String,
    /// The payload element as XML (empty for a notification-only item).
    pub payload: String,
}

/// One entity's standing with one node; "none" for either part means none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub jid: String,
    pub affiliation: String,
    /// "none", "pending" or "subscribed".
    pub subscription: String,
    /// The subscription's options as the pubsub module wrote them; empty for the defaults.
    pub options: String,
}

#[async_trait]
pub trait PubSubStore: Send + Sync {
    /// The node's configuration text, if the node exists.
    async fn node(&self, service: &str, node: &str) -> Result<Option<String>>;
    /// Every node of a service, by name.
    async fn nodes(&self, service: &str) -> Result<Vec<String>>;
    /// Creates a node with `owner`'s affiliation unless the service already has `limit`
    /// nodes; `Ok(false)` if it exists or the limit is reached (tell them apart with `node`).
    /// With `first`, that item is stored in the same transaction (a PEP node is created by
    /// its first publish): only if the node was created.
    async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
        limit: usize,
        first: Option<&StoredItem>,
    ) -> Result<bool>;
    async fn set_config(&self, service: &str, node: &str, config: &str) -> Result<()>;
    /// Deletes a node with its items and members; false if there was none.
    async fn delete_node(&self, service: &str, node: &str) -> Result<bool>;
    /// Stores an item (replacing one with its id) as the newest, then keeps the `keep`
    /// newest items of the node.
    async fn publish(
        &self,
        service: &str,
        node: &str,
        item: &StoredItem,
        keep: usize,
    ) -> Result<()>;
    /// Items, newest first, at most `limit`.
    async fn items(&self, service: &str, node: &str, limit: usize) -> Result<Vec<StoredItem>>;
    async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<StoredItem>>;
    /// Removes one item; false if there was none.
    async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool>;
    /// Removes every item of a node.
    async fn purge(&self, service: &str, node: &str) -> Result<()>;
    async fn members(&self, service: &str, node: &str) -> Result<Vec<Member>>;
    /// Sets (or, when both parts are "none", removes) one member of a node.
    async fn set_member(&self, service: &str, node: &str, member: &Member) -> Result<()>;
    /// `(node, member)` for every node of `service` where `jid` (bare or full) is a member.
    async fn memberships(&self, service: &str, jid: &str) -> Result<Vec<(String, Member)>>;
    /// Removes a whole service (a deleted account's PEP) and `jid`'s memberships elsewhere.
    async fn remove_service(&self, service: &str) -> Result<()>;
    /// The features behind a verified caps hash.
    async fn caps(&self, ver: &str) -> Result<Option<Vec<String>>>;
    async fn put_caps(&self, ver: &str, features: &[String]) -> Result<()>;
}

mod sqlite {
    use async_trait::async_trait;
    use sqlx::Row;

    use super::{Member, PubSubStore, StoredItem};
    use crate::timed::write_script;
    use crate::{Result, SqliteStorage};

    fn item_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredItem> {
        Ok(StoredItem {
            id: row.try_get("item_id")?,
            publisher: row.try_get("publisher")?,
            payload: row.try_get("payload")?,
        })
    }

    fn member_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Member> {
        Ok(Member {
            jid: row.try_get("jid")?,
            affiliation: row.try_get("affiliation")?,
            subscription: row.try_get("subscription")?,
            options: row.try_get("options")?,
        })
    }

    // `create_node`'s statements, over $1 service, $2 node, $3 config, $4 owner, $5 limit,
    // and for the first item $6 id, $7 publisher, $8 payload.
    macro_rules! new_node {
        () => {
            "INSERT INTO pubsub_nodes (service, node, config) SELECT $1, $2, $3 \
             WHERE (SELECT COUNT(*) FROM pubsub_nodes WHERE service = $1) < $5 \
             ON CONFLICT (service, node) DO NOTHING; \
             SELECT changes() AS created;"
        };
    }
    macro_rules! new_node_owner {
        () => {
            "INSERT INTO pubsub_members (service, node, jid, affiliation, subscription) \
             SELECT $1, $2, $4, 'owner', 'none' WHERE changes() = 1 \
             ON CONFLICT (service, node, jid) DO UPDATE SET affiliation = 'owner';"
        };
    }
    macro_rules! new_node_item {
        () => {
            "INSERT INTO pubsub_items (service, node, item_id, seq, publisher, payload) \
             SELECT $1, $2, $6, 1, $7, $8 WHERE changes() = 1 \
             ON CONFLICT (service, node, item_id) DO UPDATE SET \
             seq = excluded.seq, publisher = excluded.publisher, payload = excluded.payload;"
        };
    }

    #[async_trait]
    impl PubSubStore for SqliteStorage {
        async fn node(&self, service: &str, node: &str) -> Result<Option<String>> {
            let row =
                sqlx::query("SELECT config FROM pubsub_nodes WHERE service = $1 AND node = $2")
                    .bind(service)
                    .bind(node)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(row.map(|r| r.try_get("config")).transpose()?)
        }

        async fn nodes(&self, service: &str) -> Result<Vec<String>> {
            let rows =
                sqlx::query("SELECT node FROM pubsub_nodes WHERE service = $1 ORDER BY node")
                    .bind(service)
                    .fetch_all(&self.pool)
                    .await?;
            rows.iter()
                .map(|r| r.try_get("node").map_err(Into::into))
                .collect()
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
            // One script (see `write_script`): the node, if the service has room and no
            // node of that name, then its owner and first item if the node was made
            // (`changes()` is the rows the last INSERT wrote; SELECT does not reset it). A
            // PostgreSQL backend sends the statements apart, in a transaction.
            let limit = limit.min(i64::MAX as usize) as i64;
            let script = match first {
                None => write_script!(new_node!(), new_node_owner!()),
                Some(_) => write_script!(new_node!(), new_node_owner!(), new_node_item!()),
            }
            .bind(service)
            .bind(node)
            .bind(config)
            .bind(owner)
            .bind(limit);
            let script = match first {
                None => script,
                Some(item) => script
                    .bind(&item.id)
                    .bind(&item.publisher)
                    .bind(&item.payload),
            };
            let rows = self.pool.write_script(script).await?;
            let created: i64 = match rows.first() {
                Some(row) => row.try_get("created")?,
                None => 0,
            };
            Ok(created == 1)
        }

        async fn set_config(&self, service: &str, node: &str, config: &str) -> Result<()> {
            sqlx::query("UPDATE pubsub_nodes SET config = $3 WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .bind(config)
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        async fn delete_node(&self, service: &str, node: &str) -> Result<bool> {
            let (mut tx, _timer) = self.pool.begin_write().await?;
            for table in ["pubsub_items", "pubsub_members"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE service = $1 AND node = $2"
                ))
                .bind(service)
                .bind(node)
                .execute(&mut *tx)
                .await?;
            }
            let done = sqlx::query("DELETE FROM pubsub_nodes WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        }

        async fn publish(
            &self,
            service: &str,
            node: &str,
            item: &StoredItem,
            keep: usize,
        ) -> Result<()> {
            // One script (see `write_script`): the sequence number is computed inside the
            // INSERT, and the DELETE keeps the newest `keep`. A PostgreSQL backend sends
            // them apart, in a transaction: its extended protocol takes one statement per
            // query.
            self.pool
                .write_script(
                    write_script!(
                        "INSERT INTO pubsub_items (service, node, item_id, seq, publisher, payload) \
                         VALUES ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM pubsub_items \
                         WHERE service = $1 AND node = $2), $4, $5) \
                         ON CONFLICT (service, node, item_id) DO UPDATE SET \
                         seq = excluded.seq, publisher = excluded.publisher, payload = excluded.payload;",
                        "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND seq <= \
                         (SELECT MAX(seq) FROM pubsub_items WHERE service = $1 AND node = $2) - $6;",
                    )
                    .bind(service)
                    .bind(node)
                    .bind(&item.id)
                    .bind(&item.publisher)
                    .bind(&item.payload)
                    .bind(keep.min(i64::MAX as usize) as i64),
                )
                .await?;
            Ok(())
        }

        async fn items(&self, service: &str, node: &str, limit: usize) -> Result<Vec<StoredItem>> {
            let rows = sqlx::query(
                "SELECT item_id, publisher, payload FROM pubsub_items \
                 WHERE service = $1 AND node = $2 ORDER BY seq DESC LIMIT $3",
            )
            .bind(service)
            .bind(node)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(item_from_row).collect()
        }

        async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<StoredItem>> {
            let row = sqlx::query(
                "SELECT item_id, publisher, payload FROM pubsub_items \
                 WHERE service = $1 AND node = $2 AND item_id = $3",
            )
            .bind(service)
            .bind(node)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(item_from_row).transpose()
        }

        async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool> {
            let done = sqlx::query(
                "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND item_id = $3",
            )
            .bind(service)
            .bind(node)
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn purge(&self, service: &str, node: &str) -> Result<()> {
            sqlx::query("DELETE FROM pubsub_items WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        async fn members(&self, service: &str, node: &str) -> Result<Vec<Member>> {
            let rows = sqlx::query(
                "SELECT jid, affiliation, subscription, options FROM pubsub_members \
                 WHERE service = $1 AND node = $2 ORDER BY jid",
            )
            .bind(service)
            .bind(node)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(member_from_row).collect()
        }

        async fn set_member(&self, service: &str, node: &str, m: &Member) -> Result<()> {
            if m.affiliation == "none" && m.subscription == "none" {
                sqlx::query(
                    "DELETE FROM pubsub_members WHERE service = $1 AND node = $2 AND jid = $3",
                )
                .bind(service)
                .bind(node)
                .bind(&m.jid)
                .execute(&self.pool)
                .await?;
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO pubsub_members (service, node, jid, affiliation, subscription, options) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, node, jid) DO UPDATE SET \
                 affiliation = excluded.affiliation, subscription = excluded.subscription, \
                 options = excluded.options",
            )
            .bind(service)
            .bind(node)
            .bind(&m.jid)
            .bind(&m.affiliation)
            .bind(&m.subscription)
            .bind(&m.options)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn memberships(&self, service: &str, jid: &str) -> Result<Vec<(String, Member)>> {
            let rows = sqlx::query(
                "SELECT node, jid, affiliation, subscription, options FROM pubsub_members \
                 WHERE service = $1 AND jid = $2 ORDER BY node",
            )
            .bind(service)
            .bind(jid)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("node")?, member_from_row(r)?)))
                .collect()
        }

        async fn remove_service(&self, service: &str) -> Result<()> {
            let (mut tx, _timer) = self.pool.begin_write().await?;
            for table in ["pubsub_items", "pubsub_members", "pubsub_nodes"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE service = $1"))
                    .bind(service)
                    .execute(&mut *tx)
                    .await?;
            }
            // The account's subscriptions and affiliations at other services go too.
            sqlx::query(
                "DELETE FROM pubsub_members WHERE jid = $1 \
                 OR substr(jid, 1, length($1) + 1) = $1 || '/'",
            )
            .bind(service)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }

        async fn caps(&self, ver: &str) -> Result<Option<Vec<String>>> {
            let row = sqlx::query("SELECT features FROM caps WHERE ver = $1")
                .bind(ver)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let features: String = row.try_get("features")?;
            // One feature per line: a disco feature var holds no line break once validated.
            Ok(Some(
                features
                    .split('\n')
                    .filter(|f| !f.is_empty())
                    .map(String::from)
                    .collect(),
            ))
        }

        async fn put_caps(&self, ver: &str, features: &[String]) -> Result<()> {
            sqlx::query(
                "INSERT INTO caps (ver, features) VALUES ($1, $2) ON CONFLICT (ver) DO NOTHING",
            )
            .bind(ver)
            .bind(features.join("\n"))
            .execute(&self.pool)
            .await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Member, Storage, StoredItem};

    fn item(id: &str) -> StoredItem {
        StoredItem {
            id: id.into(),
            publisher: "a@x/r".into(),
            payload: format!("<p>{id}</p>"),
        }
    }

    #[tokio::test]
    async fn nodes_items_members_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let s = Storage::open(&url).await.unwrap().pubsub;
        assert!(s
            .create_node("a@x", "n", "c", "a@x", 2, None)
            .await
            .unwrap());
        // Not made again, and its first item not stored.
        let first = Some(&item("0"));
        assert!(!s
            .create_node("a@x", "n", "c", "a@x", 2, first)
            .await
            .unwrap());
        assert!(s.items("a@x", "n", 10).await.unwrap().is_empty());
        assert!(s
            .create_node("a@x", "m", "c", "a@x", 2, first)
            .await
            .unwrap());
        assert_eq!(s.items("a@x", "m", 10).await.unwrap(), [item("0")]);
        assert_eq!(s.members("a@x", "m").await.unwrap()[0].affiliation, "owner");
        // The limit of two nodes is reached.
        assert!(!s
            .create_node("a@x", "o", "c", "a@x", 2, first)
            .await
            .unwrap());
        assert!(s.items("a@x", "o", 10).await.unwrap().is_empty());
        assert_eq!(s.nodes("a@x").await.unwrap(), ["m", "n"]);
        for id in ["1", "2", "3", "2"] {
            s.publish("a@x", "n", &item(id), 2).await.unwrap();
        }
        // "2" was republished last, so it is the newest; "1" fell off.
        let ids: Vec<_> = s.items("a@x", "n", 10).await.unwrap();
        assert_eq!(ids, [item("2"), item("3")]);
        assert!(s.retract("a@x", "n", "3").await.unwrap());
        assert!(!s.retract("a@x", "n", "3").await.unwrap());
        assert_eq!(s.item("a@x", "n", "2").await.unwrap(), Some(item("2")));
        let bob = Member {
            jid: "b@x/r".into(),
            affiliation: "none".into(),
            subscription: "pending".into(),
            options: "<x/>".into(),
        };
        s.set_member("a@x", "n", &bob).await.unwrap();
        assert_eq!(s.members("a@x", "n").await.unwrap().len(), 2);
        // Pending subscriptions and options are kept as they were written.
        assert!(s.members("a@x", "n").await.unwrap().contains(&bob));
        assert_eq!(s.memberships("a@x", "b@x/r").await.unwrap().len(), 1);
        s.set_member("c@x", "n", &bob).await.unwrap();
        s.remove_service("b@x").await.unwrap();
        assert!(s.members("c@x", "n").await.unwrap().is_empty());
        s.remove_service("a@x").await.unwrap();
        assert!(s.nodes("a@x").await.unwrap().is_empty());
        assert!(s.items("a@x", "n", 10).await.unwrap().is_empty());
        s.put_caps("v=", &["a".into(), "b".into()]).await.unwrap();
        assert_eq!(
            s.caps("v=").await.unwrap(),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(s.caps("w=").await.unwrap(), None);
    }
}
