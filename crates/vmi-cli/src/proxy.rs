//! `vmi proxy`: a TCP proxy that makes loopback feel like distance.
//!
//! `vmi up` puts one in front of each site and registers the proxy's address as the site's
//! URL, so terminals, browser pages and migrations into the site all go through it. Every
//! chunk of bytes, in either direction, is held for the one-way time of a network path from
//! the user's position *now* to the site: half of the placer's own estimate
//! ([`vmi_control::placement::estimate_rtt_ms`], base + slope per 100 km), with the same
//! parameters the control service places phones by. The position is the user's latest
//! terminal report, asked from the control service every [`POLL_EVERY`]; until there is
//! one, a home position (`--home-lat/--home-lon`, by default the site's own).
//!
//! Each direction is a queue of chunks stamped with their release time: a chunk is written
//! when its time comes and never before the chunks ahead of it, so order is kept and a
//! steady stream pays the delay once, not once per read. When the delay shrinks, a chunk
//! waits for the ones ahead; it never overtakes them.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (more wait in the listen queue), at most
//! [`QUEUED_CHUNKS`] chunks of up to [`CHUNK_BYTES`] held per direction (the reader then
//! stops reading, which is TCP's own back pressure). The poller and every connection are
//! owned by [`run`] and stop with it on SIGINT/SIGTERM.
//!
//! What the proxy itself costs, and that a burst pays the delay once, is measured by `vmi bench proxy` ([`bench`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use vmi_control::placement::{PolicyParams, SiteView, estimate_rtt_ms};
use vmi_control_api::ControlClient;

/// How often the user's position is asked from the control service.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest chunk read at once.
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Most chunks held per direction of a connection.
pub const QUEUED_CHUNKS: usize = 128;

/// `vmi proxy` arguments.
#[derive(Args)]
pub struct ProxyArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The site behind the proxy, host:port.
    #[arg(long)]
    to: String,
    /// Latitude of the site.
    #[arg(long, allow_hyphen_values = true)]
    site_lat: f64,
    /// Longitude of the site.
    #[arg(long, allow_hyphen_values = true)]
    site_lon: f64,
    /// Control service URL (for the user's position).
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    control: String,
    /// Whose position sets the delay.
    #[arg(long, default_value = "demo")]
    user: String,
    /// Where the user is until they report a position (default: at the site).
    #[arg(long, allow_hyphen_values = true, requires = "home_lon")]
    home_lat: Option<f64>,
    /// See --home-lat.
    #[arg(long, allow_hyphen_values = true, requires = "home_lat")]
    home_lon: Option<f64>,
    /// Round trip at zero distance, ms (the placer's `base_rtt_ms`).
    #[arg(long, default_value_t = PolicyParams::default().base_rtt_ms)]
    base_rtt_ms: f64,
    /// Round trip added per 100 km, ms (the placer's `rtt_ms_per_100km`).
    #[arg(long, default_value_t = PolicyParams::default().rtt_ms_per_100km)]
    rtt_ms_per_100km: f64,
}

/// Where the delay comes from: the site, the path model, and the user's position.
struct Path {
    params: PolicyParams,
    site: SiteView,
}

impl Path {
    /// One-way delay in microseconds from `(lat, lon)` to the site.
    fn one_way_us(&self, (lat, lon): (f64, f64)) -> u64 {
        let rtt_ms = estimate_rtt_ms(&self.params, lat, lon, &self.site);
        (rtt_ms * 500.0).max(0.0).round() as u64
    }
}

