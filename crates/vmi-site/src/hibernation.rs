//! When a site's phones hibernate (see `vmi_wasm_engine::hibernate`): a phone with no awake terminal, nothing done
//! for a while and no timer due soon gives back its instance and memory; whatever needs it next (a timer, a mail, a
//! terminal's Hello, an operator, a migration, a checkpoint, a checkout) wakes it, transparently, in the engine.
//!
//! The policy is the site's ([`HibernationPolicy`], `vmi site --hibernate-after`, `--max-resident`): how long a
//! phone stays resident once nothing came to it from outside (a terminal, a mail, an operator), and how many may be
//! resident before idle ones go at once (memory pressure). A phone's own timers are its background work: between
//! them it sleeps, unless the next is due within [`TIMER_SOON`].
//! [`Residency`] counts the resident phones for that, and for `GET /v1/phones` and `vmi vm list`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How a site hibernates its phones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HibernationPolicy {
    /// A phone idle this long, with no timer due within it, hibernates.
    pub idle: Duration,
    /// Above this many resident phones, an idle phone hibernates after [`PRESSURE_IDLE`] already.
    pub max_resident: Option<usize>,
}

/// How long a phone must be idle before it hibernates under memory pressure: not while a user is in the middle of
/// something.
pub const PRESSURE_IDLE: Duration = Duration::from_secs(1);

/// A phone whose next timer is due sooner than this stays resident: a wake costs a few milliseconds, not worth
/// it for a nap this short. Its own timers do not otherwise keep it resident: it sleeps between them.
pub const TIMER_SOON: Duration = Duration::from_secs(5);

impl Default for HibernationPolicy {
    /// Idle for 30 s; no cap on resident phones.
    fn default() -> Self {
        HibernationPolicy { idle: Duration::from_secs(30), max_resident: None }
    }
}

/// The site's policy and its count of resident phones.
#[derive(Debug)]
pub struct Residency {
    /// The policy.
    pub policy: HibernationPolicy,
    resident: AtomicUsize,
}

impl Residency {
    /// A count at zero under `policy`.
    pub fn new(policy: HibernationPolicy) -> Residency {
        Residency { policy, resident: AtomicUsize::new(0) }
    }

    /// Phones resident now.
    pub fn resident(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }

    /// A phone became resident (started, or woke).
    pub(crate) fn arrived(&self) {
        self.resident.fetch_add(1, Ordering::Relaxed);
    }

    /// A phone stopped being resident (hibernated, or its task ended while resident).
    pub(crate) fn left(&self) {
        // Never below zero, whatever order tasks report in.
        let _ = self.resident.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// How long a phone must be idle before it hibernates now.
    pub fn idle_needed(&self) -> Duration {
        match self.policy.max_resident {
            Some(max) if self.resident() > max => PRESSURE_IDLE.min(self.policy.idle),
            _ => self.policy.idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_shortens_the_idle_time() {
        let r = Residency::new(HibernationPolicy { idle: Duration::from_secs(30), max_resident: Some(2) });
        for _ in 0..2 {
            r.arrived();
        }
        assert_eq!(r.idle_needed(), Duration::from_secs(30));
        r.arrived();
        assert_eq!(r.idle_needed(), PRESSURE_IDLE);
        r.left();
        r.left();
        r.left();
        r.left();
        assert_eq!(r.resident(), 0, "never below zero");
    }
}
