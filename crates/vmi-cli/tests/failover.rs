//! Failover on `vmi up`: the site running a phone stops answering while a terminal types: a stopped process (its
//! sockets stay open, it does nothing), or a site killed with SIGKILL that nobody restarts (a site of its own,
//! started by the test beside `vmi up`'s). The control service fails the phone over to its standby copy on another
//! site within the lease time; the terminal finds it there and resends what was not durable; every typed character
//! is there once and in order. The stopped site, let go again, finds its lease lapsed and the phone placed
//! elsewhere, and drops its copy instead of running it. The control service and the other sites keep running.

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
