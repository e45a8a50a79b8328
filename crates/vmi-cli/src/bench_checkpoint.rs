//! `vmi bench checkpoint`: what checkpoints cost in storage and how fast one restores.
//!
//! One phone lives a virtual day on a manual clock (its status-bar clock repaints every
//! minute, its mail check runs every minute, and in a few hours the user reads a mail and
//! types a line) with a checkpoint every hour into a filesystem store; then many phones
//! of one image, each used a little, are checkpointed into one store.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};
use vmi_checkpoint::{CheckpointStore, FsStore, HOUR_MS, Selector};
use vmi_engine::{Engine, Event, Mail, ManualClock, SnapshotRequest, VirtualPhone, VmConfig, advance_phone};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

use crate::bench::{layout, percentile};

const START_NS: u64 = 1_795_044_600_000_000_000;
const HOUR_NS: u64 = 3_600_000_000_000;

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn type_text(phone: &mut dyn VirtualPhone, text: &str) -> Result<()> {
    for c in text.chars() {
        phone.deliver(Event::text(c))?;
    }
    phone.frame()?;
    Ok(())
}

fn tap(phone: &mut dyn VirtualPhone, (x, y): (i32, i32)) -> Result<()> {
    use vmi_engine::TouchPhase;
    phone.deliver(Event::Touch { phase: TouchPhase::Down, x, y, pointer: 0 })?;
    phone.deliver(Event::Touch { phase: TouchPhase::Up, x, y, pointer: 0 })?;
    phone.frame()?;
    Ok(())
}

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Result<Scratch> {
    scratch_for("checkpoint", name)
}

