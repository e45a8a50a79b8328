//! [`DeviceCache`]: who the device tokens that authenticated lately belong to, so that a terminal's frequent
//! requests (a report every few seconds from each of a million terminals) do not each cost a store lookup.
//!
//! The store says when a device is revoked ([`Store::follow_revocations`](crate::Store::follow_revocations)):
//! that device's entries go at once, and a lookup that was under way then may not put what it found (each
//! revocation moves the cache to a new generation, and an entry goes in only in the generation its lookup
//! started in). A store that may have missed revocations says so, and every entry goes. Entries also expire
//! after [`MAX_AGE`], and the cache forgets everything when it holds [`MAX_ENTRIES`], so its memory is bounded
//! (about 250 MB at most).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vmi_control_api::auth::Principal;

/// The most entries held.
pub const MAX_ENTRIES: usize = 1_500_000;
/// How long an entry is trusted at most, revocations aside.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// One device token's owner, as a lookup found it.
struct Cached {
    user: String,
    device_id: u64,
    at: Instant,
}

#[derive(Default)]
struct Entries {
    by_hash: HashMap<[u8; 32], Cached>,
    /// Moves on at every revocation.
    generation: u64,
}

/// Device tokens (by their hash) and whose they are.
#[derive(Default)]
pub struct DeviceCache {
    entries: Mutex<Entries>,
}

impl DeviceCache {
    /// An empty cache.
    pub fn new() -> DeviceCache {
        DeviceCache::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The device the token hashed to `hash` authenticates as, if a lookup found it within [`MAX_AGE`] and the
    /// device was not revoked since; else the generation now, for the lookup about to be made to give back to
    /// [`DeviceCache::put`].
    pub fn get(&self, hash: &[u8; 32]) -> Result<Principal, u64> {
        let entries = self.lock();
        match entries.by_hash.get(hash).filter(|c| c.at.elapsed() < MAX_AGE) {
            Some(cached) => Ok(Principal::Device { user: cached.user.clone(), device_id: cached.device_id }),
            None => Err(entries.generation),
        }
    }

    /// Keeps what a lookup that started in `generation` found for the token hashed to `hash`, unless a device
    /// was revoked since it started; only devices are kept.
    pub fn put(&self, hash: [u8; 32], principal: &Principal, generation: u64) {
        let Principal::Device { user, device_id } = principal else { return };
        let mut entries = self.lock();
        if entries.generation != generation {
            return;
        }
        if entries.by_hash.len() >= MAX_ENTRIES {
            // Rare (a million and a half devices active within ten minutes); starting again costs a lookup each.
            entries.by_hash = HashMap::new();
        }
        entries.by_hash.insert(hash, Cached { user: user.clone(), device_id: *device_id, at: Instant::now() });
    }

    /// Device `device` was revoked (`None`: some device may have been, unknown which).
    pub fn revoked(&self, device: Option<u64>) {
        let mut entries = self.lock();
        entries.generation += 1;
        match device {
            Some(id) => entries.by_hash.retain(|_, c| c.device_id != id),
            None => entries.by_hash = HashMap::new(),
        }
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_hash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user: &str, device_id: u64) -> Principal {
        Principal::Device { user: user.to_owned(), device_id }
    }

    #[test]
    fn a_revocation_removes_that_device_only() {
        let cache = DeviceCache::new();
        cache.put([1; 32], &device("alice", 1), cache.get(&[1; 32]).unwrap_err());
        cache.put([2; 32], &device("bob", 2), cache.get(&[2; 32]).unwrap_err());
        assert_eq!(cache.get(&[1; 32]), Ok(device("alice", 1)));
        cache.revoked(Some(1));
        assert!(cache.get(&[1; 32]).is_err(), "the revoked device");
        assert_eq!(cache.get(&[2; 32]), Ok(device("bob", 2)), "another device stays");
        cache.revoked(None);
        assert!(cache.get(&[2; 32]).is_err(), "unknown which: everything goes");
    }

    #[test]
    fn a_lookup_under_way_during_a_revocation_puts_nothing() {
        let cache = DeviceCache::new();
        let started = cache.get(&[1; 32]).unwrap_err();
        // The lookup found the device valid; it was revoked before the lookup's answer came back.
        cache.revoked(Some(1));
        cache.put([1; 32], &device("alice", 1), started);
        assert!(cache.get(&[1; 32]).is_err());
        cache.put([1; 32], &device("alice", 1), cache.get(&[1; 32]).unwrap_err());
        assert_eq!(cache.get(&[1; 32]), Ok(device("alice", 1)), "a lookup after it is kept");
    }

    #[test]
    fn only_devices_are_kept() {
        let cache = DeviceCache::new();
        cache.put([1; 32], &Principal::Operator { name: "op".into() }, 0);
        cache.put([2; 32], &Principal::Site { id: "site-a".into() }, 0);
        assert_eq!(cache.len(), 0);
    }
}
