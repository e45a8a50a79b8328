//! The default phone image on the engine: a snapshot in mid-session restores in a fresh
//! engine and carries on frame for frame.

use std::sync::Arc;

use vmi_engine::{
    Engine, Event, KeyCode, Mail, ManualClock, SnapshotRequest, TouchPhase, VirtualPhone, VmConfig, advance_phone,
};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig, kv_of_host_state};

const MAIL: (i32, i32) = (102, 1090);
const NOTES: (i32, i32) = (274, 1090);
const PAINT: (i32, i32) = (446, 1090);
const STOPWATCH: (i32, i32) = (618, 1090);
const STOPWATCH_START: (i32, i32) = (518, 824);
const SECOND: u64 = 1_000_000_000;

fn engine(clock: Arc<ManualClock>) -> WasmEngine {
    let engine =
        WasmEngine::with_config(WasmEngineConfig { max_vms: 8, ..WasmEngineConfig::default() }, clock).expect("engine");
    engine.load_image(vmi_phone_image::PHONE_WASM).expect("the default phone loads");
    engine
}

fn tap(phone: &mut dyn VirtualPhone, (x, y): (i32, i32)) {
    phone.deliver(Event::Touch { phase: TouchPhase::Down, x, y, pointer: 0 }).expect("touch");
    phone.deliver(Event::Touch { phase: TouchPhase::Up, x, y, pointer: 0 }).expect("touch");
}

fn drag(phone: &mut dyn VirtualPhone, from: (i32, i32), to: (i32, i32)) {
    phone.deliver(Event::Touch { phase: TouchPhase::Down, x: from.0, y: from.1, pointer: 0 }).expect("touch");
    for k in 1..=10 {
        let (x, y) = (from.0 + (to.0 - from.0) * k / 10, from.1 + (to.1 - from.1) * k / 10);
        phone.deliver(Event::Touch { phase: TouchPhase::Move, x, y, pointer: 0 }).expect("touch");
    }
    phone.deliver(Event::Touch { phase: TouchPhase::Up, x: to.0, y: to.1, pointer: 0 }).expect("touch");
}

fn type_text(phone: &mut dyn VirtualPhone, text: &str) {
    for c in text.chars() {
        phone.deliver(Event::text(c)).expect("key");
    }
}

fn home(phone: &mut dyn VirtualPhone) {
    phone.deliver(Event::Key { code: KeyCode::Home, text: None }).expect("home");
}

fn screen_hash(phone: &mut dyn VirtualPhone) -> blake3::Hash {
    let frame = phone.frame().expect("frame");
    assert_eq!((frame.width, frame.height), (720, 1280));
    blake3::hash(frame.rgba)
}

fn notes_text(phone: &mut dyn VirtualPhone) -> String {
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    let view = vmi_snapshot::SnapshotView::parse(&snap.bytes, &vmi_snapshot::Limits::default()).expect("parse");
    let kv = kv_of_host_state(view.host_state).expect("host state");
    String::from_utf8(kv.get(b"notes.text".as_slice()).cloned().unwrap_or_default()).expect("utf-8")
}

/// The same further session, played on a phone.
fn continue_session(phone: &mut dyn VirtualPhone, clock: &ManualClock) -> Vec<blake3::Hash> {
    let mut frames = Vec::new();
    advance_phone(phone, clock, 2 * SECOND + 37_000_000).expect("time passes");
    frames.push(screen_hash(phone)); // the stopwatch, 2 s later
    home(phone);
    tap(phone, NOTES);
    type_text(phone, " and after the restore.");
    frames.push(screen_hash(phone));
    home(phone);
    tap(phone, PAINT);
    drag(phone, (100, 900), (600, 300));
    frames.push(screen_hash(phone));
    home(phone);
    phone
        .push_mail(Mail { from: "ann@example.com".into(), subject: "Still there?".into(), body: "Yes".into() })
        .expect("mail");
    // The background check comes within its period (15 minutes, `vmi_phone::MAIL_REFRESH_NS`).
    advance_phone(phone, clock, 15 * 60 * SECOND + SECOND).expect("mail timer fires");
    frames.push(screen_hash(phone)); // home with the badge
    tap(phone, MAIL);
    frames.push(screen_hash(phone));
    frames
}

