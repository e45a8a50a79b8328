//! Traces under `vmi up --trace-file`: a migration, a checkpoint and a failover each appear as one trace across
//! the processes involved (the operator's command, the control service, the sites), with each process's spans
//! under its own service name and the spans linked parent to child across the processes; an anonymous caller's
//! `traceparent` is not taken up.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use vmi_testkit::otlp::{SpanSeen, descends, read_file};

/// Waits (30 s at most: each process writes its spans every second) until `found` finds what it looks for in the
/// trace file's spans; returns the spans and what it found.
fn wait_for<T>(file: &Path, what: &str, found: impl Fn(&[SpanSeen]) -> Option<T>) -> (Vec<SpanSeen>, T) {
    let mut seen = None;
    wait_until(Duration::from_secs(30), what, || {
        let spans = read_file(file);
        seen = found(&spans).map(|t| (spans, t));
        seen.is_some()
    });
    seen.expect("found above")
}

/// The first span `name` of `service` for which `also` holds.
fn span(spans: &[SpanSeen], service: &str, name: &str, also: impl Fn(&SpanSeen) -> bool) -> Option<SpanSeen> {
    spans.iter().find(|s| s.service == service && s.name == name && also(s)).cloned()
}

/// The spans of `of`'s trace named `name`, of `service` (and instance, when given).
fn in_trace<'a>(
    spans: &'a [SpanSeen],
    of: &SpanSeen,
    service: &str,
    instance: Option<&str>,
    name: &str,
) -> Vec<&'a SpanSeen> {
    spans
        .iter()
        .filter(|s| s.trace_id == of.trace_id && s.service == service && s.name == name)
        .filter(|s| instance.is_none_or(|i| s.instance.as_deref() == Some(i)))
        .collect()
}

