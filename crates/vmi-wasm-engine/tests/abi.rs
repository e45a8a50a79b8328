//! The engine keeps docs/GUEST_ABI.md's word: exports checked at load, pointers outside
//! memory always trap, a fresh RNG per phone, a clock that never goes back, guest logs
//! that reach the host (bounded), and a crashed phone that can start again.

use std::sync::Arc;

use vmi_engine::{
    Carryover, Engine, EngineError, Event, KeyCode, LogLevel, Mail, ManualClock, SnapshotRequest, VirtualPhone,
    VmConfig, VmError, VmStatus, advance_phone,
};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("test guest parses")
}

fn engine(clock: Arc<ManualClock>) -> WasmEngine {
    WasmEngine::with_config(WasmEngineConfig { max_vms: 16, ..WasmEngineConfig::default() }, clock).expect("engine")
}

/// The four little-endian bytes at `offset` of the phone's 2x2 framebuffer.
fn word(phone: &mut dyn VirtualPhone, offset: usize) -> i32 {
    let frame = phone.frame().expect("frame");
    i32::from_le_bytes(frame.rgba[offset..offset + 4].try_into().expect("4 bytes"))
}

/// Every import of the ABI, and a key for each that calls it with a pointer outside the
/// one page of memory. The upper-case key makes the same call in bounds, which must not
/// trap: the traps come from the pointers and nothing else.
const POINTERS: &str = r#"(module
  (import "vmi" "random_fill" (func $random_fill (param i32 i32)))
  (import "vmi" "log" (func $log (param i32 i32 i32)))
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "notify" (func $notify (param i32 i32 i32 i32) (result i32)))
  (import "vmi" "mailbox_fetch" (func $mailbox_fetch (param i32 i32) (result i32)))
  (import "vmi" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "vmi" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "vmi" "kv_delete" (func $kv_delete (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "key")
  (func (export "vmi_init") (param i32 i32))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (local $out i32)
    ;; $out: a pointer 6 bytes before the end of memory (16 bytes run past it) or, for
    ;; the upper-case key, well inside.
    (local.set $out (select (i32.const 1024) (i32.const 65530) (i32.lt_u (local.get $b) (i32.const 97))))
    (local.set $b (i32.or (local.get $b) (i32.const 32)))
    (if (i32.eq (local.get $b) (i32.const 114)) ;; r
      (then (call $random_fill (local.get $out) (i32.const 16))))
    (if (i32.eq (local.get $b) (i32.const 108)) ;; l
      (then (call $log (i32.const 2) (local.get $out) (i32.const 16))))
    (if (i32.eq (local.get $b) (i32.const 102)) ;; f: 4x1 pixels
      (then (call $fb_attach (local.get $out) (i32.const 4) (i32.const 1))))
    (if (i32.eq (local.get $b) (i32.const 110)) ;; n: the title
      (then (drop (call $notify (local.get $out) (i32.const 16) (i32.const 0) (i32.const 1)))))
    (if (i32.eq (local.get $b) (i32.const 98)) ;; b: the body
      (then (drop (call $notify (i32.const 0) (i32.const 1) (local.get $out) (i32.const 16)))))
    (if (i32.eq (local.get $b) (i32.const 109)) ;; m: the mailbox is empty
      (then (drop (call $mailbox_fetch (local.get $out) (i32.const 16)))))
    (if (i32.eq (local.get $b) (i32.const 103)) ;; g: the key is absent
      (then (drop (call $kv_get (i32.const 0) (i32.const 3) (local.get $out) (i32.const 16)))))
    (if (i32.eq (local.get $b) (i32.const 107)) ;; k: the key itself
      (then (drop (call $kv_get (local.get $out) (i32.const 16) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $b) (i32.const 115)) ;; s: the value
      (then (drop (call $kv_set (i32.const 0) (i32.const 3) (local.get $out) (i32.const 16)))))
    (if (i32.eq (local.get $b) (i32.const 111)) ;; o: a key over the limit, and the value
      (then (drop (call $kv_set (i32.const 0) (i32.const 300) (local.get $out) (i32.const 16)))))
    (if (i32.eq (local.get $b) (i32.const 100)) ;; d
      (then (call $kv_delete (local.get $out) (i32.const 16))))))"#;

#[test]
fn every_pointer_outside_memory_traps_whatever_the_call_would_answer() {
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(POINTERS)).expect("load");
    let cases = [
        ('r', "random_fill"),
        ('l', "log"),
        ('f', "fb_attach"),
        ('n', "notify"),
        ('b', "notify"),
        ('m', "mailbox_fetch"),
        ('g', "kv_get"),
        ('k', "kv_get"),
        ('s', "kv_set"),
        ('o', "kv_set"),
        ('d', "kv_delete"),
    ];
    for (key, import) in cases {
        let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
        phone.deliver(Event::text(key.to_ascii_uppercase())).unwrap_or_else(|e| panic!("{key} in bounds: {e}"));
        let err = phone.deliver(Event::text(key)).expect_err("an out-of-bounds pointer traps");
        let text = err.to_string();
        assert!(matches!(err, VmError::Trap(_)), "{key}: {err}");
        assert!(text.contains(&format!("`vmi.{import}`")) && text.contains("outside guest memory"), "{key}: {text}");
        assert!(matches!(phone.status(), VmStatus::Crashed { .. }), "{key}");
    }
}

