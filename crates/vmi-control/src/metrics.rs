//! What the control service tells its operators in `GET /metrics` (Prometheus; operator only): its sites by
//! health and their phones, each tenant's admitted phones, admissions, heartbeats, terminal reports, the placer's
//! orders and failovers, the migrations sites report, and its HTTP requests and process ([`vmi_telemetry`]).
//! docs/OPERATIONS.md lists every family.
//!
//! Counters move where the thing happens; the site and tenant gauges are read from the store at each scrape (one
//! listing of each: bounded by the sites and tenants there are, never by users).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use vmi_telemetry::{HttpMetrics, Registry};

use crate::store::Store;

/// A family's label set: one fixed word.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Outcome {
    /// The word.
    pub outcome: &'static str,
}

/// A site's health as the `vmi_control_sites` gauge counts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SiteState {
    /// healthy, unhealthy (no heartbeat within a lease), draining or degraded.
    pub state: &'static str,
}

/// One site.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SiteLabel {
    /// Its id.
    pub site: String,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TenantLabel {
    /// Its name.
    pub tenant: String,
}

/// The control service's metric families.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub http: Arc<HttpMetrics>,
    admissions: Family<Outcome, Counter>,
    heartbeats: Counter,
    reports: Counter,
    migrations: Family<Outcome, Counter>,
    migration_downtime: Histogram,
    orders: Family<Outcome, Counter>,
    failovers: Counter,
    sites: Family<SiteState, Gauge>,
    site_phones: Family<SiteLabel, Gauge>,
    tenant_phones: Family<TenantLabel, Gauge>,
}

impl ControlMetrics {
    /// The families, registered (`vmi_control_…`, `vmi_http_…`, `process_…`).
    pub fn new() -> ControlMetrics {
        let mut registry = vmi_telemetry::registry();
        let http = HttpMetrics::register(registry.sub_registry_with_prefix("vmi"));
        let m = ControlMetrics {
            registry: Registry::default(),
            http,
            admissions: Family::default(),
            heartbeats: Counter::default(),
            reports: Counter::default(),
            migrations: Family::default(),
            migration_downtime: Histogram::new(vmi_telemetry::seconds_buckets()),
            orders: Family::default(),
            failovers: Counter::default(),
            sites: Family::default(),
            site_phones: Family::default(),
            tenant_phones: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("vmi_control");
        r.register("admissions", "New phones asked for by sites, by outcome (admitted, refused)", m.admissions.clone());
        r.register("heartbeats", "Site heartbeats answered", m.heartbeats.clone());
        r.register("terminal_reports", "Terminal position and round-trip reports received", m.reports.clone());
        r.register("migrations", "Live migrations sites reported, by outcome", m.migrations.clone());
        r.register(
            "migration_downtime_seconds",
            "Committed migrations' downtime, as their source sites measured it",
            m.migration_downtime.clone(),
        );
        r.register(
            "placement_orders",
            "Migrate orders the placer sent, by outcome (committed, failed)",
            m.orders.clone(),
        );
        r.register("failovers", "Phones the placer failed over to their standby copy", m.failovers.clone());
        r.register("sites", "Registered sites by state (healthy, unhealthy, draining, degraded)", m.sites.clone());
        r.register("site_phones", "Phones each site runs, as its last heartbeat said", m.site_phones.clone());
        r.register("tenant_phones", "Phones admitted for each tenant's users", m.tenant_phones.clone());
        ControlMetrics { registry, ..m }
    }

    /// The registry as OpenMetrics text, the site and tenant gauges read from `store` first (left as they were,
    /// and the reason logged, if the store cannot be read).
    pub fn exposition(&self, store: &dyn Store, now_ms: u64) -> axum::response::Response {
        match store.list_sites() {
            Ok(sites) => {
                self.sites.clear();
                self.site_phones.clear();
                for state in ["healthy", "unhealthy", "draining", "degraded"] {
                    self.sites.get_or_create(&SiteState { state }).set(0);
                }
                for s in &sites {
                    let healthy = s
                        .last_heartbeat_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) <= vmi_control_api::model::LEASE_MS);
                    let state = match () {
                        _ if s.draining => "draining",
                        _ if s.degraded.is_some() => "degraded",
                        _ if healthy => "healthy",
                        _ => "unhealthy",
                    };
                    self.sites.get_or_create(&SiteState { state }).inc();
                    self.site_phones.get_or_create(&SiteLabel { site: s.id.clone() }).set(i64::from(s.phones));
                }
            }
            Err(e) => tracing::warn!("metrics: cannot list the sites: {e}"),
        }
        match store.tenants() {
            Ok(tenants) => {
                self.tenant_phones.clear();
                for t in tenants {
                    self.tenant_phones.get_or_create(&TenantLabel { tenant: t.tenant.name }).set(i64::from(t.phones));
                }
            }
            Err(e) => tracing::warn!("metrics: cannot list the tenants: {e}"),
        }
        vmi_telemetry::exposition(&self.registry)
    }

    /// A site asked to admit a new phone.
    pub fn admission(&self, admitted: bool) {
        let outcome = if admitted { "admitted" } else { "refused" };
        self.admissions.get_or_create(&Outcome { outcome }).inc();
    }

    /// A heartbeat was answered.
    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// A terminal report came in.
    pub fn report(&self) {
        self.reports.inc();
    }

    /// A site reported a migration.
    pub fn migration(&self, record: &vmi_control_api::MigrationRecord) {
        let outcome = if record.outcome == "committed" { "committed" } else { "aborted" };
        self.migrations.get_or_create(&Outcome { outcome }).inc();
        if outcome == "committed" {
            self.migration_downtime.observe(record.downtime_us as f64 / 1e6);
        }
    }

    /// A placer's migrate order ended.
    pub fn order(&self, committed: bool) {
        let outcome = if committed { "committed" } else { "failed" };
        self.orders.get_or_create(&Outcome { outcome }).inc();
    }

    /// The placer failed `n` phones over.
    pub fn failed_over(&self, n: usize) {
        self.failovers.inc_by(n as u64);
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics::new()
    }
}