#[test]
fn mid_session_snapshot_restores_exactly_in_a_fresh_engine() {
    let wall = 1_763_000_000 * SECOND;
    let clock_a = ManualClock::new(wall);
    let a = engine(clock_a.clone());
    let image = a.image(&vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM)).expect("loaded");
    let mut original = a.create(&image.hash, &VmConfig::default()).expect("boot");

    // Mid-session: typed a note, drew, started the stopwatch and watched it for a while.
    tap(original.as_mut(), NOTES);
    type_text(original.as_mut(), "Hello from the edge");
    home(original.as_mut());
    tap(original.as_mut(), PAINT);
    drag(original.as_mut(), (120, 400), (600, 800));
    home(original.as_mut());
    tap(original.as_mut(), STOPWATCH);
    tap(original.as_mut(), STOPWATCH_START);
    advance_phone(original.as_mut(), &clock_a, 5 * SECOND).expect("time passes");
    let at_snapshot = screen_hash(original.as_mut());
    let snap = original.snapshot(SnapshotRequest::Full).expect("snapshot");
    assert_eq!(notes_text(original.as_mut()), "Hello from the edge");

    // A fresh engine on another clock that reads the same wall time.
    let clock_b = ManualClock::new(wall + clock_a.elapsed_ns());
    let b = engine(clock_b.clone());
    let mut restored = b.restore(&image.hash, &[&snap.bytes], &VmConfig::default()).expect("restore");
    assert_eq!(restored.now_ns(), original.now_ns(), "virtual time carried over");
    assert_eq!(screen_hash(restored.as_mut()), at_snapshot);

    let ours = continue_session(original.as_mut(), &clock_a);
    let theirs = continue_session(restored.as_mut(), &clock_b);
    assert_eq!(ours, theirs, "the same events give the same frames");
    assert_ne!(ours[0], at_snapshot, "the stopwatch went on after the restore");
    let text = notes_text(restored.as_mut());
    assert_eq!(text, "Hello from the edge and after the restore.");
    assert_eq!(text, notes_text(original.as_mut()));
    let notes: Vec<_> = restored.take_notifications();
    assert!(notes.iter().any(|n| n.body == "Still there?"), "the mail timer fired after restore: {notes:?}");
}

#[test]
fn time_away_in_a_snapshot_counts_on_the_stopwatch() {
    let wall = 1_763_000_000 * SECOND;
    let clock = ManualClock::new(wall);
    let a = engine(clock.clone());
    let hash = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let mut phone = a.create(&hash, &VmConfig::default()).expect("boot");
    tap(phone.as_mut(), STOPWATCH);
    tap(phone.as_mut(), STOPWATCH_START);
    advance_phone(phone.as_mut(), &clock, 3 * SECOND).expect("time passes");
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    let saved_at = phone.now_ns();

    // Restored an hour later (wall time), the phone's clock has moved on by that hour.
    let later = ManualClock::new(wall + clock.elapsed_ns() + 3600 * SECOND);
    let b = engine(later.clone());
    let restored = b.restore(&hash, &[&snap.bytes], &VmConfig::default()).expect("restore");
    assert_eq!(restored.now_ns(), saved_at + 3600 * SECOND);
}

#[test]
fn a_static_screen_reports_no_damage_and_a_key_only_a_little() {
    // Starts exactly on a minute, so the next 50 s hold no clock tick.
    let clock = ManualClock::new(1_763_000_040 * SECOND);
    assert_eq!(1_763_000_040 % 60, 0);
    let e = engine(clock.clone());
    let hash = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let mut phone = e.create(&hash, &VmConfig::default()).expect("boot");
    tap(phone.as_mut(), NOTES);
    phone.frame().expect("frame");
    // Nothing happens for 50 s of virtual time (the mail check finds nothing): no damage.
    let start = phone.now_ns();
    advance_phone(phone.as_mut(), &clock, 50 * SECOND).expect("idle");
    assert!(phone.now_ns() > start);
    assert!(phone.frame().expect("frame").damage.is_empty(), "an idle screen repaints nothing");
    // One key repaints a small part of the screen.
    phone.deliver(Event::text('x')).expect("key");
    let area: u64 = phone.frame().expect("frame").damage.iter().map(|r| r.area()).sum();
    assert!(area > 0 && area < 720 * 1280 / 10, "one key damaged {area} px");
}

/// The same phone code as another image version: an extra custom section changes the
/// image's bytes (and hash) but not what it does.
fn next_version(wasm: &[u8]) -> Vec<u8> {
    let mut v = wasm.to_vec();
    let name = b"vmi-version";
    let payload = b"2";
    v.push(0); // custom section id
    v.push((1 + name.len() + payload.len()) as u8);
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(payload);
    v
}

