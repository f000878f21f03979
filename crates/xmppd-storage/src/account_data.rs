//! Small per-account XML documents: vCards, private XML, last activity.

use crate::Result;
use async_trait::async_trait;

#[async_trait]
pub trait AccountDataStore: Send + Sync {
    async fn get(
        &self,
        username: &str,
        domain: &str,
        area: &str,
        key: &str,
    ) -> Result<Option<String>>;
    async fn put(
        &self,
        username: &str,
        domain: &str,
        area: &str,
        key: &str,
        value: &str,
    ) -> Result<()>;
    async fn delete(&self, username: &str, domain: &str, area: &str, key: &str) -> Result<bool>;
}
