//! The engine against small hand-written guests: state capture, limits, refusals and
//! snapshot errors, each at the `Engine`/`VirtualPhone` boundary.

use std::sync::Arc;

use vmi_engine::{
    Engine, EngineError, Event, ImageHash, KeyCode, ManualClock, SnapshotRequest, VirtualPhone, VmConfig, VmError,
    VmStatus,
};
use vmi_snapshot::SnapshotError;
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

/// A guest whose state is spread over everything a snapshot must capture: a
/// non-exported mutable global, linear memory (grown at init), a timer, the RNG and the
/// framebuffer. A key adds its character to the global; key Delete loops forever; key
/// Home grows memory without bound.
const COUNTER: &str = r#"(module
  (import "vmi" "timer_set" (func $timer_set (param i32 i64)))
  (import "vmi" "clock_monotonic_ns" (func $now (result i64)))
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "fb_damage" (func $fb_damage (param i32 i32 i32 i32)))
  (import "vmi" "random_fill" (func $random_fill (param i32 i32)))
  (memory (export "memory") 1)
  (global $sum (mut i32) (i32.const 0))
  (global $ticks (mut i64) (i64.const 0))
  (func (export "vmi_init") (param i32 i32)
    (drop (memory.grow (i32.const 3)))
    (call $fb_attach (i32.const 2048) (i32.const 2) (i32.const 2))
    (call $timer_set (i32.const 1) (i64.const 1000000)))
  (func $paint
    ;; pixel 0 = sum, pixel 1 = ticks, pixel 2 = random, pixel 3 = a byte far up in memory
    (i32.store (i32.const 2048) (global.get $sum))
    (i32.store (i32.const 2052) (i32.wrap_i64 (global.get $ticks)))
    (call $random_fill (i32.const 2056) (i32.const 4))
    (i32.store (i32.const 2060) (i32.load (i32.const 200000)))
    (call $fb_damage (i32.const 0) (i32.const 0) (i32.const 2) (i32.const 2)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (if (i32.eq (local.get $kind) (i32.const 4))
      (then
        (if (i32.eq (local.get $a) (i32.const 9)) (then (loop $forever (br $forever))))
        (if (i32.eq (local.get $a) (i32.const 8))
          (then (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable)))
        (global.set $sum (i32.add (global.get $sum) (local.get $b)))
        (i32.store (i32.const 200000) (i32.add (i32.load (i32.const 200000)) (i32.const 1)))))
    (if (i32.eq (local.get $kind) (i32.const 5))
      (then
        (global.set $ticks (i64.add (global.get $ticks) (i64.const 1)))
        (call $timer_set (i32.const 1) (i64.add (call $now) (i64.const 1000000)))))
    (call $paint)))"#;

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("test guest parses")
}

fn engine(clock: Arc<ManualClock>) -> WasmEngine {
    WasmEngine::with_config(WasmEngineConfig { max_vms: 16, ..WasmEngineConfig::default() }, clock).expect("engine")
}

fn pixels(phone: &mut dyn VirtualPhone) -> Vec<u8> {
    phone.frame().expect("frame").rgba.to_vec()
}

fn key(c: char) -> Event {
    Event::text(c)
}

