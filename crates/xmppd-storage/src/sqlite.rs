//! The sqlx SQLite backend.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::accounts::{Account, AccountStore, ScramKeys};
use crate::Result;

/// SQLite storage in WAL mode, so the `xmppd user` commands can write while the server runs.
pub struct SqliteStorage {
    pool: SqlitePool,
}

impl SqliteStorage {
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Durable once the client was told it succeeded.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SqliteStorage { pool })
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn account_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Account> {
    Ok(Account {
        username: row.try_get("username")?,
        domain: row.try_get("domain")?,
        iterations: row.try_get::<i64, _>("iterations")? as u32,
        sha1: ScramKeys {
            salt: row.try_get("sha1_salt")?,
            stored_key: row.try_get("sha1_stored_key")?,
            server_key: row.try_get("sha1_server_key")?,
        },
        sha256: ScramKeys {
            salt: row.try_get("sha256_salt")?,
            stored_key: row.try_get("sha256_stored_key")?,
            server_key: row.try_get("sha256_server_key")?,
        },
    })
}

#[async_trait]
impl AccountStore for SqliteStorage {
    async fn create(&self, a: &Account) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO accounts (domain, username, created_at, iterations, \
             sha1_salt, sha1_stored_key, sha1_server_key, \
             sha256_salt, sha256_stored_key, sha256_server_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (domain, username) DO NOTHING",
        )
        .bind(&a.domain)
        .bind(&a.username)
        .bind(now())
        .bind(a.iterations as i64)
        .bind(&a.sha1.salt)
        .bind(&a.sha1.stored_key)
        .bind(&a.sha1.server_key)
        .bind(&a.sha256.salt)
        .bind(&a.sha256.stored_key)
        .bind(&a.sha256.server_key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get(&self, username: &str, domain: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE domain = $1 AND username = $2")
            .bind(domain)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn exists(&self, username: &str, domain: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM accounts WHERE domain = $1 AND username = $2")
            .bind(domain)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn set_credentials(&self, a: &Account) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE accounts SET iterations = $3, \
             sha1_salt = $4, sha1_stored_key = $5, sha1_server_key = $6, \
             sha256_salt = $7, sha256_stored_key = $8, sha256_server_key = $9 \
             WHERE domain = $1 AND username = $2",
        )
        .bind(&a.domain)
        .bind(&a.username)
        .bind(a.iterations as i64)
        .bind(&a.sha1.salt)
        .bind(&a.sha1.stored_key)
        .bind(&a.sha1.server_key)
        .bind(&a.sha256.salt)
        .bind(&a.sha256.stored_key)
        .bind(&a.sha256.server_key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, username: &str, domain: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM accounts WHERE domain = $1 AND username = $2")
            .bind(domain)
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list(&self, domain: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT username FROM accounts WHERE domain = $1 ORDER BY username")
            .bind(domain)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("username").map_err(Into::into))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Storage;

    fn account(name: &str, byte: u8) -> Account {
        let keys = ScramKeys {
            salt: vec![byte; 16],
            stored_key: vec![byte; 20],
            server_key: vec![byte; 20],
        };
        Account {
            username: name.into(),
            domain: "example.org".into(),
            iterations: 4096,
            sha1: keys.clone(),
            sha256: keys,
        }
    }

    #[tokio::test]
    async fn account_lifecycle_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        {
            let storage = Storage::open(&url).await.unwrap();
            let accounts = &storage.accounts;
            assert!(accounts.create(&account("alice", 1)).await.unwrap());
            assert!(!accounts.create(&account("alice", 2)).await.unwrap());
            assert!(accounts.create(&account("bob", 3)).await.unwrap());
            assert!(accounts.set_credentials(&account("bob", 4)).await.unwrap());
            assert!(!accounts
                .set_credentials(&account("carol", 4))
                .await
                .unwrap());
        }
        let storage = Storage::open(&url).await.unwrap();
        let accounts = &storage.accounts;
        assert_eq!(
            accounts.get("alice", "example.org").await.unwrap(),
            Some(account("alice", 1))
        );
        assert_eq!(
            accounts.get("bob", "example.org").await.unwrap(),
            Some(account("bob", 4))
        );
        assert_eq!(
            accounts.list("example.org").await.unwrap(),
            vec!["alice", "bob"]
        );
        assert!(accounts.exists("alice", "example.org").await.unwrap());
        assert!(accounts.delete("alice", "example.org").await.unwrap());
        assert!(!accounts.delete("alice", "example.org").await.unwrap());
        assert!(!accounts.exists("alice", "example.org").await.unwrap());
        assert!(accounts.list("other.org").await.unwrap().is_empty());
    }
}
