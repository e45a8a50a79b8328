//! Control replicas on etcd: two `vmi control` processes on one 3-member etcd cluster serve the same state, one of
//! them (elected through etcd) leads; when the leader is killed the other takes over within seconds, and the CLI,
//! given both URLs, keeps working; an etcd member killed (quorum kept) changes nothing the CLI sees.
//!
//! Then `vmi up --etcd --replicas 2` with a terminal typing: the leader killed in the middle of a failover and of
//! a migration, and an etcd member killed, leave the phone in one place with every typed character.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
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
            // etcd's history kept a second: the leader compacts all along while the test runs.
            .args(["--etcd-keep-history", "1"])
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

/// A raw POST on loopback with a bearer token: the status and the body.
fn post(url: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).expect("http(s) url");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("answer");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
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

    // A terminal's report to one replica reaches the other's memory (batched through etcd), and a device revoked
    // through one is refused by the other as soon as its watch hears of it, though the other had its token cached.
    let (status, body) = post(&second.url, "/v1/users/alice/devices", &token, r#"{"name":"pixel"}"#);
    assert_eq!(status, 201, "{body}");
    let device: serde_json::Value = serde_json::from_str(&body).expect("a device");
    let device_token = device["token"].as_str().expect("its token");
    let report = r#"{"lat":60.17,"lon":24.94}"#;
    assert_eq!(post(&first.url, "/v1/phone/report", device_token, report).0, 204);
    wait_for(Duration::from_secs(5), "the report at the other replica", || {
        try_fetch(&format!("{}/v1/users/alice/report", second.url), Some(&token)).is_ok_and(|r| r.contains("60.17"))
    });
    let revoke = format!("/v1/devices/{}/revoke", device["device_id"]);
    assert_eq!(post(&second.url, &revoke, &token, "").0, 204);
    let refused = wait_for(Duration::from_secs(5), "the other replica to refuse the revoked token", || {
        post(&first.url, "/v1/phone/report", device_token, report).0 == 401
    });
    eprintln!("revoked at r2 -> refused at r1 after {} ms", refused.as_millis());

    // The leader compacts etcd's history to what it was a second ago: the first revisions can no longer be read.
    wait_for(Duration::from_secs(10), "etcd's history to be compacted", || {
        let old = std::process::Command::new("etcdctl")
            .args(["--endpoints", &endpoints.join(","), "get", "--rev", "2", "vmi/"])
            .output()
            .expect("etcdctl runs");
        String::from_utf8_lossy(&old.stderr).contains("compacted")
    });

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

/// The pid of the `vmi up` control replica named `name` whose database is `db`.
fn replica_pid(db: &Path, name: &str) -> Option<u32> {
    let db = db.display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if ["control", "--replica", name, db.as_str()].iter().all(|p| args.iter().any(|a| a == p)) {
            return Some(pid);
        }
    }
    None
}

