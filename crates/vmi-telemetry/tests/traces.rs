//! Traces out of a process, both ways an operator configures them: an OTLP/gRPC endpoint (a receiver started
//! here, as a Collector would be) and an OTLP JSON file. A client span's context travels in `traceparent` to a
//! service, whose middleware continues the trace in a server span for a trusted caller; a request without one,
//! an untrusted caller's and an unsampled context start none; spans of other crates stay out. One test: the
//! subscriber is the process's, set once.

// A test's stand-in router, not a service's: nothing for the API reference to describe.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tower_service::Service;
use vmi_telemetry::trace::{self, TraceExport, TracedService};
use vmi_testkit::otlp::{SpanSeen, spans_of};

/// An OTLP receiver keeping what it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn one<'a>(spans: &'a [SpanSeen], name: &str) -> &'a SpanSeen {
    let found: Vec<&SpanSeen> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} in {spans:#?}");
    found[0]
}

#[test]
fn spans_cross_processes_in_traceparent_and_reach_the_file_and_the_collector() {
    let scratch = vmi_testkit::scratch_dir("traces");
    let file = scratch.join("traces.jsonl");
    // The receiver on a port bound here and handed over.
    let receiver = Receiver::default();
    let collector = tokio::runtime::Runtime::new().expect("runtime");
    let listener = collector.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    collector.spawn(serving);

    assert_eq!(trace::traceparent(), None, "nothing exported yet: no context to send");
    let export = TraceExport { otlp_endpoint: Some(endpoint), file: Some(file.clone()) };
    let service = TracedService { name: "vmi-test", instance: Some("site-t".into()) };
    let tracing = trace::install(tracing_subscriber::EnvFilter::new("off"), false, &service, &export).expect("install");
    assert!(trace::exporting());

    // The service side: a route answering with the context its handler runs in, behind a stand-in for a
    // service's authentication (which marks the callers it trusts).
    let mut app: Router = Router::new()
        .route("/v1/phones/{user}/mail", get(|| async { trace::traceparent().unwrap_or_default() }))
        .layer(axum::middleware::from_fn(trace::accept))
        .layer(axum::middleware::from_fn(|mut request: axum::extract::Request, next: axum::middleware::Next| async {
            if request.headers().contains_key("x-trusted") {
                request.extensions_mut().insert(trace::Trusted);
            }
            next.run(request).await
        }));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut call_as = |traceparent: Option<&str>, trusted: bool| {
        let mut request = axum::http::Request::builder().uri("/v1/phones/alice/mail?x=1");
        if let Some(value) = traceparent {
            request = request.header(trace::TRACEPARENT, value);
        }
        if trusted {
            request = request.header("x-trusted", "1");
        }
        let response = runtime.block_on(app.call(request.body(Body::empty()).expect("request"))).expect("answered");
        let body = runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 10)).expect("body");
        String::from_utf8(body.to_vec()).expect("text")
    };

    // Outside any span: no client span, no header, and a request without one starts no server span.
    assert!(trace::client_span("GET", "/v1/phones/alice/mail").is_none());
    assert_eq!(call_as(None, true), "", "a request carrying no trace runs in none");
    let (sent, answered) = {
        let root = tracing::info_span!(target: "vmi_test", "test.root");
        let _in_root = root.enter();
        // Another crate's span is not exported.
        let _theirs = tracing::info_span!(target: "hyper", "theirs").entered();
        let client = trace::client_span("GET", "/v1/phones/alice/mail?x=1").expect("in a trace: a client span");
        let _in_client = client.enter();
        let sent = trace::traceparent().expect("the client span's context");
        // In this process the handler sees the caller's own span; a server span would be a new one.
        assert_eq!(call_as(Some(&sent), false), sent, "an untrusted caller's trace is not continued");
        (sent.clone(), call_as(Some(&sent), true))
    };
    // 00-TRACEID-SPANID-01: the same trace, the server's own span.
    let part = |v: &str, i: usize| v.split('-').nth(i).map(str::to_owned).expect("traceparent has four parts");
    assert_eq!(part(&answered, 1), part(&sent, 1), "the service continued the caller's trace: {answered}");
    assert_ne!(part(&answered, 2), part(&sent, 2), "in a span of its own");
    assert_eq!(call_as(Some("00-not-a-context-01"), true), "", "a malformed traceparent is no trace");
    let unsampled = format!("00-{}-{}-00", part(&sent, 1), part(&sent, 2));
    assert_eq!(call_as(Some(&unsampled), true), "", "a caller cannot switch a trace's sampling off");

    // Shutting down sends what is buffered, to both.
    drop(tracing);
    assert!(!trace::exporting());
    let collected: Vec<serde_json::Value> =
        receiver.0.lock().expect("lock").iter().map(|r| serde_json::to_value(r).expect("OTLP JSON")).collect();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .expect("the trace file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line one OTLP JSON request"))
        .collect();
    for (how, requests) in [("collector", collected), ("file", lines)] {
        let spans = spans_of(&requests);
        assert_eq!(spans.len(), 3, "{how}: the root, the client and the server span only: {spans:#?}");
        let (root, client, server) =
            (one(&spans, "test.root"), one(&spans, "GET"), one(&spans, "GET /v1/phones/{user}/mail"));
        assert!(spans.iter().all(|s| s.service == "vmi-test" && s.instance.as_deref() == Some("site-t")), "{how}");
        assert!(spans.iter().all(|s| s.trace_id == root.trace_id), "{how}: one trace: {spans:#?}");
        assert_eq!((client.parent.as_str(), server.parent.as_str()), (root.span_id.as_str(), client.span_id.as_str()));
        assert_eq!(root.parent, "", "{how}: the root has no parent");
        assert_eq!(server.span_id, part(&answered, 2), "{how}: the span the handler ran in");
        assert_eq!(server.text("http.route"), Some("/v1/phones/{user}/mail"), "{how}");
        assert_eq!(server.int("http.response.status_code"), Some(200), "{how}: {:?}", server.attributes);
        assert_eq!(client.text("url.path"), Some("/v1/phones/alice/mail"), "{how}: no query");
    }
}
