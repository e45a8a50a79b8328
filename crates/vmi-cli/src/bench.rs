//! `vmi bench …`: the engine's speed and density figures.
//!
//! Each bench prints one JSON object (with the global `--json`) or a readable table, and says what
//! it measured under which conditions. Times are wall-clock on this machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use vmi_engine::{Engine, Event, SnapshotRequest, SystemClock, TouchPhase, VirtualPhone, VmConfig};
use vmi_wasm_engine::{TrackerKind, WasmEngine, WasmEngineConfig};

/// Where the default phone's home-screen icons are, for driving it in benches.
pub mod layout {
    /// Centre of the Mail icon on a 720×1280 screen.
    pub const MAIL: (i32, i32) = (102, 1090);
    /// Centre of the Notes icon on a 720×1280 screen.
    pub const NOTES: (i32, i32) = (274, 1090);
    /// Centre of the Paint icon on a 720×1280 screen.
    pub const PAINT: (i32, i32) = (446, 1090);
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Snapshot, restore and incremental snapshot times of one phone.
    Snapshot {
        /// Rounds per figure.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        /// How written pages are found (default: the best the kernel offers).
        #[arg(long, value_enum)]
        dirty_tracking: Option<Tracking>,
    },
    /// Time from a key or touch to its frame damage being ready.
    Input {
        /// Events to time.
        #[arg(long, default_value_t = 2000)]
        events: usize,
    },
    /// Input-to-frame latency, bytes per keystroke and of a static screen, through a real
    /// site and terminal over loopback.
    Display {
        /// Keystrokes to time.
        #[arg(long, default_value_t = 400)]
        keys: usize,
        /// Seconds to watch a static screen.
        #[arg(long, default_value_t = 20)]
        static_secs: u64,
        /// Plain WebSocket on loopback instead of TLS (to see what TLS costs).
        #[arg(long)]
        plain: bool,
    },
    /// A whole day of the terminal (radio, screen, decoding) against a phone polling its mail (radio, screen,
    /// running its apps), through a real site in virtual time.
    Energy {
        /// Minutes of typing (a minute of scrolling follows).
        #[arg(long, default_value_t = 30)]
        active_min: u64,
        /// Hours in the day (the screen is off for the rest of it).
        #[arg(long, default_value_t = 24)]
        day_h: u64,
        /// Minutes between mails while asleep.
        #[arg(long, default_value_t = 20)]
        mail_every_min: u64,
    },
    /// Live migration between two sites (downtime, bytes, the terminal's gap), beside a
    /// QEMU/KVM guest migrated over loopback where KVM and QEMU exist.
    Migrate {
        /// Migrations to time.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Memory of the QEMU guest, MiB (the goal's phone has 16).
        #[arg(long, default_value_t = 16)]
        qemu_mib: u64,
        /// QEMU migrations to time (0: skip QEMU).
        #[arg(long, default_value_t = 3)]
        qemu_runs: usize,
    },
    /// The WebAssembly phone and the Linux phone (QEMU) side by side: boot, input to frame, idle memory,
    /// snapshot and restore, checkpoint bytes, live migration between two sites, beside plain QEMU's migration.
    Engines {
        /// Rounds of each timed figure.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Plain QEMU migrations of the Linux anchor guest (0: skip).
        #[arg(long, default_value_t = 3)]
        qemu_runs: usize,
    },
    /// Checkpoint storage (full, after typing, per phone-day of light use, per phone
    /// among many of one image) and restore time.
    Checkpoint {
        /// Virtual hours of light use, one checkpoint each.
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// Phones of one image checkpointed into one store.
        #[arg(long, default_value_t = 1000)]
        phones: usize,
    },
    /// The delay proxy of `vmi up`: its own cost per round trip, and a burst through it paying the delay once.
    Proxy {
        /// One-byte round trips to time, straight and through the proxy.
        #[arg(long, default_value_t = 2000)]
        round_trips: usize,
        /// The proxy's one-way delay for the burst, ms.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Small writes in the burst.
        #[arg(long, default_value_t = 200)]
        chunks: usize,
    },
    /// Failover: the site running a phone is killed or stopped while a terminal types, again and again; time until
    /// the phone answers on another site, inputs lost, two sites applying input at once.
    Failover {
        /// Faults to inject (alternately SIGKILL and SIGSTOP of the site running the phone).
        #[arg(long, default_value_t = 100)]
        faults: usize,
        /// The control plane as 2 replicas on a 3-member etcd cluster (the leader also killed at every fifth
        /// fault): adds leader_failover_ms and etcd_writes_per_migration.
        #[arg(long)]
        cluster: bool,
    },
    /// The placement policy at an operator's scale: the incremental placer over ten thousand sites and a million
    /// users (a full round, a report and its round, a second of reports), beside the full recomputation on a
    /// smaller world.
    Placer {
        /// Sites.
        #[arg(long, default_value_t = 10_000)]
        sites: usize,
        /// Users, each with a phone and a report.
        #[arg(long, default_value_t = 1_000_000)]
        users: usize,
        /// Single reports to time.
        #[arg(long, default_value_t = 200_000)]
        reports: usize,
        /// Sites and users of the full recomputation's world.
        #[arg(long, num_args = 2, value_names = ["SITES", "USERS"], default_values_t = [1_000, 100_000])]
        reference: Vec<usize>,
        /// Seconds of terminal reports sent to a control service on the embedded store (0: none).
        #[arg(long, default_value_t = 5.0)]
        ingest_secs: f64,
        /// Paired devices sending them, each with its own token.
        #[arg(long, default_value_t = 20_000)]
        ingest_devices: usize,
        /// Kept-alive connections carrying them.
        #[arg(long, default_value_t = 64)]
        ingest_connections: usize,
        /// Also send them to control replicas over a 3-member etcd cluster.
        #[arg(long)]
        etcd: bool,
    },
    /// How many idle phones fit, and how fast each is created.
    Density {
        /// Phones to create.
        #[arg(long, default_value_t = 1000)]
        vms: usize,
        /// Also this many hibernated phones (each hibernated after boot), with wake times, beside the resident ones.
        #[arg(long, value_name = "N")]
        hibernated: Option<usize>,
        /// Also this many phones through one site process (made by the control service and the site, durable,
        /// hibernating, each on its own 15-minute mail check), with the site's memory, disk, wakes and CPU.
        #[arg(long, value_name = "N")]
        site: Option<usize>,
        /// Seconds of the site's timer load watched after its phones are made.
        #[arg(long, default_value_t = 60)]
        load_secs: u64,
    },
}

