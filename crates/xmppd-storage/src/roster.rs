//! Rosters and subscription requests (RFC 6121 §2, §3).

use crate::Result;
use async_trait::async_trait;

/// One roster item as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub contact: String,
    pub name: Option<String>,
    /// `none`, `to`, `from` or `both`.
    pub subscription: String,
    /// A subscription request of ours is pending ("pending out").
    pub ask: bool,
    /// The contact's future request is pre-approved (RFC 6121 §3.4).
    pub approved: bool,
    pub groups: Vec<String>,
}

/// An unanswered inbound subscription request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    pub contact: String,
    /// The request as received, for delivery at the next login.
    pub stanza: String,
}

#[async_trait]
pub trait RosterStore: Send + Sync {
    /// The roster and its version (shared: it is read on every presence broadcast).
    async fn roster(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<(i64, std::sync::Arc<Vec<RosterItem>>)>;
    async fn item(&self, username: &str, domain: &str, contact: &str)
        -> Result<Option<RosterItem>>;
    async fn count(&self, username: &str, domain: &str) -> Result<usize>;
    /// Creates or replaces an item; returns the new roster version.
    async fn put(&self, username: &str, domain: &str, item: &RosterItem) -> Result<i64>;
    /// Removes an item; returns the new roster version (unchanged if there was none).
    async fn remove(&self, username: &str, domain: &str, contact: &str) -> Result<i64>;
    async fn add_request(
        &self,
        username: &str,
        domain: &str,
        request: &PendingRequest,
    ) -> Result<()>;
    async fn remove_request(&self, username: &str, domain: &str, contact: &str) -> Result<bool>;
    async fn has_request(&self, username: &str, domain: &str, contact: &str) -> Result<bool>;
    async fn requests(&self, username: &str, domain: &str) -> Result<Vec<PendingRequest>>;
}
