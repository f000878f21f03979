//! Per-account locks for read-modify-write of stored state.

use std::hash::BuildHasher;

use xmppd_core::BareJid;

/// Serialises read-modify-write of each account's stored state (roster, privacy lists).
///
/// Two subscription stanzas can cross (both sides subscribing or approving at once), a roster
/// set can meet an inbound subscription, two resources can edit privacy lists at once: each
/// loads, changes and stores, and without this the later store overwrites the earlier change.
///
/// A fixed set of stripes keyed by account keeps memory flat however many accounts there are.
/// A guard is held only across storage calls and pushes to the account's own sessions, never
/// while routing: routing can come back to an account (a local contact's auto-reply) and
/// would wait on itself, or on another account sharing its stripe.
pub struct AccountLocks {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

const LOCK_STRIPES: usize = 64;

impl Default for AccountLocks {
    fn default() -> Self {
        AccountLocks {
            stripes: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: Default::default(),
        }
    }
}

impl AccountLocks {
    pub async fn lock(&self, user: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(user.as_str()) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}
