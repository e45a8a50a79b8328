//! `vmi bench density --site N`: N always-on phones through one site process, as a user of the product would
//! run them. Every phone is made the real way (a user at the control service, placed on the site, admitted and
//! booted by the site), keeps its durable state on the site's disk (the content-addressed state store, a journal
//! of records), hibernates by the site's policy when idle, and wakes on its own mail-check timer (every 15 minutes,
//! the first at a random point of the first period: the guest's own choice, so the wakes spread) on the real clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use vmi_engine::SystemClock;
use vmi_site::SiteConfig;
use vmi_site::hibernation::HibernationPolicy;

use crate::bench::{cpu_seconds, rss_bytes};

/// Phones being made at once (user, placement, boot): enough to keep both cores busy.
const MAKING_AT_ONCE: usize = 8;
/// The site's policy in the run: a phone idle for this long hibernates, sooner above [`RESIDENT_CAP`].
const IDLE: Duration = Duration::from_secs(5);
const RESIDENT_CAP: usize = 256;

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / f64::from(1 << 20), 1)
}

/// Bytes the files under `dir` hold, and the disk blocks they take.
fn disk_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut todo = vec![dir.to_path_buf()];
    let (mut bytes, mut blocks) = (0, 0);
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                bytes += meta.len();
                blocks += meta.blocks() * 512;
            }
        }
    }
    (bytes, blocks)
}

/// Makes `n` phones on one site, waits for them to hibernate, then watches `load_secs` seconds of their own
/// timers waking them.
pub async fn site_density(n: usize, load_secs: u64) -> Result<Value> {
    let policy = HibernationPolicy { idle: IDLE, max_resident: Some(RESIDENT_CAP) };
    let capacity = u32::try_from(n + 16).context("too many phones")?;
    let w = crate::bench_net::world_with(SystemClock::shared(), false, |c| SiteConfig {
        capacity,
        hibernation: Some(policy),
        ..c
    })
    .await?;
    let site = w.site.state.clone();
    let residency = site.residency().context("the site hibernates")?;
    let control = vmi_control_api::ControlClient::new(site.control_url(), &w.operator)?;
    let rss_before = rss_bytes()?;
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(MAKING_AT_ONCE));
    let mut making = tokio::task::JoinSet::new();
    let mut resident_peak = 0;
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let (control, site) = (control.clone(), site.clone());
        making.spawn(async move {
            let user = format!("p{i:07}");
            control.create_user(&user).await?;
            control.set_placement(&user, "site-a").await?;
            site.create_phone(&user).await.with_context(|| format!("making {user}'s phone"))?;
            drop(permit);
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = making.try_join_next() {
            done??;
        }
        resident_peak = resident_peak.max(residency.resident());
        if (i + 1) % 10_000 == 0 {
            eprintln!(
                "{} phones in {:.0} s, {} resident, RSS {} MiB",
                i + 1,
                started.elapsed().as_secs_f64(),
                residency.resident(),
                mib(rss_bytes()?)
            );
        }
    }
    while let Some(done) = making.join_next().await {
        done??;
    }
    let made_s = started.elapsed().as_secs_f64();

    // Settled: the phones made last have hibernated (a few may be awake for their timers).
    let settle = Instant::now();
    while residency.resident() > RESIDENT_CAP / 4 && settle.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_settled = rss_bytes()?;
    let resident_settled = residency.resident();

    // The timer load: nothing but the phones' own checks (and the site's heartbeats) for `load_secs`.
    eprintln!("{n} phones made in {made_s:.0} s; watching {load_secs} s of their timers");
    let wakes_before = residency.timer_wakes().count;
    let cpu_before = cpu_seconds()?;
    let load_started = Instant::now();
    let mut resident = Vec::new();
    for _ in 0..load_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        resident.push(residency.resident());
    }
    let load_wall = load_started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    let wakes = residency.timer_wakes_since(wakes_before);
    let rss_after = rss_bytes()?;
    let resident_at_end = residency.resident();

    let (disk_bytes, disk_blocks) = disk_usage(&w.data_dir);
    let store = site.state_store().stats()?;
    let figures = json!({
        "conditions": format!(
            "{n} default phones 720x1280 through one site process (the control service in the same process, SQLite \
             in memory), each made by the control service and the site, durable on the site's disk, hibernating after \
             {} s idle (sooner above {RESIDENT_CAP} resident), each checking its mail every 15 min on its own timer \
             (first at a random point of the first period); {load_secs} s of that load watched after they were made; \
             2 cores",
            IDLE.as_secs()
        ),
        "phones": n,
        "rss_mib": mib(rss_after),
        "rss_before_phones_mib": mib(rss_before),
        "kib_per_hibernated_phone": round(rss_after.saturating_sub(rss_before) as f64 / n as f64 / 1024.0, 2),
        "resident_at_end": resident_at_end,
        "rss_after_making_mib": mib(rss_settled),
        "resident_after_making": resident_settled,
        "resident_peak_while_making": resident_peak,
        "resident_during_load_mean": round(resident.iter().sum::<usize>() as f64 / resident.len().max(1) as f64, 1),
        "resident_during_load_max": resident.iter().max().copied().unwrap_or(0),
        "make_s": round(made_s, 1),
        "phones_made_per_s": round(n as f64 / made_s, 1),
        "wakes_per_s": round((wakes.count - wakes_before) as f64 / load_wall, 1),
        "cpu_cores_used": round(cpu / load_wall, 3),
        "wake_ms_p50": round(wakes.p50_ms, 3),
        "wake_ms_p99": round(wakes.p99_ms, 3),
        "wake_ms_max": round(wakes.max_ms, 3),
        "wake_samples": (wakes.count - wakes_before).min(10_000),
        "disk_mib": mib(disk_blocks),
        "disk_file_mib": mib(disk_bytes),
        "disk_kib_per_phone": round(disk_blocks as f64 / n as f64 / 1024.0, 1),
        "page_store": site.page_store().map(|(pages, bytes)| json!({ "pages": pages, "mib": mib(bytes as u64) })),
        "state_store": {
            "chunks": store.chunks,
            "chunk_mib": mib(store.chunk_bytes),
            "tables": store.tables,
            "manifests": store.manifests,
            "manifest_mib": mib(store.manifest_bytes),
        },
        "wake_is": "a hibernated phone's timer: from its due time on the phone's clock to the guest having run it (the wake included), the load's (its last 10,000)",
        "cpu_is": "the whole process (site, control service, heartbeats) over the load, divided by its wall time",
    });
    // The phones are not saved one by one at the end: their state is durable already; the run's files go.
    let _ = std::fs::remove_dir_all(&w.data_dir);
    Ok(figures)
}