#[test]
fn an_image_upgrade_keeps_the_users_notes_and_can_be_rolled_back() {
    let clock = ManualClock::new(1_763_000_000 * SECOND);
    let e = engine(clock);
    let v1 = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let v2 = e.load_image(&next_version(vmi_phone_image::PHONE_WASM)).expect("version 2 loads").hash;
    assert_ne!(v1, v2);
    let mut phone = e.create(&v1, &VmConfig::default()).expect("boot v1");
    tap(phone.as_mut(), NOTES);
    type_text(phone.as_mut(), "survives upgrades");
    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");

    // Restoring the v1 snapshot on v2 is refused (memory layouts differ); upgrading works.
    assert!(e.restore(&v2, &[&snap.bytes], &VmConfig::default()).is_err());
    let mut upgraded = e.upgrade(&v2, &[&snap.bytes], &VmConfig::default()).expect("upgrade");
    assert_eq!(upgraded.info().image, v2);
    assert_eq!(upgraded.kv_get(b"notes.text").as_deref(), Some(b"survives upgrades".as_slice()));
    tap(upgraded.as_mut(), NOTES);
    type_text(upgraded.as_mut(), "!");
    assert_eq!(upgraded.kv_get(b"notes.text").as_deref(), Some(b"survives upgrades!".as_slice()));

    // A bad version is rolled back the same way, keeping what was typed on it.
    let snap2 = upgraded.snapshot(SnapshotRequest::Full).expect("snapshot v2");
    let back = e.upgrade(&v1, &[&snap2.bytes], &VmConfig::default()).expect("roll back");
    assert_eq!(back.info().image, v1);
    assert_eq!(back.kv_get(b"notes.text").as_deref(), Some(b"survives upgrades!".as_slice()));
}

/// A display event (guest ABI version 2): the default phone lays out for landscape, attaches a framebuffer of
/// the new size and reports all of it; a snapshot keeps the size; Copy in Notes reaches the host's clipboard.
#[test]
fn a_display_change_resizes_the_phone_and_copy_reaches_the_clipboard() {
    let clock = ManualClock::new(1_763_000_000 * SECOND);
    let e = engine(clock.clone());
    let image = e.image(&vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM)).expect("loaded");
    assert_eq!(image.abi_version, 2);
    let mut phone = e.create(&image.hash, &VmConfig::default()).expect("boot");
    tap(phone.as_mut(), NOTES);
    type_text(phone.as_mut(), "héllo");
    let _ = phone.frame().expect("frame");

    phone.deliver(Event::Display { width: 1688, height: 780, density: 200 }).expect("display");
    let frame = phone.frame().expect("frame");
    assert_eq!((frame.width, frame.height), (1688, 780));
    assert_eq!(frame.damage, vec![vmi_engine::Rect { x: 0, y: 0, w: 1688, h: 780 }], "the whole new screen");
    assert_eq!(frame.rgba.len(), 1688 * 780 * 4);

    // Notes' Copy button: at the right of the app bar (status 48 + bar 112 at this density's scale of 1).
    tap(phone.as_mut(), (1688 - 100, 48 + 56));
    assert_eq!(phone.take_clipboard().as_deref(), Some("héllo"));
    assert_eq!(phone.take_clipboard(), None, "taken once");

    let snap = phone.snapshot(SnapshotRequest::Full).expect("snapshot");
    let mut restored = e.restore(&image.hash, &[&snap.bytes], &VmConfig::default()).expect("restore");
    let frame = restored.frame().expect("frame");
    assert_eq!((frame.width, frame.height), (1688, 780), "the size is the guest's, kept in the snapshot");
}

/// A version-1 guest never gets the display event (it was never promised it): its screen stays as it is.
#[test]
fn a_version_1_guest_never_sees_a_display_event() {
    let clock = ManualClock::new(1_763_000_000 * SECOND);
    let e = engine(clock);
    // Traps on any event kind above 8.
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "vmi_init") (param i32 i32))
             (func (export "vmi_event") (param i32 i32 i32 i32)
               (if (i32.gt_s (local.get 0) (i32.const 8)) (then unreachable))))"#,
    )
    .expect("wat");
    let info = e.load_image(&wasm).expect("loads");
    assert_eq!(info.abi_version, 1);
    let mut phone = e.create(&info.hash, &VmConfig::default()).expect("boot");
    phone.deliver(Event::Display { width: 1688, height: 780, density: 200 }).expect("not delivered");
    assert_eq!(*phone.status(), vmi_engine::VmStatus::Running);
}

