//! Measures the dirty-page trackers of `src/dirty/` against each other.
//!
//! Run with: `cargo run --release -p vmi-wasm-engine --example dirty_tracking` (as root on Linux 6.7+ to
//! include the write-protect tracker; elsewhere only shadow compare is measured).
//!
//! For each region size: a private anonymous mapping with its first quarter (or all of it) written, tracked;
//! then, 1000 times, 5 random pages are written and `collect` is timed. Then the cost of a write to each of 1000 pages
//! is timed while the pages are protected (the first write after a collect), after that (later writes), and
//! on memory that is not tracked at all, for resident and for never-touched pages.

// The tracker module is compiled into this example directly: the crate keeps it private.
#[path = "../src/dirty/mod.rs"]
#[allow(dead_code)]
mod dirty;

use dirty::{DirtyTracker, PAGE_SIZE, TrackerKind, new_tracker};
use std::time::{Duration, Instant};

const COLLECTS: usize = 1000;
const WRITES_PER_COLLECT: usize = 5;
const FAULT_PAGES: usize = 1000;
const FAULT_ROUNDS: usize = 21;

/// Private anonymous read-write memory, unmapped on drop.
struct Memory {
    ptr: *mut u8,
    len: usize,
}

impl Memory {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Self { ptr: ptr.cast(), len }
    }

    fn write(&self, offset: usize, value: u8) {
        assert!(offset < self.len);
        // SAFETY: inside the read-write mapping; volatile so the store happens.
        unsafe { self.ptr.add(offset).write_volatile(value) }
    }

    /// Writes a whole `u64`, so that values never repeat and shadow compare sees every write as a change.
    fn write_u64(&self, offset: usize, value: u64) {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        // SAFETY: inside the read-write mapping and aligned; volatile so the store happens.
        unsafe { self.ptr.add(offset).cast::<u64>().write_volatile(value) }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn start_tracking(kind: TrackerKind, memory: &Memory) -> (Box<dyn DirtyTracker>, Duration) {
    let mut tracker = new_tracker(kind).expect("tracker");
    let start = Instant::now();
    // SAFETY: `memory` is private anonymous read-write memory that outlives the tracker and is written only by
    // this thread, between tracker calls.
    unsafe { tracker.track(memory.ptr, memory.len) }.expect("track");
    (tracker, start.elapsed())
}

fn collect_costs(kind: TrackerKind, mib: usize, resident_quarters: usize) {
    let memory = Memory::new(mib << 20);
    let pages = memory.len / PAGE_SIZE;
    for page in 0..pages * resident_quarters / 4 {
        memory.write(page * PAGE_SIZE, 1);
    }
    let (mut tracker, track_time) = start_tracking(kind, &memory);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let mut times = Vec::with_capacity(COLLECTS);
    for round in 0..COLLECTS {
        let mut written: Vec<u32> = (0..WRITES_PER_COLLECT).map(|_| rng.below(pages) as u32).collect();
        for &page in &written {
            memory.write_u64(page as usize * PAGE_SIZE + 8, round as u64 + 1);
        }
        let start = Instant::now();
        tracker.collect(&mut out).expect("collect");
        times.push(start.elapsed());
        written.sort_unstable();
        written.dedup();
        assert_eq!(out, written, "{} reported other pages than written", tracker.mechanism());
    }
    times.sort_unstable();
    println!(
        "{:<22} {:>4} MiB ({}/4 resident)  track {:>8.1} µs  collect p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        tracker.mechanism(),
        mib,
        resident_quarters,
        us(track_time),
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99)),
        us(percentile(&times, 1.0)),
    );
}

/// Median time of one 1-byte write to each of `FAULT_PAGES` pages, per page.
fn write_cost(memory: &Memory, first_page: usize, mut before_round: impl FnMut()) -> Duration {
    let mut rounds = Vec::with_capacity(FAULT_ROUNDS);
    for round in 0..FAULT_ROUNDS {
        before_round();
        let start = Instant::now();
        for page in first_page..first_page + FAULT_PAGES {
            memory.write(page * PAGE_SIZE + 16, round as u8);
        }
        rounds.push(start.elapsed() / FAULT_PAGES as u32);
    }
    rounds.sort_unstable();
    rounds[FAULT_ROUNDS / 2]
}

fn write_costs(kind: TrackerKind) {
    // Resident pages: populated before tracking.
    let memory = Memory::new(16 << 20);
    for page in 0..memory.len / PAGE_SIZE {
        memory.write(page * PAGE_SIZE, 1);
    }
    let (mut tracker, _) = start_tracking(kind, &memory);
    let mut out = Vec::new();
    let protected = write_cost(&memory, 0, || tracker.collect(&mut out).expect("collect"));
    let again = write_cost(&memory, 0, || {});
    let name = tracker.mechanism();
    drop(tracker);

    // Never-touched pages: a fresh mapping per round, so every write is a first touch.
    let mut fresh_tracked = Vec::with_capacity(FAULT_ROUNDS);
    for _ in 0..FAULT_ROUNDS {
        let memory = Memory::new(FAULT_PAGES * PAGE_SIZE);
        let (tracker, _) = start_tracking(kind, &memory);
        fresh_tracked.push(write_cost_once(&memory));
        drop(tracker);
    }
    fresh_tracked.sort_unstable();
    println!(
        "{:<22} per-page write: first after collect {:>6.3} µs, later {:>6.3} µs, never-touched page {:>6.3} µs",
        name,
        us(protected),
        us(again),
        us(fresh_tracked[FAULT_ROUNDS / 2]),
    );
}

fn write_cost_once(memory: &Memory) -> Duration {
    let start = Instant::now();
    for page in 0..memory.len / PAGE_SIZE {
        memory.write(page * PAGE_SIZE + 16, 1);
    }
    start.elapsed() / (memory.len / PAGE_SIZE) as u32
}

fn untracked_write_costs() {
    let memory = Memory::new(16 << 20);
    for page in 0..memory.len / PAGE_SIZE {
        memory.write(page * PAGE_SIZE, 1);
    }
    let resident = write_cost(&memory, 0, || {});
    let mut fresh = Vec::with_capacity(FAULT_ROUNDS);
    for _ in 0..FAULT_ROUNDS {
        fresh.push(write_cost_once(&Memory::new(FAULT_PAGES * PAGE_SIZE)));
    }
    fresh.sort_unstable();
    println!(
        "{:<22} per-page write: resident page           {:>6.3} µs,                never-touched page {:>6.3} µs",
        "untracked",
        us(resident),
        us(fresh[FAULT_ROUNDS / 2]),
    );
}

fn main() {
    let mut kinds = vec![TrackerKind::ShadowCompare];
    match new_tracker(TrackerKind::WriteProtect) {
        Ok(_) => kinds.insert(0, TrackerKind::WriteProtect),
        Err(e) => println!("write-protect unavailable: {e}"),
    }
    println!("best_tracker() picks {}", dirty::best_tracker().mechanism());
    println!("collect after {WRITES_PER_COLLECT} random page writes, {COLLECTS} rounds:");
    for (mib, resident_quarters) in [(16, 1), (16, 4), (64, 1), (256, 1)] {
        for &kind in &kinds {
            collect_costs(kind, mib, resident_quarters);
        }
    }
    println!("writes of 1 byte to each of {FAULT_PAGES} pages (median of {FAULT_ROUNDS} rounds):");
    untracked_write_costs();
    for &kind in &kinds {
        write_costs(kind);
    }
}
