//! Typed per-session state that modules attach to a session without growing
//! [`SessionHandle`](crate::router::SessionHandle): carbons, CSI, privacy and the like each
//! ask the registry for a key and keep their state behind it.
//!
//! An idle session that no module touched holds an empty vector (no allocation).

use std::any::Any;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

/// A key for one module's state of type `T` in every session. Handed out by
/// [`Registry::session_ext`](super::Registry::session_ext); copyable and cheap to use.
pub struct ExtKey<T> {
    index: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ExtKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ExtKey<T> {}

impl<T> ExtKey<T> {
    pub(super) fn new(index: usize) -> Self {
        ExtKey {
            index,
            _type: PhantomData,
        }
    }
}

type Slot = Option<Arc<dyn Any + Send + Sync>>;

/// The extension slots of one session.
#[derive(Default)]
pub struct Extensions {
    slots: RwLock<Vec<Slot>>,
}

impl Extensions {
    /// The module's state, if it attached any.
    pub fn get<T: Any + Send + Sync>(&self, key: ExtKey<T>) -> Option<Arc<T>> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let slot = slots.get(key.index)?.clone()?;
        slot.downcast::<T>().ok()
    }

    /// The module's state, created with `T::default()` on first use.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&self, key: ExtKey<T>) -> Arc<T> {
        if let Some(found) = self.get(key) {
            return found;
        }
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if slots.len() <= key.index {
            slots.resize(key.index + 1, None);
        }
        let slot = &mut slots[key.index];
        match slot.clone().and_then(|s| s.downcast::<T>().ok()) {
            Some(found) => found,
            None => {
                let created = Arc::new(T::default());
                *slot = Some(created.clone());
                created
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn each_key_has_its_own_typed_slot() {
        let ext = Extensions::default();
        let a: ExtKey<AtomicU32> = ExtKey::new(0);
        let b: ExtKey<String> = ExtKey::new(3);
        assert!(ext.get(a).is_none());
        ext.get_or_default(a).store(7, Ordering::Relaxed);
        assert_eq!(ext.get(a).unwrap().load(Ordering::Relaxed), 7);
        assert!(ext.get(b).is_none());
        assert_eq!(*ext.get_or_default(b), "");
        assert_eq!(ext.get_or_default(a).load(Ordering::Relaxed), 7);
    }
}
