//! Lying length fields must be refused before the decoder allocates what they claim.
//!
//! A counting global allocator records the largest single allocation made by the current
//! thread while a crafted file is decoded. The files are built from the byte layout in
//! docs/SNAPSHOT_FORMAT.md, with both checksums recomputed so the lies reach the parser.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use vmi_snapshot::{Header, Limits, Pages, Snapshot, SnapshotError, SnapshotKind};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// only addition is recording a size in a thread-local `Cell`, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Decodes `bytes` and returns the result with the largest allocation it made.
fn decode_measured(bytes: &[u8]) -> (Result<Snapshot, SnapshotError>, usize) {
    LARGEST.with(|c| c.set(0));
    let result = Snapshot::decode(bytes, &Limits::default());
    (result, LARGEST.with(Cell::get))
}

const HEADER_END: usize = 24 + 99 + 4; // engine "wasm"
const BODY: usize = HEADER_END + 4;

/// An empty snapshot of a memory of `memory_bytes`, cut at the start of its body.
fn head(memory_bytes: u64) -> Vec<u8> {
    let mut bytes = Snapshot {
        header: Header {
            engine: "wasm".into(),
            image_hash: [3; 32],
            memory_bytes,
            kind: SnapshotKind::Full,
            virtual_ns: 0,
            wall_ns: 0,
        },
        globals: vec![],
        host_state: vec![],
        pages: Pages::new(),
    }
    .encode();
    bytes.truncate(BODY);
    bytes
}

/// Appends the trailer and sets the file length and both checksums.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.extend_from_slice(&[0; 4]);
    let len = bytes.len() as u64;
    bytes[16..24].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..HEADER_END]);
    bytes[HEADER_END..BODY].copy_from_slice(&crc.to_le_bytes());
    let end = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn u32s(bytes: &mut Vec<u8>, values: &[u32]) {
    values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
}

fn assert_cheap_refusal(bytes: &[u8], expect: &str) {
    let (result, largest) = decode_measured(bytes);
    match result {
        Err(SnapshotError::Corrupt(detail)) => assert!(detail.contains(expect), "{detail}"),
        other => panic!("expected Corrupt({expect}…), got {other:?}"),
    }
    assert!(largest < 64 * 1024, "largest allocation {largest} bytes");
}

#[test]
fn globals_count_within_limit_but_not_in_file() {
    let mut b = head(0);
    u32s(&mut b, &[99_999]);
    assert_cheap_refusal(&seal(b), "globals needs 899991 bytes");
}

#[test]
fn host_state_within_limit_but_not_in_file() {
    let mut b = head(0);
    u32s(&mut b, &[0]);
    b.extend_from_slice(&(60u64 << 20).to_le_bytes());
    assert_cheap_refusal(&seal(b), "host state needs");
}

/// Globals and host state empty, then the pages section.
fn pages_head(memory_bytes: u64) -> Vec<u8> {
    let mut b = head(memory_bytes);
    u32s(&mut b, &[0]);
    b.extend_from_slice(&0u64.to_le_bytes());
    b
}

#[test]
fn run_count_within_memory_but_not_in_file() {
    let mut b = pages_head(4 << 30);
    u32s(&mut b, &[64, 1 << 20]);
    assert_cheap_refusal(&seal(b), "page runs needs");
}

#[test]
fn four_gib_of_pages_claimed_by_a_small_file() {
    // One data run over all 2^20 pages of a 4 GiB memory: 1024 chunks of 1024 pages.
    let runs = |b: &mut Vec<u8>| {
        u32s(b, &[1024, 1, 0, 1 << 20]);
        b.push(1);
        u32s(b, &[1024]);
    };
    // Chunks too small to decompress to 4 MiB each: refused from the table alone.
    let mut b = pages_head(4 << 30);
    runs(&mut b);
    u32s(&mut b, &[16; 1024]);
    b.extend_from_slice(&[0; 16 * 1024]);
    assert_cheap_refusal(&seal(b), "cannot hold 4194304 bytes");

    // Plausible chunk lengths, but the bytes are not there.
    let mut b = pages_head(4 << 30);
    runs(&mut b);
    u32s(&mut b, &[16 * 1024 + 1; 1024]);
    b.extend_from_slice(&[0; 100]);
    assert_cheap_refusal(&seal(b), "beyond the data");
}

#[test]
fn a_real_snapshot_allocates_about_its_memory() {
    let memory = vec![0x11u8; 64 * 4096];
    let mut snap = Snapshot {
        header: Header {
            engine: "wasm".into(),
            image_hash: [3; 32],
            memory_bytes: memory.len() as u64,
            kind: SnapshotKind::Full,
            virtual_ns: 0,
            wall_ns: 0,
        },
        globals: vec![],
        host_state: vec![],
        pages: Pages::from_memory_full(&memory),
    };
    snap.host_state = vec![1; 1000];
    let bytes = snap.encode();
    let (result, largest) = decode_measured(&bytes);
    assert_eq!(result.as_ref(), Ok(&snap));
    assert_eq!(largest, memory.len(), "one buffer for the page data");
}
