//! A bounded in-memory map for read-through caches, safe against stale fills.
//!
//! A reader that misses loads from storage without holding the map's lock, and a write may
//! land meanwhile. [`CacheMap::lookup`] hands the reader a [`Miss`] ticket; [`CacheMap::fill`]
//! keeps the loaded value only if no write happened since, so a stale value never outlives
//! the write that replaced it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

pub struct CacheMap<K, V> {
    inner: RwLock<Inner<K, V>>,
    capacity: usize,
}

struct Inner<K, V> {
    entries: HashMap<K, V>,
    /// Bumped by every write.
    epoch: u64,
}

/// Proof of a miss, to be handed back with the value loaded after it.
#[must_use]
pub struct Miss(u64);

impl<K: Hash + Eq, V: Clone> CacheMap<K, V> {
    /// A map holding at most `capacity` entries (it starts over when full: crude, bounded).
    pub fn new(capacity: usize) -> Self {
        CacheMap {
            inner: RwLock::new(Inner {
                entries: HashMap::new(),
                epoch: 0,
            }),
            capacity,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<K, V>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<K, V>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, or a ticket for filling it after loading.
    pub fn lookup<Q>(&self, key: &Q) -> Result<V, Miss>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = self.read();
        inner.entries.get(key).cloned().ok_or(Miss(inner.epoch))
    }

    /// Caches a value loaded after `miss`, unless a write happened since.
    pub fn fill(&self, key: K, value: V, miss: Miss) {
        let mut inner = self.write();
        if inner.epoch == miss.0 {
            if inner.entries.len() >= self.capacity {
                inner.entries.clear();
            }
            inner.entries.insert(key, value);
        }
    }

    /// Records a write: the new value replaces whatever was cached.
    pub fn store(&self, key: K, value: V) {
        let mut inner = self.write();
        inner.epoch += 1;
        if inner.entries.len() >= self.capacity {
            inner.entries.clear();
        }
        inner.entries.insert(key, value);
    }

    /// Records a write whose result is not at hand: the next read loads it.
    pub fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.write();
        inner.epoch += 1;
        inner.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_after_a_write_is_dropped() {
        let cache: CacheMap<&str, u32> = CacheMap::new(10);
        let miss = cache.lookup("a").unwrap_err();
        cache.forget("a");
        cache.fill("a", 1, miss);
        assert!(cache.lookup("a").is_err());
        let miss = cache.lookup("a").unwrap_err();
        cache.fill("a", 2, miss);
        assert_eq!(cache.lookup("a").ok(), Some(2));
        cache.store("a", 3);
        assert_eq!(cache.lookup("a").ok(), Some(3));
    }

    #[test]
    fn it_stays_bounded() {
        let cache: CacheMap<u32, u32> = CacheMap::new(3);
        for i in 0..10 {
            cache.store(i, i);
        }
        assert!(cache.read().entries.len() <= 3);
        assert_eq!(cache.lookup(&9).ok(), Some(9));
    }
}
