//! Behaviour at the crate's boundary: round trips, chains, every decoding error, and fuzzing
//! of the decoder on hostile bytes.

use proptest::prelude::*;

use crate::snapshot::decode_unchecked;
use crate::*;

const BIG_LIMITS: Limits = Limits::DEFAULT;

fn header(kind: SnapshotKind, memory_bytes: usize) -> Header {
    Header {
        engine: "wasm".into(),
        image_hash: *blake3::hash(b"image").as_bytes(),
        memory_bytes: memory_bytes as u64,
        kind,
        virtual_ns: 123_456_789,
        wall_ns: 1_700_000_000_000_000_000,
    }
}

/// A memory of `pages` pages: some zero, some flat, some noisy.
fn memory(pages: usize, seed: u64) -> Vec<u8> {
    let mut m = vec![0u8; pages * PAGE_SIZE];
    let mut x = seed | 1;
    for (i, page) in m.chunks_exact_mut(PAGE_SIZE).enumerate() {
        match (i as u64 + seed) % 4 {
            0 => {}
            1 => page.fill(i as u8 | 1),
            2 => page.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
            _ => page[i % PAGE_SIZE] = 0x5a,
        }
    }
    m
}

fn globals() -> Vec<GlobalValue> {
    vec![
        GlobalValue::I32(-1),
        GlobalValue::I32(i32::MIN),
        GlobalValue::I64(-42),
        GlobalValue::F32(f32::NAN.to_bits() | 1),
        GlobalValue::F64((-0.0f64).to_bits()),
    ]
}

fn full_snapshot(m: &[u8]) -> Snapshot {
    Snapshot {
        header: header(SnapshotKind::Full, m.len()),
        globals: globals(),
        host_state: b"timers, clocks, rng".to_vec(),
        pages: Pages::from_memory_full(m),
    }
}

/// Offsets in the file of a snapshot whose engine is "wasm" (docs/SNAPSHOT_FORMAT.md).
const HEADER_LEN: usize = 99 + 4;
const BODY: usize = 24 + HEADER_LEN + 4;
const MEMORY_BYTES_AT: usize = 24 + 1 + 4 + 32;

