//! `vmi bench engines`: the WebAssembly phone and the Linux phone (QEMU) side by side in one run: boot to the
//! first full frame, input to frame, idle memory, snapshot and restore, checkpoint bytes, and live migration
//! between two sites through the same pre-copy and ownership protocol, beside plain QEMU migrating a Linux guest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vmi_checkpoint::{CheckpointStore, FsStore};
use vmi_engine::{Engine, Event, KeyCode, SnapshotRequest, VirtualPhone, VmConfig};

use crate::bench::{layout, ms, percentile, round};
use crate::bench_checkpoint::Scratch;

/// The Linux image's RAM in this bench (the image's default is 512 MiB; the session needs less).
const LINUX_MIB: u32 = 384;
/// How long the Linux phone's session gets to come up under TCG.
const SESSION_WITHIN: Duration = Duration::from_secs(180);

fn scratch(name: &str) -> Result<Scratch> {
    crate::bench_checkpoint::scratch_for("engines", name)
}

/// Runs the bench: `rounds` of each timed figure, `qemu_runs` plain QEMU migrations of the Linux anchor.
pub async fn engines(rounds: usize, qemu_runs: usize) -> Result<Value> {
    let image = tokio::task::spawn_blocking(|| -> Result<Vec<u8>> {
        let work = scratch("image")?;
        let manifest = vmi_qemu_engine::image::Manifest { memory_mib: LINUX_MIB, ..Default::default() };
        Ok(vmi_qemu_engine::image::build(manifest, &work.0)?)
    })
    .await??;
    let image = Arc::new(image);
    let wasm = tokio::task::spawn_blocking(move || wasm_figures(rounds)).await??;
    let for_linux = image.clone();
    let mut linux = tokio::task::spawn_blocking(move || linux_figures(&for_linux, rounds)).await??;
    let mut wasm = wasm;
    for (figures, phone) in [
        (&mut wasm, crate::bench_net::SeriesPhone::Default),
        (&mut linux, crate::bench_net::SeriesPhone::Linux(image.clone())),
    ] {
        let mut s = crate::bench_net::migration_series(rounds, false, phone).await?;
        figures["migrate_downtime_ms_p50"] = json!(round(percentile(&mut s.downtime_ms, 50.0), 2));
        figures["migrate_downtime_ms_p99"] = json!(round(percentile(&mut s.downtime_ms, 99.0), 2));
        figures["migrate_freeze_ms_p50"] = json!(round(percentile(&mut s.freeze_ms, 50.0), 2));
        // Like with like beside plain QEMU, whose downtime is what its source sees: stop to the last byte sent.
        figures["migrate_downtime_as_qemu_counts_ms_p50"] = json!(round(percentile(&mut s.sent_ms, 50.0), 2));
        figures["migrate_downtime_as_qemu_counts_ms_p99"] = json!(round(percentile(&mut s.sent_ms, 99.0), 2));
        figures["migrate_total_ms"] = json!(round(percentile(&mut s.total_ms, 50.0), 1));
        figures["migrate_bytes"] = json!(percentile(&mut s.bytes_sent, 50.0).round());
        figures["migrate_final_bytes"] = json!(percentile(&mut s.final_bytes, 50.0).round());
        figures["migrate_terminal_gap_ms_p50"] = json!(round(percentile(&mut s.gap_ms, 50.0), 2));
    }
    let anchor = if qemu_runs == 0 {
        json!({ "skipped": "not asked (--qemu-runs 0)" })
    } else {
        match tokio::task::spawn_blocking(move || crate::qemu::measure_linux(qemu_runs)).await? {
            Ok(crate::qemu::LinuxRuns { migrations: runs, failed }) => {
                let mut d: Vec<f64> = runs.iter().map(|r| r.downtime_ms).collect();
                let mut t: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
                let mut b: Vec<f64> = runs.iter().map(|r| r.transferred_bytes as f64).collect();
                json!({
                    "downtime_ms_p50": round(percentile(&mut d, 50.0), 1),
                    "total_ms": round(percentile(&mut t, 50.0), 1),
                    "bytes": percentile(&mut b, 50.0).round(),
                    "runs": runs.len(),
                    "failed_runs": failed.len(),
                    "conditions": "Debian's linux-image-cloud-amd64 with a busybox initramfs under QEMU's TCG, 128 MiB, \
                        16 MiB of random data in its tmpfs; QEMU's own live migration over loopback, default parameters",
                })
            }
            Err(reason) => json!({ "skipped": reason }),
        }
    };
    Ok(json!({
        "bench": "engines",
        "conditions": format!(
            "both engines in one run on this machine; {rounds} rounds a figure; input_to_frame: a key delivered to \
             the phone until its damage is readable by the site (the terminal's own share is the same for both, \
             see vmi bench display); idle_rss: the process's resident memory a phone adds (wasm: 20 phones; \
             linux: its QEMU's, guest RAM pages it touched included); checkpoint bytes: stored in a checkpoint \
             store; migration: {rounds} moves back and forth between two sites on loopback while a terminal types"
        ),
        "accel": linux["accel"].clone(),
        "wasm": wasm,
        "linux": linux,
        "qemu_linux_anchor": anchor,
    }))
}

