//! A hibernated phone holds no kernel objects: its dirty tracker (a userfaultfd and a pagemap descriptor where the
//! kernel has them) goes with its memory, so a site can keep a hundred thousand asleep. Alone in its own test
//! binary, so no other test opens descriptors meanwhile.

use vmi_engine::{Engine, ManualClock, VirtualPhone, VmConfig};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

#[test]
fn hibernated_phones_hold_no_file_descriptors() {
    let engine =
        WasmEngine::with_config(WasmEngineConfig { max_vms: 8, ..WasmEngineConfig::default() }, ManualClock::new(0))
            .expect("engine");
    let image = engine.load_image(vmi_phone_image::PHONE_WASM).expect("image");
    let before = open_fds();
    let mut phones: Vec<Box<dyn VirtualPhone>> = Vec::new();
    for seed in 0..40 {
        let mut phone =
            engine.create(&image.hash, &VmConfig { rng_seed: Some(seed), ..VmConfig::default() }).expect("boot");
        assert!(phone.hibernate().expect("hibernates"));
        phones.push(phone);
    }
    let asleep = open_fds();
    assert!(asleep <= before + 2, "40 hibernated phones hold {} descriptors", asleep.saturating_sub(before));
    // Woken, each tracks its memory again, and gives it back when it sleeps again.
    phones[0].deliver(vmi_engine::Event::Wake).expect("wakes");
    assert!(phones[0].resident());
    assert!(phones[0].hibernate().expect("sleeps again"));
    assert!(open_fds() <= before + 2);
}
