//! How long storage takes, for the server's latency histogram: the pool behind an
//! [`Executor`] that starts a clock per statement (waiting for a free connection included)
//! and tells the observer when the statement is done. A write transaction is timed as a
//! whole, from `BEGIN` to its end.
//!
//! Timing here, at the one place every query passes, keeps it out of each store method.
//! Writes also queue here, one at a time (see [`TimedPool::begin_write`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use either::Either;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use sqlx::sqlite::{
    Sqlite, SqlitePool, SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo,
};
use sqlx::{Describe, Execute, Executor, Transaction};

/// Receives the time of each statement or transaction.
pub type Observer = Box<dyn Fn(Duration) + Send + Sync>;

/// Where storage times go; nowhere until [`Latency::observe_with`] is called.
#[derive(Clone, Default)]
pub struct Latency(Arc<OnceLock<Observer>>);

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Latency")
    }
}

impl Latency {
    /// Sends every later time to `observer` (the first call wins).
    pub fn observe_with(&self, observer: Observer) {
        let _ = self.0.set(observer);
    }

    fn start(&self) -> Timer {
        Timer {
            started: Instant::now(),
            latency: self.clone(),
        }
    }
}

/// Reports the time since it was made when it is dropped: a statement that finished, or
/// one abandoned half-way (its caller went away), counts either way.
pub(crate) struct Timer {
    started: Instant,
    latency: Latency,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(observe) = self.latency.0.get() {
            observe(self.started.elapsed());
        }
    }
}

/// A write transaction's statements as one script for [`TimedPool::write_script`]:
/// `BEGIN IMMEDIATE;` before them, `COMMIT;` after.
macro_rules! write_script {
    ($($statements:expr),+ $(,)?) => {
        sqlx::query(concat!("BEGIN IMMEDIATE; ", $($statements, " ",)+ "COMMIT;"))
    };
}
pub(crate) use write_script;

#[derive(Debug)]
pub(crate) struct TimedPool {
    pool: SqlitePool,
    pub(crate) latency: Latency,
    /// The turn to write. SQLite has one write lock, and a connection that finds it taken
    /// polls for it with sleeps of up to 100 ms while holding its pool connection: under a
    /// burst of writes (300 accounts subscribing to each other at once) writers got through
    /// at a fraction of the disk's rate and readers found no free connection, stalling
    /// everything for seconds. Queued here, writers take turns the moment the last one
    /// commits, in order, and wait without holding a connection.
    writes: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction's turn and clock: both end when it is dropped, after the commit.
pub(crate) struct WriteTurn {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    _timer: Timer,
}

impl TimedPool {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        TimedPool {
            pool,
            latency: Latency::default(),
            writes: Arc::default(),
        }
    }

    /// A write transaction (`BEGIN IMMEDIATE`: it takes the write lock at once, so another
    /// process's writer makes it wait for the busy timeout instead of failing half-way),
    /// once it is this process's turn to write; timed from the wait for the turn.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<(Transaction<'static, Sqlite>, WriteTurn), sqlx::Error> {
        let timer = self.latency.start();
        let turn = self.writes.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok((
            tx,
            WriteTurn {
                _turn: turn,
                _timer: timer,
            },
        ))
    }

    /// Runs a whole write transaction written as one script, `BEGIN IMMEDIATE; …; COMMIT`
    /// (see [`write_script!`]), in one round trip to SQLite's thread where a
    /// [`TimedPool::begin_write`] transaction takes one per statement plus BEGIN and COMMIT
    /// (each a wakeup of that thread and of the runtime: a PEP publish used to take four).
    /// `$n` parameters are shared by the script's statements. A script that fails half-way
    /// leaves its transaction open on the connection: it is rolled back here, and a
    /// connection that cannot roll back is closed rather than returned to the pool.
    pub(crate) async fn write_script<'q>(
        &self,
        script: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        debug_assert!(
            script.sql().starts_with("BEGIN IMMEDIATE;") && script.sql().ends_with("COMMIT;"),
            "a write script is one whole transaction"
        );
        let _timer = self.latency.start();
        let _turn = self.writes.clone().lock_owned().await;
        let mut conn = self.pool.acquire().await?;
        match script.fetch_all(&mut *conn).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // "No transaction is active" (BEGIN itself failed) also lands here; closing
                // that healthy connection costs only a reconnect.
                if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                    let _ = conn.close().await;
                }
                Err(e)
            }
        }
    }

    /// The turn to write, for a statement that writes outside a transaction.
    async fn turn_for(&self, sql: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let verb = sql.split_whitespace().next().unwrap_or_default();
        let writes = ["INSERT", "UPDATE", "DELETE", "REPLACE"]
            .iter()
            .any(|w| verb.eq_ignore_ascii_case(w));
        match writes {
            true => Some(self.writes.clone().lock_owned().await),
            false => None,
        }
    }
}

impl<'c> Executor<'c> for &'c TimedPool {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        let timer = self.latency.start();
        async move {
            let turn = self.turn_for(query.sql()).await;
            // The timer (and a write's turn) live as long as the stream: until the rows
            // are all read.
            self.pool.fetch_many(query).map(move |step| {
                let _ = (&timer, &turn);
                step
            })
        }
        .flatten_stream()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        let timer = self.latency.start();
        async move {
            let turn = self.turn_for(query.sql()).await;
            let row = self.pool.fetch_optional(query).await;
            drop((turn, timer));
            row
        }
        .boxed()
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Sqlite>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::{SqliteStorage, Storage};

    use super::*;

    #[tokio::test]
    async fn every_statement_and_write_transaction_is_timed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let storage = Storage::open(&url).await.unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        storage.latency.observe_with(Box::new(move |took| {
            assert!(took < Duration::from_secs(60));
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        // A read: one statement.
        assert!(!storage.accounts.exists("alice", "localhost").await.unwrap());
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // A deletion is a write transaction: timed once, as a whole.
        storage.accounts.delete("alice", "localhost").await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_write_script_that_fails_half_way_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let pool = SqliteStorage::open(&url).await.unwrap().pool;
        let failed = pool
            .write_script(write_script!(
                "INSERT INTO pubsub_nodes (service, node, config) VALUES ('a@x', 'n', '');",
                "INSERT INTO no_such_table VALUES (1);",
            ))
            .await;
        assert!(failed.is_err());
        // The first INSERT was rolled back, and every pooled connection still writes (one
        // left inside the open transaction would make the next BEGIN fail).
        for node in ["m", "n", "o", "p", "q"] {
            pool.write_script(
                write_script!(
                    "INSERT INTO pubsub_nodes (service, node, config) VALUES ('a@x', $1, '');",
                )
                .bind(node),
            )
            .await
            .unwrap();
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pubsub_nodes")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(count, 5);
    }
}
