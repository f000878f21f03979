//! The sqlx SQLite backend.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::Row;

use crate::accounts::{Account, AccountStore, ScramKeys};
use crate::timed::TimedPool;
use crate::{
    AccountDataStore, LogLine, MucStore, OfflineMessage, OfflineStore, PendingRequest, Result,
    RosterItem, RosterStore, StoredAffiliation, StoredRoom,
};

/// SQLite storage in WAL mode, so the `xmppd user` commands can write while the server runs.
///
/// Transactions that read before they write begin IMMEDIATE: a deferred one that must
/// upgrade its read lock while another connection has written gets SQLITE_BUSY at once,
/// without the busy timeout, which tests under load hit.
pub struct SqliteStorage {
    pub(crate) pool: TimedPool,
}

impl SqliteStorage {
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Durable once the client was told it succeeded.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // Two processes opening a fresh database at once (say, parallel `xmppd user add`)
        // trip over each other: switching to WAL needs the database to themselves (SQLite
        // answers "database is locked" without waiting), and both would find a migration
        // missing, the second failing with "table exists" (SQLite transactions start
        // deferred; sqlx takes no lock on SQLite). An exclusive lock on a file beside the
        // database makes them take turns until the schema is in place.
        let lock_path = format!("{}.migrate-lock", options.get_filename().display());
        let db_path = options.get_filename().to_path_buf();
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            // Readable by the server's user only: SQLite gives its -wal and -shm files the
            // database file's mode, so creating it first with 0600 covers all three.
            if db_path != std::path::Path::new(":memory:") {
                private_file(&db_path)?;
            }
            let file = private_file(std::path::Path::new(&lock_path))?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(std::io::Error::other)??;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A pooled connection is a file handle that cannot go stale; the default ping
            // before each use was one more round trip to SQLite's thread per statement.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        drop(lock);
        Ok(SqliteStorage {
            pool: TimedPool::new(pool),
        })
    }
}

impl SqliteStorage {
    /// Opens an existing database without changing anything (no creation, no migrations):
    /// for `xmppd check`. `None` when there is no database yet.
    pub async fn open_read_only(url: &str) -> Result<Option<Self>> {
        let options = SqliteConnectOptions::from_str(url)?
            .read_only(true)
            .create_if_missing(false);
        if !options.get_filename().exists() {
            return Ok(None);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Some(SqliteStorage {
            pool: TimedPool::new(pool),
        }))
    }
}

/// Opens (creating if missing, mode 0600) a file for writing without truncating it.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Every table holding data of one account, cleared when the account is deleted.
const ACCOUNT_TABLES: [&str; 5] = [
    "roster_items",
    "roster_versions",
    "subscription_requests",
    "offline_messages",
    "account_data",
];

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
        let (mut tx, _timer) = self.pool.begin_write().await?;
        for table in ACCOUNT_TABLES {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE domain = $1 AND username = $2"
            ))
            .bind(domain)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query("DELETE FROM accounts WHERE domain = $1 AND username = $2")
            .bind(domain)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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

fn roster_item_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<RosterItem> {
    let groups: String = row.try_get("groups")?;
    Ok(RosterItem {
        contact: row.try_get("contact")?,
        name: row.try_get("name")?,
        subscription: row.try_get("subscription")?,
        ask: row.try_get::<i64, _>("ask")? != 0,
        approved: row.try_get::<i64, _>("approved")? != 0,
        // Groups are stored one per line; a group name cannot contain a line break once
        // the roster module has validated it.
        groups: groups
            .split('\n')
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect(),
    })
}

impl SqliteStorage {
    /// Bumps and returns the roster version inside a transaction.
    async fn bump_version(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        username: &str,
        domain: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO roster_versions (domain, username, version) VALUES ($1, $2, 1) \
             ON CONFLICT (domain, username) DO UPDATE SET version = roster_versions.version + 1 \
             RETURNING version",
        )
        .bind(domain)
        .bind(username)
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get("version")?)
    }

    async fn version(&self, username: &str, domain: &str) -> Result<i64> {
        let row =
            sqlx::query("SELECT version FROM roster_versions WHERE domain = $1 AND username = $2")
                .bind(domain)
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => r.try_get("version")?,
            None => 0,
        })
    }
}