/// Dirty-page tracking mechanisms to compare.
#[derive(Clone, Copy, ValueEnum)]
pub enum Tracking {
    /// userfaultfd async write-protect, read with PAGEMAP_SCAN.
    Wp,
    /// Compare with a shadow copy.
    Shadow,
}

/// The `p`-th percentile (0..=100) of samples.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Prints figures: one JSON object with `--json`, else a line each.
pub(crate) fn print(v: Value) -> Result<()> {
    crate::output::emit(&v, || {
        if let Value::Object(map) = &v {
            for (k, v) in map {
                println!("{k:<28} {v}");
            }
        }
    })
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Snapshot { rounds, dirty_tracking } => print(snapshot(rounds.max(3), dirty_tracking)?),
        BenchCmd::Input { events } => print(input(events.max(10))?),
        BenchCmd::Density { vms, hibernated, site, load_secs } => {
            let mut figures = density(vms.max(1))?;
            if let Some(n) = hibernated {
                figures["hibernated"] = density_hibernated(n.max(1))?;
            }
            if let Some(n) = site {
                figures["site"] =
                    crate::runtime()?.block_on(crate::bench_density::site_density(n.max(1), load_secs))?;
            }
            print(figures)
        }
        BenchCmd::Checkpoint { hours, phones } => {
            print(crate::bench_checkpoint::checkpoint(hours.max(1), phones.max(1))?)
        }
        BenchCmd::Migrate { rounds, qemu_mib, qemu_runs } => {
            print(crate::runtime()?.block_on(crate::bench_net::migrate(rounds.max(2), qemu_mib, qemu_runs))?)
        }
        BenchCmd::Display { keys, static_secs, plain } => print(
            crate::runtime()?.block_on(crate::bench_net::display(keys.max(10), static_secs.clamp(1, 120), plain))?,
        ),
        BenchCmd::Proxy { round_trips, delay_ms, chunks } => print(crate::runtime()?.block_on(crate::proxy::bench(
            round_trips.max(10),
            std::time::Duration::from_millis(delay_ms),
            chunks.max(1),
        ))?),
        BenchCmd::Placer {
            sites,
            users,
            reports,
            reference,
            ingest_secs,
            ingest_devices,
            ingest_connections,
            etcd,
        } => {
            let mut figures = crate::bench_placer::placer(
                sites.max(2),
                users.max(1),
                reports.max(100),
                (
                    reference.first().copied().unwrap_or(1_000).max(2),
                    reference.get(1).copied().unwrap_or(100_000).max(1),
                ),
            )?;
            let run = |store| {
                crate::bench_ingest::ingest(store, ingest_devices.max(1), ingest_connections.max(1), ingest_secs)
            };
            if ingest_secs > 0.0 {
                let embedded = run(crate::bench_ingest::IngestStore::Embedded)?;
                figures["reports_per_s"] = embedded["reports_per_s"].clone();
                figures["ingest"] = serde_json::json!({ "embedded": embedded });
                if etcd {
                    figures["ingest"]["etcd"] = run(crate::bench_ingest::IngestStore::Etcd)?;
                }
            }
            print(figures)
        }
        BenchCmd::Failover { faults, cluster } => {
            print(crate::runtime()?.block_on(crate::bench_failover::failover(faults.max(1), cluster))?)
        }
        BenchCmd::Engines { rounds, qemu_runs } => {
            print(crate::runtime()?.block_on(crate::bench_engines::engines(rounds.max(2), qemu_runs))?)
        }
        BenchCmd::Energy { active_min, day_h, mail_every_min } => {
            print(crate::runtime()?.block_on(crate::bench_net::energy(active_min, day_h, mail_every_min.max(1)))?)
        }
    }
}