#[test]
fn a_negative_length_is_outside_memory() {
    let guest = r#"(module
      (import "vmi" "mailbox_fetch" (func $fetch (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "vmi_init") (param i32 i32))
      (func (export "vmi_event") (param i32 i32 i32 i32) (drop (call $fetch (i32.const 0) (i32.const -1)))))"#;
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(guest)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    phone.push_mail(Mail { from: "a".into(), subject: "b".into(), body: "c".into() }).expect("mail");
    let err = phone.deliver(Event::MailArrived).expect_err("traps");
    assert!(err.to_string().contains("outside guest memory"), "{err}");
}

#[test]
fn exports_of_the_wrong_signature_are_refused_at_load_naming_them() {
    let e = engine(ManualClock::new(0));
    let three = wat(r#"(module (memory (export "memory") 1)
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32)))"#);
    let err = e.load_image(&three).expect_err("vmi_event takes four");
    assert!(matches!(err, EngineError::ImageRefused(_)), "{err}");
    assert!(err.to_string().contains("export `vmi_event` is a function (i32, i32, i32) -> ()"), "{err}");
    let global = wat(r#"(module (memory (export "memory") 1) (global (export "vmi_abi_version") i32 (i32.const 1))
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
    let err = e.load_image(&global).expect_err("vmi_abi_version is a function");
    assert!(err.to_string().contains("export `vmi_abi_version` is a global of type i32, expected a function"), "{err}");
}