/// Recomputes file length and both checksums after a test edited the bytes.
fn reseal(bytes: &mut [u8]) {
    let len = bytes.len() as u64;
    bytes[16..24].copy_from_slice(&len.to_le_bytes());
    let header_len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
    let end = 24 + header_len;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    let end = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

fn corrupt_detail(r: Result<Snapshot, SnapshotError>) -> String {
    match r {
        Err(SnapshotError::Corrupt(detail)) => detail,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// --- round trips --------------------------------------------------------------------

#[test]
fn full_round_trips() {
    let m = memory(40, 3);
    let snap = full_snapshot(&m);
    assert_eq!(snap.pages.data_pages(), 30, "zero pages are skipped");
    let bytes = snap.encode();
    let back = Snapshot::decode(&bytes, &BIG_LIMITS).unwrap();
    assert_eq!(back, snap);
    let mut restored = vec![0; m.len()];
    back.pages.apply_to(&mut restored).unwrap();
    assert_eq!(restored, m);
}

#[test]
fn fast_encoder_writes_the_same_bytes() {
    let m = memory(300, 1);
    let snap = full_snapshot(&m);
    let fast = encode_full(&snap.header, &snap.globals, &snap.host_state, &m).unwrap();
    assert_eq!(fast.bytes, snap.encode());
    assert_eq!(fast.id, SnapshotId::of(&fast.bytes));
    assert_eq!((fast.page_count, fast.data_pages), (225, 225));

    let dirty = [0, 1, 2, 70, 71, 299];
    let head = header(SnapshotKind::Incremental { parent: fast.id }, m.len());
    let delta = encode_dirty(&head, &[], &[], &m, &dirty).unwrap();
    let slow =
        Snapshot { header: head, globals: vec![], host_state: vec![], pages: Pages::from_memory_dirty(&m, &dirty) };
    assert_eq!(delta.bytes, slow.encode());
    assert_eq!((delta.page_count, delta.data_pages), (6, 4));
}

#[test]
fn long_runs_are_split_into_chunks() {
    let mut m = vec![0x11u8; 200 * PAGE_SIZE];
    m[150 * PAGE_SIZE] = 0; // still non-zero pages
    let snap = full_snapshot(&m);
    assert_eq!(snap.pages.runs().len(), 1);
    let bytes = snap.encode();
    let view = SnapshotView::parse(&bytes, &BIG_LIMITS).unwrap();
    assert_eq!(view.pages.data_pages(), 200);
    assert!(view.pages.compressed_bytes() < 200 * PAGE_SIZE / 100, "flat pages compress");
    let mut restored = vec![0; m.len()];
    view.pages.apply_to(&mut restored).unwrap();
    assert_eq!(restored, m);
}

#[test]
fn every_kind_and_empty_parts_round_trip() {
    let parent = SnapshotId::of(b"parent");
    for kind in [
        SnapshotKind::Full,
        SnapshotKind::Incremental { parent },
        SnapshotKind::PreCopy { round: 0, parent: None },
        SnapshotKind::PreCopy { round: 7, parent: Some(parent) },
    ] {
        for pages in [0, 3] {
            let snap = Snapshot {
                header: header(kind, pages * PAGE_SIZE),
                globals: vec![],
                host_state: vec![],
                pages: Pages::new(),
            };
            let bytes = snap.encode();
            assert_eq!(Snapshot::decode(&bytes, &BIG_LIMITS).unwrap(), snap);
            assert_eq!(Snapshot::peek_header(&bytes).unwrap(), snap.header);
        }
    }
}

#[test]
fn parallel_apply_writes_what_serial_apply_writes() {
    // Enough data pages to split, with zero pages, flat pages and noise interleaved, and an
    // incremental on top so zero runs are exercised too.
    let base = memory(4096, 3);
    let mut next = base.clone();
    for i in (0..4096).step_by(5) {
        next[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].fill(0);
    }
    let dirty: Vec<u32> = (0..4096).step_by(5).collect();
    let inc = Snapshot {
        header: header(SnapshotKind::Incremental { parent: SnapshotId([1; 32]) }, next.len()),
        globals: globals(),
        host_state: Vec::new(),
        pages: Pages::from_memory_dirty(&next, &dirty),
    }
    .encode();
    let full = full_snapshot(&base).encode();
    for threads in [1, 2, 3, 8] {
        let mut target = vec![0u8; base.len()];
        SnapshotView::parse(&full, &BIG_LIMITS).unwrap().pages.apply_to_parallel(&mut target, threads).unwrap();
        assert_eq!(target, base, "{threads} threads, full");
        SnapshotView::parse(&inc, &BIG_LIMITS).unwrap().pages.apply_to_parallel(&mut target, threads).unwrap();
        assert_eq!(target, next, "{threads} threads, incremental");
    }
    // Pages beyond the memory are refused, not written.
    let mut small = vec![0u8; base.len() / 2];
    let err = SnapshotView::parse(&full, &BIG_LIMITS).unwrap().pages.apply_to_parallel(&mut small, 2).unwrap_err();
    assert!(matches!(err, SnapshotError::PageOutOfBounds { .. }), "{err}");
}

#[test]
fn view_restores_into_dirty_memory() {
    let m = memory(20, 2);
    let bytes = full_snapshot(&m).encode();
    let view = SnapshotView::parse(&bytes, &BIG_LIMITS).unwrap();
    assert_eq!(view.host_state, b"timers, clocks, rng");
    assert_eq!(view.globals, globals());
    let mut target = vec![0xEE; m.len()];
    view.pages.apply_full_to(&mut target).unwrap();
    assert_eq!(target, m);
    assert_eq!(view.to_snapshot().unwrap(), full_snapshot(&m));
}

#[test]
fn peek_header_reads_a_prefix_and_ignores_the_body() {
    let mut bytes = full_snapshot(&memory(8, 0)).encode();
    let expected = Snapshot::peek_header(&bytes).unwrap();
    assert_eq!(Snapshot::peek_header(&bytes[..BODY]).unwrap(), expected);
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    assert_eq!(Snapshot::peek_header(&bytes).unwrap(), expected);
    assert!(matches!(Snapshot::peek_header(&bytes[..BODY - 1]), Err(SnapshotError::Truncated { what: "header", .. })));
}

#[test]
fn applying_a_chain_gives_the_final_memory() {
    let mut m = memory(32, 5);
    let mut files = vec![full_snapshot(&m).encode()];

    // Event 1: write two pages, zero one.
    m[3 * PAGE_SIZE + 17] = 0xAB;
    m[10 * PAGE_SIZE..11 * PAGE_SIZE].fill(7);
    m[13 * PAGE_SIZE..14 * PAGE_SIZE].fill(0);
    let parent = SnapshotId::of(files.last().unwrap());
    let head = header(SnapshotKind::Incremental { parent }, m.len());
    files.push(encode_dirty(&head, &globals(), b"t1", &m, &[3, 10, 13]).unwrap().bytes);

    // Event 2: memory grows by 8 pages; one new page is written, an old one zeroed.
    m.resize(40 * PAGE_SIZE, 0);
    m[38 * PAGE_SIZE..39 * PAGE_SIZE].fill(0x99);
    m[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
    let parent = SnapshotId::of(files.last().unwrap());
    let head = header(SnapshotKind::Incremental { parent }, m.len());
    files.push(encode_dirty(&head, &globals(), b"t2", &m, &[1, 38]).unwrap().bytes);

    let views: Vec<SnapshotView> = files.iter().map(|f| SnapshotView::parse(f, &BIG_LIMITS).unwrap()).collect();
    let chain: Vec<(SnapshotId, &Header)> =
        files.iter().zip(&views).map(|(f, v)| (SnapshotId::of(f), &v.header)).collect();
    check_chain(&chain).unwrap();

    let mut restored = Vec::new();
    for view in &views {
        restored.resize(view.header.memory_bytes as usize, 0);
        view.pages.apply_to(&mut restored).unwrap();
    }
    assert_eq!(restored, m);
    assert_eq!(views.last().unwrap().host_state, b"t2");

    // The same through owned snapshots.
    let mut again = vec![0x77; 0];
    for f in &files {
        let snap = Snapshot::decode(f, &BIG_LIMITS).unwrap();
        again.resize(snap.header.memory_bytes as usize, 0);
        snap.pages.apply_to(&mut again).unwrap();
    }
    assert_eq!(again, m);
}

// --- every error from the input that causes it ------------------------------------------

#[test]
fn bad_magic() {
    let mut bytes = full_snapshot(&memory(2, 0)).encode();
    bytes[0] = b'X';
    assert_eq!(Snapshot::decode(&bytes, &BIG_LIMITS), Err(SnapshotError::BadMagic));
    assert_eq!(Snapshot::peek_header(b"PNG\r\n"), Err(SnapshotError::BadMagic));
}

#[test]
fn future_version_names_both_versions() {
    let mut bytes = full_snapshot(&memory(2, 0)).encode();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    let err = Snapshot::decode(&bytes, &BIG_LIMITS).unwrap_err();
    assert_eq!(err, SnapshotError::FutureVersion { found: 2, supported: 1 });
    let msg = err.to_string();
    assert!(msg.contains('2') && msg.contains('1'), "{msg}");
    // Even from the first 10 bytes alone.
    assert_eq!(Snapshot::peek_header(&bytes[..10]), Err(err));
    bytes[8..10].copy_from_slice(&0u16.to_le_bytes());
    assert!(corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS)).contains("version 0"));
}

#[test]
fn every_prefix_is_truncated() {
    let bytes = full_snapshot(&memory(6, 1)).encode();
    for len in 0..bytes.len() {
        match Snapshot::decode(&bytes[..len], &BIG_LIMITS) {
            Err(SnapshotError::Truncated { needed, available, .. }) => {
                assert_eq!(available, len as u64);
                assert!(needed > available);
            }
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn every_flipped_byte_is_caught() {
    let bytes = full_snapshot(&memory(6, 1)).encode();
    for at in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[at] ^= bit;
            let result = Snapshot::decode(&bad, &BIG_LIMITS);
            match at {
                0..8 => assert_eq!(result, Err(SnapshotError::BadMagic)),
                // Version, lengths and flags are read before a checksum can be: they
                // fail as a version, truncation, size or checksum error.
                8..24 => assert!(result.is_err(), "byte {at}"),
                _ => assert!(
                    matches!(result, Err(SnapshotError::ChecksumMismatch { .. })),
                    "byte {at} bit {bit}: {result:?}"
                ),
            }
        }
    }
}

#[test]
fn header_and_file_checksums_are_named() {
    let mut bytes = full_snapshot(&memory(6, 1)).encode();
    bytes[30] ^= 1;
    assert!(matches!(
        Snapshot::decode(&bytes, &BIG_LIMITS),
        Err(SnapshotError::ChecksumMismatch { what: "header", .. })
    ));
    bytes[30] ^= 1;
    bytes[BODY + 2] ^= 1;
    assert!(matches!(Snapshot::decode(&bytes, &BIG_LIMITS), Err(SnapshotError::ChecksumMismatch { what: "file", .. })));
}

#[test]
fn trailing_bytes_and_flags_are_corrupt() {
    let mut bytes = full_snapshot(&memory(2, 1)).encode();
    bytes.push(0);
    assert!(corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS)).contains("after the end"));
    bytes.pop();
    bytes[12] = 1;
    reseal(&mut bytes);
    assert!(corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS)).contains("flags"));
}

