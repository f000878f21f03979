//! Offline messages (XEP-0160).

use crate::Result;
use async_trait::async_trait;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Unix time the server received it.
    pub stamp: i64,
    pub stanza: String,
}

#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Stores a message unless the account already holds `limit`; returns whether it did.
    async fn push(
        &self,
        username: &str,
        domain: &str,
        message: &OfflineMessage,
        limit: usize,
    ) -> Result<bool>;
    /// Up to `limit` stored messages, oldest first, with their ids; nothing is removed.
    async fn oldest(
        &self,
        username: &str,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(i64, OfflineMessage)>>;
    /// Removes the messages up to and including id `last` (once they were delivered).
    async fn remove_through(&self, username: &str, domain: &str, last: i64) -> Result<()>;
    async fn count(&self, username: &str, domain: &str) -> Result<usize>;
}
