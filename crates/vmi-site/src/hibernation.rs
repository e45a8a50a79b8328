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
    wakes: std::sync::Mutex<TimerWakes>,
}

/// How long hibernated phones' timers waited for their guest: the last [`WAKE_SAMPLES`] and a count.
#[derive(Debug, Default)]
struct TimerWakes {
    recent: std::collections::VecDeque<Duration>,
    count: u64,
}

/// Timer wakes remembered for their percentiles.
const WAKE_SAMPLES: usize = 10_000;

/// What [`Residency::timer_wakes`] says: hibernated phones woken by their own timers, and how long from the timer's
/// due time to the guest having run it (the wake included), over the last [`WAKE_SAMPLES`].
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct TimerWakeFigures {
    /// Wakes since the site started.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
}

impl Residency {
    /// A count at zero under `policy`.
    pub fn new(policy: HibernationPolicy) -> Residency {
        Residency { policy, resident: AtomicUsize::new(0), wakes: Default::default() }
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

    /// A hibernated phone's timer, due `waited` ago, has run in its woken guest.
    pub(crate) fn timer_woke(&self, waited: Duration) {
        let mut wakes = self.wakes.lock().unwrap_or_else(|p| p.into_inner());
        if wakes.recent.len() == WAKE_SAMPLES {
            wakes.recent.pop_front();
        }
        wakes.recent.push_back(waited);
        wakes.count += 1;
    }

    /// Hibernated phones woken by their timers, and how long each timer waited for its guest.
    pub fn timer_wakes(&self) -> TimerWakeFigures {
        self.timer_wakes_since(0)
    }

    /// [`Residency::timer_wakes`] with the percentiles over the wakes after the first `count` only (those still
    /// remembered): a benchmark's figures for the load it watched.
    pub fn timer_wakes_since(&self, count: u64) -> TimerWakeFigures {
        let wakes = self.wakes.lock().unwrap_or_else(|p| p.into_inner());
        let newer = usize::try_from(wakes.count.saturating_sub(count)).unwrap_or(usize::MAX).min(wakes.recent.len());
        let skip = wakes.recent.len() - newer;
        let mut ms: Vec<f64> = wakes.recent.iter().skip(skip).map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        TimerWakeFigures { count: wakes.count, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
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

    #[test]
    fn wake_figures_can_leave_out_the_wakes_before_a_count() {
        let r = Residency::new(HibernationPolicy::default());
        for ms in [100, 100, 100, 2, 4] {
            r.timer_woke(Duration::from_millis(ms));
        }
        assert_eq!(r.timer_wakes().p50_ms, 100.0);
        let last_two = r.timer_wakes_since(3);
        assert_eq!((last_two.count, last_two.max_ms), (5, 4.0));
        assert_eq!(last_two.p50_ms, 4.0, "the upper of two");
        assert_eq!(r.timer_wakes_since(5).max_ms, 0.0, "none since");
    }
}