#[test]
fn header_fields_are_checked() {
    let good = full_snapshot(&memory(2, 1)).encode();
    let edit = |at: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        reseal(&mut bytes);
        corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS))
    };
    let page_size_at = MEMORY_BYTES_AT + 8;
    let kind_at = page_size_at + 4;
    assert!(edit(page_size_at, &8192u32.to_le_bytes()).contains("page size"));
    assert!(edit(MEMORY_BYTES_AT, &4097u64.to_le_bytes()).contains("whole pages"));
    assert!(edit(kind_at, &[9]).contains("kind"));
    assert!(edit(kind_at, &[1]).contains("incremental"));
    assert!(edit(kind_at + 1, &[2]).contains("parent flag"));
    assert!(edit(kind_at + 2, &[1]).contains("parent id"));
    assert!(edit(25, &[0xff]).contains("UTF-8"));
    assert!(edit(24, &[0]).contains("engine name"));
}

#[test]
fn lying_sizes_are_too_large() {
    let good = full_snapshot(&memory(4, 1)).encode();
    let small = Limits { max_file_bytes: 100, ..BIG_LIMITS };
    assert_eq!(
        Snapshot::decode(&good, &small),
        Err(SnapshotError::TooLarge { what: "file", limit: 100, found: good.len() as u64 })
    );

    let mut bytes = good.clone();
    bytes[MEMORY_BYTES_AT..MEMORY_BYTES_AT + 8].copy_from_slice(&(8u64 << 30).to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(
        Snapshot::decode(&bytes, &BIG_LIMITS),
        Err(SnapshotError::TooLarge { what: "memory", limit: 4 << 30, found: 8 << 30 })
    );

    let mut bytes = good.clone();
    bytes[BODY..BODY + 4].copy_from_slice(&100_001u32.to_le_bytes());
    reseal(&mut bytes);
    assert!(matches!(
        Snapshot::decode(&bytes, &BIG_LIMITS),
        Err(SnapshotError::TooLarge { what: "globals", found: 100_001, .. })
    ));

    let host_len_at = BODY + 4 + 9 * globals().len();
    let mut bytes = good.clone();
    bytes[host_len_at..host_len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut bytes);
    assert!(matches!(
        Snapshot::decode(&bytes, &BIG_LIMITS),
        Err(SnapshotError::TooLarge { what: "host state", found: u64::MAX, .. })
    ));
}

#[test]
fn lying_counts_are_corrupt() {
    let good = full_snapshot(&memory(4, 1)).encode();
    let edit = |at: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        reseal(&mut bytes);
        corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS))
    };
    let host_len_at = BODY + 4 + 9 * globals().len();
    let pages_at = host_len_at + 8 + b"timers, clocks, rng".len();
    // Within the limits, but more than the file holds.
    assert!(edit(BODY, &99_999u32.to_le_bytes()).contains("globals needs"));
    assert!(edit(host_len_at, &(60u64 << 20).to_le_bytes()).contains("host state needs"));
    assert!(edit(pages_at, &0u32.to_le_bytes()).contains("chunks of 0 pages"));
    assert!(edit(pages_at + 4, &u32::MAX.to_le_bytes()).contains("page runs in"));
    // memory(4, 1) has data pages 0, 1, 2 in one run at pages_at + 8.
    let run_at = pages_at + 8;
    assert!(edit(run_at + 4, &0u32.to_le_bytes()).contains("empty page run"));
    assert!(edit(run_at + 4, &9u32.to_le_bytes()).contains("beyond memory"));
    assert!(edit(run_at + 8, &[7]).contains("run kind"));
    let chunks_at = run_at + 9;
    assert!(edit(chunks_at, &2u32.to_le_bytes()).contains("runs need 1"));
    assert!(edit(chunks_at + 4, &1u32.to_le_bytes()).contains("cannot hold"));
    assert!(edit(chunks_at + 4, &60u32.to_le_bytes()).contains("chunks hold 60 bytes"));
    assert!(edit(BODY + 4, &[9]).contains("global type"));
    assert!(edit(BODY + 4 + 5, &[1]).contains("high bits"));
}