/// Stores `snapshot` in `store` as `user`'s and returns the bytes it added.
fn stored(store: &CheckpointStore, user: &str, snapshot: &[u8], at_ms: u64) -> Result<u64> {
    Ok(store.put(user, snapshot, at_ms, None)?.stored_bytes)
}

fn wasm_figures(rounds: usize) -> Result<Value> {
    let engine = vmi_wasm_engine::WasmEngine::new()?;
    let image = engine.load_image(vmi_phone_image::PHONE_WASM)?;
    let mut boot_ms = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut p = engine.create(&image.hash, &VmConfig::default())?;
        p.frame()?;
        boot_ms.push(ms(t));
    }
    let mut phone = engine.create(&image.hash, &VmConfig::default())?;
    phone.frame()?;
    crate::bench::tap_phone(phone.as_mut(), layout::NOTES)?;
    phone.frame()?;
    let mut input_ms = Vec::new();
    for i in 0..rounds * 10 {
        let t = Instant::now();
        phone.deliver(Event::text(if i % 2 == 0 { 'a' } else { ' ' }))?;
        let damaged = !phone.frame()?.damage.is_empty();
        if damaged {
            input_ms.push(ms(t));
        }
    }
    let idle = crate::bench::density(20)?;
    let (snapshot_ms, restore_ms, full, incremental) = snapshots(&engine, &image.hash, phone.as_mut(), rounds, |p| {
        for c in "Call the bank about the card.".chars() {
            p.deliver(Event::text(c))?;
        }
        p.frame()?;
        Ok(())
    })?;
    Ok(json!({
        "engine": "wasm",
        "boot_ms_p50": round(percentile(&mut boot_ms, 50.0), 2),
        "input_to_frame_ms_p50": round(percentile(&mut input_ms, 50.0), 3),
        "input_to_frame_ms_p99": round(percentile(&mut input_ms, 99.0), 3),
        "idle_rss_mib_per_phone": round(idle["kib_per_idle_vm"].as_f64().unwrap_or(f64::NAN) / 1024.0, 2),
        "snapshot_ms_p50": snapshot_ms,
        "restore_ms_p50": restore_ms,
        "checkpoint_bytes_full": full,
        "checkpoint_bytes_incremental_after_typing": incremental,
    }))
}

/// Full snapshot and restore times, and the checkpoint store's bytes for a full snapshot and for the delta after
/// `typing`.
fn snapshots(
    engine: &dyn Engine,
    image: &vmi_engine::ImageHash,
    phone: &mut dyn VirtualPhone,
    rounds: usize,
    typing: impl FnOnce(&mut dyn VirtualPhone) -> Result<()>,
) -> Result<(f64, f64, u64, u64)> {
    let mut snapshot_ms = Vec::new();
    let mut restore_ms = Vec::new();
    let mut last = None;
    for _ in 0..rounds.min(5) {
        let t = Instant::now();
        let full = phone.snapshot(SnapshotRequest::Full)?;
        snapshot_ms.push(ms(t));
        let t = Instant::now();
        let back = engine.restore(image, &[&full.bytes], &VmConfig::default())?;
        restore_ms.push(ms(t));
        drop(back);
        last = Some(full);
    }
    let full = last.context("no snapshot taken")?;
    let dir = scratch(&format!("checkpoints-{}", engine_name(phone)))?;
    let store = CheckpointStore::new(Arc::new(FsStore::open(&dir.0)?.with_sync(false)));
    let full_bytes = stored(&store, "bench", &full.bytes, 1)?;
    typing(phone)?;
    let delta = phone.snapshot(SnapshotRequest::Incremental)?;
    let delta_bytes = stored(&store, "bench", &delta.bytes, 2)?;
    Ok((
        round(percentile(&mut snapshot_ms, 50.0), 2),
        round(percentile(&mut restore_ms, 50.0), 2),
        full_bytes,
        delta_bytes,
    ))
}

