//! What a site tells its operators in `GET /metrics` (Prometheus; behind operator authentication): its phones by
//! state, its terminals, the frames and bytes it sends, how long an input takes to show, its migrations,
//! checkpoints, standby records, lease and admissions, and its HTTP requests and process
//! ([`vmi_telemetry`]). docs/OPERATIONS.md lists every family.
//!
//! Counted where the thing happens; the phone and terminal gauges move as each phone task's state changes
//! ([`PhoneGauge`]), so a scrape of a site of 100,000 phones asks no phone anything.

use std::sync::Arc;
use std::time::Duration;

use vmi_telemetry::prometheus_client::encoding::EncodeLabelSet;
use vmi_telemetry::prometheus_client::metrics::counter::Counter;
use vmi_telemetry::prometheus_client::metrics::family::Family;
use vmi_telemetry::prometheus_client::metrics::gauge::Gauge;
use vmi_telemetry::prometheus_client::metrics::histogram::Histogram;
use vmi_telemetry::{HttpMetrics, Registry};

macro_rules! labelled {
    ($name:ident, $label:ident) => {
        /// A family's label set: one fixed word.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        pub struct $name {
            /// The word.
            pub $label: &'static str,
        }
    };
}
labelled!(Outcome, outcome);
labelled!(PhoneState, state);
labelled!(Reason, reason);

/// A phone's state as the gauges count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Census {
    /// Running with its memory held.
    Resident,
    /// Hibernated: its memory given back, woken by whatever needs it.
    Hibernated,
    /// Crashed: waiting for a restart.
    Crashed,
}

impl Census {
    fn word(self) -> &'static str {
        match self {
            Census::Resident => "resident",
            Census::Hibernated => "hibernated",
            Census::Crashed => "crashed",
        }
    }
}

/// The site's metric families.
#[derive(Debug)]
pub struct SiteMetrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub http: Arc<HttpMetrics>,
    phones: Family<PhoneState, Gauge>,
    terminals: Family<PhoneState, Gauge>,
    frames: Counter,
    frame_bytes: Counter,
    input_to_frame: Histogram,
    migrations: Family<Outcome, Counter>,
    migration_aborts: Family<Reason, Counter>,
    migration_downtime: Histogram,
    migration_duration: Histogram,
    migration_bytes: Counter,
    arrivals: Family<Outcome, Counter>,
    checkpoints: Family<Outcome, Counter>,
    checkpoint_bytes: Counter,
    checkpoint_duration: Histogram,
    checkpoint_copies: Family<Outcome, Counter>,
    checkpoint_copy_duration: Histogram,
    standby_records: Family<Outcome, Counter>,
    record_durable: Histogram,
    lease_renewals: Counter,
    lease_lapses: Counter,
    fenced_drops: Counter,
    admission_refusals: Counter,
    crashes: Counter,
    checked_out: Gauge,
}

