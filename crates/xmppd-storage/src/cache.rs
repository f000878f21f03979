//! A bounded in-memory map for read-through caches, safe against stale fills.
//!
//! Eviction is quick_cache's (S3-FIFO: bounded, keeps what is used). On top of it sits the
//! one thing it does not give: a reader that misses loads from storage without holding any
//! lock, and a write may land meanwhile. [`CacheMap::lookup`] hands the reader a [`Miss`]
//! ticket; [`CacheMap::fill`] keeps the loaded value only if no write touched the key's
//! stripe since, so a stale value never outlives the write that replaced it. Writes bump
//! the epoch of one stripe of 64, so a write cancels only the fills of keys that share it.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

use quick_cache::sync::Cache;

/// Stripes of write epochs.
const STRIPES: usize = 64;

pub struct CacheMap<K, V> {
    entries: Cache<K, V>,
    /// Per stripe: bumped by every write; held while a fill or write touches `entries`.
    epochs: Box<[Mutex<u64>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// Proof of a miss, to be handed back with the value loaded after it.
#[must_use]
pub struct Miss {
    epoch: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> CacheMap<K, V> {
    /// A map holding about `capacity` entries at most.
    pub fn new(capacity: usize) -> Self {
        CacheMap {
            entries: Cache::new(capacity.max(1)),
            epochs: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    /// The write epoch of the key's stripe, locked.
    fn stripe<Q: Hash + ?Sized>(&self, key: &Q) -> std::sync::MutexGuard<'_, u64> {
        let stripe = (self.hasher.hash_one(key) as usize) % STRIPES;
        self.epochs[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, or a ticket for filling it after loading.
    pub fn lookup<Q>(&self, key: &Q) -> Result<V, Miss>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(found) = self.entries.get(key) {
            return Ok(found);
        }
        let epoch = self.stripe(key);
        // Under the stripe's lock: a write that lands after this bumps the epoch read here.
        match self.entries.get(key) {
            Some(found) => Ok(found),
            None => Err(Miss { epoch: *epoch }),
        }
    }

    /// Caches a value loaded after `miss`, unless a write to the key's stripe happened since.
    pub fn fill(&self, key: K, value: V, miss: Miss) {
        let epoch = self.stripe(key.borrow());
        if *epoch == miss.epoch {
            self.entries.insert(key, value);
        }
    }

    /// Records a write: the new value replaces whatever was cached.
    pub fn store(&self, key: K, value: V) {
        let mut epoch = self.stripe(key.borrow());
        *epoch += 1;
        self.entries.insert(key, value);
    }

    /// Records a write whose result is not at hand: the next read loads it.
    pub fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut epoch = self.stripe(key);
        *epoch += 1;
        self.entries.remove(key);
    }

    /// Records a write whose result follows from the cached value: `f` gets that value (if
    /// cached) and gives the new one, or `None` for the next read to load it. Writes to the
    /// key's stripe wait meanwhile, so two writers' changes do not cross.
    pub fn update(&self, key: K, f: impl FnOnce(Option<V>) -> Option<V>) {
        let mut epoch = self.stripe(&key);
        *epoch += 1;
        match f(self.entries.get(&key)) {
            Some(value) => self.entries.insert(key, value),
            None => {
                self.entries.remove(&key);
            }
        }
    }

    /// Records a write that may touch any key: every read loads afresh.
    pub fn forget_all(&self) {
        // Every stripe held until the entries are gone, as `forget` holds one.
        let mut stripes: Vec<_> = self
            .epochs
            .iter()
            .map(|e| e.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        for epoch in &mut stripes {
            **epoch += 1;
        }
        self.entries.clear();
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
    fn a_write_to_another_stripe_does_not_cancel_a_fill() {
        let cache: CacheMap<u32, u32> = CacheMap::new(100);
        let miss = cache.lookup(&1).unwrap_err();
        // Some key in another stripe than 1.
        let other = (2..1000)
            .find(|k| {
                cache.hasher.hash_one(k) as usize % STRIPES
                    != cache.hasher.hash_one(1u32) as usize % STRIPES
            })
            .unwrap();
        cache.store(other, 0);
        cache.fill(1, 10, miss);
        assert_eq!(cache.lookup(&1).ok(), Some(10));
    }

    #[test]
    fn it_stays_bounded_and_keeps_recent_entries() {
        let cache: CacheMap<u32, u32> = CacheMap::new(100);
        for i in 0..10_000 {
            cache.store(i, i);
        }
        assert!(cache.entries.len() <= 200, "{}", cache.entries.len());
        assert_eq!(cache.lookup(&9_999).ok(), Some(9_999));
    }
}