#[test]
fn memory_above_the_caps_is_refused_with_the_sizes() {
    let e = engine(ManualClock::new(0));
    // 4097 pages: 64 KiB over the engine's 256 MiB cap.
    let big = wat(r#"(module (memory (export "memory") 4097)
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
    let err = e.load_image(&big).expect_err("over the engine's cap");
    assert!(matches!(err, EngineError::ImageRefused(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("initial memory of 256.0625 MiB") && text.contains("cap of 256 MiB"), "{text}");

    // 128 MiB: under the engine's cap, over a phone's default 64 MiB.
    let mid = wat(r#"(module (memory (export "memory") 2048)
        (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
    let image = e.load_image(&mid).expect("under the engine's cap");
    let err = e.create(&image.hash, &VmConfig::default()).err().expect("over the phone's limit");
    assert!(matches!(err, EngineError::Config(_)), "{err}");
    assert!(err.to_string().contains("starts with 128 MiB") && err.to_string().contains("limit of 64 MiB"), "{err}");
    let roomy = VmConfig { memory_limit_bytes: 128 << 20, ..VmConfig::default() };
    e.create(&image.hash, &roomy).expect("a phone with room for it boots");

    // A phone limit above the engine's cap is refused, not quietly lowered.
    let greedy = VmConfig { memory_limit_bytes: 512 << 20, ..VmConfig::default() };
    let err = e.create(&image.hash, &greedy).err().expect("over the engine's cap");
    assert!(matches!(err, EngineError::Config(_)), "{err}");
    assert!(err.to_string().contains("memory limit of 512 MiB") && err.to_string().contains("cap of 256 MiB"), "{err}");
}

#[test]
fn a_host_call_from_the_start_function_says_why_it_failed() {
    let e = engine(ManualClock::new(0));
    for import in ["(func $f (param i32 i32 i32 i32) (result i32))", "(func $f (result i64))"] {
        let (name, call) = if import.contains("param") {
            ("kv_get", "(drop (call $f (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 0)))")
        } else {
            ("clock_monotonic_ns", "(drop (call $f))")
        };
        let guest = format!(
            r#"(module (import "vmi" "{name}" {import}) (memory (export "memory") 1)
            (func $start {call}) (start $start)
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#
        );
        let err = e.load_image(&wat(&guest)).expect_err("refused");
        let text = format!("{err}: {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
        assert!(text.contains(&format!("`vmi.{name}` was called outside an event")), "{text}");
        assert!(text.contains("start function"), "{text}");
    }
}

/// Paints the RNG's next word at pixel 0 on every event.
const DICE: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "random_fill" (func $random_fill (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "vmi_init") (param i32 i32)
    (call $fb_attach (i32.const 1024) (i32.const 2) (i32.const 2))
    (call $random_fill (i32.const 1024) (i32.const 4)))
  (func (export "vmi_event") (param i32 i32 i32 i32) (call $random_fill (i32.const 1024) (i32.const 4))))"#;

#[test]
fn fresh_phones_draw_different_numbers_and_a_restore_continues_the_stream() {
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(DICE)).expect("load");
    let config = VmConfig::default();
    assert_eq!(config.rng_seed, None);
    let mut a = e.create(&image.hash, &config).expect("create");
    let mut b = e.create(&image.hash, &config).expect("create");
    // Equal by chance once in 2^32 runs.
    assert_ne!(word(a.as_mut(), 0), word(b.as_mut(), 0), "two fresh phones share a stream");

    let snap = a.snapshot(SnapshotRequest::Full).expect("snapshot");
    let mut back = e.restore(&image.hash, &[&snap.bytes], &config).expect("restore");
    for _ in 0..3 {
        a.deliver(Event::Wake).expect("event");
        back.deliver(Event::Wake).expect("event");
        assert_eq!(word(back.as_mut(), 0), word(a.as_mut(), 0), "the restored phone continues the stream");
    }

    // A seed given is for tests: the same stream each time.
    let seeded = VmConfig { rng_seed: Some(42), ..VmConfig::default() };
    let mut c = e.create(&image.hash, &seeded).expect("create");
    let mut d = e.create(&image.hash, &seeded).expect("create");
    assert_eq!(word(c.as_mut(), 0), word(d.as_mut(), 0));
}

/// Paints, at init, the monotonic clock it reads (pixels 0-1, an i64), and stores the
/// key-value pair `k` = `v` so an upgrade has something to carry.
const CLOCK: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "clock_monotonic_ns" (func $now (result i64)))
  (import "vmi" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "kv")
  (func (export "vmi_init") (param i32 i32)
    (call $fb_attach (i32.const 1024) (i32.const 2) (i32.const 2))
    (i64.store (i32.const 1024) (call $now))
    (drop (call $kv_set (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 1))))
  (func (export "vmi_event") (param i32 i32 i32 i32) (unreachable)))"#;

fn init_clock(phone: &mut dyn VirtualPhone) -> u64 {
    let frame = phone.frame().expect("frame");
    u64::from_le_bytes(frame.rgba[0..8].try_into().expect("8 bytes"))
}

#[test]
fn the_monotonic_clock_goes_on_across_an_upgrade() {
    const SECOND: u64 = 1_000_000_000;
    let clock = ManualClock::new(1_000 * SECOND);
    let e = engine(clock.clone());
    let image = e.load_image(&wat(CLOCK)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    assert_eq!(init_clock(phone.as_mut()), 0);
    clock.advance(5 * SECOND);
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    clock.advance(SECOND); // the upgrade happens a second later
    let mut upgraded = e.upgrade(&image.hash, &[&snap.bytes], &VmConfig::default()).expect("upgrade");
    assert_eq!(upgraded.now_ns(), 6 * SECOND);
    assert_eq!(init_clock(upgraded.as_mut()), 6 * SECOND, "the new image's init reads the clock going on");
    assert_eq!(upgraded.kv_get(b"k"), Some(b"v".to_vec()));
}

#[test]
fn a_phone_that_crashed_before_any_snapshot_starts_again_with_its_store() {
    const SECOND: u64 = 1_000_000_000;
    let clock = ManualClock::new(0);
    let e = engine(clock.clone());
    let image = e.load_image(&wat(CLOCK)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    phone.push_mail(Mail { from: "ann".into(), subject: "hi".into(), body: "unread".into() }).expect("mail");
    clock.advance(3 * SECOND);
    assert!(matches!(phone.deliver(Event::Wake), Err(VmError::Trap(_))));
    assert!(matches!(phone.status(), VmStatus::Crashed { .. }));
    assert!(phone.last_good_chain().expect("chain").is_empty(), "no snapshot was ever taken");

    // What the host still has of it.
    assert_eq!(phone.kv_get(b"k"), Some(b"v".to_vec()));
    let carried = phone.carryover();
    assert_eq!(carried.kv, vec![(b"k".to_vec(), b"v".to_vec())]);
    assert_eq!(carried.mailbox.len(), 1);
    assert_eq!(carried.virtual_ns, 3 * SECOND);

    clock.advance(SECOND);
    let mut again = e.create_from(&image.hash, &carried, &VmConfig::default()).expect("starts again");
    assert_eq!(*again.status(), VmStatus::Running);
    assert_eq!(again.kv_get(b"k"), Some(b"v".to_vec()));
    assert_eq!(again.mailbox_len(), 1);
    assert_eq!(init_clock(again.as_mut()), 4 * SECOND, "the clock never goes back");

    // Carried state a guest could never have made is refused.
    let forged = Carryover { kv: vec![(vec![b'k'; 300], Vec::new())], ..Carryover::default() };
    let err = e.create_from(&image.hash, &forged, &VmConfig::default()).err().expect("refused");
    assert!(matches!(err, EngineError::Config(_)), "{err}");
}

/// Logs on each key: `l` one line, `f` a flood of 200 in one event, `x` one line of 5000
/// bytes.
const LOGGER: &str = r#"(module
  (import "vmi" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "hello\nworld")
  (func (export "vmi_init") (param i32 i32))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32) (local $i i32)
    (if (i32.eq (local.get $b) (i32.const 108)) (then (call $log (i32.const 2) (i32.const 0) (i32.const 11))))
    (if (i32.eq (local.get $b) (i32.const 120)) (then (call $log (i32.const 0) (i32.const 0) (i32.const 5000))))
    (if (i32.eq (local.get $b) (i32.const 102))
      (then (loop $more
        (call $log (i32.const 4) (i32.const 0) (i32.const 5))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $more (i32.lt_u (local.get $i) (i32.const 200))))))))"#;