impl SiteMetrics {
    /// The families, registered (`vmi_site_…`, `vmi_http_…`, `process_…`).
    pub fn new() -> SiteMetrics {
        let mut registry = vmi_telemetry::registry();
        let http = HttpMetrics::register(registry.sub_registry_with_prefix("vmi"));
        let seconds = || Histogram::new(vmi_telemetry::seconds_buckets());
        let m = SiteMetrics {
            registry: Registry::default(),
            http,
            phones: Family::default(),
            terminals: Family::default(),
            frames: Counter::default(),
            frame_bytes: Counter::default(),
            input_to_frame: seconds(),
            migrations: Family::default(),
            migration_aborts: Family::default(),
            migration_downtime: seconds(),
            migration_duration: seconds(),
            migration_bytes: Counter::default(),
            arrivals: Family::default(),
            checkpoints: Family::default(),
            checkpoint_bytes: Counter::default(),
            checkpoint_duration: seconds(),
            checkpoint_copies: Family::default(),
            checkpoint_copy_duration: seconds(),
            standby_records: Family::default(),
            record_durable: seconds(),
            lease_renewals: Counter::default(),
            lease_lapses: Counter::default(),
            fenced_drops: Counter::default(),
            admission_refusals: Counter::default(),
            crashes: Counter::default(),
            checked_out: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("vmi_site");
        r.register("phones", "Phones running here, by state (resident, hibernated, crashed)", m.phones.clone());
        r.register("phones_checked_out", "Phones of this site checked out to a terminal", m.checked_out.clone());
        r.register("terminals", "Terminals attached, by state (awake: screen on; asleep)", m.terminals.clone());
        r.register("frames_sent", "Display updates sent to terminals", m.frames.clone());
        r.register("frame_sent_bytes", "Bytes of display updates sent to terminals", m.frame_bytes.clone());
        r.register(
            "input_to_frame_seconds",
            "From an input reaching its phone to the first display update after it",
            m.input_to_frame.clone(),
        );
        r.register("migrations", "Live migrations out of this site, by outcome", m.migrations.clone());
        r.register("migration_aborts", "Live migrations out that aborted, by reason", m.migration_aborts.clone());
        r.register(
            "migration_downtime_seconds",
            "A committed migration's downtime: the phone stopped here to running at the destination",
            m.migration_downtime.clone(),
        );
        r.register("migration_duration_seconds", "A migration out from start to end", m.migration_duration.clone());
        r.register("migration_sent_bytes", "Bytes of phone state sent by migrations out", m.migration_bytes.clone());
        r.register("migration_arrivals", "Migrations into this site, by outcome", m.arrivals.clone());
        r.register("checkpoints", "Checkpoints taken, by outcome (stored, failed)", m.checkpoints.clone());
        r.register("checkpoint_stored_bytes", "Bytes checkpoints added to the store", m.checkpoint_bytes.clone());
        r.register("checkpoint_seconds", "Taking and storing one checkpoint", m.checkpoint_duration.clone());
        r.register(
            "checkpoint_copies",
            "Checkpoints copied to a second site, by outcome (copied, failed)",
            m.checkpoint_copies.clone(),
        );
        r.register(
            "checkpoint_copy_seconds",
            "From a checkpoint stored here to its copy held by the second site",
            m.checkpoint_copy_duration.clone(),
        );
        r.register(
            "standby_records",
            "Records sent toward a standby copy, by outcome (held, failed, none: no site can stand by)",
            m.standby_records.clone(),
        );
        r.register(
            "record_durable_seconds",
            "From a phone's record taken to it written here and held by the standby site (the standby lag)",
            m.record_durable.clone(),
        );
        r.register("lease_renewals", "Heartbeats that renewed the site's lease", m.lease_renewals.clone());
        r.register(
            "lease_lapses",
            "Renewals that found the lease had lapsed (the site's phones were fenced meanwhile)",
            m.lease_lapses.clone(),
        );
        r.register(
            "fenced_drops",
            "Phones dropped here because they were failed over while the site had no lease",
            m.fenced_drops.clone(),
        );
        r.register(
            "admission_refusals",
            "New phones the control service refused (a tenant's quota, an unknown user)",
            m.admission_refusals.clone(),
        );
        r.register(
            "phone_crashes",
            "Phones that crashed here (each also in the control service's audit log)",
            m.crashes.clone(),
        );
        SiteMetrics { registry, ..m }
    }

    /// The registry as OpenMetrics text, for `GET /metrics`; `checked_out` phones counted now.
    pub fn exposition(&self, checked_out: usize) -> axum::response::Response {
        self.checked_out.set(i64::try_from(checked_out).unwrap_or(i64::MAX));
        vmi_telemetry::exposition(&self.registry)
    }

    /// A display update of `bytes` went to a terminal.
    pub fn frame_sent(&self, bytes: usize) {
        self.frames.inc();
        self.frame_bytes.inc_by(bytes as u64);
    }

    /// An input showed after `elapsed`.
    pub fn input_shown(&self, elapsed: Duration) {
        self.input_to_frame.observe(elapsed.as_secs_f64());
    }

    /// A migration out ended: `abort_reason` is `None` when it committed.
    pub fn migrated(&self, report: &crate::migration::MigrationReport, abort_reason: Option<&'static str>) {
        match abort_reason {
            None => {
                self.migrations.get_or_create(&Outcome { outcome: "committed" }).inc();
                self.migration_downtime.observe(report.downtime_us as f64 / 1e6);
            }
            Some(reason) => {
                self.migrations.get_or_create(&Outcome { outcome: "aborted" }).inc();
                self.migration_aborts.get_or_create(&Reason { reason }).inc();
            }
        }
        self.migration_duration.observe(report.total_ms / 1e3);
        self.migration_bytes.inc_by(report.bytes);
    }

    /// A migration into this site ended.
    pub fn arrived(&self, committed: bool) {
        let outcome = if committed { "committed" } else { "aborted" };
        self.arrivals.get_or_create(&Outcome { outcome }).inc();
    }

    /// A checkpoint was taken and stored (`Some(bytes)` it added), or failed (`None`), in `elapsed`.
    pub fn checkpointed(&self, stored: Option<u64>, elapsed: Duration) {
        match stored {
            Some(bytes) => {
                self.checkpoints.get_or_create(&Outcome { outcome: "stored" }).inc();
                self.checkpoint_bytes.inc_by(bytes);
                self.checkpoint_duration.observe(elapsed.as_secs_f64());
            }
            None => {
                self.checkpoints.get_or_create(&Outcome { outcome: "failed" }).inc();
            }
        }
    }

    /// A checkpoint's copy ended after `elapsed`.
    pub fn checkpoint_copied(&self, copied: bool, elapsed: Duration) {
        let outcome = if copied { "copied" } else { "failed" };
        self.checkpoint_copies.get_or_create(&Outcome { outcome }).inc();
        if copied {
            self.checkpoint_copy_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// A phone's record was written; `standby` says what became of its copy; `elapsed` since it was taken.
    pub fn record_written(&self, standby: &Result<Option<String>, String>, elapsed: Duration) {
        let outcome = match standby {
            Ok(Some(_)) => "held",
            Ok(None) => "none",
            Err(_) => "failed",
        };
        self.standby_records.get_or_create(&Outcome { outcome }).inc();
        self.record_durable.observe(elapsed.as_secs_f64());
    }

    /// A heartbeat renewed the lease; `lapsed`: it had run out before.
    pub fn lease_renewed(&self, lapsed: bool) {
        self.lease_renewals.inc();
        if lapsed {
            self.lease_lapses.inc();
        }
    }

    /// A phone failed over while this site had no lease was dropped here.
    pub fn fenced_drop(&self) {
        self.fenced_drops.inc();
    }

    /// A phone crashed.
    pub fn crashed(&self) {
        self.crashes.inc();
    }

    /// The control service refused a new phone.
    pub fn admission_refused(&self) {
        self.admission_refusals.inc();
    }
}

impl Default for SiteMetrics {
    fn default() -> Self {
        SiteMetrics::new()
    }
}

/// One phone task's place in the phone and terminal gauges: moved as its state changes, taken out when the task
/// ends (dropped).
#[derive(Debug)]
pub struct PhoneGauge {
    metrics: Arc<SiteMetrics>,
    state: Option<Census>,
    terminals: (i64, i64),
}

impl PhoneGauge {
    /// The site's metrics this gauge counts in.
    pub fn metrics(&self) -> &SiteMetrics {
        &self.metrics
    }

    /// A phone not counted yet.
    pub fn new(metrics: Arc<SiteMetrics>) -> PhoneGauge {
        PhoneGauge { metrics, state: None, terminals: (0, 0) }
    }

    /// The phone is in `state` (`None`: not counted, e.g. a provisional arrival) with `awake` and `asleep`
    /// terminals.
    pub fn set(&mut self, state: Option<Census>, awake: usize, asleep: usize) {
        if state != self.state {
            if let Some(old) = self.state {
                self.metrics.phones.get_or_create(&PhoneState { state: old.word() }).dec();
            }
            if let Some(new) = state {
                self.metrics.phones.get_or_create(&PhoneState { state: new.word() }).inc();
            }
            self.state = state;
        }
        let now = (awake as i64, asleep as i64);
        if now != self.terminals {
            self.metrics.terminals.get_or_create(&PhoneState { state: "awake" }).inc_by(now.0 - self.terminals.0);
            self.metrics.terminals.get_or_create(&PhoneState { state: "asleep" }).inc_by(now.1 - self.terminals.1);
            self.terminals = now;
        }
    }
}

impl Drop for PhoneGauge {
    fn drop(&mut self) {
        self.set(None, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
    }

    #[test]
    fn phone_gauges_follow_each_task_and_forget_it_when_it_ends() {
        let metrics = Arc::new(SiteMetrics::new());
        let mut a = PhoneGauge::new(metrics.clone());
        let mut b = PhoneGauge::new(metrics.clone());
        a.set(Some(Census::Resident), 1, 0);
        b.set(Some(Census::Resident), 0, 2);
        b.set(Some(Census::Hibernated), 0, 2);
        let text = vmi_telemetry::encode(&metrics.registry).expect("encode");
        assert_eq!(sample(&text, r#"vmi_site_phones{state="resident"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, r#"vmi_site_phones{state="hibernated"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"vmi_site_terminals{state="asleep"}"#), Some(2.0));
        drop(b);
        a.set(Some(Census::Crashed), 0, 0);
        let text = vmi_telemetry::encode(&metrics.registry).expect("encode");
        for (state, n) in [("resident", 0.0), ("hibernated", 0.0), ("crashed", 1.0)] {
            assert_eq!(sample(&text, &format!(r#"vmi_site_phones{{state="{state}"}}"#)), Some(n), "{state}: {text}");
        }
        assert_eq!(sample(&text, r#"vmi_site_terminals{state="asleep"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"vmi_site_terminals{state="awake"}"#), Some(0.0));
    }
}
