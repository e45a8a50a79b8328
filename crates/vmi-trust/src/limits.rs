//! Per-key lockout and rate limits, with bounded memory and no clock of their own.
//!
//! Every method takes `now`, a monotonic time since any fixed epoch (e.g. `Instant::elapsed` of a
//! start instant), so callers decide the clock and tests drive time by hand.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Locks a key (a user, a pairing code's owner, an address) out after repeated failures.
///
/// After `threshold` consecutive failures the key is locked for `base`; each further failure (after
/// the lock ended, or racing it) locks it again for twice as long as the previous lock, capped at
/// `max`. A success clears the key. A key that stays quiet for `max` after its last failure and its
/// last lock starts over.
///
/// At most `max_keys` keys are remembered: when full, forgotten keys go first, then the key whose last
/// failure is oldest. (An attacker flooding keys can thus shorten one key's memory; the bound is what
/// keeps the flood from costing memory.)
#[derive(Debug)]
pub struct Lockout<K> {
    threshold: u32,
    base: Duration,
    max: Duration,
    max_keys: usize,
    keys: HashMap<K, Strikes>,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last_failure: Duration,
    locked_until: Duration,
}

impl Strikes {
    /// Since when nothing has happened to the key: its last failure or the end of its last lock.
    fn quiet_since(&self) -> Duration {
        self.last_failure.max(self.locked_until)
    }

    /// Quiet for `max` (so certainly not locked): the key starts over. Measured from the lock's end
    /// too, or a key at the cap would be forgiven the moment its longest lock ends.
    fn forgotten(&self, now: Duration, max: Duration) -> bool {
        now.saturating_sub(self.quiet_since()) >= max
    }
}

impl<K: Eq + Hash + Clone> Lockout<K> {
    /// A lockout after `threshold` (at least 1) consecutive failures, first for `base`, doubling up to
    /// `max` (at least `base`), remembering at most `max_keys` (at least 1) keys.
    pub fn new(threshold: u32, base: Duration, max: Duration, max_keys: usize) -> Self {
        Self { threshold: threshold.max(1), base, max: max.max(base), max_keys: max_keys.max(1), keys: HashMap::new() }
    }

    /// `Ok` when `key` may try now, `Err(retry_after)` while it is locked out.
    pub fn check(&mut self, key: &K, now: Duration) -> Result<(), Duration> {
        let Some(strikes) = self.keys.get(key) else { return Ok(()) };
        if now < strikes.locked_until {
            return Err(strikes.locked_until - now);
        }
        if strikes.forgotten(now, self.max) {
            self.keys.remove(key);
        }
        Ok(())
    }

    /// Records a failed attempt by `key` at `now`, locking it when it reaches the threshold.
    pub fn failure(&mut self, key: &K, now: Duration) {
        if !self.keys.contains_key(key) && self.keys.len() >= self.max_keys {
            self.make_room(now);
        }
        let fresh = Strikes { failures: 0, last_failure: now, locked_until: Duration::ZERO };
        let max = self.max;
        let strikes = self.keys.entry(key.clone()).or_insert(fresh);
        if strikes.forgotten(now, max) {
            *strikes = fresh;
        }
        strikes.failures = strikes.failures.saturating_add(1);
        strikes.last_failure = now;
        if strikes.failures >= self.threshold {
            let doublings = (strikes.failures - self.threshold).min(31);
            let lock = self.base.saturating_mul(1u32 << doublings).min(self.max);
            strikes.locked_until = now + lock;
        }
    }

    /// Records a success by `key`: its failures are forgotten.
    pub fn success(&mut self, key: &K) {
        self.keys.remove(key);
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn make_room(&mut self, now: Duration) {
        let max = self.max;
        self.keys.retain(|_, s| !s.forgotten(now, max));
        if self.keys.len() >= self.max_keys {
            let oldest = self.keys.iter().min_by_key(|(_, s)| s.quiet_since()).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.keys.remove(&oldest);
            }
        }
    }
}

/// A token bucket per key: on average one attempt per `interval`, up to `burst` at once.
///
/// Kept as the time the bucket will be full again (GCRA), so a key whose bucket is full holds no
/// information and is the first to go when `max_keys` keys are remembered; then the fullest goes.
#[derive(Debug)]
pub struct RateLimit<K> {
    interval: Duration,
    burst: u32,
    max_keys: usize,
    /// Per key: when its bucket is full again ("theoretical arrival time").
    full_at: HashMap<K, Duration>,
}

impl<K: Eq + Hash + Clone> RateLimit<K> {
    /// One attempt per `interval` on average, `burst` (at least 1) at once, at most `max_keys` (at
    /// least 1) keys remembered.
    pub fn new(interval: Duration, burst: u32, max_keys: usize) -> Self {
        Self { interval, burst: burst.max(1), max_keys: max_keys.max(1), full_at: HashMap::new() }
    }