fn engine(max_vms: u32, tracking: Option<Tracking>) -> Result<WasmEngine> {
    let config = WasmEngineConfig {
        max_vms,
        dirty_tracking: tracking.map(|t| match t {
            Tracking::Wp => TrackerKind::WriteProtect,
            Tracking::Shadow => TrackerKind::ShadowCompare,
        }),
        ..WasmEngineConfig::default()
    };
    Ok(WasmEngine::with_config(config, SystemClock::shared())?)
}

pub(crate) fn tap_phone(phone: &mut dyn VirtualPhone, (x, y): (i32, i32)) -> Result<()> {
    phone.deliver(Event::Touch { phase: TouchPhase::Down, x, y, pointer: 0 })?;
    phone.deliver(Event::Touch { phase: TouchPhase::Up, x, y, pointer: 0 })?;
    Ok(())
}

/// A phone with Notes open and a paragraph typed: a phone in mid-session.
fn phone_in_notes(engine: &WasmEngine) -> Result<Box<dyn VirtualPhone>> {
    let image = engine.load_image(vmi_phone_image::PHONE_WASM)?;
    let mut phone = engine.create(&image.hash, &VmConfig::default())?;
    tap_phone(phone.as_mut(), layout::NOTES)?;
    for c in "Meeting notes: the edge site keeps my phone warm while the screen sleeps. ".chars() {
        phone.deliver(Event::text(c))?;
    }
    phone.frame()?;
    Ok(phone)
}

pub(crate) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// WebAssembly text that writes every word of the first 16 MiB (locals `$i` and `$x`, both 0 at the start): the
/// first quarter xorshift noise, the rest a repeating pattern. Shared by the benches' filled guests.
macro_rules! fill_16mib_wat {
    () => {
        r#"
    (local.set $x (i32.const 0x9e3779b9))
    (loop $fill
      (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 13))))
      (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 17))))
      (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 5))))
      (i32.store (local.get $i)
        (select (local.get $x) (i32.or (i32.const 0x10203040) (i32.and (local.get $i) (i32.const 0xff00)))
          (i32.lt_u (local.get $i) (i32.const 0x400000))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 0x1000000))))"#
    };
}
pub(crate) use fill_16mib_wat;

/// A guest whose whole memory is in use: 16 MiB, every page non-zero (a quarter
/// incompressible, the rest repetitive, like a framebuffer and heap). A key writes one word.
const FILLED_GUEST: &str = concat!(
    r#"(module
  (memory (export "memory") 256 256)
  (func (export "vmi_init") (param i32 i32) (local $i i32) (local $x i32)"#,
    fill_16mib_wat!(),
    r#")
  (func (export "vmi_event") (param i32 i32 i32 i32)
    (i32.store (i32.and (i32.mul (local.get 2) (i32.const 4099)) (i32.const 0xfffffc))
      (local.get 2))))"#
);

