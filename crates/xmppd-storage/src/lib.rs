//! Storage for xmppd: one narrow async trait per area, one implementation over sqlx.
//!
//! SQLite is the zero-setup default. The SQL sticks to what PostgreSQL also accepts (`$n`
//! parameters, `ON CONFLICT`), so a PostgreSQL backend is a second pool type, not a rewrite.

mod account_data;
mod accounts;
mod cache;
mod cached;
mod cached_pubsub;
mod muc;
mod offline;
mod pubsub;
mod roster;
mod sqlite;
mod timed;

pub use account_data::AccountDataStore;
pub use accounts::{Account, AccountStore, ScramKeys};
pub use cache::{CacheMap, Miss};
pub use cached::{AccountsForgettingRosters, CachedRoster};
pub use cached_pubsub::CachedPubSub;
pub use muc::{LogLine, MucStore, StoredAffiliation, StoredRoom};
pub use offline::{OfflineMessage, OfflineStore};
pub use pubsub::{Member, PubSubStore, StoredItem};
pub use roster::{PendingRequest, RosterItem, RosterStore};
pub use sqlite::SqliteStorage;
pub use timed::{Latency, Observer};

use std::sync::Arc;

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot lock the database for migration: {0}")]
    MigrationLock(#[from] std::io::Error),
    #[error("unsupported storage url {0:?} (expected sqlite://PATH)")]
    UnsupportedUrl(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Every storage area the server uses, behind trait objects.
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
    pub roster: Arc<dyn RosterStore>,
    pub offline: Arc<dyn OfflineStore>,
    pub data: Arc<dyn AccountDataStore>,
    pub muc: Arc<dyn MucStore>,
    pub pubsub: Arc<dyn PubSubStore>,
    /// The time of every statement and write transaction (see [`Latency`]).
    pub latency: Latency,
}

impl Storage {
    /// Opens the storage named by `url` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Storage> {
        if url.starts_with("sqlite:") {
            let db = Arc::new(SqliteStorage::open(url).await?);
            let rosters = Arc::new(CachedRoster::new(db.clone()));
            return Ok(Storage {
                latency: db.pool.latency.clone(),
                accounts: Arc::new(AccountsForgettingRosters {
                    inner: db.clone(),
                    rosters: rosters.clone(),
                }),
                roster: rosters,
                offline: db.clone(),
                data: db.clone(),
                muc: db.clone(),
                pubsub: Arc::new(CachedPubSub::new(db)),
            });
        }
        Err(StorageError::UnsupportedUrl(url.to_string()))
    }

    /// The accounts of an existing store, opened read-only (nothing is created or
    /// migrated); `None` when there is no store yet.
    pub async fn open_accounts_read_only(url: &str) -> Result<Option<Arc<dyn AccountStore>>> {
        if url.starts_with("sqlite:") {
            let db = SqliteStorage::open_read_only(url).await?;
            return Ok(db.map(|db| Arc::new(db) as Arc<dyn AccountStore>));
        }
        Err(StorageError::UnsupportedUrl(url.to_string()))
    }
}
