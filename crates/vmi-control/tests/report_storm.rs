//! A storm of terminal reports at the control service, on the embedded store and on replicas' shared reports over
//! etcd: every report is answered, a flood of wrong tokens beside it is refused, and the memory held is bounded by
//! the users, not by the reports: storms as large as the first, after it, leave the process no larger. Alone in
//! its test binary, so that the process's memory is the service's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vmi_control::{EtcdStore, Reports, ServeOptions, SqliteStore, Store, serve_with};
use vmi_testkit::etcd::EtcdCluster;

const USERS: usize = 1_000;
const CONNECTIONS: usize = 8;
const REPORTS_PER_STORM: usize = 40_000;

/// The process's resident memory, in bytes.
fn rss() -> u64 {
    vmi_telemetry::resident_bytes(None).expect("this process's resident memory")
}

/// Reads one response head; its status (bodies of refusals are read up to their `content-length`).
async fn answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let head_end = loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the service closed a kept-alive connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().expect("a length"));
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status")
}

fn report_request(addr: SocketAddr, token: &str, i: usize) -> Vec<u8> {
    let body = format!(r#"{{"lat":{},"lon":{}}}"#, 45.0 + (i % 997) as f64 * 0.001, 5.0 + (i % 991) as f64 * 0.001);
    format!(
        "POST /v1/phone/report HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `REPORTS_PER_STORM` reports over `CONNECTIONS` kept-alive connections, each answered 204, and beside them
/// wrong tokens from one more connection, each answered 401 or (locked out) 429.
async fn storm(addr: SocketAddr, tokens: Arc<Vec<String>>, round: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        let tokens = tokens.clone();
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let mut buf = Vec::new();
            for k in (c..REPORTS_PER_STORM).step_by(CONNECTIONS) {
                let i = k + round * REPORTS_PER_STORM;
                stream.write_all(&report_request(addr, &tokens[i % tokens.len()], i)).await.expect("send");
                assert_eq!(answer(&mut stream, &mut buf).await, 204, "report {i}");
            }
        });
    }
    tasks.spawn(async move {
        // From an address of its own: the lockout it earns is that address's.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.2:0".parse().expect("address")).expect("bind 127.0.0.2");
        let mut stream = socket.connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        for i in 0..2_000 {
            let wrong = format!("{:064x}", (round * 1_000_000 + i) as u128 * 0x9e37_79b9_7f4a_7c15);
            stream.write_all(&report_request(addr, &wrong, i)).await.expect("send");
            let status = answer(&mut stream, &mut buf).await;
            assert!(status == 401 || status == 429, "a wrong token answered {status}");
        }
    });
    while let Some(done) = tasks.join_next().await {
        done.expect("a storm connection");
    }
}

/// Serves `store` with `reports`, pairs `USERS` devices, and storms it four times: the memory after the last is
/// no more than after the second (the first two fill what is bounded by the users).
async fn storm_holds_memory(store: Arc<dyn Store>, reports: Reports) {
    let tokens: Vec<String> = (0..USERS)
        .map(|u| {
            let user = format!("user-{u:04}");
            store.create_user(&user).expect("user");
            store.create_device(&user, "terminal").expect("device").token
        })
        .collect();
    let tokens = Arc::new(tokens);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions { reports: reports.clone(), ..ServeOptions::default() };
    let server = tokio::spawn(serve_with(listener, store, options, async {
        let _ = stopped.await;
    }));
    let mut after = Vec::new();
    for round in 0..4 {
        storm(addr, tokens.clone(), round).await;
        after.push(rss());
    }
    // Every user's report is held, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reports.snapshot().len() < USERS {
        assert!(tokio::time::Instant::now() < deadline, "only {} users' reports held", reports.snapshot().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reports.snapshot().len(), USERS);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!("rss after each storm: {:?} MiB", after.iter().map(|b| mib(*b).round()).collect::<Vec<_>>());
    let grown = after[3].saturating_sub(after[1]);
    assert!(grown < 8 << 20, "two more storms grew the process by {:.1} MiB: {after:?}", mib(grown));
    stop.send(()).expect("server alive");
    server.await.expect("server task").expect("serve returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_storm_is_answered_in_memory_bounded_by_the_users() {
    let dir = std::env::temp_dir().join(format!("vmi-test-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let sqlite = Arc::new(SqliteStore::open(dir.join("control.db")).expect("store"));
    storm_holds_memory(sqlite, Reports::new()).await;
    let _ = std::fs::remove_dir_all(&dir);

    // Shared through etcd: batches written every 200 ms and taken in from the watch.
    let etcd = EtcdCluster::start("storm", 1);
    let endpoints = etcd.endpoints();
    let store = tokio::task::spawn_blocking(move || EtcdStore::connect(&endpoints, "storm/"))
        .await
        .expect("connect task")
        .expect("etcd store");
    let reports = store.shared_reports();
    storm_holds_memory(Arc::new(store), reports).await;
}