#[test]
fn restored_guest_continues_exactly_like_the_original() {
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let a = engine(clock.clone());
    let image = a.load_image(&wat(COUNTER)).expect("load");
    let mut original = a.create(&image.hash, &VmConfig::default()).expect("create");
    for c in "hello".chars() {
        original.deliver(key(c)).expect("key");
    }
    // Timers fire at the virtual time they are due, not in a catch-up burst.
    clock.advance(500_000);
    assert_eq!(original.fire_due_timers().expect("timers"), 0);
    for _ in 0..3 {
        clock.advance(1_000_000);
        assert_eq!(original.fire_due_timers().expect("timers"), 1);
    }
    let snap = original.snapshot(SnapshotRequest::Full).expect("snapshot");

    // A fresh engine (same clock reading) brings it back.
    let b = engine(clock.clone());
    b.load_image(&wat(COUNTER)).expect("load");
    let mut restored = b.restore(&image.hash, &[&snap.bytes], &VmConfig::default()).expect("restore");
    assert_eq!(restored.now_ns(), original.now_ns());
    assert_eq!(restored.next_timer_ns(), original.next_timer_ns());
    assert_eq!(pixels(restored.as_mut()), pixels(original.as_mut()));

    // The same further events give the same frames: the hidden global, the memory, the
    // timer and the RNG all came across.
    for (i, c) in "world".chars().enumerate() {
        original.deliver(key(c)).expect("key");
        restored.deliver(key(c)).expect("key");
        clock.advance(400_000 * i as u64);
        original.fire_due_timers().expect("timers");
        restored.fire_due_timers().expect("timers");
        assert_eq!(pixels(restored.as_mut()), pixels(original.as_mut()), "after event {i}");
    }
    let sum: u32 = "helloworld".chars().map(|c| c as u32).sum();
    let frame = pixels(restored.as_mut());
    assert_eq!(u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes")), sum);
}

#[test]
fn incremental_chain_restores_and_is_small() {
    let clock = ManualClock::new(0);
    let e = engine(clock.clone());
    let image = e.load_image(&wat(COUNTER)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    let base = phone.snapshot(SnapshotRequest::Full).expect("full");
    phone.deliver(key('a')).expect("key");
    let inc1 = phone.snapshot(SnapshotRequest::Incremental).expect("inc");
    phone.deliver(key('b')).expect("key");
    let inc2 = phone.snapshot(SnapshotRequest::Incremental).expect("inc");
    assert_eq!(inc1.parent, Some(base.id));
    assert_eq!(inc2.parent, Some(inc1.id));
    assert!(inc1.pages <= 3, "one key wrote {} pages", inc1.pages);
    assert_eq!(phone.last_good_chain().expect("chain").len(), 3);

    let mut back =
        e.restore(&image.hash, &[&base.bytes, &inc1.bytes, &inc2.bytes], &VmConfig::default()).expect("chain");
    assert_eq!(pixels(back.as_mut()), pixels(phone.as_mut()));
    // Out of order is refused.
    let err = e.restore(&image.hash, &[&base.bytes, &inc2.bytes], &VmConfig::default()).err().expect("refused");
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::ParentMismatch { .. })), "{err}");
    let err = e.restore(&image.hash, &[&inc1.bytes], &VmConfig::default()).err().expect("refused");
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::NotABase)), "{err}");
}

#[test]
fn runaway_guest_is_stopped_and_others_keep_answering() {
    let clock = ManualClock::new(0);
    let e = engine(clock);
    let image = e.load_image(&wat(COUNTER)).expect("load");
    let config = VmConfig { cpu_budget_per_event: 5_000_000, ..VmConfig::default() };
    let mut runaway = e.create(&image.hash, &config).expect("create");
    let mut neighbour = e.create(&image.hash, &config).expect("create");
    runaway.deliver(key('x')).expect("key");
    let good = runaway.snapshot(SnapshotRequest::Full).expect("snapshot");

    let err = runaway.deliver(Event::Key { code: KeyCode::Delete, text: None }).expect_err("loops");
    assert!(matches!(err, VmError::CpuBudget { budget: 5_000_000 }), "{err}");
    assert!(matches!(runaway.status(), VmStatus::Crashed { .. }));
    assert!(runaway.usage().cpu_last_event <= 5_000_000);
    assert!(matches!(runaway.deliver(key('y')), Err(VmError::Crashed(_))));
    assert!(matches!(runaway.snapshot(SnapshotRequest::Full), Err(VmError::Crashed(_))));
    // The last good snapshot is kept and brings the phone back.
    assert_eq!(runaway.last_snapshot_id(), Some(good.id));
    let mut back = e.restore(&image.hash, &[&good.bytes], &config).expect("restore");
    back.deliver(key('z')).expect("restored phone runs");

    neighbour.deliver(key('n')).expect("the neighbour still answers");
}

#[test]
fn memory_cap_stops_a_greedy_guest() {
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(COUNTER)).expect("load");
    let config = VmConfig { memory_limit_bytes: 4 << 20, ..VmConfig::default() };
    let mut phone = e.create(&image.hash, &config).expect("create");
    let err = phone.deliver(Event::Key { code: KeyCode::Home, text: None }).expect_err("capped");
    assert!(matches!(err, VmError::MemoryLimit { limit } if limit == 4 << 20), "{err}");
    assert!(phone.usage().memory_bytes <= 4 << 20);
}