struct SnapshotFigures {
    memory_bytes: u64,
    full_ms: Vec<f64>,
    restore_ms: Vec<f64>,
    inc_ms: Vec<f64>,
    inc_bytes: Vec<f64>,
    full_bytes: usize,
    full_pages: usize,
}

fn measure_snapshots(engine: &WasmEngine, phone: &mut dyn VirtualPhone, rounds: usize) -> Result<SnapshotFigures> {
    let memory_bytes = phone.usage().memory_bytes;
    let mut full_ms = Vec::new();
    let mut full = None;
    for _ in 0..rounds {
        let t = Instant::now();
        let snap = phone.snapshot(SnapshotRequest::Full)?;
        full_ms.push(ms(t));
        full = Some(snap);
    }
    let full = full.context("no snapshot taken")?;
    let mut restore_ms = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let restored = engine.restore(&phone.info().image, &[&full.bytes], &VmConfig::default())?;
        restore_ms.push(ms(t));
        drop(restored);
    }
    let mut inc_ms = Vec::new();
    let mut inc_bytes = Vec::new();
    phone.snapshot(SnapshotRequest::Full)?;
    for i in 0..rounds {
        phone.deliver(Event::text(if i % 2 == 0 { 'x' } else { ' ' }))?;
        phone.frame()?;
        let t = Instant::now();
        let snap = phone.snapshot(SnapshotRequest::Incremental)?;
        inc_ms.push(ms(t));
        inc_bytes.push(snap.bytes.len() as f64);
    }
    Ok(SnapshotFigures {
        memory_bytes,
        full_ms,
        restore_ms,
        inc_ms,
        inc_bytes,
        full_bytes: full.bytes.len(),
        full_pages: full.pages,
    })
}

