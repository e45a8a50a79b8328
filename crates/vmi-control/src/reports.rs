//! [`Reports`]: the latest terminal report of each user, in memory, and shared through etcd when control replicas
//! share one.
//!
//! Reports are soft state: a terminal sends one every few seconds (or every 30 s, or on a cell change, at an
//! operator's scale), the placer only trusts recent ones, and losing them all on a restart costs one report period.
//! So they never touch SQLite, and nothing waits for them to be durable. Replicas over etcd must still see each
//! other's (the replica that received a report may not be the one whose placer reads it): each replica gathers the
//! reports it received and writes them as one batch every [`FLUSH_EVERY`] to its own key under
//! `report-batches/` (held by a lease, so a replica gone leaves nothing behind), and every replica watches that
//! prefix and keeps every batch's reports in memory. One etcd write per replica per flush, whatever the rate (at
//! 50,000 reports a second, ten writes of about 400 KB; split at [`BATCH_BYTES`]).
//!
//! Which report is a user's latest: the last to arrive from the same writer (this process, or one replica's
//! batches, in commit order), else the later by its time (two replicas' clocks may differ a little; one
//! process's clock stepping back does not lose reports).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use vmi_control_api::model::{ReportRequest, TerminalReport};

use crate::now_ms;
use crate::store::{EtcdKv, Watched};

/// How often a replica writes the reports it received to etcd (shared reports only).
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// The most bytes of reports in one etcd write (under etcd's 1.5 MiB request limit); a position report is about
/// 100 bytes, one with many round trips a few KB.
pub const BATCH_BYTES: usize = 1 << 20;
/// The time to live of a replica's batch key's lease.
const BATCH_LEASE_TTL_S: i64 = 30;
/// How often the flusher renews that lease (while it has reports to write).
const BATCH_LEASE_RENEW: Duration = Duration::from_secs(10);

/// A user's latest report and who wrote it (0: this process; else one replica's batches).
type Held = (TerminalReport, u64);

/// The latest [`TerminalReport`] per user, shared by the HTTP layer (writer) and the placer (reader).
///
/// Cheap to clone (one `Arc` each); all clones see the same reports. Holds at most one report per user (and, when
/// shared, at most one more per user waiting for the next flush), each with at most
/// [`MAX_REPORT_SITES`](vmi_control_api::MAX_REPORT_SITES) RTTs, so its size is bounded by the number of users.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    latest: Arc<Mutex<HashMap<String, Held>>>,
    /// Reports received here and not yet written to etcd, if replicas share one; the latest per user.
    unsent: Option<Arc<Mutex<HashMap<String, TerminalReport>>>>,
    /// The users whose report changed since the placer last took them ([`Reports::take_changed`]); `None` until
    /// a placer watches ([`Reports::watched`]). At most one entry per user.
    changed: Arc<Mutex<Option<HashSet<String>>>>,
}

impl Reports {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry that also shares its reports through etcd: it writes the reports received here in
    /// batches and takes in every replica's (its own included) from a watch, for as long as `kv` lives.
    pub(crate) fn shared(kv: &Arc<EtcdKv>) -> Self {
        let reports = Reports { unsent: Some(Arc::default()), ..Reports::default() };
        let (latest, changed) = (reports.latest.clone(), reports.changed.clone());
        kv.watch_prefix("report-batches/", move |seen| {
            if let Watched::Events(events) = seen {
                for event in events {
                    let Some(batch) = event.kv().filter(|_| event.event_type() == etcd_client::EventType::Put) else {
                        continue;
                    };
                    let writer = writer_of(batch.key());
                    match serde_json::from_slice::<Vec<TerminalReport>>(batch.value()) {
                        Ok(batch) => take_in(&latest, &changed, batch, writer),
                        Err(e) => tracing::warn!(error = %e, "a batch of terminal reports is unreadable; skipped"),
                    }
                }
            }
        });
        if let (Some(handle), Some(unsent)) = (kv.handle(), &reports.unsent) {
            // A key per process: replicas never overwrite each other's batch before it is seen.
            let id = crate::store::generate_token().unwrap_or_else(|_| format!("{}-{}", std::process::id(), now_ms()));
            let key = kv.full(&format!("report-batches/{}", id.chars().take(16).collect::<String>()));
            handle.spawn(flush(Arc::downgrade(kv), Arc::downgrade(unsent), key));
        }
        reports
    }

    /// Keeps `report` as `user`'s latest, received at `at_ms`, replacing the previous one; returns it.
    pub fn record(&self, user: &str, report: ReportRequest, at_ms: u64) -> TerminalReport {
        let report =
            TerminalReport { user: user.to_owned(), at_ms, lat: report.lat, lon: report.lon, rtt_ms: report.rtt_ms };
        match &self.unsent {
            // Taken in, here as at every replica, when the batch comes back from etcd.
            Some(unsent) => {
                lock(unsent).insert(user.to_owned(), report.clone());
            }
            None => take_in(&self.latest, &self.changed, [report.clone()], 0),
        }
        report
    }