#[test]
fn images_that_cannot_be_captured_are_refused() {
    let e = engine(ManualClock::new(0));
    let shared = wat(r#"(module (memory (export "memory") 1 1 shared)
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
    let err = e.load_image(&shared).expect_err("shared memory");
    assert!(err.to_string().contains("shared"), "{err}");
    let unknown = wat(r#"(module (import "env" "syscall" (func))
        (memory (export "memory") 1)
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
    let err = e.load_image(&unknown).expect_err("unknown import");
    assert!(err.to_string().contains("unknown import `env.syscall`"), "{err}");
    let err = e.load_image(b"not wasm at all").expect_err("garbage");
    assert!(matches!(err, EngineError::ImageRefused(_)), "{err}");
    let future = wat(r#"(module (memory (export "memory") 1)
        (func (export "vmi_abi_version") (result i32) (i32.const 7))
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
    let err = e.load_image(&future).expect_err("future ABI");
    assert!(err.to_string().contains("ABI version 7"), "{err}");
}

#[test]
fn bad_snapshots_are_refused_with_the_right_error() {
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(COUNTER)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    phone.deliver(key('q')).expect("key");
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot").bytes;
    let cfg = VmConfig::default();
    let restore = |bytes: &[u8]| e.restore(&image.hash, &[bytes], &cfg).err().expect("must be refused");

    // Truncated.
    let err = restore(&snap[..snap.len() / 2]);
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::Truncated { .. })), "{err}");
    // Corrupt: one flipped byte in the body.
    let mut bad = snap.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let err = restore(&bad);
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::ChecksumMismatch { .. })), "{err}");
    // Not a snapshot.
    let err = restore(b"GIF89a.........................................");
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::BadMagic)), "{err}");
    // A future format version.
    let mut future = snap.clone();
    future[8] = 0xff;
    let err = restore(&future);
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::FutureVersion { .. })), "{err}");
    // Another image's snapshot.
    let other = e
        .load_image(&wat(r#"(module (memory (export "memory") 1)
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#))
        .expect("other image");
    let err = e.restore(&other.hash, &[&snap], &cfg).err().expect("wrong image");
    assert!(matches!(err, EngineError::Snapshot(SnapshotError::WrongImage { .. })), "{err}");
    // An image the engine never loaded.
    let err = e.restore(&ImageHash([7; 32]), &[&snap], &cfg).err().expect("unknown image");
    assert!(
        matches!(err, EngineError::Snapshot(SnapshotError::WrongImage { .. }) | EngineError::UnknownImage(_)),
        "{err}"
    );
    // The phone itself is untouched by all this.
    phone.deliver(key('r')).expect("still running");
}

#[test]
fn compiled_images_are_cached_and_reused() {
    let dir = std::env::temp_dir().join(format!("vmi-compiled-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config_for = |dir: &std::path::Path| WasmEngineConfig {
        max_vms: 4,
        cache_dir: Some(dir.into()),
        ..WasmEngineConfig::default()
    };
    let config = config_for(&dir);
    let first = WasmEngine::with_config(config.clone(), ManualClock::new(0)).expect("engine");
    let image = first.load_image(&wat(COUNTER)).expect("compile");
    let cached = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(dir).expect("cache dir").map(|e| e.expect("entry").path());
        entries.filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect()
    };
    assert_eq!(cached(&dir).len(), 1, "one compiled image is cached");

    // A second engine loads the compiled image and runs it the same way.
    let second = WasmEngine::with_config(config, ManualClock::new(0)).expect("engine");
    assert_eq!(second.load_image(&wat(COUNTER)).expect("from cache").hash, image.hash);
    // One seed for both: a fresh phone's RNG is otherwise seeded at random.
    let seeded = VmConfig { rng_seed: Some(7), ..VmConfig::default() };
    let mut a = first.create(&image.hash, &seeded).expect("create");
    let mut b = second.create(&image.hash, &seeded).expect("create");
    a.deliver(key('k')).expect("key");
    b.deliver(key('k')).expect("key");
    assert_eq!(pixels(a.as_mut()), pixels(b.as_mut()));

    // Code planted under another image's name is not run: the engine's own compilation of COUNTER, copied to the
    // file of a different image, is refused by its MAC and that image is compiled afresh.
    let counter_file = cached(&dir).pop().expect("counter's file");
    let other = vmi_phone_image::PHONE_WASM;
    let other_hash = vmi_engine::ImageHash::of(other);
    let other_file = counter_file.with_file_name(
        counter_file.file_name().expect("name").to_string_lossy().replace(&image.hash.to_hex(), &other_hash.to_hex()),
    );
    std::fs::copy(&counter_file, &other_file).expect("plant");
    let fourth = WasmEngine::with_config(config_for(&dir), ManualClock::new(0)).expect("engine");
    assert_eq!(fourth.load_image(other).expect("the phone image, compiled afresh").hash, other_hash);
    let rewritten = std::fs::read(&other_file).expect("the other image's file");
    let planted = std::fs::read(&counter_file).expect("counter's file");
    assert!(rewritten != planted, "the planted code was replaced by a fresh compilation");
    // A damaged cache file is ignored (recompiled), not trusted.
    for path in cached(&dir) {
        std::fs::write(path, b"not a compiled module").expect("damage");
    }
    let third = WasmEngine::with_config(
        WasmEngineConfig { max_vms: 4, cache_dir: Some(dir.clone()), ..WasmEngineConfig::default() },
        ManualClock::new(0),
    )
    .expect("engine");
    third.load_image(&wat(COUNTER)).expect("recompiled");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pre_copy_rounds_then_a_final_delta_restore_in_stages() {
    let clock = ManualClock::new(0);
    let e = engine(clock.clone());
    let image = e.load_image(&wat(COUNTER)).expect("load");
    let mut source = e.create(&image.hash, &VmConfig::default()).expect("create");
    source.deliver(key('a')).expect("key");
    // Rounds while the phone keeps running.
    let round0 = source.snapshot(SnapshotRequest::PreCopy).expect("round 0");
    assert_eq!(round0.parent, None);
    source.deliver(key('b')).expect("key");
    let round1 = source.snapshot(SnapshotRequest::PreCopy).expect("round 1");
    assert_eq!(round1.parent, Some(round0.id));
    assert!(round1.pages <= 3, "round 1 carries only what one key changed: {}", round1.pages);
    source.deliver(key('c')).expect("key");
    // Stopped: the dirty rest.
    let last = source.snapshot(SnapshotRequest::Incremental).expect("final");
    assert_eq!(last.parent, Some(round1.id));

    let mut stage = e.begin_restore(&image.hash, &VmConfig::default()).expect("stage");
    // Out of order is refused and does not spoil the stage.
    assert!(stage.apply(&round1.bytes).is_err());
    stage.apply(&round0.bytes).expect("round 0");
    stage.apply(&round1.bytes).expect("round 1");
    assert!(stage.apply(&round1.bytes).is_err(), "a round twice is refused");
    stage.apply(&last.bytes).expect("final");
    assert_eq!(stage.applied(), 3);
    let mut dest = stage.finish().expect("finish");
    assert_eq!(pixels(dest.as_mut()), pixels(source.as_mut()));
    for c in "xyz".chars() {
        source.deliver(key(c)).expect("key");
        dest.deliver(key(c)).expect("key");
        assert_eq!(pixels(dest.as_mut()), pixels(source.as_mut()));
    }
    // The destination can go on with its own deltas.
    let next = dest.snapshot(SnapshotRequest::Incremental).expect("delta after migration");
    assert_eq!(next.parent, Some(last.id));
}

#[test]
fn oversized_or_too_much_mail_is_refused_and_the_phone_stays_restorable() {
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(COUNTER)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    let mail = |body: usize| vmi_engine::Mail { from: "a".into(), subject: "s".into(), body: "x".repeat(body) };
    assert!(matches!(phone.push_mail(mail(300 << 10)), Err(VmError::TooLarge(_))));
    let mut accepted = 0;
    while phone.push_mail(mail(200 << 10)).is_ok() {
        accepted += 1;
        assert!(accepted < 1000, "the mailbox must fill up");
    }
    assert!(matches!(phone.push_mail(mail(200 << 10)), Err(VmError::Full("mailbox"))));
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    e.restore(&image.hash, &[&snap.bytes], &VmConfig::default()).expect("a full mailbox still restores");
}
