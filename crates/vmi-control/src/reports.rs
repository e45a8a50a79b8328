//! [`Reports`]: the latest terminal report of each user, kept in memory only.
//!
//! Reports are soft state: a terminal sends one every few seconds, the placer only trusts recent ones, and losing
//! them all on a restart costs one report period. So they never touch SQLite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmi_control_api::model::{ReportRequest, TerminalReport};

/// The latest [`TerminalReport`] per user, shared by the HTTP layer (writer) and the placer (reader).
///
/// Cheap to clone (one `Arc`); all clones see the same reports. Holds at most one report per user, each with at
/// most [`MAX_REPORT_SITES`](vmi_control_api::MAX_REPORT_SITES) RTTs, so its size is bounded by the number of users.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    latest: Arc<Mutex<HashMap<String, TerminalReport>>>,
}

impl Reports {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `report` as `user`'s latest, received at `at_ms`, replacing the previous one; returns it.
    pub fn record(&self, user: &str, report: ReportRequest, at_ms: u64) -> TerminalReport {
        let report =
            TerminalReport { user: user.to_owned(), at_ms, lat: report.lat, lon: report.lon, rtt_ms: report.rtt_ms };
        self.lock().insert(user.to_owned(), report.clone());
        report
    }

    /// The user's latest report, however old.
    pub fn latest(&self, user: &str) -> Option<TerminalReport> {
        self.lock().get(user).cloned()
    }

    /// A copy of every user's latest report.
    pub fn snapshot(&self) -> HashMap<String, TerminalReport> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TerminalReport>> {
        // Every critical section is a single map operation: a panic cannot leave the map half-updated.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
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
}
