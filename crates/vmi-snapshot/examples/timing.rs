//! Run with: `cargo run --release -p vmi-snapshot --example timing`
//!
//! Times the engine's hot paths on a phone-like memory: 16 MiB of linear memory holding
//! a 720x1280 RGBA framebuffer of mostly flat colours and ~400 KiB of heap, the rest
//! zero. Prints the best and median of several runs; the goals (full encode < 5 ms,
//! decode + apply < 5 ms, an incremental of a few pages < 0.5 ms) are checked by
//! `vmi bench`, not here.

use std::time::{Duration, Instant};

use vmi_snapshot::*;

const MEMORY: usize = 16 << 20;
const FRAMEBUFFER_AT: usize = 1 << 20;
const WIDTH: usize = 720;
const HEIGHT: usize = 1280;

fn phone_memory() -> Vec<u8> {
    let mut m = vec![0u8; MEMORY];
    // Stack and statics: a few pages of varied bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for b in &mut m[64 * 1024..128 * 1024] {
        *b = noise() as u8;
    }
    // Framebuffer: a status bar, a background, cards, and a little "text".
    let fb = &mut m[FRAMEBUFFER_AT..FRAMEBUFFER_AT + WIDTH * HEIGHT * 4];
    for (y, row) in fb.chunks_exact_mut(WIDTH * 4).enumerate() {
        for (xp, px) in row.chunks_exact_mut(4).enumerate() {
            let rgba = if y < 48 {
                [0x20, 0x20, 0x28, 0xff]
            } else if (200..360).contains(&(y % 400)) && (40..680).contains(&xp) {
                if (y % 400) % 24 < 14 && (xp / 9) % 3 != 0 && (60..600).contains(&xp) {
                    [0x10, 0x10, 0x10, 0xff]
                } else {
                    [0xfa, 0xfa, 0xfa, 0xff]
                }
            } else {
                [0x3a, 0x6e, 0xa5, 0xff]
            };
            px.copy_from_slice(&rgba);
        }
    }
    // Heap: ~400 KiB of small structures, half zero, a quarter noise.
    let heap = FRAMEBUFFER_AT + WIDTH * HEIGHT * 4 + 64 * 1024;
    for (i, word) in m[heap..heap + 400 * 1024].chunks_exact_mut(8).enumerate() {
        match i % 4 {
            0 => word.copy_from_slice(&(i as u64 * 16).to_le_bytes()),
            1 => word.copy_from_slice(&noise().to_le_bytes()),
            _ => {}
        }
    }
    m
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    let Some(last) = last else { unreachable!("runs > 0") };
    (times[0], times[runs / 2], last)
}

fn report(what: &str, (best, median): (Duration, Duration)) {
    println!("{what:<44} best {:>8.3} ms   median {:>8.3} ms", ms(best), ms(median));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), SnapshotError> {
    let memory = phone_memory();
    let non_zero = memory.chunks_exact(PAGE_SIZE).filter(|p| !is_zero_page(p)).count();
    println!(
        "memory {} MiB, {} non-zero pages ({:.1} MiB)",
        MEMORY >> 20,
        non_zero,
        (non_zero * PAGE_SIZE) as f64 / (1 << 20) as f64
    );
    let header = Header {
        engine: "wasm".into(),
        image_hash: [1; 32],
        memory_bytes: MEMORY as u64,
        kind: SnapshotKind::Full,
        virtual_ns: 0,
        wall_ns: 0,
    };
    let globals = [GlobalValue::I32(1 << 20), GlobalValue::I64(7)];
    let host = vec![0x5au8; 2048];
    let limits = Limits::default();
    let runs = 30;

    let (best, median, full) = time(runs, || encode_full(&header, &globals, &host, &memory));
    let full = full?;
    report("full encode (encode_full, incl. blake3 id)", (best, median));
    println!("  file {} KiB, {} data pages", full.bytes.len() >> 10, full.data_pages);

    let (b, m, _) = time(runs, || {
        let mut target = vec![0u8; MEMORY];
        let view = SnapshotView::parse(&full.bytes, &limits)?;
        view.pages.apply_to(&mut target)?;
        Ok::<_, SnapshotError>(target)
    });
    report("decode + apply into fresh zeroed memory", (b, m));

    let mut dirty_target = vec![0xeeu8; MEMORY];
    let (b, m, _) = time(runs, || {
        let view = SnapshotView::parse(&full.bytes, &limits)?;
        view.pages.apply_full_to(&mut dirty_target)
    });
    report("decode + apply_full_to over used memory", (b, m));
    assert_eq!(dirty_target, memory);

    let (b, m, _) = time(runs, || {
        let snap = Snapshot::decode(&full.bytes, &limits)?;
        let mut target = vec![0u8; MEMORY];
        snap.pages.apply_to(&mut target)?;
        Ok::<_, SnapshotError>(target)
    });
    report("Snapshot::decode + Pages::apply_to (owned)", (b, m));

    let (b, m, _) = time(runs, || Pages::from_memory_full(&memory));
    report("Pages::from_memory_full (copy)", (b, m));

    // An event that touched a few pages: a button redrawn, a heap word, the stack.
    let mut after = memory.clone();
    let dirty: Vec<u32> = vec![16, 17, 300, 301, 1200];
    for &p in &dirty {
        after[p as usize * PAGE_SIZE + 100] ^= 0xff;
    }
    let inc_header = Header { kind: SnapshotKind::Incremental { parent: full.id }, ..header.clone() };
    let (b, m, inc) = time(runs * 10, || encode_dirty(&inc_header, &globals, &host, &after, &dirty));
    let inc = inc?;
    report("incremental encode, 5 dirty pages", (b, m));
    let mut target = memory.clone();
    let (b, m, _) = time(runs * 10, || {
        let view = SnapshotView::parse(&inc.bytes, &limits)?;
        view.pages.apply_to(&mut target)
    });
    report("incremental decode + apply", (b, m));
    assert_eq!(target, after);
    println!("  file {} bytes", inc.bytes.len());
    Ok(())
}
