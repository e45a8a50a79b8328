//! Traces: a migration, a checkpoint or a failover as one trace across the processes it touches.
//!
//! Spans are ordinary `tracing` spans; when an operator configures an export ([`TraceExport`]: an OTLP/gRPC
//! endpoint, an OTLP JSON file, or both), [`install`] adds a `tracing-opentelemetry` layer that turns the spans of
//! this project's crates into OpenTelemetry spans and a batch processor sends them out. Off by default: without
//! an export no layer is installed, the spans are disabled at their call sites, and [`traceparent`] answers
//! `None` at once.
//!
//! Across processes the W3C Trace Context travels in the `traceparent` header: the HTTP client and the
//! migration WebSocket put the current span's context in it ([`traceparent`]), and [`accept`], a middleware on
//! both services, continues the trace in a server span, for callers the service marked [`Trusted`] once it
//! authenticated them (the operator, a site, the control service): a device or an anonymous caller cannot write
//! into the operator's traces, or switch a trace's sampling off. A request that carries no `traceparent` gets
//! no span (heartbeats and polls would bury the traces worth reading); the operations worth a trace start their
//! own root span where they begin.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The header W3C Trace Context travels in.
pub const TRACEPARENT: &str = "traceparent";

/// How long a process's end waits for its last spans to go out: an unreachable collector must not hold up a
/// command's exit for long.
const LAST_SPANS_WAIT: Duration = Duration::from_secs(2);

/// Put in a request's extensions by a service's authentication when the caller may continue a trace there (the
/// operator, a site, the control service): see [`accept`].
#[derive(Debug, Clone, Copy)]
pub struct Trusted;

/// Whether spans are exported: set once by [`install`], read by every outgoing request.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Where spans go; nothing set, nowhere (tracing off).
#[derive(Debug, Clone, Default)]
pub struct TraceExport {
    /// An OTLP/gRPC endpoint (`http://collector:4317`): an OpenTelemetry Collector, Jaeger, Tempo.
    pub otlp_endpoint: Option<String>,
    /// A file the spans are appended to as OTLP JSON, one export request a line (the format the Collector's
    /// file exporter writes and its `otlpjsonfile` receiver reads). Processes may share one file.
    pub file: Option<PathBuf>,
}

impl TraceExport {
    /// Whether any export is configured.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some() || self.file.is_some()
    }
}

/// Who is tracing: the `service.name` and `service.instance.id` of the spans' resource.
#[derive(Debug, Clone)]
pub struct TracedService {
    /// `vmi-control`, `vmi-site`, `vmi` (a CLI command).
    pub name: &'static str,
    /// A site's id; the control service's replica.
    pub instance: Option<String>,
}

/// What went wrong setting up traces.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The trace file could not be opened for appending.
    #[error("cannot open the trace file {path}: {source}")]
    File {
        /// The file named.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// The OTLP exporter could not be built (a malformed endpoint).
    #[error("cannot export traces to {endpoint}: {reason}")]
    Otlp {
        /// The endpoint named.
        endpoint: String,
        /// Why not.
        reason: String,
    },
    /// The runtime the OTLP exporter's connection runs on could not start.
    #[error("cannot start the trace exporter's runtime: {0}")]
    Runtime(std::io::Error),
    /// Logging (or tracing) was already set up in this process.
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// Keeps the export running; dropping it sends the spans still buffered and stops the export.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
    /// The OTLP exporter's connection lives on its own small runtime, apart from the service's (and from its
    /// absence: a CLI command may have none).
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(LAST_SPANS_WAIT) {
                eprintln!("traces: the last spans may be lost: {e}");
            }
        }
    }
}

/// Sets up this process's logging (to stderr, filtered by `log_filter`, coloured when `ansi`) and, when
/// `export` names a destination, its traces. Call once, first thing.
pub fn install(
    log_filter: EnvFilter,
    ansi: bool,
    service: &TracedService,
    export: &TraceExport,
) -> Result<Tracing, TraceError> {
    // Each layer its own filter: the log's level says nothing about which spans a trace needs.
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(log_filter);
    if !export.enabled() {
        tracing_subscriber::registry().with(log).try_init().map_err(|_| TraceError::AlreadySet)?;
        return Ok(Tracing { provider: None, _runtime: None });
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource(service));
    let mut runtime = None;
    if let Some(path) = &export.file {
        let file = OtlpJsonFile::open(path.clone())?;
        // A file is cheap to write: every second, so a trace is readable soon after it ends.
        let config = BatchConfigBuilder::default().with_scheduled_delay(Duration::from_secs(1)).build();
        provider = provider.with_span_processor(BatchSpanProcessor::builder(file).with_batch_config(config).build());
    }
    if let Some(endpoint) = &export.otlp_endpoint {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vmi-trace-export")
            .enable_all()
            .build()
            .map_err(TraceError::Runtime)?;
        let exporter = {
            let _entered = rt.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TraceError::Otlp { endpoint: endpoint.clone(), reason: e.to_string() })?
        };
        provider = provider.with_batch_exporter(exporter);
        runtime = Some(rt);
    }
    let provider = provider.build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("vmi"))
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(
            FilterFn::new(|meta| {
                // This project's spans, and its warnings and errors as events on them; not its dependencies'.
                meta.target().starts_with("vmi")
                    && if meta.is_span() {
                        *meta.level() <= tracing::Level::INFO
                    } else {
                        *meta.level() <= tracing::Level::WARN
                    }
            })
            .with_max_level_hint(tracing::level_filters::LevelFilter::INFO),
        );
    tracing_subscriber::registry().with(log).with(spans).try_init().map_err(|_| TraceError::AlreadySet)?;
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Tracing { provider: Some(provider), _runtime: runtime })
}

