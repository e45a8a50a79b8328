//! The page's offline phone speaks the sites' formats exactly: a checkout made by the
//! sites' engine opens here, a state saved here restores on the sites' engine, and
//! terminal messages become the guest calls a site would make.

use vmi_browser_phone::{OfflineError, OfflinePhone};
use vmi_engine::{Engine, Event, ManualClock, SnapshotRequest, TouchPhase, VmConfig};
use vmi_protocol::offline::{CheckoutBundle, OfflineLease, decode_checkin, encode_bundle};
use vmi_protocol::{ClientMessage, Display, Input, encode_client};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

struct Checkout {
    engine: WasmEngine,
    image: vmi_engine::ImageHash,
    base: Vec<u8>,
    bundle: Vec<u8>,
}

/// A site's side: the default phone, used a little, checked out as a full snapshot.
fn checkout() -> Checkout {
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let engine = WasmEngine::with_config(WasmEngineConfig { max_vms: 4, ..WasmEngineConfig::default() }, clock.clone())
        .expect("engine");
    let info = engine.load_image(vmi_phone_image::PHONE_WASM).expect("image");
    let config = VmConfig { rng_seed: Some(7), ..VmConfig::default() };
    let mut phone = engine.create(&info.hash, &config).expect("phone");
    phone.deliver(Event::Touch { phase: TouchPhase::Down, x: 274, y: 1090, pointer: 0 }).expect("touch");
    phone.deliver(Event::Touch { phase: TouchPhase::Up, x: 274, y: 1090, pointer: 0 }).expect("touch");
    let base = phone.snapshot(SnapshotRequest::Full).expect("snapshot").bytes;
    let lease = OfflineLease {
        user: "alice".into(),
        site: "site-a".into(),
        site_url: "http://127.0.0.1:1".into(),
        device_id: 3,
        lease_id: "lease-1".into(),
        issued_ms: 1,
        expires_ms: 2,
        base_id: vmi_snapshot::SnapshotId::of(&base).to_hex(),
        image: info.hash.to_hex(),
        width: 720,
        height: 1280,
    };
    let bundle =
        encode_bundle(&CheckoutBundle { lease, snapshot: base.clone(), image: vmi_phone_image::PHONE_WASM.to_vec() });
    Checkout { engine, image: info.hash, base, bundle }
}

fn open(bundle: &[u8]) -> Result<(OfflinePhone, Vec<u8>), OfflineError> {
    OfflinePhone::open(bundle, ManualClock::new(1_700_000_100_000_000_000))
}

#[test]
fn a_state_saved_in_the_page_restores_on_a_site_and_in_the_page_again() {
    let site = checkout();
    let (mut phone, instrumented) = open(&site.bundle).expect("the bundle opens");
    assert_eq!(&instrumented[..4], b"\0asm");
    assert_eq!(phone.lease().lease_id, "lease-1");
    let restored = phone.restore(None).expect("the base restores");
    assert_eq!(restored.globals.len(), phone.globals().len());

    // What a guest did offline: its store changed, one page of memory was written.
    phone.host.kv.insert(b"notes.text".to_vec(), "written offline, 日本".as_bytes().to_vec());
    phone.host.kv_bytes = phone.host.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut memory = restored.memory.clone();
    memory[4096 * 3 + 5] ^= 0xff;
    let saved = phone.save(&memory, &restored.globals).expect("saved");

    // The site restores [base, saved] on its own engine.
    let config = VmConfig { rng_seed: Some(7), ..VmConfig::default() };
    let back = site.engine.restore(&site.image, &[&site.base, &saved], &config).expect("the site restores it");
    assert_eq!(back.kv_get(b"notes.text").as_deref(), Some("written offline, 日本".as_bytes()));

    // A reload in the page: the base and the saved state.
    let (mut again, _) = open(&site.bundle).expect("opens again");
    let restored_again = again.restore(Some(&saved)).expect("the saved state restores");
    assert_eq!(restored_again.memory, memory, "memory comes back byte for byte");
    assert_eq!(restored_again.globals, restored.globals);
    assert_eq!(again.host.kv, phone.host.kv);
    let (fb, damage) = again.take_frame();
    let fb = fb.expect("the phone has a screen");
    assert_eq!(damage, vec![vmi_engine::Rect { x: 0, y: 0, w: fb.width, h: fb.height }], "a restore repaints it all");

    // The checkin carries the lease and the one saved snapshot.
    let checkin = decode_checkin(&again.checkin(Some(&saved))).expect("a checkin body");
    assert_eq!(checkin.header.lease_id, "lease-1");
    assert_eq!(checkin.chain, vec![saved]);
}

#[test]
fn pieces_that_do_not_belong_together_are_refused_by_name() {
    let site = checkout();
    let mut bundle = vmi_protocol::offline::decode_bundle(&site.bundle).expect("decodes");
    bundle.lease.image = "00".repeat(32);
    let err = open(&encode_bundle(&bundle)).err().expect("refused");
    assert!(err.to_string().contains("its lease names 0000"), "{err}");

    let other = checkout();
    let (mut phone, _) = open(&site.bundle).expect("opens");
    // A full snapshot is not a state saved against this checkout.
    let err = phone.restore(Some(&other.base)).expect_err("refused");
    assert!(err.to_string().starts_with("snapshot:"), "{err}");
    let err = open(&site.bundle[..40]).err().expect("a cut bundle is refused");
    assert!(err.to_string().starts_with("checkout bundle:"), "{err}");
}

#[test]
fn terminal_messages_become_the_guest_calls_a_site_makes() {
    let site = checkout();
    let (mut phone, _) = open(&site.bundle).expect("opens");
    phone.set_abi_version(2);
    let touch = encode_client(&ClientMessage::Input {
        seq: 1,
        input: Input::Touch { phase: TouchPhase::Down, x: 10, y: 20, pointer: 1 },
    });
    assert_eq!(phone.event_for(&touch).expect("an input"), Some([1, 10, 20, 1]));
    let display = encode_client(&ClientMessage::Display(Display { width: 390, height: 844, density: 300 }));
    assert_eq!(phone.event_for(&display).expect("a display"), Some([9, 780, 1688, 200]));
    assert_eq!(phone.event_for(&encode_client(&ClientMessage::Sleep)).expect("sleep"), Some([8, 0, 0, 0]));
    let err = phone.event_for(&encode_client(&ClientMessage::FrameAck { seq: 1 })).expect_err("not an event");
    assert!(err.to_string().contains("is not something the phone is given"), "{err}");
    assert!(phone.event_for(&[0xff, 1]).is_err());
    phone.set_abi_version(1);
    assert_eq!(phone.event_for(&display).expect("a display"), None, "a version-1 image keeps its screen");
}
