//! User accounts and their credentials.

use crate::Result;
use async_trait::async_trait;

/// SCRAM keys for one hash function (RFC 5802 §3): what a server needs, and nothing that
/// lets anyone log in as the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// A local account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub domain: String,
    pub iterations: u32,
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account; `false` if it exists already.
    async fn create(&self, account: &Account) -> Result<bool>;
    async fn get(&self, username: &str, domain: &str) -> Result<Option<Account>>;
    async fn exists(&self, username: &str, domain: &str) -> Result<bool>;
    /// Replaces the credentials of an existing account; `false` if there is none.
    async fn set_credentials(&self, account: &Account) -> Result<bool>;
    /// Deletes an account and everything stored for it; `false` if there was none.
    async fn delete(&self, username: &str, domain: &str) -> Result<bool>;
    /// Usernames of a domain, sorted.
    async fn list(&self, domain: &str) -> Result<Vec<String>>;
}