#[test]
fn bad_page_data_is_corrupt() {
    let m = memory(4, 1);
    let mut bytes = full_snapshot(&m).encode();
    // Damage the compressed data itself, keep checksums right.
    let end = bytes.len() - 4;
    for b in &mut bytes[end - 30..end] {
        *b = 0xff;
    }
    reseal(&mut bytes);
    assert!(corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS)).contains("chunk"));
    let view = SnapshotView::parse(&bytes, &BIG_LIMITS).unwrap();
    let mut target = vec![0; m.len()];
    assert!(matches!(view.pages.apply_to(&mut target), Err(SnapshotError::Corrupt(_))));
}

#[test]
fn unsorted_or_unmerged_runs_are_corrupt() {
    let mut pages = Pages::new();
    pages.push_data(1, &[1; PAGE_SIZE]);
    pages.push_zero(3);
    let snap =
        Snapshot { header: header(SnapshotKind::Full, 8 * PAGE_SIZE), globals: vec![], host_state: vec![], pages };
    let good = snap.encode();
    let second_run = BODY + 4 + 8 + 8 + 9;
    let mut bytes = good.clone();
    bytes[second_run..second_run + 4].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut bytes);
    assert!(corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS)).contains("unsorted"));
    let mut bytes = good.clone();
    bytes[second_run..second_run + 4].copy_from_slice(&2u32.to_le_bytes());
    bytes[second_run + 8] = 1;
    reseal(&mut bytes);
    // A second data run needs a second chunk; its merge is refused first.
    assert!(corrupt_detail(Snapshot::decode(&bytes, &BIG_LIMITS)).contains("not merged"));
}

