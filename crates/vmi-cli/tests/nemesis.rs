//! `vmi nemesis`, CI-sized: at least 100 faults of every kind injected into `vmi up --cluster` while three
//! terminals type, and the checker's four properties hold over the histories (docs/CONTROL-PLANE.md). The
//! checker's power to catch violations is tested beside it (`nemesis::checker` unit tests).

mod common;

use common::*;

#[test]
fn a_hundred_faults_of_every_kind_leave_one_owner_per_epoch_and_every_durable_key_once_in_order() {
    assert!(vmi_cluster::Net::available(), "vmi nemesis needs root (network namespaces): run the tests as root");
    let data = scratch_dir("nemesis");
    let mut run = vmi_testkit::ChildGuard::spawn(
        vmi()
            .args(["nemesis", "--faults", "110", "--users", "3", "--json", "--data-dir"])
            .arg(&data)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    )
    .expect("vmi nemesis starts");
    // It bounds itself: every wait in a run has a deadline.
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut run.child().stdout.take().expect("stdout"), &mut stdout).expect("stdout");
    let status = run.child().wait().expect("vmi nemesis ends");
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no report; data in {}", data.display()));
    let report: serde_json::Value = serde_json::from_str(line).expect("the report is JSON");
    let checks = &report["checks"];
    for check in ["one_owner", "durable_inputs", "phones_live", "epochs_match"] {
        assert_eq!(checks[check]["passed"], true, "{check}: {:#}", checks[check]);
    }
    assert_eq!(report["passed"], true, "{report:#}");
    assert!(status.success(), "vmi nemesis exited with {status}");
    let faults = &report["faults"];
    assert_eq!(faults["total"], 110, "{faults}");
    for (kind, n) in faults["by_kind"].as_object().expect("by kind") {
        assert_eq!(n, 10, "{kind}: each of the 11 kinds in turn");
    }
    assert_eq!(faults["by_kind"].as_object().map(|k| k.len()), Some(11), "every kind of fault: {faults}");
    // The run did what it claims: phones changed hands, characters were typed and made durable, damaged chunks
    // were read back.
    assert!(checks["one_owner"]["checked"]["handoffs"].as_u64().unwrap_or(0) >= 3, "{checks:#}");
    assert!(checks["durable_inputs"]["checked"]["durable"].as_u64().unwrap_or(0) > 1000, "{checks:#}");
    let restores = report["corrupt_chunk_restores"].as_array().cloned().unwrap_or_default();
    assert!(restores.iter().any(|r| r["ok"] == true), "a damaged chunk read back and repaired: {report:#}");
    assert_eq!(report["corrupt_chunk_restores_failed"], 0, "{report:#}");
    let _ = std::fs::remove_dir_all(&data);
}