    /// Takes a token for `key`: `Ok` if one was left, `Err(retry_after)` if not.
    pub fn allow(&mut self, key: &K, now: Duration) -> Result<(), Duration> {
        let tolerance = self.interval.saturating_mul(self.burst - 1);
        let full_at = self.full_at.get(key).copied().unwrap_or(now).max(now);
        let debt = full_at - now;
        if debt > tolerance {
            return Err(debt - tolerance);
        }
        if !self.full_at.contains_key(key) && self.full_at.len() >= self.max_keys {
            self.make_room(now);
        }
        self.full_at.insert(key.clone(), full_at + self.interval);
        Ok(())
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }

    fn make_room(&mut self, now: Duration) {
        self.full_at.retain(|_, full_at| *full_at > now);
        if self.full_at.len() >= self.max_keys {
            let fullest = self.full_at.iter().min_by_key(|(_, full_at)| **full_at).map(|(k, _)| k.clone());
            if let Some(fullest) = fullest {
                self.full_at.remove(&fullest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn lockout() -> Lockout<&'static str> {
        Lockout::new(3, 10 * S, 80 * S, 100)
    }

    #[test]
    fn locked_out_after_threshold_until_the_lock_ends() {
        let mut l = lockout();
        let t = 100 * S;
        l.failure(&"u", t);
        l.failure(&"u", t);
        assert_eq!(l.check(&"u", t), Ok(()), "two failures are under the threshold");
        l.failure(&"u", t);
        assert_eq!(l.check(&"u", t), Err(10 * S));
        assert_eq!(l.check(&"u", t + 10 * S - MS), Err(MS), "still locked right before the end");
        assert_eq!(l.check(&"u", t + 10 * S), Ok(()), "unlocked when the lock ends");
        assert_eq!(l.check(&"other", t), Ok(()), "other keys are not affected");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut l = lockout();
        let mut t = Duration::ZERO;
        for _ in 0..3 {
            l.failure(&"u", t);
        }
        let mut expected = 10 * S;
        for _ in 0..6 {
            assert_eq!(l.check(&"u", t), Err(expected));
            t += expected; // wait the lock out, then fail once more
            assert_eq!(l.check(&"u", t), Ok(()));
            l.failure(&"u", t);
            expected = (expected * 2).min(80 * S);
        }
        assert_eq!(l.check(&"u", t), Err(80 * S), "capped at max");
    }

    #[test]
    fn success_clears_and_quiet_keys_start_over() {
        let mut l = lockout();
        for _ in 0..3 {
            l.failure(&"u", Duration::ZERO);
        }
        assert!(l.check(&"u", S).is_err());
        l.success(&"u");
        assert_eq!(l.check(&"u", S), Ok(()));
        l.failure(&"u", S);
        l.failure(&"u", S);
        assert_eq!(l.check(&"u", S), Ok(()), "the count restarted after the success");

        // Two failures, then quiet for `max`: the next failure is the first again.
        l.failure(&"v", Duration::ZERO);
        l.failure(&"v", Duration::ZERO);
        l.failure(&"v", 80 * S);
        assert_eq!(l.check(&"v", 80 * S), Ok(()));
    }

    #[test]
    fn lockout_memory_stays_bounded() {
        let mut l: Lockout<u32> = Lockout::new(1, S, 10 * S, 4);
        for key in 0..1000u32 {
            l.failure(&key, Duration::from_millis(u64::from(key)));
            assert!(l.len() <= 4);
        }
        // The newest keys are the ones remembered, and still locked.
        assert!(l.check(&999, Duration::from_millis(999)).is_err());
        assert_eq!(l.check(&0, Duration::from_millis(999)), Ok(()), "the oldest key was evicted");
    }

    #[test]
    fn rate_limit_allows_a_burst_then_one_per_interval() {
        let mut r = RateLimit::new(S, 3, 100);
        let t = 50 * S;
        for _ in 0..3 {
            assert_eq!(r.allow(&"k", t), Ok(()));
        }
        assert_eq!(r.allow(&"k", t), Err(S));
        assert_eq!(r.allow(&"k", t + S - MS), Err(MS));
        assert_eq!(r.allow(&"k", t + S), Ok(()));
        assert_eq!(r.allow(&"k", t + S), Err(S));
        assert_eq!(r.allow(&"other", t), Ok(()), "keys are independent");
        // After a long pause the burst is back, and no more.
        let later = t + 100 * S;
        for _ in 0..3 {
            assert_eq!(r.allow(&"k", later), Ok(()));
        }
        assert!(r.allow(&"k", later).is_err());
    }

    #[test]
    fn rate_limit_memory_stays_bounded() {
        let mut r: RateLimit<u32> = RateLimit::new(S, 1, 8);
        for key in 0..1000u32 {
            assert_eq!(r.allow(&key, Duration::ZERO), Ok(()));
            assert!(r.len() <= 8);
        }
        assert!(r.allow(&999, Duration::ZERO).is_err(), "recent keys are still limited");
    }
}