#[test]
fn pages_beyond_memory_are_refused() {
    let m = memory(8, 1); // data in pages 0-2 and 4-6
    let view_bytes = full_snapshot(&m).encode();
    let view = SnapshotView::parse(&view_bytes, &BIG_LIMITS).unwrap();
    let mut short = vec![0; 4 * PAGE_SIZE];
    assert!(matches!(
        view.pages.apply_to(&mut short),
        Err(SnapshotError::PageOutOfBounds { index: 4, memory_bytes: 16384 })
    ));
}

#[test]
fn encoders_refuse_inconsistent_parts() {
    let m = memory(4, 1);
    let h = header(SnapshotKind::Full, m.len());
    let wrong_size = header(SnapshotKind::Full, 2 * PAGE_SIZE);
    assert!(matches!(encode_full(&wrong_size, &[], &[], &m), Err(SnapshotError::BadInput(_))));
    assert!(matches!(encode_full(&h, &[], &[], &m[1..]), Err(SnapshotError::BadInput(_))));
    assert!(matches!(encode_dirty(&h, &[], &[], &m, &[2, 1]), Err(SnapshotError::BadInput(_))));
    assert!(matches!(encode_dirty(&h, &[], &[], &m, &[4]), Err(SnapshotError::BadInput(_))));
    let mut long_name = h.clone();
    long_name.engine = "e".repeat(MAX_ENGINE_NAME + 1);
    assert!(matches!(encode_full(&long_name, &[], &[], &m), Err(SnapshotError::BadInput(_))));
    let mut snap = full_snapshot(&m);
    snap.header.memory_bytes = PAGE_SIZE as u64;
    assert!(matches!(snap.try_encode(), Err(SnapshotError::BadInput(_))));
}

