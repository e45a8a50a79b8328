//! Tenants and images from the command line against `vmi up`: a tenant's quota refuses a
//! phone with the quota in words, and an image is published, restarted onto and refused a
//! rollback with no earlier version.

mod common;

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    vmi().args(args).output().expect("vmi runs")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "vmi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "vmi {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_tenant_quota_refuses_a_phone_on_the_command_line() {
    let data = scratch_dir("tenants");
    let up = up(&data, &["--no-proxy"]);
    let c = up.control.as_str();

    ok(&["tenant", "create", "acme", "--max-phones", "1", "--max-memory", "1GiB", "--control", c]);
    ok(&["user", "create", "ann", "--tenant", "acme", "--control", c]);
    ok(&["user", "create", "bob", "--tenant", "acme", "--control", c]);
    ok(&["vm", "create", "ann", "--site", "site-a", "--control", c]);
    let refused = fails(&["vm", "create", "bob", "--site", "site-a", "--control", c]);
    assert!(refused.contains("tenant \"acme\" is at its quota of 1 phone"), "{refused}");
    let listed = ok(&["tenant", "list", "--control", c]);
    assert!(
        listed.lines().any(|l| l.starts_with("acme") && l.contains("1/1") && l.contains("64 MiB/1024 MiB")),
        "{listed}"
    );

    let published = ok(&["image", "publish", "phone", "--built-in", "--control", c]);
    assert!(published.starts_with("phone version 1 "), "{published}");
    ok(&["vm", "restart", "ann", "--control", c]);
    let refused = fails(&["image", "rollback", "phone", "--control", c]);
    assert!(refused.contains("no earlier version"), "{refused}");
    assert!(ok(&["image", "list", "--control", c]).contains("current"));

    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