#[async_trait]
impl RosterStore for SqliteStorage {
    async fn roster(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<(i64, std::sync::Arc<Vec<RosterItem>>)> {
        let rows = sqlx::query(
            "SELECT * FROM roster_items WHERE domain = $1 AND username = $2 ORDER BY contact",
        )
        .bind(domain)
        .bind(username)
        .fetch_all(&self.pool)
        .await?;
        let items: Vec<RosterItem> = rows
            .iter()
            .map(roster_item_from_row)
            .collect::<Result<_>>()?;
        Ok((
            self.version(username, domain).await?,
            std::sync::Arc::new(items),
        ))
    }

    async fn item(
        &self,
        username: &str,
        domain: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>> {
        let row = sqlx::query(
            "SELECT * FROM roster_items WHERE domain = $1 AND username = $2 AND contact = $3",
        )
        .bind(domain)
        .bind(username)
        .bind(contact)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(roster_item_from_row).transpose()
    }

    async fn count(&self, username: &str, domain: &str) -> Result<usize> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM roster_items WHERE domain = $1 AND username = $2",
        )
        .bind(domain)
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? as usize)
    }

    async fn put(&self, username: &str, domain: &str, item: &RosterItem) -> Result<i64> {
        let (mut tx, _timer) = self.pool.begin_write().await?;
        sqlx::query(
            "INSERT INTO roster_items (domain, username, contact, name, subscription, ask, approved, groups) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (domain, username, contact) DO UPDATE SET name = $4, subscription = $5, \
             ask = $6, approved = $7, groups = $8",
        )
        .bind(domain)
        .bind(username)
        .bind(&item.contact)
        .bind(&item.name)
        .bind(&item.subscription)
        .bind(item.ask as i64)
        .bind(item.approved as i64)
        .bind(item.groups.join("\n"))
        .execute(&mut *tx)
        .await?;
        let version = Self::bump_version(&mut tx, username, domain).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn remove(&self, username: &str, domain: &str, contact: &str) -> Result<i64> {
        let (mut tx, _timer) = self.pool.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM roster_items WHERE domain = $1 AND username = $2 AND contact = $3",
        )
        .bind(domain)
        .bind(username)
        .bind(contact)
        .execute(&mut *tx)
        .await?;
        let version = if done.rows_affected() > 0 {
            Self::bump_version(&mut tx, username, domain).await?
        } else {
            drop(tx);
            return self.version(username, domain).await;
        };
        tx.commit().await?;
        Ok(version)
    }

    async fn add_request(
        &self,
        username: &str,
        domain: &str,
        request: &PendingRequest,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO subscription_requests (domain, username, contact, stanza) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (domain, username, contact) DO UPDATE SET stanza = $4",
        )
        .bind(domain)
        .bind(username)
        .bind(&request.contact)
        .bind(&request.stanza)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_request(&self, username: &str, domain: &str, contact: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM subscription_requests WHERE domain = $1 AND username = $2 AND contact = $3",
        )
        .bind(domain)
        .bind(username)
        .bind(contact)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn has_request(&self, username: &str, domain: &str, contact: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM subscription_requests WHERE domain = $1 AND username = $2 AND contact = $3",
        )
        .bind(domain)
        .bind(username)
        .bind(contact)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn requests(&self, username: &str, domain: &str) -> Result<Vec<PendingRequest>> {
        let rows = sqlx::query(
            "SELECT contact, stanza FROM subscription_requests WHERE domain = $1 AND username = $2 \
             ORDER BY contact",
        )
        .bind(domain)
        .bind(username)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingRequest {
                    contact: r.try_get("contact")?,
                    stanza: r.try_get("stanza")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl OfflineStore for SqliteStorage {
    async fn push(
        &self,
        username: &str,
        domain: &str,
        message: &OfflineMessage,
        limit: usize,
    ) -> Result<bool> {
        // One statement, so two concurrent deliveries cannot both squeeze past the limit.
        let done = sqlx::query(
            "INSERT INTO offline_messages (domain, username, stamp, stanza) \
             SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM offline_messages \
             WHERE domain = $1 AND username = $2) < $5",
        )
        .bind(domain)
        .bind(username)
        .bind(message.stamp)
        .bind(&message.stanza)
        .bind(limit as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn oldest(
        &self,
        username: &str,
        domain: &str,
        limit: usize,
    ) -> Result<Vec<(i64, OfflineMessage)>> {
        let rows = sqlx::query(
            "SELECT id, stamp, stanza FROM offline_messages WHERE domain = $1 AND username = $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(domain)
        .bind(username)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    OfflineMessage {
                        stamp: r.try_get("stamp")?,
                        stanza: r.try_get("stanza")?,
                    },
                ))
            })
            .collect()
    }

    async fn remove_through(&self, username: &str, domain: &str, last: i64) -> Result<()> {
        sqlx::query(
            "DELETE FROM offline_messages WHERE domain = $1 AND username = $2 AND id <= $3",
        )
        .bind(domain)
        .bind(username)
        .bind(last)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn count(&self, username: &str, domain: &str) -> Result<usize> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM offline_messages WHERE domain = $1 AND username = $2",
        )
        .bind(domain)
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? as usize)
    }
}