fn resource(service: &TracedService) -> Resource {
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over this process's own names, as in every
    // OpenTelemetry SDK.
    let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty());
    let mut resource = Resource::builder_empty().with_service_name(name.unwrap_or_else(|| service.name.to_owned()));
    if let Some(instance) = &service.instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance.clone()));
    }
    resource
        .with_detectors(&[
            Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector),
            Box::new(opentelemetry_sdk::resource::EnvResourceDetector::new()),
        ])
        .build()
}

/// Whether spans are being exported by this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The current span's context as a `traceparent` header value, when this process exports traces and the current
/// span is in one.
pub fn traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0.take()
}

/// A span for an outgoing request (`otel.kind = client`) when the caller is in a trace; `None` otherwise, so
/// heartbeats and polls outside a trace start none. Named by the method alone, as OpenTelemetry's HTTP
/// conventions name a client span without a route template; the path (without its query) is `url.path`.
pub fn client_span(method: &str, url_path: &str) -> Option<tracing::Span> {
    if !exporting() || !tracing::Span::current().context().span().span_context().is_valid() {
        return None;
    }
    let path = url_path.split('?').next().unwrap_or(url_path);
    Some(tracing::info_span!(
        target: "vmi_telemetry::http",
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        http.request.method = %method,
        url.path = %path,
    ))
}

/// Marks the current span as failed (`otel.status_code = error`), for a span that declared the field.
pub fn failed(span: &tracing::Span) {
    span.record("otel.status_code", "error");
}

/// Runs `future` in `span` when there is one.
pub async fn in_span<F: std::future::Future>(span: Option<tracing::Span>, future: F) -> F::Output {
    match span {
        Some(span) => future.instrument(span).await,
        None => future.await,
    }
}

/// The middleware continuing a trace a request carries (`traceparent`) when the service's authentication marked
/// its caller [`Trusted`]: the handler runs in a server span, a child of the caller's. Other requests run as
/// before. Goes inside the service's authentication.
pub async fn accept(request: Request, next: Next) -> Response {
    if !exporting() || request.extensions().get::<Trusted>().is_none() {
        return next.run(request).await;
    }
    let Some(parent) = remote_context(request.headers()) else {
        return next.run(request).await;
    };
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("(unmatched)", |m| m.as_str()).to_owned();
    let span = tracing::info_span!(
        target: "vmi_telemetry::http",
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    let response = next.run(request).instrument(span.clone()).await;
    // As an integer attribute (a u64 would be written as text).
    span.record("http.response.status_code", i64::from(response.status().as_u16()));
    if response.status().is_server_error() {
        failed(&span);
    }
    response
}

/// The trace context `headers` carry, if a valid and sampled one (a caller cannot switch a trace off).
pub fn remote_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let span = context.span().span_context().clone();
    (span.is_valid() && span.is_sampled()).then_some(context)
}

/// Holds the one header the W3C propagator writes.
#[derive(Default)]
struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Appends each batch of spans to a file as one OTLP JSON `ExportTraceServiceRequest` a line.
#[derive(Debug)]
struct OtlpJsonFile {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
    resource: ResourceAttributesWithSchema,
}

impl OtlpJsonFile {
    fn open(path: PathBuf) -> Result<OtlpJsonFile, TraceError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TraceError::File { path: path.clone(), source })?;
        Ok(OtlpJsonFile {
            path,
            file: Arc::new(Mutex::new(file)),
            resource: ResourceAttributesWithSchema::from(&Resource::builder_empty().build()),
        })
    }

    fn write(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request =
            ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, &self.resource) };
        let mut line = serde_json::to_vec(&request).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        line.push(b'\n');
        // One write of a whole line to a file opened for appending: processes sharing the file on a local file
        // system do not interleave their lines (a write cut short by a full disk can leave a line unended).
        let mut file = self.file.lock().map_err(|_| OTelSdkError::InternalFailure("trace file lock".into()))?;
        file.write_all(&line)
            .map_err(|e| OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display())))
    }
}

impl SpanExporter for OtlpJsonFile {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.write(batch)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = ResourceAttributesWithSchema::from(resource);
    }
}
