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
    /// Removes and returns every stored message, oldest first.
    async fn take_all(&self, username: &str, domain: &str) -> Result<Vec<OfflineMessage>>;
    async fn count(&self, username: &str, domain: &str) -> Result<usize>;
}
