//! Host time, and the virtual clock each phone reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where phones get time from. The system clock in production; a manual clock in tests
/// and scripted runs, so that runs are reproducible frame for frame.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch.
    fn wall_ns(&self) -> u64;
    /// A monotonic reading in nanoseconds (arbitrary origin).
    fn monotonic_ns(&self) -> u64;
}

/// The host's real clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock, shareable between engines.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock { origin: Instant::now() })
    }
}

impl Clock for SystemClock {
    fn wall_ns(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    }
    fn monotonic_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// A clock that moves only when told to: wall and monotonic time advance together.
#[derive(Debug)]
pub struct ManualClock {
    wall_start_ns: u64,
    elapsed_ns: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall time starts at `wall_start_ns`.
    pub fn new(wall_start_ns: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock { wall_start_ns, elapsed_ns: AtomicU64::new(0) })
    }

    /// Moves time forward.
    pub fn advance(&self, ns: u64) {
        self.elapsed_ns.fetch_add(ns, Ordering::SeqCst);
    }

    /// Nanoseconds this clock has advanced in all.
    pub fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn wall_ns(&self) -> u64 {
        self.wall_start_ns + self.elapsed_ns()
    }
    fn monotonic_ns(&self) -> u64 {
        self.elapsed_ns()
    }
}

/// A phone's monotonic clock: starts at 0 when the phone is created and keeps running
/// while the phone sits in a snapshot (the wall time that passed is added on restore),
/// so a stopwatch goes on and timers come due as they would have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualClock {
    /// Virtual time at `anchor_host_ns`.
    base_ns: u64,
    /// Host monotonic reading when `base_ns` was true.
    anchor_host_ns: u64,
}

impl VirtualClock {
    /// A clock reading 0 now.
    pub fn start(host: &dyn Clock) -> VirtualClock {
        VirtualClock { base_ns: 0, anchor_host_ns: host.monotonic_ns() }
    }

    /// The clock of a phone saved at virtual time `saved_ns` and wall time
    /// `saved_wall_ns`: it reads `saved_ns` plus the wall time since then.
    pub fn resume(host: &dyn Clock, saved_ns: u64, saved_wall_ns: u64) -> VirtualClock {
        let away = host.wall_ns().saturating_sub(saved_wall_ns);
        VirtualClock { base_ns: saved_ns.saturating_add(away), anchor_host_ns: host.monotonic_ns() }
    }

    /// Virtual time now.
    pub fn now_ns(&self, host: &dyn Clock) -> u64 {
        self.base_ns + host.monotonic_ns().saturating_sub(self.anchor_host_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_runs_across_a_snapshot() {
        let host = ManualClock::new(1_000);
        let clock = VirtualClock::start(host.as_ref());
        host.advance(50);
        assert_eq!(clock.now_ns(host.as_ref()), 50);
        let (saved, wall) = (clock.now_ns(host.as_ref()), host.wall_ns());
        host.advance(30); // the phone sat in a snapshot for 30 ns
        let resumed = VirtualClock::resume(host.as_ref(), saved, wall);
        assert_eq!(resumed.now_ns(host.as_ref()), 80);
        host.advance(5);
        assert_eq!(resumed.now_ns(host.as_ref()), 85);
    }

    #[test]
    fn wall_clock_going_back_never_moves_virtual_time_back() {
        let host = ManualClock::new(1_000);
        let resumed = VirtualClock::resume(host.as_ref(), 500, 9_999_999);
        assert_eq!(resumed.now_ns(host.as_ref()), 500);
    }
}