#[test]
fn a_migration_a_checkpoint_and_a_failover_are_each_one_trace_across_the_processes() {
    let data = scratch_dir("traces");
    let file = data.join("traces.jsonl");
    let up = up(&data, &["--no-proxy", "--trace-file", file.to_str().expect("a UTF-8 path")]);
    let trace_file = ["--trace-file", file.to_str().expect("a UTF-8 path")];
    let vmi = |args: &[&str]| {
        let out = up.vmi().args(args).args(["--control", &up.control]).args(trace_file).output().expect("vmi runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // 1. A migration the operator orders: its command, the source's departure, the destination's arrival (a
    // child of the departure, across the WebSocket) and its commit at the control service.
    let (from, _) = placement(&up);
    let to = sites_but(&up, &from).remove(0);
    vmi(&["vm", "migrate", "demo", "--to", &to]);
    let (spans, (out, arrival)) =
        wait_for(&file, "the migration's spans on both sites and the control service", |spans| {
            let out = span(spans, "vmi-site", "migration.out", |s| s.text("vmi.to") == Some(to.as_str()))?;
            let arrival = span(spans, "vmi-site", "migration.in", |s| s.trace_id == out.trace_id)?;
            let commit = in_trace(spans, &out, "vmi-control", None, "PUT /v1/users/{user}/placement");
            commit.iter().any(|c| descends(spans, c, &arrival)).then_some((out, arrival))
        });
    assert_eq!(out.instance.as_deref(), Some(from.as_str()), "the source site's span");
    assert_eq!(out.text("vmi.outcome"), Some("committed"));
    assert!(out.int("vmi.downtime_us").is_some_and(|d| d > 0), "{out:?}");
    let command = in_trace(&spans, &out, "vmi", None, "vmi vm migrate");
    assert_eq!(command.len(), 1, "the operator's command is the trace's root: {spans:#?}");
    assert!(command[0].parent.is_empty() && descends(&spans, &out, command[0]));
    assert_eq!(arrival.instance.as_deref(), Some(to.as_str()), "the destination's span");
    assert!(descends(&spans, &arrival, &out), "the arrival is a child of the departure, across the WebSocket");
    let rounds = in_trace(&spans, &out, "vmi-site", Some(&from), "migration.round");
    assert!(!rounds.is_empty() && rounds.iter().all(|r| r.parent == out.span_id), "its pre-copy rounds");
    assert_eq!(in_trace(&spans, &out, "vmi-site", Some(&from), "migration.stop").len(), 1);

    // 2. A checkpoint, copied to another site: the command, the checkpoint, the replica's import under it, and
    // both sites' catalogue updates at the control service.
    vmi(&["vm", "checkpoints", "create", "demo"]);
    let (spans, (checkpoint, import)) = wait_for(&file, "the checkpoint's spans on both sites", |spans| {
        let checkpoint = span(spans, "vmi-site", "checkpoint", |s| s.instance.as_deref() == Some(to.as_str()))?;
        let import = span(spans, "vmi-site", "checkpoint.import", |s| s.trace_id == checkpoint.trace_id)?;
        let catalogue = in_trace(spans, &checkpoint, "vmi-control", None, "PUT /v1/users/{user}/checkpoints/{site}");
        let command = in_trace(spans, &checkpoint, "vmi", None, "vmi vm checkpoints");
        (catalogue.len() >= 2 && command.len() == 1).then_some((checkpoint, import))
    });
    let replica = checkpoint.text("vmi.replica").expect("copied to a second site").to_owned();
    assert_ne!(replica, to);
    let command = in_trace(&spans, &checkpoint, "vmi", None, "vmi vm checkpoints")[0].clone();
    assert!(descends(&spans, &checkpoint, &command), "the checkpoint is under the operator's command");
    assert_eq!(import.instance.as_deref(), Some(replica.as_str()), "the replica site's span");
    assert!(descends(&spans, &import, &checkpoint), "the import is in the checkpoint's trace, under it");

    // 3. A failover: the phone's site stops answering; the control service moves it to its standby copy and
    // orders the standby site to start it.
    let (owner, epoch) = placement(&up);
    assert_eq!(owner, to);
    let others = sites_but(&up, &owner);
    wait_for_standby(&up, &others);
    let pid = site_pid(&data, &owner).expect("the owner's process");
    signal(pid, "-STOP");
    let stopped = Stopped(pid);
    let standby = wait_for_failover(&up, &owner, epoch, &others, std::time::Instant::now(), "SIGSTOP");
    drop(stopped);
    let (spans, (failover, promote)) = wait_for(&file, "the failover's spans", |spans| {
        let failover = span(spans, "vmi-control", "failover", |s| s.text("vmi.to") == Some(standby.as_str()))?;
        let promote = span(spans, "vmi-site", "failover.promote", |s| s.trace_id == failover.trace_id)?;
        Some((failover, promote))
    });
    assert_eq!(failover.text("vmi.from"), Some(owner.as_str()));
    assert!(failover.parent.is_empty(), "the failover starts its trace");
    assert_eq!(promote.instance.as_deref(), Some(standby.as_str()), "the standby site's span");
    assert!(descends(&spans, &promote, &failover), "the promotion is under the failover, across processes");

    // Requests outside these operations (heartbeats, polls) started no trace of their own.
    assert_eq!(spans.iter().filter(|s| s.name.contains("heartbeat")).count(), 0, "no heartbeat traced");

    // An anonymous caller's traceparent is not taken up: a request with one, then a traced request to the same
    // site; once the second's span is in the file, the first's would be too (a process writes its spans in the
    // order they end).
    let foreign = "0af7651916cd43dd8448eb211c80319c";
    let site_url = up.site(&standby).to_owned();
    let host = site_url.split_once("://").map_or(site_url.as_str(), |(_, rest)| rest).trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).expect("the site answers");
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\ntraceparent: 00-{foreign}-b7ad6b7169203331-01\r\n\
         Connection: close\r\n\r\n"
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("sent");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    vmi(&["vm", "checkpoints", "list", "demo", "--site", &standby]);
    let (spans, ()) = wait_for(&file, "the listing's span at the standby site", |spans| {
        let listed = span(spans, "vmi", "vmi vm checkpoints", |s| s.trace_id != command.trace_id)?;
        let at_site = in_trace(spans, &listed, "vmi-site", Some(&standby), "GET /v1/phones/{user}/checkpoints");
        (!at_site.is_empty()).then_some(())
    });
    assert!(spans.iter().all(|s| s.trace_id != foreign), "an anonymous caller's trace was continued");
    up.interrupt();
}
