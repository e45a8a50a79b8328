//! Tenants and images from the command line against `vmi up`: a tenant's quota refuses a
//! phone with the quota in words, and an image is published, restarted onto and refused a
//! rollback with no earlier version. The same commands with `--json` print JSON only, and
//! `vmi site drain` empties a site.

mod common;

use common::*;

fn run(up: &Up, args: &[&str]) -> std::process::Output {
    up.vmi().args(args).output().expect("vmi runs")
}

fn ok(up: &Up, args: &[&str]) -> String {
    let out = run(up, args);
    assert!(out.status.success(), "vmi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `vmi ARGS` with `--json`: its stdout as one JSON document, with no progress line on stderr (not a terminal).
fn json(up: &Up, args: &[&str]) -> serde_json::Value {
    let out = run(up, &[&["--json"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmi --json {args:?}: {stderr}");
    assert!(!stderr.contains('\r'), "vmi --json {args:?} drew a progress line: {stderr:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("vmi --json {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn fails(up: &Up, args: &[&str]) -> String {
    let out = run(up, args);
    assert!(!out.status.success(), "vmi {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_tenant_quota_refuses_a_phone_on_the_command_line() {
    let data = scratch_dir("tenants");
    let up = up(&data, &["--no-proxy"]);
    let c = up.control.as_str();

    ok(&up, &["tenant", "create", "acme", "--max-phones", "1", "--max-memory", "1GiB", "--control", c]);
    ok(&up, &["user", "create", "ann", "--tenant", "acme", "--control", c]);
    let bob = json(&up, &["user", "create", "bob", "--tenant", "acme", "--control", c]);
    assert_eq!((bob["name"].as_str(), bob["tenant"].as_str()), (Some("bob"), Some("acme")), "{bob}");
    ok(&up, &["vm", "create", "ann", "--site", "site-a", "--control", c]);
    let refused = fails(&up, &["vm", "create", "bob", "--site", "site-a", "--control", c]);
    assert!(refused.contains("tenant \"acme\" is at its quota of 1 phone"), "{refused}");
    let listed = ok(&up, &["tenant", "list", "--control", c]);
    assert!(
        listed.lines().any(|l| l.starts_with("acme") && l.contains("1/1") && l.contains("64 MiB/1024 MiB")),
        "{listed}"
    );

    let published = ok(&up, &["image", "publish", "phone", "--built-in", "--control", c]);
    assert!(published.starts_with("phone version 1 "), "{published}");
    ok(&up, &["vm", "restart", "ann", "--control", c]);
    let refused = fails(&up, &["image", "rollback", "phone", "--control", c]);
    assert!(refused.contains("no earlier version"), "{refused}");
    assert!(ok(&up, &["image", "list", "--control", c]).contains("current"));

    // The same commands for programs.
    let tenants = json(&up, &["tenant", "list", "--control", c]);
    assert!(tenants.as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "acme" && t["phones"] == 1)), "{tenants}");
    // The same bytes again: the version that has them.
    let version = json(&up, &["image", "publish", "phone", "--built-in", "--control", c]);
    assert_eq!((version["name"].as_str(), version["version"].as_u64()), (Some("phone"), Some(1)), "{version}");
    let versions = json(&up, &["image", "list", "--control", c]);
    assert!(versions.as_array().is_some_and(|v| v.len() == 1 && v[0]["current"] == true), "{versions}");
    let restarted = json(&up, &["vm", "restart", "ann", "--control", c]);
    assert!(restarted["to"].is_object(), "the site's report: {restarted}");
    let carl = json(&up, &["user", "create", "carl", "--control", c]);
    assert_eq!(carl["name"], "carl");
    let created = json(&up, &["vm", "create", "carl", "--site", "site-a", "--control", c]);
    assert_eq!((created["user"].as_str(), created["site"].as_str()), (Some("carl"), Some("site-a")), "{created}");

    // Draining site-a moves its phones (demo's, ann's and carl's) away and waits until it has none.
    let on = |site: &str| {
        let phones = json(&up, &["vm", "list", "--control", c]);
        phones.as_array().expect("a list").iter().filter(|p| p["site"] == site && p["user"].is_string()).count()
    };
    assert_eq!(on("site-a"), 3, "demo, ann and carl on site-a");
    let drained = json(&up, &["site", "drain", "site-a", "--timeout", "60", "--control", c]);
    assert_eq!((drained["site"].as_str(), drained["phones"].as_u64()), (Some("site-a"), Some(0)), "{drained}");
    assert_eq!(on("site-a"), 0, "every phone left site-a");
    assert_eq!(on("site-b") + on("site-c"), 3, "and runs on another site");
    let undrained = json(&up, &["site", "undrain", "site-a", "--control", c]);
    assert_eq!((undrained["id"].as_str(), undrained["draining"].as_bool()), (Some("site-a"), Some(false)));
    // Without waiting: the site is marked, and the answer says so at once.
    let marked = json(&up, &["site", "drain", "site-c", "--no-wait", "--control", c]);
    assert_eq!((marked["id"].as_str(), marked["draining"].as_bool()), (Some("site-c"), Some(true)), "{marked}");
    json(&up, &["site", "undrain", "site-c", "--control", c]);

    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
