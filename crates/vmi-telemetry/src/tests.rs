// A test's stand-in router, not a service's: nothing for the API reference to describe.
#![allow(clippy::disallowed_methods)]
use super::*;
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use tower_service::Service;

#[test]
fn a_process_line_is_read_past_a_command_with_spaces_and_parentheses() {
    // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    // cutime cstime priority nice num_threads itrealvalue starttime vsize rss ...
    let stat = "42 (vmi (site) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 1234 56 ...";
    let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
    let process = Process::parse(stat, boot, "300 20 5 1 0 40 0\n", 9, 100.0, 4096).expect("parses");
    assert_eq!(
        process,
        Process {
            cpu_seconds: 3.0,
            resident_bytes: 20 * 4096,
            virtual_bytes: 300 * 4096,
            open_fds: 9,
            threads: 7,
            start_time_seconds: 1_700_000_010.0,
        }
    );
    assert_eq!(Process::parse("42 (vmi) S 1", boot, "1 2", 0, 100.0, 4096), None, "a short line is no reading");
}

#[test]
fn the_process_reads_itself() {
    let process = Process::read().expect("/proc is there");
    assert!(process.resident_bytes > 1 << 20, "{process:?}");
    assert!(process.threads >= 1 && process.open_fds >= 3, "{process:?}");
    let text = encode(&registry()).expect("encodes");
    for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"] {
        assert!(text.lines().any(|l| l.starts_with(family)), "{family} in:\n{text}");
    }
}

#[tokio::test]
async fn requests_are_counted_by_their_route_not_their_path() {
    let mut registry = registry();
    let http = HttpMetrics::register(&mut registry);
    let mut app: Router = Router::new()
        .route("/v1/phones/{user}/mail", get(|| async { "sent" }))
        .layer(axum::middleware::from_fn_with_state(http.clone(), track));
    for (path, method) in [("/v1/phones/alice/mail", "GET"), ("/v1/phones/bob/mail", "GET"), ("/nowhere", "GET")] {
        let request = axum::http::Request::builder().method(method).uri(path).body(Body::empty()).expect("request");
        app.call(request).await.expect("answered");
    }
    assert_eq!(http.count("/v1/phones/{user}/mail", "GET", 200), 2);
    let text = encode(&registry).expect("encodes");
    assert!(
        text.contains(r#"http_requests_total{route="/v1/phones/{user}/mail",method="GET",status="200"} 2"#),
        "{text}"
    );
    assert!(!text.contains("alice"), "no user in any label:\n{text}");
    assert!(text.contains(r#"http_request_duration_seconds_count{route="/v1/phones/{user}/mail",method="GET"} 2"#));
    assert_eq!(http.count("unmatched", "GET", 404), 1, "a path no route serves counts under one label");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with EOF");
}

#[test]
fn resident_memory_grows_with_memory_touched_and_a_gone_process_has_none() {
    let before = resident_bytes(None).expect("this process's resident memory");
    let touched = vec![1u8; 64 << 20];
    let after = resident_bytes(Some(std::process::id())).expect("read by pid");
    assert!(after >= before + (32 << 20), "64 MiB touched: {before} -> {after}");
    assert!(std::hint::black_box(&touched).iter().all(|b| *b == 1));
    assert_eq!(resident_bytes(Some(u32::MAX)), None, "no such process");
}