/// The leading replica's name and URL.
fn leader(up: &Up) -> Option<(String, String)> {
    up.controls.iter().find_map(|url| {
        let body = try_fetch(&format!("{url}/v1/replica"), None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["leading"].as_bool()?.then(|| (v["replica"].as_str().unwrap_or_default().to_owned(), url.clone()))
    })
}

/// The sites whose phone list names the demo phone.
fn hosts(up: &Up, operator: &str) -> Vec<String> {
    up.sites
        .iter()
        .filter(|(_, url)| {
            try_fetch(&format!("{url}/v1/phones"), Some(operator)).is_ok_and(|l| l.contains("\"user\":\"demo\""))
        })
        .map(|(id, _)| id.clone())
        .collect()
}

fn notes(up: &Up, site: &str, operator: &str) -> String {
    fetch(&format!("{}/v1/phones/demo/kv/notes.text", up.site(site)), Some(operator))
}

#[test]
fn the_leader_killed_mid_failover_and_mid_migration_and_an_etcd_member_lost_leave_one_phone_and_every_key() {
    let mut etcd = EtcdCluster::start("up", 3);
    let data = scratch_dir("up-etcd");
    let db = data.join("control.db");
    let up = up(&data, &["--no-proxy", "--etcd", &etcd.endpoints().join(","), "--replicas", "2"]);
    assert_eq!(up.controls.len(), 2);
    let operator = up.operator_token();
    wait_until(Duration::from_secs(20), "a leading replica", || leader(&up).is_some());

    // Mid-failover: the phone's site stops answering and, at once, the leading replica (the one running the
    // failover loop) is killed. The other replica takes over and fails the phone over to its standby copy.
    let (owner, epoch) = placement(&up);
    let others = sites_but(&up, &owner);
    wait_for_standby(&up, &others);
    let (mut terminal, text) = typing_terminal(&up, &data);
    std::thread::sleep(Duration::from_secs(2));
    let owner_pid = site_pid(&data, &owner).expect("the owner runs");
    let (name, _) = leader(&up).expect("a leader");
    let leader_pid = replica_pid(&db, &name).expect("the leader runs");
    signal(owner_pid, "-STOP");
    let stopped = Stopped(owner_pid);
    signal(leader_pid, "-KILL");
    let what = format!("leader {name} killed with {owner} stopped");
    let now_at = wait_for_failover(&up, &owner, epoch, &others, Instant::now(), &what);
    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    assert_eq!(notes(&up, &now_at, &operator), text, "every typed character once and in order");
    drop(stopped);
    wait_until(Duration::from_secs(30), "the old site dropping its copy", || hosts(&up, &operator) == [now_at.clone()]);

    // Mid-migration: a move to the third site is under way when the leader (maybe the restarted replica) is
    // killed. It commits through whichever replica answers, or aborts; either way the phone is in one place.
    wait_until(Duration::from_secs(30), "a leader again", || leader(&up).is_some());
    let third = up.sites.iter().map(|(id, _)| id.clone()).find(|id| *id != now_at && *id != owner).expect("a third");
    let mut mover = ChildGuard::spawn(
        up.vmi().args(["vm", "migrate", "demo", "--to", &third, "--control", &up.control]).stdout(Stdio::null()),
    )
    .expect("vmi vm migrate starts");
    let (name, _) = leader(&up).expect("a leader");
    signal(replica_pid(&db, &name).expect("the leader runs"), "-KILL");
    let moved = mover.child().wait().expect("migrate ends");
    let (placed, _) = placement(&up);
    eprintln!("migration with the leader {name} killed: {moved}, placed on {placed}");
    assert!(placed == third || placed == now_at, "placed on {placed}");
    wait_until(Duration::from_secs(30), "the phone in exactly its placed site", || {
        hosts(&up, &operator) == [placed.clone()]
    });
    assert_eq!(notes(&up, &placed, &operator), text, "nothing lost or doubled by the move");

    // One etcd member of three lost while the terminal types: nothing the terminal notices.
    let (mut terminal, more) = typing_terminal(&up, &data);
    std::thread::sleep(Duration::from_secs(2));
    etcd.kill(1);
    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    let (placed_now, _) = placement(&up);
    assert_eq!(notes(&up, &placed_now, &operator), format!("{text}{more}"));
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn etcd_without_quorum_freezes_placements_while_phones_keep_running_and_everything_resumes() {
    assert!(
        vmi_testkit::netns::Net::available(),
        "this test partitions etcd members in network namespaces: run it as root"
    );
    let mut net = vmi_testkit::netns::Net::new().expect("a bridge for the etcd members");
    let etcd = EtcdCluster::start_in(&mut net, "frozen", 3);
    let data = scratch_dir("up-frozen");
    let up = up(&data, &["--no-proxy", "--etcd", &etcd.endpoints().join(","), "--replicas", "2"]);
    let operator = up.operator_token();
    let (owner, epoch) = placement(&up);
    let others = sites_but(&up, &owner);
    wait_for_standby(&up, &others);
    let (mut terminal, text) = typing_terminal(&up, &data);
    std::thread::sleep(Duration::from_secs(2));
    // The site checks the operator's token now, so it still knows it while the control plane cannot answer.
    let before = notes(&up, &owner, &operator).len();

    // Every etcd member cut off from the others: nothing can be written; the control replicas still answer.
    etcd.partition_all();
    let cut = Instant::now();
    wait_until(Duration::from_secs(10), "the control plane to lose its store", || {
        up.controls.iter().all(|u| try_fetch(&format!("{u}/v1/users/demo/placement"), Some(&operator)).is_err())
    });
    // Well past a lease without quorum, the phone still runs where it was, taking the keys the terminal types.
    let lease = Duration::from_millis(vmi_control_api::model::LEASE_MS);
    std::thread::sleep((cut + lease + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    let during = notes(&up, &owner, &operator).len();
    std::thread::sleep(Duration::from_secs(2));
    let later = notes(&up, &owner, &operator).len();
    let still_cut =
        up.controls.iter().all(|u| try_fetch(&format!("{u}/v1/users/demo/placement"), Some(&operator)).is_err());
    assert!(still_cut, "the store was without quorum all along");
    assert!(before < during && during < later, "the phone kept taking keys: {before} -> {during} -> {later}");
    eprintln!("no quorum for {:?}: the phone ran on", cut.elapsed());

    etcd.heal_all();
    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    wait_until(Duration::from_secs(30), "the control plane answering again", || {
        up.controls.iter().any(|u| try_fetch(&format!("{u}/v1/users/demo/placement"), Some(&operator)).is_ok())
    });
    assert_eq!(placement(&up), (owner.clone(), epoch), "no placement changed");
    assert_eq!(hosts(&up, &operator), std::slice::from_ref(&owner));
    assert_eq!(notes(&up, &owner, &operator), text, "every typed character once and in order");
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn the_cluster_failover_bench_loses_nothing_when_the_leader_dies_mid_failover() {
    // Five faults: the fifth also kills the leading replica at the moment the owner site dies.
    let out = vmi().args(["bench", "failover", "--json", "--cluster", "--faults", "5"]).output().expect("vmi runs");
    assert!(out.status.success(), "bench: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["faults"], 5, "{report}");
    assert_eq!(report["leader_kills"], 1, "{report}");
    assert_eq!(report["inputs_lost"], 0, "{report}");
    assert_eq!(report["double_owner"], 0, "{report}");
    let writes = report["etcd_writes_per_migration"].as_f64().expect("counted");
    assert!((1.0..10.0).contains(&writes), "{report}");
}