/// Hibernation is invisible to the phone: a twin that never hibernates, given the same events at the same
/// virtual times, shows the same frames and ends in the same state; a hibernated phone's timers, store and mailbox
/// answer without waking it, and a due timer wakes it on time.
#[test]
fn a_hibernated_phone_wakes_exactly_as_it_was_and_its_timers_fire_on_time() {
    let wall = 1_763_000_000 * SECOND;
    let (clock, twin_clock) = (ManualClock::new(wall), ManualClock::new(wall));
    let (e, twin_engine) = (engine(clock.clone()), engine(twin_clock.clone()));
    let hash = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let config = VmConfig { rng_seed: Some(9), ..VmConfig::default() };
    let mut sleeper = e.create(&hash, &config).expect("boot");
    let mut twin = twin_engine.create(&hash, &config).expect("boot");
    for phone in [sleeper.as_mut(), twin.as_mut()] {
        tap(phone, NOTES);
        type_text(phone, "before the nap");
        home(phone);
        tap(phone, STOPWATCH);
        tap(phone, STOPWATCH_START);
    }
    assert_eq!(e.page_store_stats().pages, 0, "nothing is stored while every phone is resident");

    assert!(sleeper.hibernate().expect("hibernates"));
    assert!(!sleeper.resident() && sleeper.usage().memory_bytes == 0, "its memory is given back");
    assert!(!sleeper.hibernate().expect("a second time"), "already asleep: nothing to do");
    let stored = e.page_store_stats();
    assert!(stored.pages > 0 && stored.refs >= stored.pages as u64, "{stored:?}");
    // Its host state answers asleep.
    assert_eq!(sleeper.kv_get(b"notes.text").as_deref(), Some(&b"before the nap"[..]));
    assert_eq!(sleeper.next_timer_ns(), twin.next_timer_ns(), "the stopwatch's timer is still armed");
    assert!(!sleeper.resident(), "reading host state does not wake it");

    // Time passes: the due timers wake it, at their virtual times, exactly as the twin's fire.
    let mut frames = (Vec::new(), Vec::new());
    for _ in 0..3 {
        advance_phone(sleeper.as_mut(), &clock, 250_000_000).expect("sleeper runs");
        advance_phone(twin.as_mut(), &twin_clock, 250_000_000).expect("twin runs");
        assert!(sleeper.resident(), "a due timer woke it");
        frames.0.push(screen_hash(sleeper.as_mut()));
        frames.1.push(screen_hash(twin.as_mut()));
        assert!(sleeper.hibernate().expect("back to sleep"));
    }
    assert_eq!(frames.0, frames.1, "the same frames");

    // Mail while asleep; a frame read (what a terminal's Hello does) wakes it with the exact screen it had.
    let mail = Mail { from: "ann@example.com".into(), subject: "Lunch?".into(), body: String::new() };
    sleeper.push_mail(mail.clone()).expect("mail while asleep");
    twin.push_mail(mail).expect("mail");
    assert_eq!(sleeper.mailbox_len(), 1);
    assert_eq!(screen_hash(sleeper.as_mut()), screen_hash(twin.as_mut()));
    for phone in [sleeper.as_mut(), twin.as_mut()] {
        phone.deliver(Event::MailArrived).expect("mail arrives");
    }
    assert_eq!(sleeper.take_notifications(), twin.take_notifications());
    let a = sleeper.snapshot(SnapshotRequest::Full).expect("full");
    let b = twin.snapshot(SnapshotRequest::Full).expect("full");
    assert_eq!(a.bytes, b.bytes, "the same state, byte for byte");

    assert!(sleeper.hibernate().expect("asleep again"));
    drop(sleeper);
    assert_eq!(e.page_store_stats(), Default::default(), "a dropped phone's pages are released");
}