/// Runs the proxy until SIGINT/SIGTERM.
pub async fn run(args: ProxyArgs) -> Result<()> {
    let params = PolicyParams {
        base_rtt_ms: args.base_rtt_ms,
        rtt_ms_per_100km: args.rtt_ms_per_100km,
        ..PolicyParams::default()
    };
    let site = SiteView {
        id: String::new(),
        lat: args.site_lat,
        lon: args.site_lon,
        capacity: 0,
        phones: 0,
        healthy: true,
        draining: false,
    };
    let home = args.home_lat.zip(args.home_lon).unwrap_or((args.site_lat, args.site_lon));
    let path = Path { params, site };
    let delay_us = Arc::new(AtomicU64::new(path.one_way_us(home)));
    let control = crate::credentials::control_client(&args.control)?.with_timeout(Duration::from_secs(2));

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    // The proxy carries bytes, not requests: TLS goes through it end to end, so it is reached as the site is.
    let url = format!("https://{}", listener.local_addr()?);
    crate::services::announce("proxy", &url, listener.local_addr()?);

    let mut tasks = JoinSet::new();
    tasks.spawn(follow_user(control, args.user, home, path, delay_us.clone()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = crate::services::stop_signal();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = slots.clone().acquire_owned() => permit.context("connection slots closed")?,
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set stays small.
            Some(_) = tasks.join_next(), if tasks.len() > 1 => continue,
        };
        match accepted {
            Ok((client, _)) => {
                let to = args.to.clone();
                let delay = delay_us.clone();
                tasks.spawn(async move {
                    if let Err(e) = serve(client, &to, delay).await {
                        tracing::debug!("proxied connection ended: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Dropping the set aborts the poller and every connection.
    tasks.shutdown().await;
    Ok(())
}

/// Keeps `delay_us` at the one-way delay from the user's latest reported position.
async fn follow_user(control: ControlClient, user: String, home: (f64, f64), path: Path, delay_us: Arc<AtomicU64>) {
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut position = home;
    loop {
        every.tick().await;
        match control.latest_report(&user).await {
            Ok(report) => position = report.position().unwrap_or(position),
            Err(vmi_control_api::ClientError::Status { status: 404, .. }) => position = home,
            // Control away for a moment: keep the last known position.
            Err(e) => tracing::debug!("cannot read {user}'s position: {e}"),
        }
        delay_us.store(path.one_way_us(position), Ordering::Relaxed);
    }
}

/// Proxies one connection to `to` until both directions end, or either fails.
async fn serve(client: TcpStream, to: &str, delay_us: Arc<AtomicU64>) -> std::io::Result<()> {
    let server = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pipe(client_read, server_write, delay_us.clone());
    let down = pipe(server_read, client_write, delay_us);
    tokio::pin!(up, down);
    // A clean end of one direction (a half-close) leaves the other running; an error ends both.
    tokio::select! {
        result = &mut up => { result?; down.await }
        result = &mut down => { result?; up.await }
    }
}

/// Copies `from` to `to`, each chunk released `delay_us` after it was read, in order. Ends
/// after forwarding the end of stream (as a write shutdown).
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay_us: Arc<AtomicU64>) -> std::io::Result<()> {
    let (queue, mut held) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUED_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = from.read(&mut buf).await?;
            let release = Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if queue.send((release, chunk)).await.is_err() || n == 0 {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some((release, chunk)) = held.recv().await {
            // A chunk already due goes at once: the timer would round even a zero wait up to its next tick.
            if release > Instant::now() {
                tokio::time::sleep_until(release).await;
            }
            match chunk {
                Some(bytes) => to.write_all(&bytes).await?,
                None => {
                    to.shutdown().await?;
                    break;
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(drop)
}

/// Echoes every connection's bytes back, on a loopback port of its own; returns its address.
async fn echo() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    Ok(addr)
}

/// A proxy in front of `to` with a fixed one-way delay, on a loopback port of its own; returns its address.
async fn fixed_delay_proxy(to: SocketAddr, one_way: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let delay_us = Arc::new(AtomicU64::new(one_way.as_micros() as u64));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delay = delay_us.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(client, &to.to_string(), delay).await {
                    tracing::debug!("proxied connection ended: {e}");
                }
            });
        }
    });
    Ok(addr)
}

/// Microseconds of each of `n` one-byte round trips to `to`.
async fn round_trips_us(to: SocketAddr, n: usize) -> std::io::Result<Vec<f64>> {
    let mut stream = TcpStream::connect(to).await?;
    stream.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        stream.write_all(b"x").await?;
        stream.read_exact(&mut byte).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// `vmi bench proxy`: what the delay proxy itself costs (one-byte round trips through it at zero delay, beside
/// straight ones to the same echo server) and that a burst pays the delay once (`chunks` small writes in a row
/// through it at `one_way` each way, timed until the last byte is back).
pub async fn bench(round_trips: usize, one_way: Duration, chunks: usize) -> Result<serde_json::Value> {
    use crate::bench::percentile;
    let echo = echo().await.context("starting the echo server")?;
    let mut straight = round_trips_us(echo, round_trips).await.context("straight round trips")?;
    let zero = fixed_delay_proxy(echo, Duration::ZERO).await.context("starting the proxy")?;
    let mut proxied = round_trips_us(zero, round_trips).await.context("round trips through the proxy")?;

    let delayed = fixed_delay_proxy(echo, one_way).await.context("starting the delaying proxy")?;
    let mut stream = TcpStream::connect(delayed).await?;
    stream.set_nodelay(true)?;
    let sent: Vec<u8> = (0..chunks as u32).flat_map(u32::to_le_bytes).collect();
    let started = std::time::Instant::now();
    for chunk in sent.chunks(4) {
        stream.write_all(chunk).await?;
    }
    let mut back = vec![0u8; sent.len()];
    stream.read_exact(&mut back).await?;
    let burst_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(back == sent, "the burst came back changed or out of order");

    let (straight_p50, proxied_p50) = (percentile(&mut straight, 50.0), percentile(&mut proxied, 50.0));
    let round_trip_ms = 2.0 * one_way.as_secs_f64() * 1e3;
    Ok(serde_json::json!({
        "bench": "proxy",
        "round_trips": round_trips,
        "straight_us_p50": straight_p50.round(),
        "straight_us_p99": percentile(&mut straight, 99.0).round(),
        "proxied_us_p50": proxied_p50.round(),
        "proxied_us_p99": percentile(&mut proxied, 99.0).round(),
        "proxy_overhead_us_p50": (proxied_p50 - straight_p50).round(),
        "burst_chunks": chunks,
        "burst_one_way_ms": one_way.as_secs_f64() * 1e3,
        "burst_ms": (burst_ms * 10.0).round() / 10.0,
        "burst_over_round_trip": (burst_ms / round_trip_ms * 100.0).round() / 100.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(rtt_ms_per_100km: f64) -> Path {
        let params = PolicyParams { rtt_ms_per_100km, ..PolicyParams::default() };
        let site =
            SiteView { id: "s".into(), lat: 60.0, lon: 25.0, capacity: 1, phones: 0, healthy: true, draining: false };
        Path { params, site }
    }

    #[test]
    fn the_delay_is_half_the_placers_round_trip_estimate() {
        // At the site: half the 2 ms base.
        assert_eq!(path(1.0).one_way_us((60.0, 25.0)), 1000);
        // One degree of latitude is 111.2 km: 2 + 1.112 ms round trip.
        assert_eq!(path(1.0).one_way_us((61.0, 25.0)), 1556);
        // The demo's slope of 100 ms per 100 km.
        assert_eq!(path(100.0).one_way_us((60.1, 25.0)), 6560);
    }

    /// On tokio's paused clock: time moves only when every task waits for a timer, so the durations here are what
    /// the proxy's own timers made of them, whatever this machine's speed (its speed is `vmi bench proxy`'s).
    #[tokio::test(start_paused = true)]
    async fn bytes_arrive_in_order_after_the_delay_both_ways() {
        let one_way = Duration::from_millis(20);
        let echo = echo().await.expect("echo server");
        let front = fixed_delay_proxy(echo, one_way).await.expect("proxy");

        let mut c = TcpStream::connect(front).await.expect("connect");
        let started = Instant::now();
        c.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        c.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        let rtt = started.elapsed();
        assert!(rtt >= 2 * one_way, "a round trip through the proxy took {rtt:?}");

        // Many small writes in a row: order kept, and the delay is paid once, not per chunk (200 chunks at 20 ms
        // each would be seconds).
        let started = Instant::now();
        let sent: Vec<u8> = (0..200u32).flat_map(|i| i.to_le_bytes()).collect();
        for chunk in sent.chunks(4) {
            c.write_all(chunk).await.expect("write");
        }
        let mut back = vec![0u8; sent.len()];
        c.read_exact(&mut back).await.expect("read");
        assert_eq!(back, sent);
        let burst = started.elapsed();
        assert!(burst >= 2 * one_way && burst < 10 * one_way, "200 chunks came back after {burst:?}");

        // A half-close reaches the other side and its answer still comes back.
        c.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("read to end");
        assert!(rest.is_empty());
    }
}
