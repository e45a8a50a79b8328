//! Control replicas on etcd: two `vmi control` processes on one 3-member etcd cluster serve the same state, one of
//! them (elected through etcd) leads; when the leader is killed the other takes over within seconds, and the CLI,
//! given both URLs, keeps working; an etcd member killed (quorum kept) changes nothing the CLI sees.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{fetch, scratch_dir, try_fetch, vmi};
use vmi_testkit::ChildGuard;
use vmi_testkit::etcd::EtcdCluster;

/// A `vmi control` replica and the URL it announced.
struct Replica {
    process: ChildGuard,
    url: String,
}

fn start_replica(name: &str, etcd: &[String], state: &Path) -> Replica {
    let mut process = ChildGuard::spawn(
        vmi()
            .args(["control", "--listen", "127.0.0.1:0", "--replica", name, "--etcd", &etcd.join(",")])
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("vmi control starts");
    let stdout = process.child().stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let announced = lines.by_ref().map_while(Result::ok).find(|l| l.contains("\"listening\""));
    let event: serde_json::Value =
        serde_json::from_str(&announced.unwrap_or_else(|| panic!("replica {name} exited before listening")))
            .expect("a JSON event");
    std::thread::spawn(move || for _ in lines {});
    Replica { process, url: event["url"].as_str().expect("url").to_owned() }
}

/// Whether the replica at `url` says it leads (`None`: it does not answer).
fn leading(url: &str) -> Option<bool> {
    let body = try_fetch(&format!("{url}/v1/replica"), None).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["leading"].as_bool()
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn users(url: &str, token: &str) -> Vec<String> {
    let body = fetch(&format!("{url}/v1/users"), Some(token));
    let v: Vec<serde_json::Value> = serde_json::from_str(&body).expect("users");
    v.iter().map(|u| u["name"].as_str().expect("name").to_owned()).collect()
}

#[test]
fn two_replicas_share_state_and_the_survivor_takes_over_the_placer() {
    let mut etcd = EtcdCluster::start("replicas", 3);
    let state = scratch_dir("control-replicas");
    let endpoints = etcd.endpoints();
    // The first replica creates the CA and the operator credential; the second uses them.
    let first = start_replica("r1", &endpoints, &state);
    wait_for(Duration::from_secs(20), "r1 to lead", || leading(&first.url) == Some(true));
    let second = start_replica("r2", &endpoints, &state);
    wait_for(Duration::from_secs(20), "r2 to answer", || leading(&second.url).is_some());
    assert_eq!(leading(&second.url), Some(false), "one leader at a time");

    let credentials = state.join("operator.json");
    let token = {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&credentials).expect("operator.json")).expect("json");
        v["token"].as_str().expect("token").to_owned()
    };
    let both = format!("{},{}", first.url, second.url);
    let cli = |args: &[&str]| {
        let out = vmi().env("VMI_CREDENTIALS", &credentials).args(args).output().expect("vmi runs");
        assert!(out.status.success(), "vmi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // Written through one replica, read through the other: one state.
    cli(&["user", "create", "alice", "--control", &second.url]);
    assert_eq!(users(&first.url, &token), ["alice"]);

    // The leader dies: the other replica leads within seconds, and the CLI, given both URLs, still works.
    let Replica { process: leader, url: dead_url } = first;
    drop(leader);
    let took = wait_for(Duration::from_secs(15), "r2 to take over", || leading(&second.url) == Some(true));
    eprintln!("leader killed -> r2 leading after {} ms", took.as_millis());
    assert!(took < vmi_control::LEADER_TTL + Duration::from_secs(3), "took over in {took:?}");
    cli(&["user", "create", "bob", "--control", &format!("{dead_url},{}", second.url)]);
    assert_eq!(users(&second.url, &token), ["alice", "bob"]);

    // One etcd member of three dies: quorum holds and nothing changes for the CLI.
    etcd.kill(0);
    cli(&["user", "create", "carol", "--control", &both]);
    assert_eq!(users(&second.url, &token), ["alice", "bob", "carol"]);
    assert_eq!(leading(&second.url), Some(true));
    etcd.restart(0);
    drop(second);
}
