//! Traces under `vmi up --trace-file`: a migration, a checkpoint and a failover each appear as one trace across
//! the processes involved (the operator's command, the control service, the sites), with each process's spans
//! under its own service name and the spans linked parent to child across the processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use vmi_testkit::otlp::{SpanSeen, descends, read_file};

/// Waits (30 s at most: spans are written every second) until the trace file holds a span `name` of `service`
/// for which `also` holds, and returns the file's spans and that span.
fn wait_for_span(
    file: &Path,
    service: &str,
    name: &str,
    also: impl Fn(&SpanSeen) -> bool,
) -> (Vec<SpanSeen>, SpanSeen) {
    let mut found = None;
    wait_until(Duration::from_secs(30), &format!("a {name:?} span of {service}"), || {
        let spans = read_file(file);
        let span = spans.iter().find(|s| s.service == service && s.name == name && also(s)).cloned();
        found = span.map(|span| (spans, span));
        found.is_some()
    });
    found.expect("found above")
}

/// The spans of `span`'s trace named `name`, of `service` (and instance, when given).
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

    // 1. A migration the operator orders.
    let (from, _) = placement(&up);
    let to = sites_but(&up, &from).remove(0);
    let moved =
        up.vmi().args(["vm", "migrate", "demo", "--to", &to, "--control", &up.control]).args(trace_file).output();
    let moved = moved.expect("vmi runs");
    assert!(moved.status.success(), "migrate: {}", String::from_utf8_lossy(&moved.stderr));
    let (spans, out) = wait_for_span(&file, "vmi-site", "migration.out", |s| s.text("vmi.to") == Some(to.as_str()));
    assert_eq!(out.instance.as_deref(), Some(from.as_str()), "the source site's span");
    assert_eq!(out.text("vmi.outcome"), Some("committed"));
    assert!(out.int("vmi.downtime_us").is_some_and(|d| d > 0), "{out:?}");
    let command = in_trace(&spans, &out, "vmi", None, "vmi vm migrate");
    assert_eq!(command.len(), 1, "the operator's command is the trace's root: {spans:#?}");
    assert!(command[0].parent.is_empty() && descends(&spans, &out, command[0]));
    let (spans, arrival) = wait_for_span(&file, "vmi-site", "migration.in", |s| s.trace_id == out.trace_id);
    assert_eq!(arrival.instance.as_deref(), Some(to.as_str()), "the destination's span");
    assert!(descends(&spans, &arrival, &out), "the arrival is a child of the departure, across the WebSocket");
    let commit = in_trace(&spans, &out, "vmi-control", None, "PUT /v1/users/{user}/placement");
    assert!(commit.iter().any(|c| descends(&spans, c, &arrival)), "the destination's commit at the control service");
    let rounds = in_trace(&spans, &out, "vmi-site", Some(&from), "migration.round");
    assert!(!rounds.is_empty() && rounds.iter().all(|r| r.parent == out.span_id), "its pre-copy rounds");
    assert_eq!(in_trace(&spans, &out, "vmi-site", Some(&from), "migration.stop").len(), 1);

    // 2. A checkpoint, copied to another site.
    let taken =
        up.vmi().args(["vm", "checkpoints", "create", "demo", "--control", &up.control]).args(trace_file).output();
    let taken = taken.expect("vmi runs");
    assert!(taken.status.success(), "checkpoint: {}", String::from_utf8_lossy(&taken.stderr));
    let (_, checkpoint) =
        wait_for_span(&file, "vmi-site", "checkpoint", |s| s.instance.as_deref() == Some(to.as_str()));
    let replica = checkpoint.text("vmi.replica").expect("copied to a second site").to_owned();
    assert_ne!(replica, to);
    let (spans, import) = wait_for_span(&file, "vmi-site", "checkpoint.import", |s| s.trace_id == checkpoint.trace_id);
    assert_eq!(import.instance.as_deref(), Some(replica.as_str()), "the replica site's span");
    assert!(descends(&spans, &import, &checkpoint), "the import is in the checkpoint's trace, under it");
    let catalogue = in_trace(&spans, &checkpoint, "vmi-control", None, "PUT /v1/users/{user}/checkpoints/{site}");
    assert!(catalogue.len() >= 2, "both sites told the catalogue, in the same trace: {catalogue:#?}");

    // 3. A failover: the phone's site stops answering; the control service moves it to its standby copy.
    let (owner, epoch) = placement(&up);
    assert_eq!(owner, to);
    let others = sites_but(&up, &owner);
    wait_for_standby(&up, &others);
    let pid = site_pid(&data, &owner).expect("the owner's process");
    signal(pid, "-STOP");
    let stopped = Stopped(pid);
    let standby = wait_for_failover(&up, &owner, epoch, &others, std::time::Instant::now(), "SIGSTOP");
    drop(stopped);
    let (_, failover) = wait_for_span(&file, "vmi-control", "failover", |s| s.text("vmi.to") == Some(standby.as_str()));
    assert_eq!(failover.text("vmi.from"), Some(owner.as_str()));
    assert!(failover.parent.is_empty(), "the failover starts its trace");
    let (spans, promote) = wait_for_span(&file, "vmi-site", "failover.promote", |s| s.trace_id == failover.trace_id);
    assert_eq!(promote.instance.as_deref(), Some(standby.as_str()), "the standby site's span");
    assert!(descends(&spans, &promote, &failover), "the promotion is under the failover, across processes");

    // Requests outside these operations (heartbeats, polls) started no trace of their own.
    let heartbeats = spans.iter().filter(|s| s.name.contains("heartbeat")).count();
    assert_eq!(heartbeats, 0, "no heartbeat traced");
    up.interrupt();
}