impl SnapshotFigures {
    fn json(mut self) -> serde_json::Map<String, Value> {
        let v = json!({
            "memory_mib": round(self.memory_bytes as f64 / (1 << 20) as f64, 2),
            "nonzero_mib": round(self.full_pages as f64 * 4096.0 / (1 << 20) as f64, 2),
            "snapshot_ms_p50": round(percentile(&mut self.full_ms, 50.0), 3),
            "snapshot_ms_p99": round(percentile(&mut self.full_ms, 99.0), 3),
            "restore_ms_p50": round(percentile(&mut self.restore_ms, 50.0), 3),
            "restore_ms_p99": round(percentile(&mut self.restore_ms, 99.0), 3),
            "snapshot_bytes": self.full_bytes,
            "incremental_ms_p50": round(percentile(&mut self.inc_ms, 50.0), 4),
            "incremental_ms_p99": round(percentile(&mut self.inc_ms, 99.0), 4),
            "incremental_bytes_p50": percentile(&mut self.inc_bytes, 50.0),
        });
        match v {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

fn snapshot(rounds: usize, tracking: Option<Tracking>) -> Result<Value> {
    let engine = engine(rounds as u32 + 8, tracking)?;
    let mut phone = phone_in_notes(&engine)?;
    let mechanism = vmi_wasm_engine_mechanism(&engine, tracking)?;
    let mut out = measure_snapshots(&engine, phone.as_mut(), rounds)?.json();
    drop(phone);

    let filled = wat::parse_str(FILLED_GUEST).context("bench guest")?;
    let image = engine.load_image(&filled)?;
    let mut guest = engine.create(&image.hash, &VmConfig::default())?;
    let filled = measure_snapshots(&engine, guest.as_mut(), rounds)?.json();

    out.insert("bench".into(), json!("snapshot"));
    out.insert(
        "conditions".into(),
        json!(format!(
            "top level: default phone 720x1280 in Notes after typing; filled_16mib: a 16 MiB guest with every page non-zero; {rounds} rounds each, 1 thread; incremental = after one keystroke"
        )),
    );
    out.insert("dirty_tracking".into(), json!(mechanism));
    out.insert("filled_16mib".into(), Value::Object(filled));
    Ok(Value::Object(out))
}

fn vmi_wasm_engine_mechanism(engine: &WasmEngine, tracking: Option<Tracking>) -> Result<&'static str> {
    let image = engine.load_image(vmi_phone_image::PHONE_WASM)?;
    let phone = vmi_wasm_engine::WasmPhone::create(engine, &image.hash, &VmConfig::default())?;
    let _ = tracking;
    Ok(phone.dirty_mechanism())
}

fn input(events: usize) -> Result<Value> {
    let engine = engine(4, None)?;
    let mut phone = phone_in_notes(&engine)?;
    let mut key_us = Vec::with_capacity(events);
    let mut damage_px = 0u64;
    for i in 0..events {
        // Type words and erase them again so the note stays one screen long.
        let event = if (i / 40) % 2 == 0 {
            Event::text(if i % 6 == 5 { ' ' } else { 'a' })
        } else {
            Event::Key { code: vmi_engine::KeyCode::Backspace, text: None }
        };
        let t = Instant::now();
        phone.deliver(event)?;
        let frame = phone.frame()?;
        damage_px += frame.damage.iter().map(|r| r.area()).sum::<u64>();
        key_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // Touch: strokes in Paint.
    phone.deliver(Event::Key { code: vmi_engine::KeyCode::Home, text: None })?;
    tap_phone(phone.as_mut(), layout::PAINT)?;
    phone.frame()?;
    let mut touch_us = Vec::with_capacity(events);
    for i in 0..events {
        let k = (i % 100) as i32;
        let phase = match i % 100 {
            0 => TouchPhase::Down,
            99 => TouchPhase::Up,
            _ => TouchPhase::Move,
        };
        let t = Instant::now();
        phone.deliver(Event::Touch { phase, x: 100 + k * 5, y: 400 + (i as i32 / 100 % 10) * 60, pointer: 0 })?;
        phone.frame()?;
        touch_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut all: Vec<f64> = key_us.iter().chain(&touch_us).copied().collect();
    Ok(json!({
        "bench": "input",
        "conditions": format!("default phone 720x1280; {events} keys in Notes then {events} touch moves in Paint; deliver + damage read, in process"),
        "p50_us": round(percentile(&mut all, 50.0), 1),
        "p99_us": round(percentile(&mut all, 99.0), 1),
        "key_p50_us": round(percentile(&mut key_us, 50.0), 1),
        "key_p99_us": round(percentile(&mut key_us, 99.0), 1),
        "touch_p50_us": round(percentile(&mut touch_us, 50.0), 1),
        "touch_p99_us": round(percentile(&mut touch_us, 99.0), 1),
        "damage_px_per_key": damage_px / events as u64,
    }))
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> Result<u64> {
    vmi_telemetry::resident_bytes(None).context("cannot read this process's resident memory from /proc/self/statm")
}

/// `n` phones that hibernate right after boot (at most one resident at a time while they are made), then a wake
/// of a sample of them: what a hibernated phone costs, and how long an event waits for its phone to wake.
fn density_hibernated(n: usize) -> Result<Value> {
    const WAKES: usize = 500;
    let engine = engine(16, None)?;
    let image = engine.load_image(vmi_phone_image::PHONE_WASM)?;
    let warm = engine.create(&image.hash, &VmConfig::default())?;
    let before = rss_bytes()?;
    let started = Instant::now();
    let mut phones = Vec::with_capacity(n);
    for i in 0..n {
        let config = VmConfig { rng_seed: Some(i as u64 + 1), ..VmConfig::default() };
        let mut phone = engine.create(&image.hash, &config)?;
        phone.hibernate()?;
        phones.push(phone);
    }
    let made_s = started.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    let store = engine.page_store_stats();
    let load = timer_load(&mut phones, LOAD_SECS)?;
    // An event for a hibernated phone: wake, deliver, and back to sleep; the wake and the event are timed together.
    let (mut wake_ms, mut sleep_ms) = (Vec::with_capacity(WAKES), Vec::with_capacity(WAKES));
    let step = (n / WAKES).max(1);
    for phone in phones.iter_mut().step_by(step).take(WAKES) {
        let t = Instant::now();
        phone.deliver(Event::Wake)?;
        wake_ms.push(ms(t));
        let t = Instant::now();
        phone.hibernate()?;
        sleep_ms.push(ms(t));
    }
    drop(warm);
    Ok(json!({
        "conditions": format!("{n} default phones 720x1280, each hibernated after boot, one process; {} of them woken by an event and hibernated again", wake_ms.len()),
        "phones": n,
        "rss_mib": round(after as f64 / (1 << 20) as f64, 1),
        "kib_per_hibernated_phone": round(after.saturating_sub(before) as f64 / n as f64 / 1024.0, 2),
        "page_store_pages": store.pages,
        "page_store_mib": round(store.bytes as f64 / (1 << 20) as f64, 2),
        "create_and_hibernate_s": round(made_s, 2),
        "wake_ms_p50": round(percentile(&mut wake_ms, 50.0), 3),
        "wake_ms_p99": round(percentile(&mut wake_ms, 99.0), 3),
        "hibernate_ms_p50": round(percentile(&mut sleep_ms, 50.0), 3),
        "hibernate_ms_p99": round(percentile(&mut sleep_ms, 99.0), 3),
        "timer_load": load,
    }))
}

/// How long the timer load runs.
const LOAD_SECS: u64 = 10;
/// Every phone checks its mail this often, the checks spread evenly over the interval.
const MAIL_CHECK_SECS: u64 = 15 * 60;

/// CPU seconds this process has used (user + system), from /proc.
pub(crate) fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc/self/stat")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let hz = 100.0; // USER_HZ on Linux
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Hibernated phones checking their mail every [`MAIL_CHECK_SECS`], spread evenly: each second, the phones whose
/// turn it is wake (a mail-arrived event: the check), and hibernate again. Runs `secs` seconds of real time and
/// says what that load costs: the wakes a second, the CPU cores used, and how long each check waited for its phone.
fn timer_load(phones: &mut [Box<dyn VirtualPhone>], secs: u64) -> Result<Value> {
    let per_second = phones.len() as f64 / MAIL_CHECK_SECS as f64;
    let mut due_ms = Vec::new();
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    let mut next = 0usize;
    for second in 0..secs {
        let until = ((second + 1) as f64 * per_second).round() as usize;
        while next < until.min(phones.len()) {
            let phone = &mut phones[next % phones.len()];
            let t = Instant::now();
            phone.deliver(Event::MailArrived)?;
            due_ms.push(ms(t));
            phone.hibernate()?;
            next += 1;
        }
        let second_ends = started + Duration::from_secs(second + 1);
        std::thread::sleep(second_ends.saturating_duration_since(Instant::now()));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    Ok(json!({
        "conditions": format!("each phone checks its mail every {MAIL_CHECK_SECS} s, spread evenly; {secs} s of real time"),
        "wakes_per_s": round(due_ms.len() as f64 / wall, 1),
        "cpu_cores_used": round(cpu / wall, 3),
        "check_ms_p50": round(percentile(&mut due_ms, 50.0), 3),
        "check_ms_p99": round(percentile(&mut due_ms, 99.0), 3),
        "resident_after": phones.iter().filter(|p| p.resident()).count(),
    }))
}

pub(crate) fn density(vms: usize) -> Result<Value> {
    let engine = engine(vms as u32 + 4, None)?;
    let image = engine.load_image(vmi_phone_image::PHONE_WASM)?;
    // One phone first, so one-time costs (compiled code, pool metadata) are not counted
    // per phone.
    let warm = engine.create(&image.hash, &VmConfig::default())?;
    let before = rss_bytes()?;
    let mut phones = Vec::with_capacity(vms);
    let mut create_ms = Vec::with_capacity(vms);
    let started = Instant::now();
    for i in 0..vms {
        let config = VmConfig { rng_seed: Some(i as u64 + 1), ..VmConfig::default() };
        let t = Instant::now();
        phones.push(engine.create(&image.hash, &config)?);
        create_ms.push(ms(t));
    }
    let total_s = started.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    // Every phone still answers.
    for p in phones.iter_mut() {
        p.deliver(Event::Wake)?;
    }
    drop(warm);
    let per_vm = (after.saturating_sub(before)) as f64 / vms as f64;
    Ok(json!({
        "bench": "density",
        "conditions": format!("{vms} default phones 720x1280, idle after boot, one process, pooling allocator"),
        "vms": vms,
        "rss_mib": round(after as f64 / (1 << 20) as f64, 1),
        "kib_per_idle_vm": round(per_vm / 1024.0, 1),
        "create_ms_p50": round(percentile(&mut create_ms, 50.0), 3),
        "create_ms_p99": round(percentile(&mut create_ms, 99.0), 3),
        "create_total_s": round(total_s, 2),
        "memory_per_vm_mib": round(phones[0].usage().memory_bytes as f64 / (1 << 20) as f64, 2),
    }))
}
