//! [`Reports`]: the latest terminal report of each user, in memory, and in etcd when control replicas share one.
//!
//! Reports are soft state: a terminal sends one every few seconds, the placer only trusts recent ones, and losing
//! them all on a restart costs one report period. So they never touch SQLite. Replicas over etcd write each report
//! to `reports/{user}` as well (without waiting for it), because the replica that received it may not be the one
//! whose placer reads it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmi_control_api::model::{ReportRequest, TerminalReport};

use crate::store::EtcdKv;

/// The latest [`TerminalReport`] per user, shared by the HTTP layer (writer) and the placer (reader).
///
/// Cheap to clone (one `Arc`); all clones see the same reports. Holds at most one report per user, each with at
/// most [`MAX_REPORT_SITES`](vmi_control_api::MAX_REPORT_SITES) RTTs, so its size is bounded by the number of users.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    latest: Arc<Mutex<HashMap<String, TerminalReport>>>,
    /// Where every replica's reports meet, if replicas share an etcd cluster.
    shared: Option<Arc<EtcdKv>>,
    /// The users whose report changed since the placer last took them ([`Reports::take_changed`]); `None` until
    /// a placer watches ([`Reports::watched`]). At most one entry per user.
    changed: Arc<Mutex<Option<HashSet<String>>>>,
    /// Shared reports: the time of each user's report the placer took last.
    taken: Arc<Mutex<HashMap<String, u64>>>,
}

fn report_key(user: &str) -> String {
    format!("reports/{user}")
}

impl Reports {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry that also writes to (and reads from) etcd.
    pub(crate) fn shared(kv: Arc<EtcdKv>) -> Self {
        Reports { shared: Some(kv), ..Reports::default() }
    }

    /// Keeps `report` as `user`'s latest, received at `at_ms`, replacing the previous one; returns it.
    pub fn record(&self, user: &str, report: ReportRequest, at_ms: u64) -> TerminalReport {
        let report =
            TerminalReport { user: user.to_owned(), at_ms, lat: report.lat, lon: report.lon, rtt_ms: report.rtt_ms };
        self.lock().insert(user.to_owned(), report.clone());
        // Shared reports are taken from etcd, every replica's: nothing to keep here.
        if self.shared.is_none()
            && let Some(changed) = self.changed.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
        {
            changed.insert(user.to_owned());
        }
        if let Some(kv) = &self.shared
            && let (Some(handle), Ok(value)) = (kv.handle(), serde_json::to_vec(&report))
        {
            let (mut client, key) = (kv.client(), kv.full(&report_key(user)));
            // Soft state: a lost write costs one report period, so the terminal does not wait for etcd.
            handle.spawn(async move {
                if let Err(e) = client.put(key, value, None).await {
                    tracing::debug!(error = %e, "terminal report not shared");
                }
            });
        }
        report
    }

    /// The user's latest report, however old.
    pub fn latest(&self, user: &str) -> Option<TerminalReport> {
        let local = self.lock().get(user).cloned();
        let shared = self.shared.as_ref().and_then(|kv| match kv.get(&report_key(user)) {
            Ok(entry) => entry.and_then(|e| serde_json::from_slice::<TerminalReport>(&e.value).ok()),
            Err(e) => {
                tracing::debug!(error = %e, "shared terminal reports unreadable; using this replica's");
                None
            }
        });
        newest(local, shared)
    }

    /// A copy of every user's latest report.
    pub fn snapshot(&self) -> HashMap<String, TerminalReport> {
        let mut all = self.lock().clone();
        if let Some(kv) = &self.shared {
            match kv.range("reports/", false, 0, None) {
                Ok((entries, _)) => {
                    for entry in entries {
                        if let Ok(report) = serde_json::from_slice::<TerminalReport>(&entry.value) {
                            let mine = all.remove(&report.user);
                            let user = report.user.clone();
                            if let Some(best) = newest(mine, Some(report)) {
                                all.insert(user, best);
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "shared terminal reports unreadable; using this replica's"),
            }
        }
        all
    }

    /// These reports, with the users whose report changes kept for [`Reports::take_changed`] (every user with a
    /// report now counts as changed: the first take has them all).
    pub fn watched(&self) -> Reports {
        let latest = self.lock();
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        changed.get_or_insert_with(|| latest.keys().cloned().collect());
        drop((changed, latest));
        self.clone()
    }

    /// The reports received since the last call (every report at the first): those of the users whose report
    /// changed, as [`Reports::watched`] kept them; with shared reports, every replica's whose time changed.
    pub fn take_changed(&self) -> Vec<TerminalReport> {
        if self.shared.is_some() {
            // Another replica may have received them: every report, those not taken yet.
            let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
            return self
                .snapshot()
                .into_values()
                .filter(|r| taken.insert(r.user.clone(), r.at_ms) != Some(r.at_ms))
                .collect();
        }
        let users = self.changed.lock().unwrap_or_else(PoisonError::into_inner).as_mut().map(std::mem::take);
        let latest = self.lock();
        match users {
            Some(users) => users.iter().filter_map(|u| latest.get(u).cloned()).collect(),
            None => latest.values().cloned().collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TerminalReport>> {
        // Every critical section is a single map operation: a panic cannot leave the map half-updated.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
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
