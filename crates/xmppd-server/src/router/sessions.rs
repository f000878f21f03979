//! The table of bound client sessions: bare JID → resources.
//!
//! Kept behind this small API so that a cluster can put a second implementation (on a message
//! bus) in its place without touching the router's rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI8, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;
use xmppd_core::{bare_str, Element, FullJid};

use super::outbox::{Outbox, Push};
use crate::registry::Extensions;

/// Why a session is told to end by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kick {
    None = 0,
    /// Its outbound queue filled up: the client does not read.
    QueueOverflow = 1,
    /// Another session bound the same resource (RFC 6120 §7.7.2.2).
    Conflict = 2,
    /// The account was deleted (XEP-0077 §3.2).
    AccountRemoved = 3,
    /// A server-to-server link nobody used for a while: closed without an error.
    Idle = 4,
}

/// How the rest of the server reaches one session. The session task owns the socket; this
/// handle only queues bytes (never blocking) and can ask the task to end.
pub struct SessionHandle {
    pub jid: FullJid,
    outbox: Outbox,
    kick: AtomicU8,
    kicked: Notify,
    available: AtomicBool,
    priority: AtomicI8,
    /// Requested the roster, so it is an interested resource that gets roster pushes
    /// (RFC 6121 §2.1.6).
    interested: AtomicBool,
    /// The last available presence it broadcast (from = its full JID), for probes.
    last_presence: Mutex<Option<Element>>,
    /// What modules keep per session (roster interest, privacy, carbons, CSI…).
    pub ext: Extensions,
}

impl SessionHandle {
    /// A session whose outbound queue holds at most `queue_capacity` stanzas.
    pub fn new(jid: FullJid, queue_capacity: usize) -> Arc<Self> {
        Arc::new(SessionHandle {
            jid,
            outbox: Outbox::new(queue_capacity),
            kick: AtomicU8::new(Kick::None as u8),
            kicked: Notify::new(),
            available: AtomicBool::new(false),
            priority: AtomicI8::new(0),
            interested: AtomicBool::new(false),
            last_presence: Mutex::new(None),
            ext: Extensions::default(),
        })
    }

    /// Queues serialised stanza bytes. A full queue ends the session rather than waiting.
    pub fn send(&self, data: Bytes) -> bool {
        match self.outbox.push(data) {
            Push::Queued => true,
            Push::Full => {
                self.kick(Kick::QueueOverflow);
                false
            }
            Push::Closed => false,
        }
    }

    /// The queue the session's own task writes out.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn kick(&self, why: Kick) {
        // The first reason wins.
        if self
            .kick
            .compare_exchange(
                Kick::None as u8,
                why as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.kicked.notify_one();
        }
    }

    /// Resolves once the session has been kicked; returns why.
    pub async fn kicked(&self) -> Kick {
        loop {
            match self.kick.load(Ordering::Acquire) {
                1 => return Kick::QueueOverflow,
                2 => return Kick::Conflict,
                3 => return Kick::AccountRemoved,
                4 => return Kick::Idle,
                _ => self.kicked.notified().await,
            }
        }
    }

    /// Records the session's own broadcast presence (RFC 6121 §4.2); `None` for unavailable.
    /// Returns whether it was available before.
    pub fn set_presence(&self, presence: Option<(Element, i8)>) -> bool {
        let mut last = self.last_presence.lock().unwrap_or_else(|e| e.into_inner());
        let (available, priority) = match &presence {
            Some((_, p)) => (true, *p),
            None => (false, 0),
        };
        *last = presence.map(|(el, _)| el);
        self.priority.store(priority, Ordering::Relaxed);
        self.available.swap(available, Ordering::AcqRel)
    }

    /// The last broadcast available presence, if the session is available.
    pub fn last_presence(&self) -> Option<Element> {
        self.last_presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_interested(&self) {
        self.interested.store(true, Ordering::Relaxed);
    }

    pub fn is_interested(&self) -> bool {
        self.interested.load(Ordering::Relaxed)
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    pub fn priority(&self) -> i8 {
        self.priority.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct SessionTable {
    /// Keyed by the bare JID's string, so lookups need not build a `BareJid`.
    by_bare: RwLock<HashMap<String, Vec<Arc<SessionHandle>>>>,
}

impl SessionTable {
    /// Adds a session; returns the session it replaces (same full JID), which the caller kicks.
    pub fn bind(&self, handle: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        let mut map = self.by_bare.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(bare_str(&handle.jid).to_string()).or_default();
        let old = list
            .iter()
            .position(|h| h.jid == handle.jid)
            .map(|i| list.swap_remove(i));
        list.push(handle);
        old
    }

    /// Removes exactly this session (not a newer one that took over its resource).
    pub fn unbind(&self, handle: &Arc<SessionHandle>) {
        let mut map = self.by_bare.write().unwrap_or_else(|e| e.into_inner());
        let bare = bare_str(&handle.jid);
        if let Some(list) = map.get_mut(bare) {
            list.retain(|h| !Arc::ptr_eq(h, handle));
            if list.is_empty() {
                map.remove(bare);
            }
        }
    }

    pub fn get(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
        let map = self.by_bare.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare_str(jid))?
            .iter()
            .find(|h| h.jid == *jid)
            .cloned()
    }

    /// Every session of an account (`bare` is its bare JID).
    pub fn resources(&self, bare: &str) -> Vec<Arc<SessionHandle>> {
        let map = self.by_bare.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare).cloned().unwrap_or_default()
    }

    /// Whether the account whose bare JID is `bare` has a session bound.
    pub fn is_online(&self, bare: &str) -> bool {
        let map = self.by_bare.read().unwrap_or_else(|e| e.into_inner());
        map.contains_key(bare)
    }

    /// Every session of every account, for shutdown.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        let map = self.by_bare.read().unwrap_or_else(|e| e.into_inner());
        map.values().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(jid: &str) -> Arc<SessionHandle> {
        SessionHandle::new(FullJid::new(jid).unwrap(), 2)
    }

    #[tokio::test]
    async fn bind_replaces_same_resource_and_unbind_is_exact() {
        let table = SessionTable::default();
        let a = handle("u@x/r");
        let b = handle("u@x/r");
        let c = handle("u@x/s");
        assert!(table.bind(a.clone()).is_none());
        assert!(table.bind(c.clone()).is_none());
        let replaced = table.bind(b.clone()).unwrap();
        assert!(Arc::ptr_eq(&replaced, &a));
        table.unbind(&a);
        assert!(Arc::ptr_eq(&table.get(&b.jid).unwrap(), &b));
        assert_eq!(table.resources("u@x").len(), 2);
        table.unbind(&b);
        table.unbind(&c);
        assert!(table.all().is_empty());
    }

    #[tokio::test]
    async fn full_queue_kicks_instead_of_blocking() {
        let a = handle("u@x/r");
        assert!(a.send(Bytes::from_static(b"1")));
        assert!(a.send(Bytes::from_static(b"2")));
        assert!(!a.send(Bytes::from_static(b"3")));
        assert_eq!(a.kicked().await, Kick::QueueOverflow);
        a.kick(Kick::Conflict);
        assert_eq!(a.kicked().await, Kick::QueueOverflow, "first reason wins");
    }
}
