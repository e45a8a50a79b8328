//! `vmi bench placer`'s ingest figure: terminal reports (`POST /v1/phone/report`) into a control service,
//! the embedded store's or replicas' over etcd, as fast as it answers them.
//!
//! The service runs in this process on a runtime of its own (two worker threads, as `vmi control` on this
//! machine), placer on; the load comes from one more thread: kept-alive HTTP/1.1 connections, each sending
//! one report at a time for its share of the devices (each device its own token), waiting for the 204 before the
//! next. First every device sends one report (each a store lookup: `first_reports_per_s`), then the timed
//! run, in the steady state of terminals that report every few seconds (their tokens known). The figure is
//! answered reports a second; the load generator shares the machine's cores with the service, so it is a floor.

use std::io::{Error as IoError, ErrorKind};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmi_control::{Reports, ServeOptions, Store};

use crate::bench::{percentile, round, rss_bytes};

/// Which store the control service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStore {
    /// SQLite in a file (`vmi up`).
    Embedded,
    /// A 3-member etcd cluster on loopback, reports shared between replicas through it.
    Etcd,
}

/// Runs the control service on `store` with `devices` paired devices and sends reports for `secs` seconds over
/// `connections` kept-alive connections; the figures.
pub fn ingest(store: IngestStore, devices: usize, connections: usize, secs: f64) -> Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("vmi-bench-ingest-{}-{store:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(store, devices, connections, secs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(kind: IngestStore, devices: usize, connections: usize, secs: f64, dir: &Path) -> Result<serde_json::Value> {
    // Kept alive until the end: the cluster stops when dropped.
    let mut etcd = None;
    let (store, reports): (Arc<dyn Store>, Reports) = match kind {
        IngestStore::Embedded => (Arc::new(vmi_control::SqliteStore::open(dir.join("control.db"))?), Reports::new()),
        IngestStore::Etcd => {
            let members = crate::bench_failover::loopback_etcd(dir)?;
            // A cluster just started may still be electing its leader: its first answers can time out.
            let mut tries = 0;
            let store = loop {
                match vmi_control::EtcdStore::connect(&members.endpoints(), "bench") {
                    Ok(store) => break store,
                    Err(e) if tries < 20 => {
                        tracing::debug!(error = %e, "etcd not ready yet");
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => return Err(e).context("connecting to etcd"),
                }
            };
            let reports = store.shared_reports();
            etcd = Some(members);
            (Arc::new(store), reports)
        }
    };
    let tokens = pair_devices(&store, devices).context("pairing the devices")?;
    let server_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = server_runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions { reports: reports.clone(), ..ServeOptions::default() };
    let server = server_runtime.spawn(vmi_control::serve_with(listener, store, options, async move {
        let _ = stopped.await;
    }));
    let rss_before = rss_bytes()?;

    // The load, from a thread of its own.
    let load = std::thread::spawn(move || -> Result<((u64, Vec<f64>), f64)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let first = Instant::now();
        runtime.block_on(load(addr, &tokens, connections, None))?;
        let first_secs = first.elapsed().as_secs_f64();
        Ok((runtime.block_on(load(addr, &tokens, connections, Some(Duration::from_secs_f64(secs))))?, first_secs))
    });
    let ((answered, mut latencies), first_secs) =
        load.join().map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
    let rss_after = rss_bytes()?;
    let held = reports.snapshot().len();
    let _ = stop.send(());
    server_runtime.block_on(server)??;
    drop(etcd);
    let per_s = answered as f64 / secs;
    Ok(serde_json::json!({
            "store": match kind { IngestStore::Embedded => "sqlite", IngestStore::Etcd => "etcd (3 members, loopback)" },
            "devices": devices,
            "connections": connections,
            "secs": secs,
            "first_reports_per_s": (devices as f64 / first_secs).round(),
            "reports": answered,
            "reports_per_s": per_s.round(),
            "latency_ms_p50": round(percentile(&mut latencies, 50.0), 3),
            "latency_ms_p99": round(percentile(&mut latencies, 99.0), 3),
            "users_with_a_report": held,
            "rss_growth_mib": round((rss_after.saturating_sub(rss_before)) as f64 / (1 << 20) as f64, 1),
    }))
}

/// `devices` users with a device each; their tokens.
fn pair_devices(store: &Arc<dyn Store>, devices: usize) -> Result<Vec<String>> {
    // A few threads: an etcd store answers each write in a round trip, SQLite's mutex makes them queue anyway.
    let threads = 8.min(devices.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let store = store.clone();
        handles.push(std::thread::spawn(move || -> Result<Vec<String>> {
            let mut tokens = Vec::new();
            for u in (t..devices).step_by(threads) {
                let user = format!("user-{u:07}");
                store.create_user(&user)?;
                tokens.push(store.create_device(&user, "bench terminal")?.token);
            }
            Ok(tokens)
        }));
    }
    let mut tokens = Vec::with_capacity(devices);
    for handle in handles {
        tokens.extend(handle.join().map_err(|_| anyhow::anyhow!("pairing panicked"))??);
    }
    Ok(tokens)
}

/// Sends reports over `connections` connections for `span` (`None`: one from each device); the reports answered,
/// and a sample of latencies (ms).
async fn load(
    addr: SocketAddr,
    tokens: &[String],
    connections: usize,
    span: Option<Duration>,
) -> Result<(u64, Vec<f64>)> {
    let connections = connections.clamp(1, tokens.len().max(1));
    // Each connection's requests, built once: the generator's own cost stays small beside the service's.
    let mut shares: Vec<Vec<Vec<u8>>> = vec![Vec::new(); connections];
    for (i, token) in tokens.iter().enumerate() {
        let (lat, lon) = (45.0 + (i % 1000) as f64 * 0.01, 5.0 + (i / 1000) as f64 * 0.01);
        let body = format!(r#"{{"lat":{lat:.5},"lon":{lon:.5}}}"#);
        let request = format!(
            "POST /v1/phone/report HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        shares[i % connections].push(request.into_bytes());
    }
    let until = span.map(|span| Instant::now() + span);
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares {
        tasks.spawn(connection(addr, share, until));
    }
    let (mut answered, mut latencies) = (0, Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (n, sample) = done.context("a load connection panicked")??;
        answered += n;
        latencies.extend(sample);
    }
    Ok((answered, latencies))
}

/// One kept-alive connection sending `requests` round and round until `until` (`None`: each once); reports
/// answered, latencies of every 16th (ms).
async fn connection(addr: SocketAddr, requests: Vec<Vec<u8>>, until: Option<Instant>) -> Result<(u64, Vec<f64>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let (mut answered, mut latencies) = (0u64, Vec::new());
    let rounds = if until.is_some() { usize::MAX } else { 1 };
    for request in std::iter::repeat_n(&requests, rounds).flatten() {
        if until.is_some_and(|until| Instant::now() >= until) {
            break;
        }
        let sent = Instant::now();
        stream.write_all(request).await?;
        let status = read_response(&mut stream, &mut buf).await?;
        if status != 204 {
            bail!("a report was answered {status}");
        }
        if answered % 16 == 0 {
            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        answered += 1;
    }
    Ok((answered, latencies))
}

/// Reads one response's head (a 204 has no body; any other status ends the run, so its body is not read).
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Result<u16> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            bail!("a response head over {} bytes", buf.len());
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(IoError::new(ErrorKind::UnexpectedEof, "the service closed the connection").into());
        }
        filled += n;
        if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = std::str::from_utf8(&buf[..filled]).unwrap_or_default();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("a response without a status")?;
    Ok(status)
}
