//! Tenants and images from the command line against `vmi up`: a tenant's quota refuses a
//! phone with the quota in words, and an image is published, restarted onto and refused a
//! rollback with no earlier version.

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
    ok(&up, &["user", "create", "bob", "--tenant", "acme", "--control", c]);
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

    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
