//! `vmi up` as a supervisor: a site killed with SIGKILL is started again on the same address while the control
//! service and the other sites keep running, its phone back with what was typed before the kill (each phone's
//! state is kept durable while it runs), and Ctrl-C still stops everything cleanly.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The pid of the `vmi` process whose command line has all of `parts` (the data directory makes it this test's).
fn pid_of(parts: &[&str]) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if parts.iter().all(|p| args.iter().any(|a| a == p)) {
            return Some(pid);
        }
    }
    None
}

fn site_pid(data: &Path, id: &str) -> Option<u32> {
    let dir = data.join(id).display().to_string();
    pid_of(&["site", "--id", id, &dir])
}

#[test]
fn a_killed_site_is_started_again_and_the_rest_keep_running() {
    let data = scratch_dir("restart");
    // A hung service is killed after 5 s here (2 minutes by default).
    let up = up(&data, &["--no-proxy", "--hung-after-secs", "5"]);
    let control_db = data.join("control.db").display().to_string();
    let control = pid_of(&["control", &control_db]).expect("the control service runs");
    let (a, b) = (site_pid(&data, "site-a").expect("site-a runs"), site_pid(&data, "site-b").expect("site-b runs"));

    // Typed on the demo phone, then made durable by the site within about a second (no clean stop ever ran).
    let script = data.join("type.script");
    std::fs::write(&script, "tap 274 1090\ntype Typed before the crash\n").expect("script");
    let out = up
        .vmi()
        .args(["terminal", "--headless", "--control", &up.control, "--ca", &up.ca_file])
        .args(["--token-file", &up.token_file, "--script"])
        .arg(&script)
        .output()
        .expect("terminal runs");
    assert!(out.status.success(), "terminal: {}", String::from_utf8_lossy(&out.stderr));
    // The terminal ends once the site said every input is durable (on its disk and its standby copy).
    let events = String::from_utf8_lossy(&out.stdout);
    let highest = |kind: &str| {
        events
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == kind)
            .filter_map(|v| v["seq"].as_u64())
            .max()
    };
    let applied = highest("input_acked").expect("inputs were applied");
    assert_eq!(highest("input_durable"), Some(applied), "every applied input durable: {events}");

    let killed = std::process::Command::new("kill").args(["-9", &a.to_string()]).status().expect("kill");
    assert!(killed.success());
    // Started again (after half a second's back-off), on the same address.
    let site_a = up.site("site-a").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let restarted = loop {
        if let Some(pid) = site_pid(&data, "site-a").filter(|&p| p != a)
            && try_fetch(&format!("{site_a}/healthz"), None).is_ok_and(|body| body == "ok")
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "site-a was not started again within a minute");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(restarted, a);
    assert_eq!(pid_of(&["control", &control_db]), Some(control), "the control service kept running");
    assert_eq!(site_pid(&data, "site-b"), Some(b), "site-b kept running");
    // The phone came back with what was typed before the kill.
    let operator = up.operator_token();
    let listed = fetch(&format!("{site_a}/v1/phones"), Some(&operator));
    assert!(listed.contains("\"user\":\"demo\""), "{listed}");
    let notes = fetch(&format!("{site_a}/v1/phones/demo/kv/notes.text"), Some(&operator));
    assert_eq!(notes, "Typed before the crash");

    // A hung site (stopped: alive, answering nothing) misses its health checks, and is killed and started again.
    let site_b = up.site("site-b").to_string();
    let stopped = std::process::Command::new("kill").args(["-STOP", &b.to_string()]).status().expect("kill");
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if site_pid(&data, "site-b").is_some_and(|p| p != b)
            && try_fetch(&format!("{site_b}/healthz"), None).is_ok_and(|body| body == "ok")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the hung site-b was not started again within a minute");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!std::path::Path::new(&format!("/proc/{b}")).exists(), "the hung process is gone");
    assert_eq!(pid_of(&["control", &control_db]), Some(control), "the control service kept running");

    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

/// Stopping with a phone that cannot be written is a failure, not "saved 0 phones" and success.
#[test]
fn a_phone_that_cannot_be_saved_makes_the_stop_fail() {
    let data = scratch_dir("unsaveable");
    let up = up(&data, &["--no-proxy"]);
    // Where the demo phone's state would be written is taken by a directory (root ignores file modes). A write in
    // flight has the temporary file there for a moment: the obstacle goes in once it is gone.
    let obstacle = data.join("site-a/phones/demo/phone.state.tmp/in-the-way");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::create_dir_all(&obstacle).is_err() {
        assert!(Instant::now() < deadline, "no obstacle could be put at {}", obstacle.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    // A change the broken disk cannot take (a phone whose journal holds its state has nothing to write at a stop).
    let mailed = up
        .vmi()
        .args(["mail", "send", "--to", "demo", "--subject", "after the disk broke", "--control", &up.control])
        .status()
        .expect("vmi mail send");
    assert!(mailed.success());
    let status = up.stop();
    assert!(!status.success(), "vmi up said it stopped cleanly");
    let _ = std::fs::remove_dir_all(&data);
}
