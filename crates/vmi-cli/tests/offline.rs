//! Offline use from the command line, against `vmi up`: `vmi terminal checkout`,
//! `run-offline`, `checkin` bring offline edits back to the site; a second checkout is
//! refused while the first is out; `vmi vm checkout-cancel` breaks a lease.

mod common;

use common::*;

fn run(up: &Up, args: &[&str]) -> std::process::Output {
    up.vmi().args(args).output().expect("vmi runs")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn checkout_run_offline_checkin_and_cancel_from_the_command_line() {
    let data = scratch_dir("offline");
    let up = up(&data.join("sites"), &["--no-proxy"]);
    let (control, token, ca) = (up.control.clone(), up.token_file.clone(), up.ca_file.clone());
    let operator = up.operator_token();
    let site = up.site("site-a").to_string();
    let dir = data.join("offline").display().to_string();

    let out = run(
        &up,
        &[
            "--json",
            "terminal",
            "checkout",
            "--control",
            &control,
            "--token-file",
            &token,
            "--ca",
            &ca,
            "--lease",
            "2h",
            "--dir",
            &dir,
        ],
    );
    assert!(out.status.success(), "checkout: {}", stderr(&out));
    let checked_out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(checked_out["event"], "checked_out");
    assert!(!stderr(&out).contains('\r'), "no progress line when stderr is not a terminal");

    // One live copy: a second checkout is refused while the first is out.
    let other = data.join("other").display().to_string();
    let out = run(
        &up,
        &["terminal", "checkout", "--control", &control, "--token-file", &token, "--ca", &ca, "--dir", &other],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("(409)") && stderr(&out).contains("checked out to device"), "{}", stderr(&out));

    let script = data.join("notes.script");
    std::fs::write(&script, "tap 274 1090\ntype Offline from the CLI\n").expect("script");
    let shot = data.join("offline.png");
    let out = run(
        &up,
        &[
            "terminal",
            "run-offline",
            "--dir",
            &dir,
            "--script",
            &script.display().to_string(),
            "--screenshot",
            &shot.display().to_string(),
            "--cpu-slowdown",
            "2",
        ],
    );
    assert!(out.status.success(), "run-offline: {}", stderr(&out));
    assert!(shot.exists(), "the offline screen was saved");
    let out = run(&up, &["terminal", "checkin", "--dir", &dir, "--json"]);
    assert!(out.status.success(), "checkin: {}", stderr(&out));
    let checked_in: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(checked_in["event"], "checked_in");
    assert!(!stderr(&out).contains('\r'), "no progress line when stderr is not a terminal");
    assert_eq!(fetch(&format!("{site}/v1/phones/demo/kv/notes.text"), Some(&operator)), "Offline from the CLI");

    // A lost terminal: the operator breaks the lease and the phone resumes on its site.
    let out =
        run(&up, &["terminal", "checkout", "--control", &control, "--token-file", &token, "--ca", &ca, "--dir", &dir]);
    assert!(out.status.success(), "checkout again: {}", stderr(&out));
    let out = run(&up, &["vm", "checkout-cancel", "demo", "--control", &control]);
    assert!(out.status.success(), "cancel: {}", stderr(&out));
    let out = run(&up, &["terminal", "checkin", "--dir", &dir]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cancelled by an operator"), "{}", stderr(&out));
    assert_eq!(fetch(&format!("{site}/v1/phones/demo/kv/notes.text"), Some(&operator)), "Offline from the CLI");

    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