#[async_trait]
impl AccountDataStore for SqliteStorage {
    async fn get(
        &self,
        username: &str,
        domain: &str,
        area: &str,
        key: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT value FROM account_data WHERE domain = $1 AND username = $2 AND area = $3 AND key = $4",
        )
        .bind(domain)
        .bind(username)
        .bind(area)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("value").map_err(Into::into))
            .transpose()
    }

    async fn put(
        &self,
        username: &str,
        domain: &str,
        area: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO account_data (domain, username, area, key, value) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (domain, username, area, key) DO UPDATE SET value = $5",
        )
        .bind(domain)
        .bind(username)
        .bind(area)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete(&self, username: &str, domain: &str, area: &str, key: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM account_data WHERE domain = $1 AND username = $2 AND area = $3 AND key = $4",
        )
        .bind(domain)
        .bind(username)
        .bind(area)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl MucStore for SqliteStorage {
    async fn room(&self, service: &str, room: &str) -> Result<Option<StoredRoom>> {
        let row = sqlx::query(
            "SELECT name, public, config, subject FROM muc_rooms WHERE service = $1 AND room = $2",
        )
        .bind(service)
        .bind(room)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StoredRoom {
                name: r.try_get("name")?,
                public: r.try_get::<i64, _>("public")? != 0,
                config: r.try_get("config")?,
                subject: r.try_get("subject")?,
            })
        })
        .transpose()
    }

    async fn put_room(&self, service: &str, room: &str, stored: &StoredRoom) -> Result<()> {
        sqlx::query(
            "INSERT INTO muc_rooms (service, room, name, public, config, subject) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, room) DO UPDATE SET \
             name = $3, public = $4, config = $5, subject = $6",
        )
        .bind(service)
        .bind(room)
        .bind(&stored.name)
        .bind(stored.public as i64)
        .bind(&stored.config)
        .bind(&stored.subject)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_room(&self, service: &str, room: &str) -> Result<()> {
        let (mut tx, _timer) = self.pool.begin_write().await?;
        for table in ["muc_rooms", "muc_affiliations", "muc_history"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE service = $1 AND room = $2"
            ))
            .bind(service)
            .bind(room)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn public_rooms(&self, service: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT room, name FROM muc_rooms WHERE service = $1 AND public = 1 ORDER BY room",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("room")?, r.try_get("name")?)))
            .collect()
    }

    async fn room_names(&self, service: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT room FROM muc_rooms WHERE service = $1 ORDER BY room")
            .bind(service)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("room")?)).collect()
    }

    async fn affiliations(&self, service: &str, room: &str) -> Result<Vec<StoredAffiliation>> {
        let rows = sqlx::query(
            "SELECT jid, affiliation, nick, reason FROM muc_affiliations \
             WHERE service = $1 AND room = $2 ORDER BY jid",
        )
        .bind(service)
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAffiliation {
                    jid: r.try_get("jid")?,
                    affiliation: r.try_get("affiliation")?,
                    nick: r.try_get("nick")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn set_affiliation(
        &self,
        service: &str,
        room: &str,
        a: &StoredAffiliation,
    ) -> Result<()> {
        if a.affiliation == "none" {
            sqlx::query(
                "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2 AND jid = $3",
            )
            .bind(service)
            .bind(room)
            .bind(&a.jid)
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO muc_affiliations (service, room, jid, affiliation, nick, reason) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, room, jid) DO UPDATE SET \
             affiliation = $4, nick = $5, reason = $6",
        )
        .bind(service)
        .bind(room)
        .bind(&a.jid)
        .bind(&a.affiliation)
        .bind(&a.nick)
        .bind(&a.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn push_history(
        &self,
        service: &str,
        room: &str,
        stamp: i64,
        stanza: &str,
        keep: usize,
    ) -> Result<()> {
        let (mut tx, _timer) = self.pool.begin_write().await?;
        sqlx::query(
            "INSERT INTO muc_history (service, room, stamp, stanza) VALUES ($1, $2, $3, $4)",
        )
        .bind(service)
        .bind(room)
        .bind(stamp)
        .bind(stanza)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM muc_history WHERE service = $1 AND room = $2 AND id NOT IN \
             (SELECT id FROM muc_history WHERE service = $1 AND room = $2 \
              ORDER BY id DESC LIMIT $3)",
        )
        .bind(service)
        .bind(room)
        .bind(keep as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn history(&self, service: &str, room: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT stamp, stanza FROM (SELECT id, stamp, stanza FROM muc_history \
             WHERE service = $1 AND room = $2 ORDER BY id DESC LIMIT $3) ORDER BY id",
        )
        .bind(service)
        .bind(room)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("stamp")?, r.try_get("stanza")?)))
            .collect()
    }

    async fn append_log(
        &self,
        service: &str,
        room: &str,
        line: &LogLine,
        keep_since: i64,
    ) -> Result<()> {
        let (mut tx, _timer) = self.pool.begin_write().await?;
        sqlx::query(
            "INSERT INTO muc_log (service, room, stamp, nick, subject, text) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(service)
        .bind(room)
        .bind(line.stamp)
        .bind(&line.nick)
        .bind(line.subject)
        .bind(&line.text)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM muc_log WHERE service = $1 AND room = $2 AND stamp < $3")
            .bind(service)
            .bind(room)
            .bind(keep_since)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn log(
        &self,
        service: &str,
        room: &str,
        from: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT stamp, nick, subject, text FROM muc_log WHERE service = $1 AND room = $2 \
             AND stamp >= $3 AND stamp < $4 ORDER BY id LIMIT $5",
        )
        .bind(service)
        .bind(room)
        .bind(from)
        .bind(until)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    stamp: r.try_get("stamp")?,
                    nick: r.try_get("nick")?,
                    subject: r.try_get("subject")?,
                    text: r.try_get("text")?,
                })
            })
            .collect()
    }

    async fn log_days(&self, service: &str, room: &str) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT stamp / 86400 AS day FROM muc_log \
             WHERE service = $1 AND room = $2 ORDER BY day DESC",
        )
        .bind(service)
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("day")?)).collect()
    }

    async fn delete_log(&self, service: &str, room: &str) -> Result<()> {
        let (mut tx, _timer) = self.pool.begin_write().await?;
        sqlx::query("DELETE FROM muc_log WHERE service = $1 AND room = $2")
            .bind(service)
            .bind(room)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Storage;

    /// Several processes opening one fresh database at once (parallel `xmppd user add`) all
    /// succeed: the migrations run once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_opens_all_succeed() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/db.sqlite", dir.path().display());
            let opens: Vec<_> = (0..4)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { SqliteStorage::open(&url).await.map(|_| ()) })
                })
                .collect();
            for open in opens {
                open.await.unwrap().unwrap();
            }
        }
    }

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

    #[tokio::test]
    async fn roster_offline_and_data_and_cascading_delete() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let storage = Storage::open(&url).await.unwrap();
        let d = "example.org";
        storage.accounts.create(&account("alice", 1)).await.unwrap();
        let item = RosterItem {
            contact: "bob@example.org".into(),
            name: Some("Bob".into()),
            subscription: "to".into(),
            ask: false,
            approved: false,
            groups: vec!["Friends".into(), "Work".into()],
        };
        let v1 = storage.roster.put("alice", d, &item).await.unwrap();
        let (v, items) = storage.roster.roster("alice", d).await.unwrap();
        assert_eq!((v, items.to_vec()), (v1, vec![item.clone()]));
        let v2 = storage
            .roster
            .remove("alice", d, "bob@example.org")
            .await
            .unwrap();
        assert!(v2 > v1);
        assert_eq!(
            storage
                .roster
                .remove("alice", d, "bob@example.org")
                .await
                .unwrap(),
            v2
        );
        storage.roster.put("alice", d, &item).await.unwrap();

        let req = PendingRequest {
            contact: "carol@example.org".into(),
            stanza: "<presence/>".into(),
        };
        storage.roster.add_request("alice", d, &req).await.unwrap();
        assert!(storage
            .roster
            .has_request("alice", d, "carol@example.org")
            .await
            .unwrap());
        assert_eq!(
            storage.roster.requests("alice", d).await.unwrap(),
            vec![req]
        );

        for i in 0..3 {
            let m = OfflineMessage {
                stamp: i,
                stanza: format!("<message id='{i}'/>"),
            };
            assert_eq!(
                storage.offline.push("alice", d, &m, 2).await.unwrap(),
                i < 2
            );
        }
        let oldest = storage.offline.oldest("alice", d, 10).await.unwrap();
        assert_eq!(
            oldest.iter().map(|(_, m)| m.stamp).collect::<Vec<_>>(),
            vec![0, 1]
        );
        // Read again until removed: delivery may be cut short.
        let first = storage.offline.oldest("alice", d, 1).await.unwrap();
        assert_eq!(first, oldest[..1]);
        storage
            .offline
            .remove_through("alice", d, first[0].0)
            .await
            .unwrap();
        let rest = storage.offline.oldest("alice", d, 10).await.unwrap();
        assert_eq!(rest, oldest[1..]);
        storage
            .offline
            .remove_through("alice", d, rest[0].0)
            .await
            .unwrap();
        assert!(storage
            .offline
            .oldest("alice", d, 10)
            .await
            .unwrap()
            .is_empty());
        storage
            .offline
            .push("alice", d, &oldest[0].1, 10)
            .await
            .unwrap();

        storage
            .data
            .put("alice", d, "vcard", "", "<vCard/>")
            .await
            .unwrap();
        assert_eq!(
            storage
                .data
                .get("alice", d, "vcard", "")
                .await
                .unwrap()
                .as_deref(),
            Some("<vCard/>")
        );

        assert!(storage.accounts.delete("alice", d).await.unwrap());
        assert!(storage
            .roster
            .roster("alice", d)
            .await
            .unwrap()
            .1
            .is_empty());
        assert!(storage
            .roster
            .requests("alice", d)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(storage.offline.count("alice", d).await.unwrap(), 0);
        assert_eq!(
            storage.data.get("alice", d, "vcard", "").await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_room_log_is_read_by_day_pruned_by_age_and_deleted_with_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let (svc, room) = ("conference.example.org", "lounge");
        let line = |stamp: i64, text: &str| LogLine {
            stamp,
            nick: "alice".into(),
            subject: false,
            text: text.into(),
        };
        {
            let storage = Storage::open(&url).await.unwrap();
            let muc = &storage.muc;
            muc.append_log(svc, room, &line(10, "day 0"), i64::MIN)
                .await
                .unwrap();
            muc.append_log(svc, room, &line(86_400 + 5, "day 1"), i64::MIN)
                .await
                .unwrap();
            muc.append_log(svc, "other", &line(20, "elsewhere"), i64::MIN)
                .await
                .unwrap();
        }
        let storage = Storage::open(&url).await.unwrap();
        let muc = &storage.muc;
        assert_eq!(muc.log_days(svc, room).await.unwrap(), [1, 0]);
        let day0 = muc.log(svc, room, 0, 86_400, 100).await.unwrap();
        assert_eq!(day0, [line(10, "day 0")]);
        // A line 2 days on, keeping one day: day 0 goes, day 1 stays.
        muc.append_log(svc, room, &line(2 * 86_400 + 5, "day 2"), 86_400)
            .await
            .unwrap();
        assert_eq!(muc.log_days(svc, room).await.unwrap(), [2, 1]);
        assert_eq!(
            muc.log(svc, room, 0, i64::MAX, 1).await.unwrap(),
            [line(86_405, "day 1")]
        );
        muc.delete_log(svc, room).await.unwrap();
        assert!(muc.log_days(svc, room).await.unwrap().is_empty());
        assert_eq!(muc.log_days(svc, "other").await.unwrap(), [0]);
    }

    #[tokio::test]
    async fn muc_rooms_affiliations_and_history_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let (svc, room) = ("conference.example.org", "lounge");
        {
            let storage = Storage::open(&url).await.unwrap();
            let stored = StoredRoom {
                name: "Lounge".into(),
                public: true,
                config: "<x/>".into(),
                subject: String::new(),
            };
            storage.muc.put_room(svc, room, &stored).await.unwrap();
            let owner = StoredAffiliation {
                jid: "alice@example.org".into(),
                affiliation: "owner".into(),
                nick: None,
                reason: None,
            };
            storage
                .muc
                .set_affiliation(svc, room, &owner)
                .await
                .unwrap();
            for i in 0..5 {
                let xml = format!("<message id='{i}'/>");
                storage
                    .muc
                    .push_history(svc, room, i, &xml, 3)
                    .await
                    .unwrap();
            }
        }
        let storage = Storage::open(&url).await.unwrap();
        assert_eq!(
            storage.muc.room(svc, room).await.unwrap().unwrap().name,
            "Lounge"
        );
        assert_eq!(
            storage.muc.public_rooms(svc).await.unwrap(),
            [("lounge".to_string(), "Lounge".to_string())]
        );
        assert_eq!(storage.muc.room_names(svc).await.unwrap(), ["lounge"]);
        assert!(storage
            .muc
            .room_names("other.example")
            .await
            .unwrap()
            .is_empty());
        assert_eq!(storage.muc.affiliations(svc, room).await.unwrap().len(), 1);
        let history = storage.muc.history(svc, room, 2).await.unwrap();
        assert_eq!(history.iter().map(|h| h.0).collect::<Vec<_>>(), [3, 4]);
        storage.muc.delete_room(svc, room).await.unwrap();
        assert!(storage.muc.room(svc, room).await.unwrap().is_none());
        assert!(storage.muc.room_names(svc).await.unwrap().is_empty());
        assert!(storage
            .muc
            .affiliations(svc, room)
            .await
            .unwrap()
            .is_empty());
        assert!(storage.muc.history(svc, room, 10).await.unwrap().is_empty());
    }
}
