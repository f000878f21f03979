//! Multi-User Chat (XEP-0045): persistent rooms, their affiliations, history and public logs.

use crate::Result;
use async_trait::async_trait;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredRoom {
    /// Natural-language name, for the public listing.
    pub name: String,
    /// Listed in the service's disco#items.
    pub public: bool,
    /// The room configuration as a submitted muc#roomconfig form (XML).
    pub config: String,
    /// The last subject message (XML), empty when none was set.
    pub subject: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAffiliation {
    /// A bare JID (or a domain).
    pub jid: String,
    /// `owner`, `admin`, `member` or `outcast`.
    pub affiliation: String,
    pub nick: Option<String>,
    pub reason: Option<String>,
}

/// A line of a room's public log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Seconds since the epoch (UTC).
    pub stamp: i64,
    pub nick: String,
    /// `text` is a new subject rather than a message body.
    pub subject: bool,
    pub text: String,
}

#[async_trait]
pub trait MucStore: Send + Sync {
    async fn room(&self, service: &str, room: &str) -> Result<Option<StoredRoom>>;
    async fn put_room(&self, service: &str, room: &str, stored: &StoredRoom) -> Result<()>;
    /// Removes the room with its affiliations and history.
    async fn delete_room(&self, service: &str, room: &str) -> Result<()>;
    /// `(room, name)` of every public stored room, by room name.
    async fn public_rooms(&self, service: &str) -> Result<Vec<(String, String)>>;
    /// The name (node) of every stored room, public or not, sorted.
    async fn room_names(&self, service: &str) -> Result<Vec<String>>;
    async fn affiliations(&self, service: &str, room: &str) -> Result<Vec<StoredAffiliation>>;
    /// Sets one affiliation; `none` removes it.
    async fn set_affiliation(&self, service: &str, room: &str, a: &StoredAffiliation)
        -> Result<()>;
    /// Appends a history message and keeps only the newest `keep`.
    async fn push_history(
        &self,
        service: &str,
        room: &str,
        stamp: i64,
        stanza: &str,
        keep: usize,
    ) -> Result<()>;
    /// The newest `limit` history messages, oldest first, with their stamps.
    async fn history(&self, service: &str, room: &str, limit: usize) -> Result<Vec<(i64, String)>>;
    /// Appends a line to the room's public log and drops its lines stamped before
    /// `keep_since`.
    async fn append_log(
        &self,
        service: &str,
        room: &str,
        line: &LogLine,
        keep_since: i64,
    ) -> Result<()>;
    /// The room's log lines stamped in `from..until`, oldest first, at most `limit`.
    async fn log(
        &self,
        service: &str,
        room: &str,
        from: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<LogLine>>;
    /// The UTC days (days since the epoch) on which the room's log has lines, newest first.
    async fn log_days(&self, service: &str, room: &str) -> Result<Vec<i64>>;
    /// Forgets the room's whole log.
    async fn delete_log(&self, service: &str, room: &str) -> Result<()>;
}
