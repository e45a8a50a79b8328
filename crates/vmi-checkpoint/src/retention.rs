//! Which checkpoints to keep as they age.

/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// A retention policy over checkpoint ages (`now - at`):
///
/// - younger than `all_for_ms`: every checkpoint is kept;
/// - younger than `hourly_for_ms`: the latest of each hour (UTC hour buckets);
/// - younger than `daily_for_ms`: the latest of each day (UTC day buckets);
/// - older: none.
///
/// The user's latest checkpoint is always kept, however old: a phone left alone for a
/// month still has its last state. Buckets are fixed in time, so a checkpoint that was
/// the latest of its day stays kept until it ages out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Retention {
    /// Keep every checkpoint this young.
    pub all_for_ms: u64,
    /// Keep one per hour this young.
    pub hourly_for_ms: u64,
    /// Keep one per day this young.
    pub daily_for_ms: u64,
}

impl Default for Retention {
    /// Every checkpoint for 2 days, then one per day up to 2 weeks, nothing older.
    fn default() -> Self {
        Retention { all_for_ms: 2 * DAY_MS, hourly_for_ms: 2 * DAY_MS, daily_for_ms: 14 * DAY_MS }
    }
}

impl Retention {
    /// Which of the checkpoints taken at `times` (ascending) to keep at `now_ms`.
    pub fn keep(&self, times: &[u64], now_ms: u64) -> Vec<bool> {
        let last_in_bucket =
            |i: usize, bucket: u64| times.get(i + 1).is_none_or(|&next| next / bucket != times[i] / bucket);
        times
            .iter()
            .enumerate()
            .map(|(i, &at)| {
                let age = now_ms.saturating_sub(at);
                i + 1 == times.len()
                    || age < self.all_for_ms
                    || (age < self.hourly_for_ms && last_in_bucket(i, HOUR_MS))
                    || (age < self.daily_for_ms && last_in_bucket(i, DAY_MS))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keeps_all_then_daily_then_the_latest_only() {
        let now = 30 * DAY_MS;
        // One checkpoint every 6 hours for 30 days.
        let times: Vec<u64> = (0..120).map(|i| i * 6 * HOUR_MS + HOUR_MS).collect();
        let keep = Retention::default().keep(&times, now);
        for (&at, &k) in times.iter().zip(&keep) {
            let age = now - at;
            let last_of_day = at % DAY_MS == 19 * HOUR_MS;
            let expected = at == *times.last().unwrap_or(&0) || age < 2 * DAY_MS || (age < 14 * DAY_MS && last_of_day);
            assert_eq!(k, expected, "checkpoint at {at} (age {age})");
        }
        assert_eq!(keep.iter().filter(|&&k| k).count(), 8 + 12);
    }

    #[test]
    fn hourly_tier_and_latest_survive() {
        let policy = Retention { all_for_ms: HOUR_MS, hourly_for_ms: 3 * HOUR_MS, daily_for_ms: 3 * HOUR_MS };
        let times = [0, 10, 20, HOUR_MS + 5, HOUR_MS + 6];
        assert_eq!(policy.keep(&times, 2 * HOUR_MS + 10), vec![false, false, true, false, true]);
        // Everything aged out: the latest stays.
        assert_eq!(policy.keep(&times, 100 * DAY_MS), vec![false, false, false, false, true]);
        assert_eq!(policy.keep(&[], 0), Vec::<bool>::new());
    }
}