#[test]
fn guest_logs_reach_the_host_bounded() {
    const SECOND: u64 = 1_000_000_000;
    let clock = ManualClock::new(0);
    let e = engine(clock.clone());
    let image = e.load_image(&wat(LOGGER)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    clock.advance(7);
    phone.deliver(Event::text('l')).expect("log");
    let lines = phone.take_logs();
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0].level, lines[0].at_ns, lines[0].text.as_str()), (LogLevel::Info, 7, "hello world"));
    assert!(phone.take_logs().is_empty(), "taken once");

    phone.deliver(Event::text('x')).expect("long line");
    let lines = phone.take_logs();
    assert_eq!((lines.len(), lines[0].level), (1, LogLevel::Error));
    assert_eq!(lines[0].text.len(), vmi_wasm_engine::guest_log::MAX_LOG_LINE, "cut to the line limit");

    clock.advance(SECOND);
    phone.deliver(Event::text('f')).expect("flood");
    let lines = phone.take_logs();
    let kept = vmi_wasm_engine::guest_log::LOG_LINES_PER_SECOND as usize;
    assert_eq!(lines.len(), kept + 1);
    assert!(lines[..kept].iter().all(|l| l.text == "hello" && l.level == LogLevel::Trace));
    assert!(lines[kept].text.starts_with(&format!("… {} log lines dropped", 200 - kept)), "{:?}", lines[kept]);
}

