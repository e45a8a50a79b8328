//! Failover on `vmi up`: the site running a phone stops answering while a terminal types: a stopped process (its
//! sockets stay open, it does nothing), or a site killed with SIGKILL that nobody restarts (a site of its own,
//! started by the test beside `vmi up`'s). The control service fails the phone over to its standby copy on another
//! site within the lease time; the terminal finds it there and resends what was not durable; every typed character
//! is there once and in order. The stopped site, let go again, finds its lease lapsed and the phone placed
//! elsewhere, and drops its copy instead of running it. The control service and the other sites keep running.
//! A site restarted while no other site can stand by keeps its phone durable on its own disk, and a failover
//! later never starts the copy its earlier life had sent.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use vmi_testkit::ChildGuard;

#[test]
fn a_killed_site_fails_over_and_the_terminal_loses_no_input() {
    let data = scratch_dir("failover-kill");
    let up = up(&data, &["--no-proxy"]);
    let operator = up.operator_token();
    // A fourth site, the test's own process: nobody restarts it when it is killed.
    let join = data.join("site-d.join");
    let made = up.vmi().args(["site", "join-token", "site-d", "--control", &up.control, "--out"]).arg(&join).output();
    assert!(made.expect("vmi runs").status.success(), "join token");
    let mut site_d = ChildGuard::spawn(
        up.vmi()
            .args([
                "site",
                "--id",
                "site-d",
                "--control",
                &up.control,
                "--lat",
                "60.17",
                "--lon",
                "24.94",
                "--data-dir",
            ])
            .arg(data.join("site-d"))
            .arg("--join")
            .arg(&join)
            .stdout(Stdio::null()),
    )
    .expect("site-d starts");
    wait_until(Duration::from_secs(30), "site-d registered and healthy", || site_url(&up, "site-d").is_some());
    let moved = up.vmi().args(["vm", "migrate", "demo", "--to", "site-d", "--control", &up.control]).output();
    let moved = moved.expect("vmi runs");
    assert!(moved.status.success(), "migrate: {}", String::from_utf8_lossy(&moved.stderr));
    let (owner, epoch) = placement(&up);
    assert_eq!(owner, "site-d");
    let others: Vec<String> = up.sites.iter().map(|(id, _)| id.clone()).collect();
    wait_for_standby(&up, &others);

    let (mut terminal, text) = typing_terminal(&up, &data);
    std::thread::sleep(Duration::from_secs(2));
    signal(site_d.id(), "-KILL");
    let killed_at = Instant::now();
    let _ = site_d.child().wait();
    let now_at = wait_for_failover(&up, &owner, epoch, &others, killed_at, "SIGKILL");
    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    let notes = fetch(&format!("{}/v1/phones/demo/kv/notes.text", up.site(&now_at)), Some(&operator));
    assert_eq!(notes, text, "every typed character once and in order");
    // The failover is in the audit log (where the operator's dashboard shows it), and counted.
    let audit = fetch(&format!("{}/v1/audit?user=demo", up.control), Some(&operator));
    let audit: serde_json::Value = serde_json::from_str(&audit).expect("json");
    assert!(
        audit.as_array().expect("entries").iter().any(|e| e["action"] == "FAILOVER" && e["site"] == now_at.as_str()),
        "{audit}"
    );
    let metrics = fetch(&format!("{}/metrics", up.control), Some(&operator));
    assert!(metrics.contains("vmi_control_failovers_total 1\n"), "{metrics}");
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_stopped_site_fails_over_and_the_terminal_loses_no_input() {
    let data = scratch_dir("failover");
    let up = up(&data, &["--no-proxy"]);
    let operator = up.operator_token();
    let (owner, epoch) = placement(&up);
    let others = sites_but(&up, &owner);
    let owner_pid = site_pid(&data, &owner).expect("the owner runs");
    let other_pids: Vec<u32> = others.iter().map(|id| site_pid(&data, id).expect("site runs")).collect();

    // A standby copy of the demo phone is on another site before anything else happens.
    wait_for_standby(&up, &others);

    let (mut terminal, text) = typing_terminal(&up, &data);
    std::thread::sleep(Duration::from_secs(2));
    signal(owner_pid, "-STOP");
    let stopped = Stopped(owner_pid);
    let stopped_at = Instant::now();

    // Failed over: placed on the standby site with a higher epoch, within the lease and a few seconds.
    let now_at = wait_for_failover(&up, &owner, epoch, &others, stopped_at, "SIGSTOP");

    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    let site_url = up.site(&now_at).to_string();
    let notes = fetch(&format!("{site_url}/v1/phones/demo/kv/notes.text"), Some(&operator));
    assert_eq!(notes, text, "every typed character once and in order");

    // The stopped site goes on: its lease lapsed, the phone is placed elsewhere, so it drops its copy.
    drop(stopped);
    let owner_url = up.site(&owner).to_string();
    // Its state of the phone removed too (the copy elsewhere is the phone).
    wait_until(Duration::from_secs(30), "the old site dropping its copy", || {
        try_fetch(&format!("{owner_url}/v1/phones"), Some(&operator))
            .is_ok_and(|list| !list.contains("\"user\":\"demo\""))
            && !data.join(&owner).join("phones/demo").exists()
    });
    // Still the same text: the old copy never ran again.
    let notes = fetch(&format!("{site_url}/v1/phones/demo/kv/notes.text"), Some(&operator));
    assert_eq!(notes, text);
    assert_eq!(site_pid(&data, &owner), Some(owner_pid), "the stopped site was not restarted");
    for (id, pid) in others.iter().zip(&other_pids) {
        assert_eq!(site_pid(&data, id), Some(*pid), "{id} kept running");
    }
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_site_restarted_with_no_standby_never_lets_a_failover_start_its_earlier_copy() {
    let data = scratch_dir("failover-restarted");
    let up = up(&data, &["--no-proxy"]);
    let operator = up.operator_token();
    let (owner, _) = placement(&up);
    let others = sites_but(&up, &owner);
    // The owner's current process names a standby copy on another site.
    wait_for_standby(&up, &others);
    let owner_pid = site_pid(&data, &owner).expect("the owner runs");

    let (mut terminal, text) = typing_terminal_of(&up, &data, 300);
    std::thread::sleep(Duration::from_secs(2));
    // No other site can take a record: both stop. The control service sees their leases lapse within 3 s; the
    // owner's record to the standby hangs for its 5 s timeout meanwhile.
    let others_stopped: Vec<Stopped> = others
        .iter()
        .map(|id| {
            let pid = site_pid(&data, id).expect("site runs");
            signal(pid, "-STOP");
            Stopped(pid)
        })
        .collect();
    wait_until(Duration::from_secs(10), "the other sites' leases lapsing", || others.iter().all(|id| !leased(&up, id)));
    // Killed before it gave up on the standby: `vmi up` starts it again, a process that never named a standby, while
    // the control service still names the copy the killed one sent.
    signal(owner_pid, "-KILL");
    wait_until(Duration::from_secs(30), "the owner started again", || {
        site_pid(&data, &owner).is_some_and(|pid| pid != owner_pid)
    });
    let restarted = site_pid(&data, &owner).expect("restarted");
    // It runs the phone again and keeps it durable on its own disk: its first full state, then journal records, each
    // acknowledged to the terminal as durable (no other site to stand by).
    let journal = data.join(&owner).join("phones/demo/journal");
    wait_until(Duration::from_secs(30), "records on the restarted owner's disk", || journal.exists());
    let records_at = journal.metadata().map(|m| m.len()).unwrap_or(0);
    wait_until(Duration::from_secs(10), "more records on the restarted owner's disk", || {
        journal.metadata().is_ok_and(|m| m.len() > records_at)
    });

    // The other sites come back and the owner stops: its lease lapses. A failover to the copy the earlier life
    // named would bring the phone back without what was typed since the restart.
    signal(restarted, "-STOP");
    let owner_stopped = Stopped(restarted);
    drop(others_stopped);
    wait_until(Duration::from_secs(10), "the owner's lease lapsing", || !leased(&up, &owner));
    // Two placer rounds past the lapse: the placer has looked at the owner's phones.
    std::thread::sleep(Duration::from_secs(2));
    drop(owner_stopped);

    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    let (now_at, _) = placement(&up);
    let notes = fetch(&format!("{}/v1/phones/demo/kv/notes.text", up.site(&now_at)), Some(&operator));
    assert_eq!(notes, text, "every typed character once and in order (placed on {now_at})");
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

/// Whether site `id` holds its lease, as the control service sees it.
fn leased(up: &Up, id: &str) -> bool {
    let sites: serde_json::Value = serde_json::from_str(&up.control_get("/v1/sites")).expect("sites JSON");
    sites.as_array().into_iter().flatten().any(|s| s["id"] == id && s["leased"] == true)
}