/// A fresh scratch directory `name` of bench `bench`, removed on drop.
pub(crate) fn scratch_for(bench: &str, name: &str) -> Result<Scratch> {
    let dir = std::env::temp_dir().join(format!("vmi-bench-{bench}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(Scratch(dir))
}

fn store_bytes(store: &CheckpointStore) -> Result<u64> {
    let s = store.stats()?;
    Ok(s.chunk_bytes + s.table_bytes + s.manifest_bytes)
}

/// Runs the bench: `hours` of light use for one phone, then `phones` phones of one image.
pub fn checkpoint(hours: u64, phones: usize) -> Result<Value> {
    let clock = ManualClock::new(START_NS);
    let engine = WasmEngine::with_config(
        WasmEngineConfig { max_vms: phones as u32 + 8, ..WasmEngineConfig::default() },
        clock.clone(),
    )?;
    let image = engine.load_image(vmi_phone_image::PHONE_WASM)?;

    // One phone, one day.
    let dir = scratch("day")?;
    let store = CheckpointStore::new(Arc::new(FsStore::open(&dir.0)?.with_sync(false)));
    let mut phone = engine.create(&image.hash, &VmConfig::default())?;
    phone.frame()?;
    let memory_bytes = phone.usage().memory_bytes;
    let full = phone.snapshot(SnapshotRequest::Full)?;
    let at = |clock: &ManualClock| clock.wall_ns() / 1_000_000;
    use vmi_engine::Clock;
    let first = store.put("bench", &full.bytes, at(&clock), Some("boot".into()))?;
    let full_bytes = first.stored_bytes;

    tap(phone.as_mut(), layout::NOTES)?;
    type_text(phone.as_mut(), "Call the bank about the card.")?;
    let typed = phone.snapshot(SnapshotRequest::Incremental)?;
    let after_typing = store.put("bench", &typed.bytes, at(&clock) + 1, Some("typed".into()))?;

    // Light use: in four hours of the day the user reads a new mail and types a line.
    let busy_hours = [8u64, 12, 17, 21];
    let mut hour_bytes = Vec::new();
    for hour in 1..=hours {
        if busy_hours.contains(&(hour % 24)) {
            phone.push_mail(Mail {
                from: "ann@example.com".into(),
                subject: format!("Update {hour}"),
                body: "See you at the station at six.".into(),
            })?;
            phone.deliver(Event::Key { code: vmi_engine::KeyCode::Home, text: None })?;
            tap(phone.as_mut(), layout::NOTES)?;
            type_text(phone.as_mut(), " Bring the charger.")?;
        }
        advance_phone(phone.as_mut(), &clock, HOUR_NS)?;
        phone.frame()?;
        let snap = phone.snapshot(SnapshotRequest::Incremental)?;
        hour_bytes.push(store.put("bench", &snap.bytes, at(&clock), Some("hourly".into()))?.stored_bytes as f64);
    }
    let day_bytes: f64 = hour_bytes.iter().take(24).sum::<f64>() * 24.0 / hour_bytes.len().clamp(1, 24) as f64;
    let max_hour = hour_bytes.iter().copied().fold(0.0, f64::max);

    // Restore: the latest checkpoint rebuilt from the store and booted.
    let mut restore_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let bytes = store.restore("bench", Selector::AtOrBefore(u64::MAX))?;
        let restored = engine.restore(&image.hash, &[&bytes], &VmConfig::default())?;
        restore_ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(restored);
    }
    let three_days_back = store.restore("bench", Selector::AtOrBefore(START_NS / 1_000_000 + HOUR_MS))?;
    drop(three_days_back);
    drop(phone);

    // Many phones of one image, each used a little (its own note typed), one store.
    let dir_many = scratch("many")?;
    let many = CheckpointStore::new(Arc::new(FsStore::open(&dir_many.0)?.with_sync(false)));
    let mut put_ms = Vec::new();
    for i in 0..phones {
        let config = VmConfig { rng_seed: Some(i as u64 + 1), ..VmConfig::default() };
        let mut p = engine.create(&image.hash, &config)?;
        tap(p.as_mut(), layout::NOTES)?;
        type_text(p.as_mut(), &format!("user{i}: groceries, gym at 7"))?;
        let snap = p.snapshot(SnapshotRequest::Full)?;
        let t = Instant::now();
        many.put(&format!("user{i}"), &snap.bytes, at(&clock), None)?;
        put_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let many_bytes = store_bytes(&many)?;
    let stats = many.stats()?;
    let per_phone = many_bytes as f64 / phones.max(1) as f64;

    Ok(json!({
        "bench": "checkpoint",
        "conditions": format!(
            "default phone ({memory_bytes} bytes of memory); one phone: {hours} virtual hours on a manual clock, a \
             checkpoint every hour (incremental snapshot into a filesystem store), mail timer every minute, a mail \
             read and a line typed in hours {busy_hours:?}; then {phones} phones of one image, each with its own \
             note typed, full checkpoints into one store"
        ),
        "memory_bytes": memory_bytes,
        "full_bytes": full_bytes,
        "full_snapshot_file_bytes": full.bytes.len(),
        "incremental_bytes_after_typing": after_typing.stored_bytes,
        "hourly_bytes_p50": round(percentile(&mut hour_bytes.clone(), 50.0), 0),
        "hourly_bytes_max": max_hour,
        "stored_bytes_per_phone_day": round(day_bytes, 0),
        "restore_ms": round(percentile(&mut restore_ms.clone(), 50.0), 3),
        "restore_ms_p99": round(percentile(&mut restore_ms, 99.0), 3),
        "phones": phones,
        "stored_bytes_per_phone": round(per_phone, 0),
        "phones_store_fraction_of_memory": round(many_bytes as f64 / (phones.max(1) as f64 * memory_bytes as f64), 4),
        "phones_store": { "chunks": stats.chunks, "chunk_bytes": stats.chunk_bytes, "tables": stats.tables,
                          "table_bytes": stats.table_bytes, "manifests": stats.manifests,
                          "manifest_bytes": stats.manifest_bytes },
        "put_full_ms_p50": round(percentile(&mut put_ms, 50.0), 3),
    }))
}
