//! Opaque handles of the C ABI: ids that are never reused, never addresses.
//!
//! Core types: [`Registry`] (one per kind of handle: managers, plans, layer
//! loads), [`Held`] (a call's hold on a live object; the object cannot be freed
//! while a call holds it).
//!
//! ```text
//!   handle = salt << 40 | n      salt: 20 bits from this copy of the library's
//!                                address (a copy loaded twice has other ids)
//!                                n: a counter, never reused in the process
//! ```
//!
//! Workflow:
//! 1. `_create` inserts the object and hands out a fresh id as the pointer value.
//! 2. Every call looks its handle up ([`Registry::get`]): an unknown, stale or
//!    destroyed handle is `TIERKV_STATUS_INVALID_ARGUMENT`, never someone else's
//!    object; the [`Held`] counts the call in flight.
//! 3. `_destroy` removes the id (new calls fail at once), waits until the calls in
//!    flight on it have returned, then drops the object. A second destroy finds
//!    nothing.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

struct Entry<T> {
    value: Arc<T>,
    calls: Arc<AtomicUsize>,
}

/// Live objects of one kind, by handle id.
pub(crate) struct Registry<T> {
    map: RwLock<Option<HashMap<u64, Entry<T>>>>,
}

/// A call's hold on a live object.
pub(crate) struct Held<T> {
    value: Arc<T>,
    calls: Arc<AtomicUsize>,
}

impl<T> Deref for Held<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        self.calls.fetch_sub(1, Ordering::Release);
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let salt = ((&NEXT as *const AtomicU64 as u64) >> 12) & 0xF_FFFF;
    (salt.max(1) << 40) | NEXT.fetch_add(1, Ordering::Relaxed)
}

impl<T> Registry<T> {
    /// An empty registry (usable in a `static`).
    pub(crate) const fn new() -> Self {
        Self { map: RwLock::new(None) }
    }

    /// Registers `value`; returns its new handle id (never 0, never reused).
    pub(crate) fn insert(&self, value: Arc<T>) -> u64 {
        let id = next_id();
        let entry = Entry {
            value,
            calls: Arc::new(AtomicUsize::new(0)),
        };
        self.map.write().get_or_insert_with(HashMap::new).insert(id, entry);
        id
    }

    /// The live object `id`, held for the duration of one call.
    pub(crate) fn get(&self, id: u64) -> Option<Held<T>> {
        let map = self.map.read();
        let e = map.as_ref()?.get(&id)?;
        e.calls.fetch_add(1, Ordering::Acquire);
        Some(Held {
            value: Arc::clone(&e.value),
            calls: Arc::clone(&e.calls),
        })
    }

    /// Unregisters `id` and waits until no call holds it; returns the object (the
    /// caller drops it). `None` for an unknown or already destroyed id.
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<T>> {
        let e = self.map.write().as_mut()?.remove(&id)?;
        while e.calls.load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
        Some(e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_a_stale_id_finds_nothing() {
        let r = Registry::new();
        let a = r.insert(Arc::new(1u32));
        assert!(r.remove(a).is_some());
        let b = r.insert(Arc::new(2u32));
        assert_ne!(a, b);
        assert!(r.get(a).is_none(), "a destroyed handle is never someone else's");
        assert!(r.remove(a).is_none(), "a second destroy finds nothing");
        assert_eq!(*r.get(b).unwrap(), 2);
    }

    #[test]
    fn remove_waits_for_calls_in_flight() {
        let r = Arc::new(Registry::new());
        let id = r.insert(Arc::new(AtomicUsize::new(0)));
        let held = r.get(id).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || {
            let v = r2.remove(id).unwrap();
            tx.send(v.load(Ordering::SeqCst)).unwrap();
        });
        // The destroy waits while the call is in flight, and new calls fail.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert!(r.get(id).is_none());
        held.store(7, Ordering::SeqCst);
        drop(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        t.join().unwrap();
    }
}
