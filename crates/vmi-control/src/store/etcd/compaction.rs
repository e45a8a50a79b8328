//! Compaction of etcd's history by the leading replica: every write (a report batch every 200 ms per replica
//! above all) adds a revision, and etcd keeps every revision until told to compact. The leader compacts, now and
//! then, to the revision the cluster had `keep` ago, as Kubernetes' API server does: watches and reads of the
//! last `keep` still work, and the database stops growing with the reports.
//!
//! Compaction is cluster-wide (every key, whatever its prefix): a cluster shared with other programs has its
//! history compacted by this one too.

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::Client;
use tokio::time::Instant;

use tokio::sync::watch;

/// The revisions the cluster was at, sampled over time, and the one compacted to last: which revision is `keep`
/// old now.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    samples: VecDeque<(Instant, i64)>,
    compacted: i64,
}

impl Retention {
    /// The cluster was at `revision` at `now`: the revision to compact to, if one is older than `keep` and newer
    /// than the last compaction.
    pub(crate) fn observe(&mut self, now: Instant, revision: i64, keep: Duration) -> Option<i64> {
        if self.samples.back().is_none_or(|(_, last)| *last < revision) {
            self.samples.push_back((now, revision));
        }
        let mut target = None;
        while let Some(&(at, rev)) = self.samples.front() {
            if now.duration_since(at) < keep {
                break;
            }
            target = Some(rev);
            self.samples.pop_front();
        }
        let target = target.filter(|rev| *rev > self.compacted)?;
        self.compacted = target;
        Some(target)
    }
}

/// How often the revision is sampled (and compaction considered) for a history kept `keep`.
fn sample_every(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// Samples the cluster's revision through `clients` (the first that answers) and, while `leading` says this
/// replica leads, compacts to what it was `keep` ago; runs on `handle` until the campaign that says it ends.
pub(crate) fn spawn(
    handle: &tokio::runtime::Handle,
    clients: Vec<Client>,
    probe: String,
    leading: watch::Receiver<bool>,
    keep: Duration,
) {
    handle.spawn(async move {
        let mut retention = Retention::default();
        let mut tick = tokio::time::interval(sample_every(keep));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The campaign ended (the service let go of its leadership): so does this.
            if leading.has_changed().is_err() {
                return;
            }
            let Some((mut client, revision)) = first_revision(&clients, &probe).await else { continue };
            // Every replica samples (so a new leader knows what was when); only the leader compacts.
            let Some(target) = retention.observe(Instant::now(), revision, keep) else { continue };
            if !*leading.borrow() {
                continue;
            }
            match client.compact(target, None).await {
                Ok(_) => tracing::debug!(revision = target, "etcd history compacted"),
                // Compacted already (by a replica that led before): nothing lost.
                Err(e) => tracing::debug!(revision = target, error = %e, "etcd history not compacted"),
            }
        }
    });
}

/// The cluster's revision now, from the first member that answers, and that member's client.
async fn first_revision(clients: &[Client], probe: &str) -> Option<(Client, i64)> {
    for client in clients {
        let mut client = client.clone();
        if let Some(revision) = super::kv::revision_now(&mut client, probe).await {
            return Some((client, revision));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(300);

    #[test]
    fn compacts_to_the_newest_revision_at_least_keep_old_and_never_twice() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut r = Retention::default();
        assert_eq!(r.observe(at(0), 10, KEEP), None, "nothing is old enough yet");
        assert_eq!(r.observe(at(100), 50, KEEP), None);
        assert_eq!(r.observe(at(200), 90, KEEP), None);
        assert_eq!(r.observe(at(299), 95, KEEP), None, "the first sample is not yet keep old");
        assert_eq!(r.observe(at(300), 100, KEEP), Some(10), "the revision of keep ago");
        assert_eq!(r.observe(at(330), 110, KEEP), None, "nothing newer is keep old");
        // Long quiet: every sample that is keep old goes at once, to the newest of them.
        assert_eq!(r.observe(at(1000), 120, KEEP), Some(110));
        assert_eq!(r.observe(at(1001), 120, KEEP), None, "the same revision is not compacted twice");
    }

    #[test]
    fn a_revision_seen_again_is_not_sampled_again() {
        let t0 = Instant::now();
        let mut r = Retention::default();
        r.observe(t0, 7, KEEP);
        r.observe(t0 + Duration::from_secs(100), 7, KEEP);
        // Sampled once, at t0: keep after t0 it is due, not keep after the second look.
        assert_eq!(r.observe(t0 + KEEP, 7, KEEP), Some(7));
    }

    #[test]
    fn sampling_is_often_enough_for_short_and_long_histories() {
        assert_eq!(sample_every(Duration::from_secs(2)), Duration::from_millis(200));
        assert_eq!(sample_every(KEEP), Duration::from_secs(30));
        assert_eq!(sample_every(Duration::from_secs(3600)), Duration::from_secs(30));
    }
}