fn engine_name(phone: &dyn VirtualPhone) -> &'static str {
    phone.engine()
}

fn linux_figures(image: &[u8], rounds: usize) -> Result<Value> {
    let dir = scratch("linux")?;
    // Phones under /dev/shm, as on a site (the scratch directory is this process's own, 0700 under vmi's umask).
    let settings = vmi_qemu_engine::Settings::under(&dir.0);
    let engine = vmi_qemu_engine::QemuEngine::new(settings)?;
    let info = engine.load_image(image)?;
    let config = VmConfig::default();
    let mut boot_ms = Vec::new();
    let mut phone = None;
    for _ in 0..rounds.min(3) {
        let t = Instant::now();
        let mut p = engine.boot(&info.hash, &config, 0)?;
        if !p.wait_session(SESSION_WITHIN) {
            bail!("the Linux phone's session did not come up within {SESSION_WITHIN:?}");
        }
        wait_painted(&mut p, Duration::from_secs(60))?;
        boot_ms.push(ms(t));
        phone = Some(p);
    }
    let mut phone = phone.context("no phone booted")?;
    let accel = phone.accel().as_str();
    // Settled: the prompt is drawn; what follows is the phone at rest.
    std::thread::sleep(Duration::from_secs(2));
    phone.frame()?;
    let idle_rss = rss_of(phone.pid())?;
    let mut input_ms = Vec::new();
    for i in 0..rounds * 10 {
        let event = if i % 2 == 0 { Event::text('a') } else { Event::Key { code: KeyCode::Backspace, text: None } };
        phone.frame()?;
        let t = Instant::now();
        phone.deliver(event)?;
        let by = Instant::now() + Duration::from_secs(10);
        loop {
            if !phone.frame()?.damage.is_empty() {
                input_ms.push(ms(t));
                break;
            }
            if Instant::now() > by {
                bail!("a key drew nothing within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let hash = info.hash;
    let (snapshot_ms, restore_ms, full, incremental) = snapshots(&engine, &hash, &mut phone, rounds, |p| {
        for c in "echo Call the bank about the card. >> notes.txt\n".chars() {
            let event = if c == '\n' { Event::Key { code: KeyCode::Enter, text: None } } else { Event::text(c) };
            p.deliver(event)?;
        }
        // Typed and written: the guest agent reads the file back.
        let by = Instant::now() + Duration::from_secs(30);
        while p.read_file("/home/phone/notes.txt").is_err() {
            if Instant::now() > by {
                bail!("the typed line never reached notes.txt");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?;
    Ok(json!({
        "engine": "qemu",
        "accel": accel,
        "memory_mib": LINUX_MIB,
        "image_bytes": image.len(),
        "boot_ms_p50": round(percentile(&mut boot_ms, 50.0), 1),
        "input_to_frame_ms_p50": round(percentile(&mut input_ms, 50.0), 2),
        "input_to_frame_ms_p99": round(percentile(&mut input_ms, 99.0), 2),
        "idle_rss_mib_per_phone": round(idle_rss as f64 / (1 << 20) as f64, 1),
        "snapshot_ms_p50": snapshot_ms,
        "restore_ms_p50": restore_ms,
        "checkpoint_bytes_full": full,
        "checkpoint_bytes_incremental_after_typing": incremental,
    }))
}

/// Waits until the phone's screen shows text in its top rows (the shell's prompt).
fn wait_painted(phone: &mut vmi_qemu_engine::QemuPhone, within: Duration) -> Result<()> {
    let by = Instant::now() + within;
    loop {
        let frame = phone.frame()?;
        let row = frame.width as usize * 4;
        if frame.rgba[..row * 40].chunks_exact(4).any(|p| p[0] > 0xa0 && p[1] > 0xa0) {
            return Ok(());
        }
        if Instant::now() > by {
            bail!("the prompt never showed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's resident memory, bytes.
fn rss_of(pid: u32) -> Result<u64> {
    vmi_telemetry::resident_bytes(Some(pid)).with_context(|| format!("cannot read the resident memory of pid {pid}"))
}