/// A phone hibernated between two snapshots: its next incremental snapshot still carries the pages written
/// before it slept, so [full, incremental] restores to what it was.
#[test]
fn an_incremental_snapshot_after_a_nap_carries_what_was_written_before_it() {
    let clock = ManualClock::new(1_763_000_000 * SECOND);
    let e = engine(clock.clone());
    let hash = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let config = VmConfig { rng_seed: Some(3), ..VmConfig::default() };
    let mut phone = e.create(&hash, &config).expect("boot");
    tap(phone.as_mut(), NOTES);
    let base = phone.snapshot(SnapshotRequest::Full).expect("full");
    type_text(phone.as_mut(), "written, then a nap");
    assert!(phone.hibernate().expect("hibernates"));
    let delta = phone.snapshot(SnapshotRequest::Incremental).expect("wakes for a snapshot");
    assert_eq!(delta.parent, Some(base.id), "still a delta of the same chain");
    let shown = screen_hash(phone.as_mut());

    let other = engine(ManualClock::new(1_763_000_000 * SECOND + clock.elapsed_ns()));
    let mut back = other.restore(&hash, &[&base.bytes, &delta.bytes], &config).expect("restores");
    assert_eq!(back.kv_get(b"notes.text").as_deref(), Some(&b"written, then a nap"[..]));
    assert_eq!(screen_hash(back.as_mut()), shown);
}

/// A hibernating phone gives back its last good chain's bytes (megabytes for a full snapshot) when its memory is
/// what the chain ends at: the state is kept as page keys, rebuilt as one full snapshot only if asked (a crash),
/// and the next delta still names the chain's last snapshot as its parent.
#[test]
fn a_hibernated_phone_keeps_its_last_good_state_as_pages() {
    let clock = ManualClock::new(1_763_000_000 * SECOND);
    let e = engine(clock.clone());
    let hash = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let config = VmConfig { rng_seed: Some(5), ..VmConfig::default() };
    let mut phone = e.create(&hash, &config).expect("boot");
    tap(phone.as_mut(), NOTES);
    phone.snapshot(SnapshotRequest::Full).expect("full");
    type_text(phone.as_mut(), "abc");
    let d1 = phone.snapshot(SnapshotRequest::Incremental).expect("delta");
    assert_eq!(phone.last_good_chain().expect("chain").len(), 2, "awake: the chain as taken");
    assert!(phone.hibernate().expect("hibernates"));
    assert_eq!(phone.last_snapshot_id(), Some(d1.id));
    let notes_in = |chain: Vec<Vec<u8>>| {
        let parts: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        let back = engine(ManualClock::new(1_763_000_000 * SECOND + clock.elapsed_ns()))
            .restore(&hash, &parts, &config)
            .expect("restores");
        String::from_utf8(back.kv_get(b"notes.text").unwrap_or_default()).expect("text")
    };
    let kept = phone.last_good_chain().expect("rebuilt");
    assert_eq!(kept.len(), 1, "asleep: one full state rebuilt from the kept pages");
    assert_eq!(notes_in(kept), "abc");

    // Awake again: the next delta continues the chain; the rebuilt state lays it on.
    type_text(phone.as_mut(), "d");
    let d2 = phone.snapshot(SnapshotRequest::Incremental).expect("delta after the nap");
    assert_eq!(d2.parent, Some(d1.id), "the same chain");
    assert_eq!(notes_in(phone.last_good_chain().expect("chain")), "abcd");

    // Written to since the last snapshot when it sleeps: the chain stays what it was (the last snapshot's state).
    type_text(phone.as_mut(), "e");
    assert!(phone.hibernate().expect("hibernates"));
    assert_eq!(notes_in(phone.last_good_chain().expect("chain")), "abcd");
    assert_eq!(phone.last_snapshot_id(), Some(d2.id));
}

/// Phones of one image share their pages while they sleep: the second costs far less than the first.
#[test]
fn hibernated_phones_of_one_image_share_their_pages() {
    let e = engine(ManualClock::new(1_763_000_000 * SECOND));
    let hash = vmi_engine::ImageHash::of(vmi_phone_image::PHONE_WASM);
    let mut phones: Vec<_> = (0..3)
        .map(|i| e.create(&hash, &VmConfig { rng_seed: Some(i), ..VmConfig::default() }).expect("boot"))
        .collect();
    phones[0].hibernate().expect("first");
    let one = e.page_store_stats();
    for p in &mut phones[1..] {
        p.hibernate().expect("next");
    }
    let three = e.page_store_stats();
    assert!(three.bytes < one.bytes + one.bytes / 5, "three phones store {} bytes, one {}", three.bytes, one.bytes);
    eprintln!(
        "page store: one phone {} pages {} KiB; three phones {} pages {} KiB",
        one.pages,
        one.bytes / 1024,
        three.pages,
        three.bytes / 1024
    );
}
