//! Device revocations as a feed, for caches of device tokens (the control service's `DeviceCache`): a store
//! tells every follower when a device stops authenticating ([`Store::follow_revocations`](super::Store)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Told `Some(device id)` when that device is revoked, `None` when some device may have been (a watch restarted).
pub type RevocationSink = Arc<dyn Fn(Option<u64>) + Send + Sync>;

/// How recently a shared store's watch must have heard from etcd for its revocations to count as current.
pub(crate) const CURRENT_WITHIN: Duration = Duration::from_secs(2);

/// The followers of one store's revocations, and (for a shared store) how recently its watch heard from etcd.
pub(crate) struct Revocations {
    sinks: Mutex<Vec<RevocationSink>>,
    start: Instant,
    /// Milliseconds after `start` up to which the watch has delivered every change, plus one; 0: not watching.
    heard: AtomicU64,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("current", &self.current()).finish_non_exhaustive()
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations { sinks: Mutex::default(), start: Instant::now(), heard: AtomicU64::new(0) }
    }
}

impl Revocations {
    /// Tells `sink` of every revocation from now on.
    pub(crate) fn follow(&self, sink: RevocationSink) {
        self.sinks.lock().unwrap_or_else(PoisonError::into_inner).push(sink);
    }

    /// Device `device` was revoked (`None`: some may have been).
    pub(crate) fn revoked(&self, device: Option<u64>) {
        let sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for sink in sinks {
            sink(device);
        }
    }

    /// The watch has delivered every change committed up to `at`.
    pub(crate) fn heard_as_of(&self, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX - 1);
        self.heard.fetch_max(ms + 1, Ordering::SeqCst);
    }

    /// The watch broke: nothing is current until it is heard again.
    pub(crate) fn lost(&self) {
        self.heard.store(0, Ordering::SeqCst);
    }

    /// Whether the watch has delivered every change committed up to [`CURRENT_WITHIN`] ago.
    pub(crate) fn current(&self) -> bool {
        match self.heard.load(Ordering::SeqCst) {
            0 => false,
            heard => {
                let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
                now.saturating_sub(heard - 1) < CURRENT_WITHIN.as_millis() as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_follower_hears_of_each_revocation() {
        let revocations = Revocations::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..2 {
            let heard = heard.clone();
            revocations.follow(Arc::new(move |d| heard.lock().unwrap().push(d)));
        }
        revocations.revoked(Some(7));
        revocations.revoked(None);
        assert_eq!(*heard.lock().unwrap(), [Some(7), Some(7), None, None]);
    }

    #[test]
    fn revocations_are_current_only_while_the_watch_has_delivered_up_to_lately() {
        // Made a while ago, so that a proof can be older than CURRENT_WITHIN.
        let revocations = Revocations { start: Instant::now() - Duration::from_secs(10), ..Revocations::default() };
        assert!(!revocations.current(), "never heard");
        let now = Instant::now();
        // Proof of a moment long past (a member that lagged behind and caught up only to then): not current.
        revocations.heard_as_of(now - CURRENT_WITHIN - Duration::from_millis(500));
        assert!(!revocations.current());
        revocations.heard_as_of(now);
        assert!(revocations.current());
        // A proof older than the one held does not take it back.
        revocations.heard_as_of(now - CURRENT_WITHIN - Duration::from_millis(500));
        assert!(revocations.current());
        revocations.lost();
        assert!(!revocations.current());
    }
}