#[test]
fn messages_are_short() {
    let errors = [
        SnapshotError::BadMagic,
        SnapshotError::FutureVersion { found: 2, supported: 1 },
        SnapshotError::Truncated { what: "file", needed: 10, available: 3 },
        SnapshotError::ChecksumMismatch { what: "file", expected: 1, found: 2 },
        SnapshotError::TooLarge { what: "memory", limit: 1, found: 2 },
        SnapshotError::NotABase,
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(msg.len() < 80 && !msg.ends_with('.'), "{msg}");
    }
}

// --- fuzzing ------------------------------------------------------------------------

/// Small limits so that anything a fuzzed file is allowed to allocate stays small.
const FUZZ_LIMITS: Limits =
    Limits { max_file_bytes: 1 << 20, max_memory_bytes: 1 << 20, max_host_state_bytes: 1 << 16, max_globals: 1000 };

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
}

/// Whatever `decode_unchecked` accepts must be usable: it applies to its memory and
/// survives a re-encode.
fn check_accepted(bytes: &[u8]) {
    let _ = Snapshot::peek_header(bytes);
    let checked = Snapshot::decode(bytes, &FUZZ_LIMITS);
    let unchecked = decode_unchecked(bytes, &FUZZ_LIMITS);
    if let Ok(snap) = &checked {
        assert_eq!(unchecked.as_ref(), Ok(snap), "checksums are the only difference");
    }
    if let Ok(snap) = unchecked {
        let mut m = vec![0; snap.header.memory_bytes as usize];
        snap.pages.apply_full_to(&mut m).unwrap();
        let again = Snapshot::decode(&snap.encode(), &FUZZ_LIMITS).unwrap();
        assert_eq!(again, snap);
    }
}

/// A valid snapshot of a random small memory: full, or a delta of random dirty pages.
fn arb_snapshot() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((0u8..4, any::<u8>()), 0..24),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<i64>(), 0..4),
    )
        .prop_map(|(pages, full, host, gs)| {
            let mut m = vec![0u8; pages.len() * PAGE_SIZE];
            let mut dirty = Vec::new();
            for (i, ((kind, byte), page)) in pages.iter().zip(m.chunks_exact_mut(PAGE_SIZE)).enumerate() {
                match kind {
                    0 => {}
                    1 => page.fill(*byte),
                    2 => page.iter_mut().enumerate().for_each(|(j, b)| *b = (j as u8).wrapping_mul(*byte)),
                    _ => page[usize::from(*byte) * 7] = *byte | 1,
                }
                if byte % 3 != 0 {
                    dirty.push(i as u32);
                }
            }
            let kind =
                if full { SnapshotKind::Full } else { SnapshotKind::Incremental { parent: SnapshotId::of(&host) } };
            let g: Vec<GlobalValue> = gs
                .iter()
                .map(|&v| match v & 3 {
                    0 => GlobalValue::I32(v as i32),
                    1 => GlobalValue::I64(v),
                    2 => GlobalValue::F32(v as u32),
                    _ => GlobalValue::F64(v as u64),
                })
                .collect();
            let h = header(kind, m.len());
            let encoded = if full { encode_full(&h, &g, &host, &m) } else { encode_dirty(&h, &g, &host, &m, &dirty) };
            encoded.unwrap().bytes
        })
}

