//! What every Seed VMI service tells its operators about itself: Prometheus metrics, and traces ([`trace`]).
//!
//! A service builds one [`Registry`] with [`registry`] (the process's own figures come with it), registers its
//! families under its prefix (`vmi_site_…`, `vmi_control_…`), counts its HTTP requests with [`HttpMetrics`] (a
//! middleware keyed by the matched route, never the raw path, so label values stay bounded), and answers
//! `GET /metrics` with [`exposition`] (OpenMetrics text, which Prometheus scrapes). Who may scrape is the
//! service's rule, not this crate's: both services put `/metrics` behind operator authentication.
//!
//! Conventions (<https://prometheus.io/docs/practices/naming/>): units in names (`_seconds`, `_bytes`),
//! counters end in `_total`, and no label carries a user, a device or anything else without a small bound.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

pub mod trace;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// The media type of [`exposition`]'s body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What went wrong telling the metrics.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A family could not be written out (a label value the text format cannot carry).
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// A registry with the process's own figures (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …,
/// the names every Prometheus client uses) already in it.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The registry's metrics as OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, TelemetryError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// `GET /metrics`'s answer: the registry as OpenMetrics text, or a 500 naming why not.
pub fn exposition(registry: &Registry) -> Response {
    match encode(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!("{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// Buckets for durations from 100 µs to about 26 s (each twice the one before): an input's frame and a
/// migration's downtime fall in the first ones, a checkpoint or a whole migration in the last.
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 19)
}

/// Buckets for sizes from 1 KiB to 16 GiB (each four times the one before).
pub fn bytes_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1024.0, 4.0, 13)
}

/// A request's labels: the route as the router matched it (`/v1/phones/{user}/mail`), or `unmatched`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route's template.
    pub route: String,
    /// The method, or `other` for one no route serves.
    pub method: &'static str,
    /// The answer's status code.
    pub status: u16,
}

/// A request's duration labels (the status left out: one histogram per route and method is enough).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route's template.
    pub route: String,
    /// The method.
    pub method: &'static str,
}

/// HTTP requests a service answered, by route and status, and how long they took.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    /// Registers `http_requests_total` and `http_request_duration_seconds` in `registry` (under its prefix).
    pub fn register(registry: &mut Registry) -> Arc<HttpMetrics> {
        let metrics = HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by route and method",
            metrics.durations.clone(),
        );
        Arc::new(metrics)
    }

    /// How many requests with these labels were answered (tests and benches read it back).
    pub fn count(&self, route: &str, method: &'static str, status: u16) -> u64 {
        self.requests.get_or_create(&RequestLabels { route: route.into(), method, status }).get()
    }
}

/// The middleware that counts each request (add it with `Router::layer` after the routes, so the matched route
/// is known): `axum::middleware::from_fn_with_state(http, vmi_telemetry::track)`.
pub async fn track(State(http): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    http.requests.get_or_create(&RequestLabels { route: route.clone(), method, status }).inc();
    http.durations.get_or_create(&RouteLabels { route, method }).observe(started.elapsed().as_secs_f64());
    response
}

/// A method as a label: the standard ones by name, anything else `other` (a client may send any token).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The process's CPU time, memory, threads and file descriptors, read from the kernel at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(process) = Process::read() else { return Ok(()) };
        let counter = ConstCounter::new(process.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", process.resident_bytes as f64),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", process.virtual_bytes as f64),
            ("process_open_fds", "Open file descriptors", process.open_fds as f64),
            ("process_threads", "Threads of the process", process.threads as f64),
            ("process_start_time_seconds", "Start time since the Unix epoch, in seconds", process.start_time_seconds),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    threads: u64,
    start_time_seconds: f64,
}

impl Process {
    /// The process now, or `None` where `/proc` cannot be read (then the family is left out, not made up).
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Process::parse(&stat, &boot, &statm, open_fds, ticks_per_second(), page_size())
    }

    /// From `/proc/self/stat` (proc(5): fields after the command's closing parenthesis), `/proc/stat`'s `btime`
    /// and `/proc/self/statm` (pages).
    fn parse(stat: &str, boot: &str, statm: &str, open_fds: u64, ticks: f64, page: u64) -> Option<Process> {
        // The command may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
        // Field n of proc(5) is fields[n - 3] here (pid and comm come before).
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let (utime, stime, threads, start_ticks) = (field(14)?, field(15)?, field(20)?, field(22)?);
        let btime: u64 = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
        let mut pages = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (size, resident) = (pages.next()??, pages.next()??);
        Some(Process {
            cpu_seconds: (utime + stime) as f64 / ticks,
            resident_bytes: resident * page,
            virtual_bytes: size * page,
            open_fds,
            threads,
            start_time_seconds: btime as f64 + start_ticks as f64 / ticks,
        })
    }
}

/// The resident memory of process `pid` (`None`: this process), in bytes, from `/proc/{pid}/statm`; `None` where
/// it cannot be read (the process is gone, or there is no `/proc`).
pub fn resident_bytes(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/statm".to_owned(), |pid| format!("/proc/{pid}/statm"));
    let statm = std::fs::read_to_string(path).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * page_size())
}

/// Clock ticks a second as `/proc` counts them (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// The page size `/proc/self/statm` counts in.
fn page_size() -> u64 {
    // SAFETY: as above.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests;
