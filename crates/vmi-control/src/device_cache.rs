//! [`DeviceCache`]: who the device tokens that authenticated lately belong to, so that a terminal's frequent
//! requests (a report every few seconds from each of a million terminals) do not each cost a store lookup.
//!
//! An entry holds only while the store's revocation count ([`Store::device_revocations`](crate::Store)) is the
//! one read *before* the lookup that made it: a revocation made or heard of since voids every entry, and a store
//! that cannot tell (its watch down) answers `None`, which bypasses the cache. Entries also expire after
//! [`MAX_AGE`], and the cache forgets everything when it holds [`MAX_ENTRIES`], so its memory is bounded.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmi_control_api::auth::Principal;

/// The most entries held (about 100 bytes each).
pub const MAX_ENTRIES: usize = 1 << 21;
/// How long an entry is trusted at most, revocations aside.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// One device token's owner, as a lookup found it.
struct Cached {
    user: String,
    device_id: u64,
    /// The store's revocation count read before that lookup.
    revocations: u64,
    at: Instant,
}

/// Device tokens (by their hash) and whose they are.
#[derive(Default)]
pub struct DeviceCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

impl DeviceCache {
    /// An empty cache.
    pub fn new() -> DeviceCache {
        DeviceCache::default()
    }

    /// The device the token hashed to `hash` authenticates as, if a lookup found it since the store's revocation
    /// count became `revocations` and within [`MAX_AGE`].
    pub fn get(&self, hash: &[u8; 32], revocations: u64) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = entries.get(hash).filter(|c| c.revocations == revocations && c.at.elapsed() < MAX_AGE)?;
        Some(Principal::Device { user: cached.user.clone(), device_id: cached.device_id })
    }

    /// Keeps what a lookup found for the token hashed to `hash`, `revocations` being the count read before the
    /// lookup; only devices are kept.
    pub fn put(&self, hash: [u8; 32], principal: &Principal, revocations: u64) {
        let Principal::Device { user, device_id } = principal else { return };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            // Rare (every device of two million active at once); starting again costs one lookup each.
            entries.clear();
        }
        entries.insert(hash, Cached { user: user.clone(), device_id: *device_id, revocations, at: Instant::now() });
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user: &str) -> Principal {
        Principal::Device { user: user.to_owned(), device_id: 7 }
    }

    #[test]
    fn an_entry_holds_only_while_no_device_was_revoked_since_its_lookup() {
        let cache = DeviceCache::new();
        cache.put([1; 32], &device("alice"), 3);
        assert_eq!(cache.get(&[1; 32], 3), Some(device("alice")));
        assert_eq!(cache.get(&[2; 32], 3), None, "another token");
        assert_eq!(cache.get(&[1; 32], 4), None, "a revocation since voids it");
    }

    #[test]
    fn only_devices_are_kept() {
        let cache = DeviceCache::new();
        cache.put([1; 32], &Principal::Operator { name: "op".into() }, 0);
        cache.put([2; 32], &Principal::Site { id: "site-a".into() }, 0);
        assert_eq!(cache.len(), 0);
    }
}