/// A body made of plausible small fields behind a valid header: runs sorted more often
/// than not, chunk counts and lengths mostly consistent, chunks either real LZ4 or noise.
/// Reaches the run, chunk-table and LZ4 checks far more often than random bytes.
fn arb_structured() -> impl Strategy<Value = Vec<u8>> {
    (
        0u64..24,
        prop::collection::vec((0u8..9, any::<u64>()), 0..3),
        (0u64..8, 0u32..8),
        prop::collection::vec((0u32..3, 0u32..12, 0u8..7), 0..5),
        (0u8..4, 0u8..4),
        prop::collection::vec((any::<bool>(), any::<u8>(), 0usize..40), 0..8),
    )
        .prop_map(|(pages, gs, (host_len, chunk_pages), runs, (lie_count, lie_len), chunks)| {
            let mut b = Snapshot {
                header: header(SnapshotKind::Full, pages as usize * PAGE_SIZE),
                globals: vec![],
                host_state: vec![],
                pages: Pages::new(),
            }
            .encode();
            b.truncate(BODY);
            b.extend_from_slice(&(gs.len() as u32).to_le_bytes());
            // Mostly valid: tags 0-3 (one in nine unknown), 32-bit values narrow.
            for (tag, v) in gs {
                let tag = if tag == 8 { 15 } else { tag % 4 };
                let v = if tag % 2 == 0 && v % 8 != 0 { v & 0xffff_ffff } else { v };
                b.push(tag);
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&host_len.to_le_bytes());
            b.extend(std::iter::repeat_n(0xab, host_len as usize));
            let chunk_pages: u32 = [0, 1, 1, 1, 1, 1, 2, 4][chunk_pages as usize];
            b.extend_from_slice(&chunk_pages.to_le_bytes());
            b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            let (mut next, mut data_chunks) = (0u32, 0u32);
            for &(gap, count, kind) in &runs {
                let (count, kind) = (count.div_ceil(2), if kind == 6 { 2 } else { kind % 2 });
                let first = next + gap;
                next = first + count;
                b.extend_from_slice(&first.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
                b.push(kind);
                if kind == 1 && chunk_pages > 0 {
                    data_chunks += count.div_ceil(chunk_pages);
                }
            }
            let chunk_count = if lie_count == 0 { data_chunks + 1 } else { data_chunks };
            b.extend_from_slice(&chunk_count.to_le_bytes());
            let bodies: Vec<Vec<u8>> = (0..chunk_count as usize)
                .map(|i| match chunks.get(i) {
                    // Real LZ4 of one page per chunk, right when the run has chunks of 1 page.
                    Some(&(true, fill, _)) => lz4_flex::block::compress(&[fill; PAGE_SIZE]),
                    Some(&(false, fill, len)) => vec![fill; len],
                    None => vec![0x1f, 0, 0],
                })
                .collect();
            for body in &bodies {
                let len = body.len() as u32 + u32::from(lie_len == 0);
                b.extend_from_slice(&len.to_le_bytes());
            }
            bodies.iter().for_each(|body| b.extend_from_slice(body));
            b.extend_from_slice(&[0; 4]);
            reseal(&mut b);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn fuzz_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_accepted(&bytes);
        // The same bytes behind a valid preamble, to get past the magic.
        let mut framed = full_snapshot(&[]).encode();
        framed.truncate(24);
        framed.extend_from_slice(&bytes);
        framed.extend_from_slice(&[0; 4]);
        check_accepted(&framed);
        reseal_if_possible(&mut framed);
        check_accepted(&framed);
    }

    #[test]
    fn fuzz_mutated_snapshots(
        bytes in arb_snapshot(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<Option<prop::sample::Index>>(),
        reseal_it in any::<bool>(),
    ) {
        check_accepted(&bytes);
        prop_assert!(decode_unchecked(&bytes, &FUZZ_LIMITS).is_ok());
        let mut bad = bytes.clone();
        for (at, value) in edits {
            let at = at.index(bad.len());
            bad[at] = value;
        }
        if let Some(cut) = cut {
            bad.truncate(cut.index(bad.len()).max(28));
        }
        if reseal_it {
            reseal_if_possible(&mut bad);
        }
        check_accepted(&bad);
    }

    #[test]
    fn fuzz_structured_bodies(bytes in arb_structured()) {
        check_accepted(&bytes);
    }
}

/// Like [`reseal`] when the header length field leaves room for it.
fn reseal_if_possible(bytes: &mut [u8]) {
    if bytes.len() >= 24 {
        let header_len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
        if bytes.len() >= 24 + header_len + 8 {
            reseal(bytes);
        }
    }
}