/// Records the key event's modifiers (pixel 0) and each timer event's id (pixel 1); key
/// `t` arms timer -5 with a deadline in the past, key `z` arms 65 timers.
const KEYS_AND_TIMERS: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "timer_set" (func $timer_set (param i32 i64)))
  (memory (export "memory") 1)
  (func (export "vmi_init") (param i32 i32) (call $fb_attach (i32.const 1024) (i32.const 2) (i32.const 2)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32) (local $i i32)
    (if (i32.eq (local.get $kind) (i32.const 4)) (then (i32.store (i32.const 1024) (local.get $c))))
    (if (i32.eq (local.get $kind) (i32.const 5)) (then (i32.store (i32.const 1028) (local.get $a))))
    (if (i32.eq (local.get $b) (i32.const 116)) (then (call $timer_set (i32.const -5) (i64.const -1))))
    (if (i32.eq (local.get $b) (i32.const 122))
      (then (loop $more
        (call $timer_set (local.get $i) (i64.const 1000000000))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $more (i32.lt_u (local.get $i) (i32.const 65))))))))"#;

#[test]
fn capitals_carry_shift_and_timer_ids_are_any_i32_up_to_64_timers() {
    let clock = ManualClock::new(0);
    let e = engine(clock.clone());
    let image = e.load_image(&wat(KEYS_AND_TIMERS)).expect("load");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    phone.deliver(Event::text('A')).expect("key");
    assert_eq!(word(phone.as_mut(), 0), 1, "a capital is typed with shift");
    phone.deliver(Event::text('a')).expect("key");
    assert_eq!(word(phone.as_mut(), 0), 0);
    phone.deliver(Event::text('É')).expect("key");
    assert_eq!(word(phone.as_mut(), 0), 1);
    phone.deliver(Event::Key { code: KeyCode::Enter, text: None }).expect("key");
    assert_eq!(word(phone.as_mut(), 0), 0);

    phone.deliver(Event::text('t')).expect("arm timer -5 in the past");
    advance_phone(phone.as_mut(), &clock, 1).expect("fires");
    assert_eq!(word(phone.as_mut(), 4), -5, "the timer event carries the id as armed");

    let err = phone.deliver(Event::text('z')).expect_err("the 65th timer traps");
    assert!(err.to_string().contains("at most 64"), "{err}");
}

/// Adds the typed character to each of four i32 lanes at 1024 with one SIMD add per key.
const SIMD: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "vmi_init") (param i32 i32)
    (call $fb_attach (i32.const 1024) (i32.const 2) (i32.const 2))
    (v128.store (i32.const 1024) (v128.const i32x4 1 2 3 4)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (v128.store (i32.const 1024)
      (i32x4.add (v128.load (i32.const 1024)) (i32x4.splat (local.get $b))))))"#;

#[test]
fn fixed_width_simd_runs_and_snapshots() {
    let e = engine(ManualClock::new(0));
    let image = e.load_image(&wat(SIMD)).expect("SIMD is allowed");
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("create");
    phone.deliver(Event::text('a')).expect("key");
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    let other = engine(ManualClock::new(0));
    other.load_image(&wat(SIMD)).expect("load");
    let mut back = other.restore(&image.hash, &[&snap.bytes], &VmConfig::default()).expect("restore");
    for c in "bc".chars() {
        phone.deliver(Event::text(c)).expect("key");
        back.deliver(Event::text(c)).expect("key");
    }
    let sum = ('a' as i32) + ('b' as i32) + ('c' as i32);
    for (lane, start) in [1, 2, 3, 4].into_iter().enumerate() {
        assert_eq!(word(back.as_mut(), lane * 4), start + sum, "lane {lane}");
    }
    assert_eq!(back.frame().expect("frame").rgba, phone.frame().expect("frame").rgba);
}