    /// The user's latest report, however old.
    pub fn latest(&self, user: &str) -> Option<TerminalReport> {
        let unsent = self.unsent.as_ref().and_then(|u| lock(u).get(user).cloned());
        newest(lock(&self.latest).get(user).map(|held| held.0.clone()), unsent)
    }

    /// A copy of every user's latest report.
    pub fn snapshot(&self) -> HashMap<String, TerminalReport> {
        lock(&self.latest).iter().map(|(user, held)| (user.clone(), held.0.clone())).collect()
    }

    /// These reports, with the users whose report changes kept for [`Reports::take_changed`] (every user with a
    /// report now counts as changed: the first take has them all).
    pub fn watched(&self) -> Reports {
        let latest = lock(&self.latest);
        lock(&self.changed).get_or_insert_with(|| latest.keys().cloned().collect());
        drop(latest);
        self.clone()
    }

    /// The reports received since the last call (every report at the first), as [`Reports::watched`] kept them;
    /// with shared reports, every replica's.
    pub fn take_changed(&self) -> Vec<TerminalReport> {
        let users = lock(&self.changed).as_mut().map(std::mem::take);
        let latest = lock(&self.latest);
        match users {
            Some(users) => users.iter().filter_map(|u| latest.get(u).map(|held| held.0.clone())).collect(),
            None => latest.values().map(|held| held.0.clone()).collect(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: a panic cannot leave the map half-updated.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps each of `reports` (from `writer`) that is its user's latest, marking the user changed: the last from
/// the same writer, else the later by time.
fn take_in(
    latest: &Mutex<HashMap<String, Held>>,
    changed: &Mutex<Option<HashSet<String>>>,
    reports: impl IntoIterator<Item = TerminalReport>,
    writer: u64,
) {
    let mut kept = Vec::new();
    {
        let mut latest = lock(latest);
        for report in reports {
            if latest.get(&report.user).is_some_and(|(held, by)| *by != writer && held.at_ms > report.at_ms) {
                continue;
            }
            kept.push(report.user.clone());
            latest.insert(report.user.clone(), (report, writer));
        }
    }
    if let Some(changed) = lock(changed).as_mut() {
        changed.extend(kept);
    }
}

/// A writer's id from its batch key (FNV-1a; never 0, which is this process's own).
fn writer_of(key: &[u8]) -> u64 {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    hash.max(1)
}

/// `reports` as JSON arrays of at most [`BATCH_BYTES`] each (a report alone over it is left out, logged).
fn batches(reports: &[TerminalReport]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut batch = b"[".to_vec();
    for report in reports {
        let Ok(json) = serde_json::to_vec(report) else { continue };
        if json.len() + 2 > BATCH_BYTES {
            tracing::warn!(user = %report.user, bytes = json.len(), "a terminal report too large to share; left out");
            continue;
        }
        // Its comma, and the closing bracket, still follow.
        if batch.len() + json.len() + 2 > BATCH_BYTES {
            batch.push(b']');
            out.push(std::mem::replace(&mut batch, b"[".to_vec()));
        }
        if batch.len() > 1 {
            batch.push(b',');
        }
        batch.extend_from_slice(&json);
    }
    if batch.len() > 1 {
        batch.push(b']');
        out.push(batch);
    }
    out
}

/// Writes the reports received here to `key`, a batch every [`FLUSH_EVERY`], until the store or the reports go.
async fn flush(kv: Weak<EtcdKv>, unsent: Weak<Mutex<HashMap<String, TerminalReport>>>, key: String) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease: Option<(i64, Instant)> = None;
    loop {
        every.tick().await;
        let (Some(kv), Some(unsent)) = (kv.upgrade(), unsent.upgrade()) else { return };
        let reports: Vec<TerminalReport> = std::mem::take(&mut *lock(&unsent)).into_values().collect();
        let mut client = kv.client();
        drop((kv, unsent));
        if reports.is_empty() {
            continue;
        }
        if lease.is_none_or(|(_, renewed)| renewed.elapsed() >= BATCH_LEASE_RENEW) {
            lease = renew_lease(&mut client, lease.map(|(id, _)| id)).await.map(|id| (id, Instant::now()));
        }
        let options = lease.map(|(id, _)| etcd_client::PutOptions::new().with_lease(id));
        for batch in batches(&reports) {
            // Soft state: a lost batch costs its users one report period; the next batch is not held up.
            if let Err(e) = client.put(key.clone(), batch, options.clone()).await {
                tracing::warn!(error = %e, "terminal reports not shared");
                lease = None;
            }
        }
    }
}

/// How long renewing or granting the batch key's lease may take.
const LEASE_CALL: Duration = Duration::from_secs(2);

/// Renews lease `id` (or grants one if there is none or it expired); the lease, if etcd answered in time.
async fn renew_lease(client: &mut etcd_client::Client, id: Option<i64>) -> Option<i64> {
    // Opening a keep-alive stream renews the lease once and reads etcd's answer (an error if it expired).
    if let Some(id) = id
        && let Ok(Ok(_)) = tokio::time::timeout(LEASE_CALL, client.lease_keep_alive(id)).await
    {
        return Some(id);
    }
    match tokio::time::timeout(LEASE_CALL, client.lease_grant(BATCH_LEASE_TTL_S, None)).await {
        Ok(Ok(granted)) => Some(granted.id()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no lease for the terminal reports' batch key");
            None
        }
        Err(_) => None,
    }
}

/// The later of two reports.
fn newest(a: Option<TerminalReport>, b: Option<TerminalReport>) -> Option<TerminalReport> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.at_ms > a.at_ms { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_report_replaces_the_previous_one() {
        let reports = Reports::new();
        assert_eq!(reports.latest("alice"), None);
        let first = ReportRequest { lat: Some(1.0), lon: Some(2.0), ..ReportRequest::default() };
        reports.record("alice", first, 10);
        let second = ReportRequest { rtt_ms: [("site-a".to_owned(), 4.0)].into(), ..ReportRequest::default() };
        reports.clone().record("alice", second, 20);
        let latest = reports.latest("alice").expect("recorded");
        assert_eq!((latest.at_ms, latest.position(), latest.rtt_ms.get("site-a")), (20, None, Some(&4.0)));
        assert_eq!(reports.snapshot().len(), 1);
    }

    #[test]
    fn a_clock_stepping_back_loses_no_report() {
        let reports = Reports::new();
        reports.record("alice", ReportRequest { lat: Some(1.0), ..ReportRequest::default() }, 1_000);
        reports.record("alice", ReportRequest { lat: Some(2.0), ..ReportRequest::default() }, 900);
        assert_eq!(reports.latest("alice").and_then(|r| r.lat), Some(2.0), "the last to arrive");
    }

    #[test]
    fn another_writers_older_report_does_not_replace_a_newer_one() {
        let (latest, changed) = (Mutex::default(), Mutex::new(None));
        let report =
            |at_ms| TerminalReport { user: "alice".into(), at_ms, lat: None, lon: None, rtt_ms: Default::default() };
        take_in(&latest, &changed, [report(10)], 1);
        take_in(&latest, &changed, [report(8)], 2);
        assert_eq!(lock(&latest)["alice"].0.at_ms, 10, "another replica's older one");
        take_in(&latest, &changed, [report(7)], 1);
        assert_eq!(lock(&latest)["alice"].0.at_ms, 7, "the same writer's later batch");
    }

    #[test]
    fn batches_stay_under_the_size_limit_and_keep_every_report() {
        let many_sites: std::collections::BTreeMap<String, f64> = (0..64).map(|i| (format!("{i:0>64}"), 1.5)).collect();
        let reports: Vec<TerminalReport> = (0..600)
            .map(|u| TerminalReport {
                user: format!("user-{u}"),
                at_ms: 1,
                lat: Some(1.0),
                lon: Some(2.0),
                rtt_ms: many_sites.clone(),
            })
            .collect();
        let out = batches(&reports);
        assert!(out.len() >= 2, "{} batches", out.len());
        let mut back = 0;
        for batch in &out {
            assert!(batch.len() <= BATCH_BYTES);
            back += serde_json::from_slice::<Vec<TerminalReport>>(batch).expect("a JSON array").len();
        }
        assert_eq!(back, 600);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn a_watcher_takes_each_changed_report_once() {
        let reports = Reports::new();
        reports.record("early", ReportRequest::default(), 5);
        let watched = reports.watched();
        let first = watched.take_changed();
        assert_eq!(first.iter().map(|r| r.user.as_str()).collect::<Vec<_>>(), ["early"], "the first take has them all");
        reports.record("alice", ReportRequest { lat: Some(1.0), ..ReportRequest::default() }, 10);
        reports.record("alice", ReportRequest { lat: Some(2.0), ..ReportRequest::default() }, 11);
        reports.record("bob", ReportRequest::default(), 12);
        let mut taken = watched.take_changed();
        taken.sort_by(|a, b| a.user.cmp(&b.user));
        assert_eq!(taken.iter().map(|r| (r.user.as_str(), r.at_ms)).collect::<Vec<_>>(), [("alice", 11), ("bob", 12)]);
        assert_eq!(watched.take_changed(), Vec::new(), "each once");
    }
}
