use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use vmi_snapshot::{
    GlobalValue, Header, Limits, PAGE_SIZE, Snapshot, SnapshotId, SnapshotKind, encode_dirty, encode_full,
};

use crate::*;

const MIB: usize = 1 << 20;

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A phone: memory, globals, host state, and the id of its last snapshot.
struct Phone {
    memory: Vec<u8>,
    globals: Vec<GlobalValue>,
    host: Vec<u8>,
    image: [u8; 32],
    last: Option<SnapshotId>,
    rng: Rng,
    clock_ns: u64,
}

impl Phone {
    /// `memory_mib` of memory with `nonzero_mib` of it in use: a "framebuffer" of flat
    /// colour bands (many identical pages) and a "heap" of distinct, text-like pages.
    fn new(memory_mib: usize, nonzero_mib: usize, seed: u64) -> Phone {
        let mut memory = vec![0u8; memory_mib * MIB];
        let nonzero_pages = nonzero_mib * MIB / PAGE_SIZE;
        let fb_pages = nonzero_pages * 7 / 8;
        for page in 0..nonzero_pages {
            let p = &mut memory[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
            if page < fb_pages {
                let colour = [0x20 + (page / 40) as u8, 0x80, 0xC0, 0xFF];
                p.chunks_exact_mut(4).for_each(|px| px.copy_from_slice(&colour));
            } else {
                for (i, b) in p.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog "[(i * 7 + page) % 44] ^ ((i / 64) as u8 & 3);
                }
                p[..8].copy_from_slice(&(page as u64).to_le_bytes());
            }
        }
        Phone {
            memory,
            globals: vec![GlobalValue::I32(1), GlobalValue::I64(-5), GlobalValue::F64(2.5f64.to_bits())],
            host: b"timers,rng,mailbox".to_vec(),
            image: [9; 32],
            last: None,
            rng: Rng(seed | 1),
            clock_ns: 0,
        }
    }

    fn header(&mut self, kind: SnapshotKind) -> Header {
        self.clock_ns += 1_000_000;
        Header {
            engine: "wasm".into(),
            image_hash: self.image,
            memory_bytes: self.memory.len() as u64,
            kind,
            virtual_ns: self.clock_ns,
            wall_ns: 1_700_000_000_000_000_000 + self.clock_ns,
        }
    }

    fn full(&mut self) -> Vec<u8> {
        let header = self.header(SnapshotKind::Full);
        let snap = encode_full(&header, &self.globals, &self.host, &self.memory).expect("encode full");
        self.last = Some(snap.id);
        snap.bytes
    }

    /// Changes `n` random pages among the first `within` (one of them zeroed), the
    /// globals and the host state, and returns an incremental snapshot of them.
    fn step(&mut self, n: usize, within: usize) -> Vec<u8> {
        let mut dirty: Vec<u32> = (0..n).map(|_| (self.rng.next() % within as u64) as u32).collect();
        dirty.sort_unstable();
        dirty.dedup();
        for (k, &page) in dirty.iter().enumerate() {
            let p = &mut self.memory[page as usize * PAGE_SIZE..(page as usize + 1) * PAGE_SIZE];
            if k == 0 {
                p.fill(0);
            } else {
                let v = self.rng.next();
                p[(v % 4000) as usize..][..64].fill(v as u8 | 1);
            }
        }
        self.globals[0] = GlobalValue::I32(self.rng.next() as i32);
        self.host.extend_from_slice(b"+event");
        let parent = self.last.expect("a full snapshot first");
        let header = self.header(SnapshotKind::Incremental { parent });
        let snap = encode_dirty(&header, &self.globals, &self.host, &self.memory, &dirty).expect("encode incremental");
        self.last = Some(snap.id);
        snap.bytes
    }

    fn state(&self) -> (Vec<u8>, Vec<GlobalValue>, Vec<u8>) {
        (self.memory.clone(), self.globals.clone(), self.host.clone())
    }
}

/// Decodes a restored file: must be a full snapshot; returns memory, globals, host state.
fn decoded(bytes: &[u8]) -> (Header, Vec<u8>, Vec<GlobalValue>, Vec<u8>) {
    let snap = Snapshot::decode(bytes, &Limits::default()).expect("restored file decodes");
    assert_eq!(snap.header.kind, SnapshotKind::Full);
    let mut memory = vec![0u8; snap.header.memory_bytes as usize];
    snap.pages.apply_to(&mut memory).expect("apply");
    (snap.header, memory, snap.globals, snap.host_state)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vmi-checkpoint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fs_store(dir: &TempDir) -> (Arc<FsStore>, CheckpointStore) {
    let objects = Arc::new(FsStore::open(&dir.0).expect("open").with_sync(false));
    (objects.clone(), CheckpointStore::new(objects))
}

fn mem_store() -> (Arc<MemStore>, CheckpointStore) {
    let objects = Arc::new(MemStore::new());
    (objects.clone(), CheckpointStore::new(objects))
}

#[test]
fn three_days_of_checkpoints_restore_exactly() {
    let dir = TempDir::new("three-days");
    let (_, store) = fs_store(&dir);
    let mut phone = Phone::new(4, 1, 1);
    let start = 10 * DAY_MS;
    let mut states = Vec::new();
    let first = phone.full();
    store.put("alice", &first, start, Some("first".into())).expect("put full");
    states.push((start, phone.last, phone.state()));
    // Every 6 hours for three days, all incremental.
    for i in 1..=12 {
        let at = start + i * 6 * HOUR_MS;
        let snap = phone.step(20, 256);
        let info = store.put("alice", &snap, at, None).expect("put incremental");
        assert_eq!((info.id, info.at_ms, info.memory_bytes), (SnapshotId::of(&snap), at, 4 * MIB as u64));
        states.push((at, phone.last, phone.state()));
    }
    let list = store.list("alice").expect("list");
    assert_eq!(list.len(), 13);
    assert_eq!(list[0].label.as_deref(), Some("first"));
    assert!(list.windows(2).all(|w| w[0].at_ms < w[1].at_ms));

    // The full snapshot checkpointed comes back byte for byte.
    let now = start + 3 * DAY_MS;
    let restored = store.restore("alice", Selector::AtOrBefore(now - 3 * DAY_MS)).expect("restore");
    assert_eq!(restored, first);

    // Every one, by id and by time (a little after it), has its memory, globals, host state.
    for (at, id, (memory, globals, host)) in &states {
        let id = id.expect("id");
        for which in [Selector::Id(id), Selector::AtOrBefore(at + HOUR_MS)] {
            let (header, m, g, h) = decoded(&store.restore("alice", which).expect("restore"));
            assert!(&m == memory && &g == globals && &h == host, "checkpoint at {at}");
            assert_eq!((header.engine.as_str(), header.image_hash), ("wasm", [9; 32]));
        }
    }
    let latest = store.restore("alice", Selector::AtOrBefore(u64::MAX)).expect("latest");
    assert_eq!(decoded(&latest).1, phone.memory);
}

#[test]
fn incremental_is_resolved_against_its_parent() {
    let (_, store) = mem_store();
    let mut phone = Phone::new(1, 1, 2);
    store.put("bob", &phone.full(), 0, None).expect("full");
    let before = phone.state();
    let parent = phone.last.expect("id");
    let delta = phone.step(5, 256);
    let info = store.put("bob", &delta, 1, None).expect("delta");
    // Five pages changed (one zeroed), plus a host state: few chunks are new.
    assert!(info.new_chunks <= 5, "{info:?}");
    let (_, m, g, h) = decoded(&store.restore("bob", Selector::Id(info.id)).expect("restore"));
    assert_eq!((m, g, h), phone.state());
    let (_, m, ..) = decoded(&store.restore("bob", Selector::Id(parent)).expect("restore parent"));
    assert_eq!(m, before.0);

    // An incremental against something bob never checkpointed.
    let mut other = Phone::new(1, 1, 3);
    other.host = b"another phone".to_vec();
    other.full();
    let other_parent = other.last;
    let orphan = other.step(3, 256);
    match store.put("bob", &orphan, 2, None) {
        Err(CheckpointError::UnknownParent { user, parent }) => {
            assert_eq!((user.as_str(), Some(parent)), ("bob", other_parent));
        }
        other => panic!("expected UnknownParent, got {other:?}"),
    }
    // The same snapshot twice.
    assert!(matches!(store.put("bob", &delta, 3, None), Err(CheckpointError::Duplicate { .. })));
    // Another image's delta on bob's checkpoint.
    phone.image = [1; 32];
    let wrong = phone.step(1, 16);
    assert!(matches!(
        store.put("bob", &wrong, 4, None),
        Err(CheckpointError::Snapshot(vmi_snapshot::SnapshotError::WrongImage { .. }))
    ));
    // A pre-copy round.
    let header = phone.header(SnapshotKind::PreCopy { round: 0, parent: None });
    let pre = encode_full(&header, &[], b"", &phone.memory).expect("encode");
    assert!(matches!(store.put("bob", &pre.bytes, 5, None), Err(CheckpointError::PreCopy)));
    // Not a snapshot at all.
    assert!(matches!(store.put("bob", b"garbage", 6, None), Err(CheckpointError::Snapshot(_))));
    assert_eq!(store.list("bob").expect("list").len(), 2);
}

#[test]
fn phones_of_one_image_share_chunks() {
    let (_, store) = mem_store();
    let mut a = Phone::new(16, 4, 4);
    let mut b = Phone::new(16, 4, 5);
    store.put("a", &a.full(), 0, None).expect("a");
    let after_a = store.stats().expect("stats");
    let info = store.put("b", &b.full(), 0, None).expect("b");
    let after_b = store.stats().expect("stats");
    // Same image, same pages: only b's manifest and nothing else of substance.
    assert_eq!(info.new_chunks, 0, "{info:?}");
    let total = |s: Stats| s.chunk_bytes + s.table_bytes + s.manifest_bytes;
    let grown = total(after_b) - total(after_a);
    let first = total(after_a);
    assert!(grown * 4 < first, "second phone added {grown} bytes to {first}");
    // They diverge a little: each change costs its own pages only.
    let da = store.put("a", &a.step(20, 1024), 1, None).expect("a step");
    let db = store.put("b", &b.step(20, 1024), 1, None).expect("b step");
    assert!(da.new_chunks <= 21 && db.new_chunks <= 21, "{da:?} {db:?}");
    assert_eq!(decoded(&store.restore("b", Selector::AtOrBefore(1)).expect("b")).1, b.memory);
    assert_eq!(decoded(&store.restore("a", Selector::AtOrBefore(1)).expect("a")).1, a.memory);
}

#[test]
fn retention_then_gc_keeps_what_kept_checkpoints_need() {
    let dir = TempDir::new("retain");
    let (objects, store) = fs_store(&dir);
    let mut phone = Phone::new(2, 1, 6);
    let mut other = Phone::new(2, 1, 7);
    store.put("carol", &phone.full(), 0, None).expect("full");
    store.put("dave", &other.full(), 0, None).expect("other full");
    let mut states = vec![(phone.last, phone.state())];
    // Every 4 hours for 20 days; pages churn so old chunks become garbage.
    for i in 1..=120u64 {
        let snap = phone.step(20, 256);
        store.put("carol", &snap, i * 4 * HOUR_MS, None).expect("put");
        states.push((phone.last, phone.state()));
    }
    let now = 20 * DAY_MS + HOUR_MS;
    let before = store.stats().expect("stats");
    let report = store.retain("carol", &Retention::default(), now).expect("retain");
    let after = store.stats().expect("stats");
    let kept = store.list("carol").expect("list");
    // 2 days of everything (12), one per day for the 12 days before (12).
    assert_eq!(kept.len(), 24, "{kept:?}");
    assert_eq!(report.manifests_deleted, 121 - 24);
    assert!(report.chunks_deleted > 0 && after.chunk_bytes < before.chunk_bytes, "{report:?}");
    assert_eq!(after.manifests, 24 + 1);

    // Every kept checkpoint restores exactly; the referenced chunks are all that is left.
    let mut referenced = HashSet::new();
    for info in &kept {
        let bytes = store.restore("carol", Selector::Id(info.id)).expect("restore kept");
        let (_, memory, globals, host) = decoded(&bytes);
        let (_, (m, g, h)) = states.iter().find(|(id, _)| *id == Some(info.id)).expect("known state");
        assert!(&memory == m && &globals == g && &host == h);
        referenced.extend(memory.chunks_exact(PAGE_SIZE).filter(|p| p.iter().any(|&b| b != 0)).map(blake3::hash));
        referenced.insert(blake3::hash(&host));
    }
    let (_, dave_memory, _, dave_host) = decoded(&store.restore("dave", Selector::AtOrBefore(0)).expect("dave"));
    referenced.extend(dave_memory.chunks_exact(PAGE_SIZE).filter(|p| p.iter().any(|&b| b != 0)).map(blake3::hash));
    referenced.insert(blake3::hash(&dave_host));
    assert_eq!(after.chunks, referenced.len() as u64, "no orphan chunk, no missing chunk");
    let on_disk: HashSet<String> =
        objects.list("chunks/").expect("list").into_iter().map(|o| o.key["chunks/".len()..].to_owned()).collect();
    let expected: HashSet<String> = referenced.iter().map(|h| h.to_hex().to_string()).collect();
    assert_eq!(on_disk, expected);
    assert_eq!(store.gc().expect("gc again"), GcReport::default());

    // A month later with no new checkpoint: only the latest survives, and still restores.
    store.retain("carol", &Retention::default(), now + 30 * DAY_MS).expect("retain");
    assert_eq!(store.list("carol").expect("list").len(), 1);
    let (_, memory, ..) = decoded(&store.restore("carol", Selector::AtOrBefore(u64::MAX)).expect("latest"));
    assert_eq!(memory, phone.memory);
}

#[test]
fn damaged_objects_give_precise_errors() {
    let dir = TempDir::new("damage");
    let (objects, store) = fs_store(&dir);
    let mut phone = Phone::new(1, 1, 8);
    let info = store.put("erin", &phone.full(), 0, None).expect("full");
    let chunk = blake3::hash(&phone.memory[..PAGE_SIZE]).to_hex().to_string();
    let key = format!("chunks/{chunk}");
    let good = objects.get(&key).expect("get").expect("chunk present");

    // A flipped byte: content no longer matches the hash (or no longer decompresses).
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    objects.put(&key, &bad).expect("put");
    match store.restore("erin", Selector::Id(info.id)) {
        Err(CheckpointError::CorruptChunk { hash, .. }) => assert_eq!(hash, chunk),
        other => panic!("expected CorruptChunk, got {other:?}"),
    }
    // Truncated, empty, unknown encoding.
    for bad in [&good[..good.len() / 2], &[][..], &[7u8, 1, 2][..]] {
        objects.put(&key, bad).expect("put");
        assert!(matches!(store.restore("erin", Selector::Id(info.id)), Err(CheckpointError::CorruptChunk { .. })));
    }
    // Repaired from a good copy (one that does not hash to its name is refused), and the restore works again.
    let named = CheckpointError::CorruptChunk { hash: chunk.clone(), detail: String::new() }.damaged_object();
    assert_eq!(named.as_ref().map(|keys| keys[0].as_str()), Some(key.as_str()));
    assert!(store.repair(&key, &bad_copy(&good)).is_err(), "a bad copy is refused");
    store.repair(&key, &good).expect("repair");
    assert!(store.restore("erin", Selector::Id(info.id)).is_ok(), "restores again after the repair");
    // Missing.
    objects.delete(&key).expect("delete");
    match store.restore("erin", Selector::Id(info.id)) {
        Err(CheckpointError::MissingChunk { hash, id }) => assert_eq!((hash, id), (chunk.clone(), info.id)),
        other => panic!("expected MissingChunk, got {other:?}"),
    }
    objects.put(&key, &good).expect("put back");
    assert!(store.restore("erin", Selector::Id(info.id)).is_ok());

    // A damaged manifest: restore fails precisely and gc deletes nothing.
    let manifest_key = format!("manifests/erin/{}", info.id.to_hex());
    let manifest = objects.get(&manifest_key).expect("get").expect("manifest");
    for cut in [0, 5, 13, manifest.len() / 2, manifest.len() - 1] {
        let mut damaged = manifest.clone();
        damaged.truncate(cut);
        objects.put(&manifest_key, &damaged).expect("put");
        assert!(matches!(
            store.restore("erin", Selector::Id(info.id)),
            Err(CheckpointError::CorruptManifest { ref key, .. }) if key == &manifest_key
        ));
        assert!(matches!(store.gc(), Err(CheckpointError::CorruptManifest { .. })));
    }
    // A flipped bit fails, or (an LZ4 match offset moved to equal bytes) decodes the same.
    let mut flipped = manifest.clone();
    for i in (8..flipped.len()).step_by(7) {
        flipped[i] ^= 1;
        objects.put(&manifest_key, &flipped).expect("put");
        if let Ok(bytes) = store.restore("erin", Selector::Id(info.id)) {
            assert_eq!(decoded(&bytes).1, phone.memory, "byte {i}");
        }
        flipped[i] ^= 1;
    }
    objects.delete(&manifest_key).expect("delete");
    assert!(matches!(store.restore("erin", Selector::Id(info.id)), Err(CheckpointError::MissingManifest { .. })));
    objects.put(&manifest_key, &manifest).expect("put back");
    assert_eq!(decoded(&store.restore("erin", Selector::Id(info.id)).expect("restore")).1, phone.memory);
    assert!(store.stats().expect("stats").chunks > 0);
    assert_eq!(store.gc().expect("gc").chunks_deleted, 0);

    // A damaged index.
    objects.put("index/erin", b"{not json").expect("put");
    assert!(matches!(store.list("erin"), Err(CheckpointError::CorruptManifest { .. })));
}

#[test]
fn unknown_user_id_and_time_are_precise() {
    let (_, store) = mem_store();
    assert!(
        matches!(store.restore("nobody", Selector::AtOrBefore(5)), Err(CheckpointError::UnknownUser(u)) if u == "nobody")
    );
    assert_eq!(store.list("nobody").expect("list"), vec![]);
    let mut phone = Phone::new(1, 1, 9);
    store.put("frank", &phone.full(), 100, None).expect("full");
    let stranger = SnapshotId([3; 32]);
    assert!(matches!(
        store.restore("frank", Selector::Id(stranger)),
        Err(CheckpointError::UnknownCheckpoint { id, .. }) if id == stranger
    ));
    assert!(matches!(
        store.restore("frank", Selector::AtOrBefore(99)),
        Err(CheckpointError::NoneBefore { at_ms: 99, .. })
    ));
    assert!(store.restore("frank", Selector::AtOrBefore(100)).is_ok());
    for bad in ["", "../etc", ".hidden", "a/b", &"x".repeat(65)] {
        assert!(matches!(store.put(bad, &phone.full(), 0, None), Err(CheckpointError::InvalidUser(_))), "{bad:?}");
        assert!(matches!(store.restore(bad, Selector::AtOrBefore(0)), Err(CheckpointError::InvalidUser(_))));
    }
}

#[test]
fn fs_store_validates_keys_and_lists_by_prefix() {
    let dir = TempDir::new("fs");
    let store = FsStore::open(&dir.0).expect("open");
    for bad in ["", "/abs", "a//b", "../x", "a/../b", ".tmp/x", "a b", "a/b/c/d/e"] {
        assert!(matches!(store.put(bad, b"x"), Err(CheckpointError::InvalidKey(_))), "{bad:?}");
        assert!(store.get(bad).is_err());
    }
    store.put("chunks/ab", b"1").expect("put");
    store.put("chunks/ab", b"1").expect("put again");
    store.put("manifests/u/x", b"22").expect("put");
    store.put("manifests/uu/y", b"333").expect("put");
    assert_eq!(store.get("chunks/ab").expect("get"), Some(b"1".to_vec()));
    assert_eq!(store.get("chunks/cd").expect("get"), None);
    assert!(store.contains("chunks/ab").expect("contains") && !store.contains("chunks").expect("dir"));
    let keys = |p: &str| store.list(p).expect("list").into_iter().map(|o| (o.key, o.bytes)).collect::<Vec<_>>();
    assert_eq!(keys("manifests/u/"), vec![("manifests/u/x".to_owned(), 2)]);
    assert_eq!(keys("manifests/u"), vec![("manifests/u/x".to_owned(), 2), ("manifests/uu/y".to_owned(), 3)]);
    assert_eq!(keys("").len(), 3);
    store.delete("chunks/ab").expect("delete");
    store.delete("chunks/ab").expect("delete absent");
    assert_eq!(keys("chunks/"), vec![]);
    // Nothing is left behind in the temporary directory.
    assert_eq!(std::fs::read_dir(dir.0.join(".tmp")).expect("tmp").count(), 0);
}

/// The figure: 10 checkpoints of a 16 MiB memory with 4 MiB non-zero, ~20 pages changed
/// each time, against 10 full snapshots. `cargo test --release -p vmi-checkpoint figure
/// -- --nocapture` prints it.
#[test]
fn figure_ten_checkpoints_vs_ten_full_snapshots() {
    let (_, store) = mem_store();
    let mut phone = Phone::new(16, 4, 10);
    let mut full_bytes = 0u64;
    let mut chain_bytes = 0u64;
    let mut stored = 0u64;
    for i in 0..10u64 {
        let snap = if i == 0 { phone.full() } else { phone.step(20, 1024) };
        chain_bytes += snap.len() as u64;
        stored += store.put("gina", &snap, i * HOUR_MS, None).expect("put").stored_bytes;
        let header = phone.header(SnapshotKind::Full);
        full_bytes +=
            encode_full(&header, &phone.globals, &phone.host, &phone.memory).expect("full").bytes.len() as u64;
    }
    let stats = store.stats().expect("stats");
    assert_eq!(stored, stats.chunk_bytes + stats.table_bytes + stats.manifest_bytes);
    println!(
        "10 checkpoints of 16 MiB (4 MiB non-zero, ~20 pages changed each): stored {stored} bytes \
         ({} chunks, {} chunk bytes, {} table bytes, {} manifest bytes) vs 10 full snapshots {full_bytes} bytes ({:.1}%); the snapshot chain itself (1 full + 9 \
         incremental) is {chain_bytes} bytes",
        stats.chunks,
        stats.chunk_bytes,
        stats.table_bytes,
        stats.manifest_bytes,
        100.0 * stored as f64 / full_bytes as f64
    );
    assert!(stored < full_bytes);
}

#[test]
fn manifests_and_page_tables_round_trip_and_refuse_damage() {
    use crate::manifest::{Manifest, Meta, SEGMENT_PAGES, Table};
    let mut rng = Rng(77);
    for case in 0..50 {
        let mut tables = std::collections::BTreeMap::new();
        for segment in 0..16u32 {
            if !rng.next().is_multiple_of(3) {
                tables.insert(segment, *blake3::hash(&rng.next().to_le_bytes()).as_bytes());
            }
        }
        let manifest = Manifest {
            meta: Meta {
                user: "u".into(),
                id: "00".repeat(32),
                at_ms: case,
                label: None,
                engine: "wasm".into(),
                image_hash: "11".repeat(32),
                memory_bytes: 16 * u64::from(SEGMENT_PAGES) * PAGE_SIZE as u64,
                virtual_ns: 0,
                wall_ns: 0,
                parent: None,
                globals: vec![],
                host_state: "22".repeat(32),
                host_state_bytes: 0,
            },
            tables,
        };
        let bytes = manifest.encode().expect("encode");
        assert_eq!(Manifest::decode(&bytes), Ok(manifest));
        for cut in [0, 9, 13, bytes.len() - 1] {
            assert!(Manifest::decode(&bytes[..cut]).is_err());
        }

        let mut table = Table::default();
        for offset in 0..SEGMENT_PAGES {
            if rng.next().is_multiple_of(2) {
                table.pages.insert(offset, [(rng.next() % 5) as u8; 32]);
            }
        }
        let bytes = table.encode();
        assert_eq!(bytes.len(), 12 + 32 * table.pages.len());
        assert_eq!(Table::decode(&bytes), Ok(table));
        assert!(Table::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

#[test]
fn an_incremental_checkpoint_writes_only_the_tables_it_touched() {
    let (_, store) = mem_store();
    let mut phone = Phone::new(16, 4, 11);
    store.put("hana", &phone.full(), 0, None).expect("full");
    let before = store.stats().expect("stats");
    // One page changed: one chunk, one page table, one manifest of ~128 segments.
    let info = store.put("hana", &phone.step(1, 64), HOUR_MS, None).expect("step");
    let after = store.stats().expect("stats");
    assert!(after.tables - before.tables <= 1, "{before:?} {after:?}");
    assert!(info.stored_bytes < 12 * 1024, "{info:?}");
    assert_eq!(decoded(&store.restore("hana", Selector::Id(info.id)).expect("restore")).1, phone.memory);
}

/// Copies `user`'s checkpoint `info` from `from` to `to` the way sites do.
fn replicate(from: &CheckpointStore, to: &CheckpointStore, user: &str, info: &CheckpointInfo) -> usize {
    let lacking = to.missing(&from.top_keys(user, info.id).expect("top")).expect("missing");
    let mut send = lacking.clone();
    send.extend(to.missing(&from.chunks_of(&lacking).expect("chunks")).expect("missing chunks"));
    let bundle = encode_bundle(&from.export(user, info.id, &send).expect("export"));
    let objects = decode_bundle(&bundle).expect("decode");
    to.import(user, info, objects).expect("import");
    bundle.len()
}

#[test]
fn a_replica_receives_only_what_it_lacks_and_restores_the_same() {
    let (_, primary) = mem_store();
    let (_, replica) = mem_store();
    let mut phone = Phone::new(16, 4, 12);
    let first = primary.put("ines", &phone.full(), 0, None).expect("full");
    let full_bundle = replicate(&primary, &replica, "ines", &first);
    let mut last = first.clone();
    for i in 1..=5 {
        last = primary.put("ines", &phone.step(3, 64), i * HOUR_MS, None).expect("step");
        let sent = replicate(&primary, &replica, "ines", &last);
        assert!(sent * 20 < full_bundle, "step {i} sent {sent} of a {full_bundle}-byte first copy");
    }
    assert_eq!(replica.list("ines").expect("list"), primary.list("ines").expect("list"));
    for info in primary.list("ines").expect("list") {
        let which = Selector::Id(info.id);
        assert_eq!(replica.restore("ines", which).expect("replica"), primary.restore("ines", which).expect("primary"));
    }
    // Importing again is a no-op.
    replicate(&primary, &replica, "ines", &last);
    assert_eq!(replica.list("ines").expect("list").len(), 6);
}

#[test]
fn a_chain_flattens_to_the_full_snapshot_of_its_last_state() {
    let mut phone = Phone::new(1, 1, 31);
    let full = phone.full();
    let a = phone.step(4, 64);
    let b = phone.step(4, 64);
    let flat = flatten(&[&full, &a, &b]).expect("flatten");
    let (_, memory, globals, host) = decoded(&flat);
    assert_eq!((memory, globals, host), phone.state());
    assert!(flatten(&[]).is_err());
    assert!(flatten(&[&a]).is_err(), "an incremental alone has no base");
}

#[test]
fn a_replica_refuses_forged_or_incomplete_bundles() {
    let (_, primary) = mem_store();
    let (_, replica) = mem_store();
    let mut phone = Phone::new(1, 1, 13);
    let info = primary.put("jo", &phone.full(), 0, None).expect("full");
    let top = primary.top_keys("jo", info.id).expect("top");
    let mut all = top.clone();
    all.extend(primary.chunks_of(&top).expect("chunks"));

    // Tables without their chunks: nothing but chunks is written, and the answer names
    // the tables again (they must come back with their chunks).
    let tables: Vec<String> = top.iter().filter(|k| k.starts_with("tables/")).cloned().collect();
    match replica.import("jo", &info, primary.export("jo", info.id, &tables).expect("export")) {
        Err(CheckpointError::Incomplete { missing, .. }) => {
            assert!(tables.iter().all(|t| missing.contains(t)), "{missing:?}");
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
    assert!(replica.missing(&tables).expect("missing") == tables, "no table was written");

    // Only the manifest: the import names exactly what is missing (the tables and the
    // host state: the chunks of a table it has not seen it cannot know), indexes nothing.
    match replica.import("jo", &info, primary.export("jo", info.id, &[]).expect("export")) {
        Err(CheckpointError::Incomplete { id, missing }) => {
            assert_eq!(id, info.id);
            assert_eq!(missing, top);
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
    assert!(replica.list("jo").expect("list").is_empty());

    // A chunk whose bytes are another page's.
    let mut objects = primary.export("jo", info.id, &all).expect("export");
    let chunk = objects.iter().position(|(k, _)| k.starts_with("chunks/")).expect("a chunk");
    let other = objects.iter().rposition(|(k, _)| k.starts_with("chunks/")).expect("a chunk");
    assert_ne!(chunk, other);
    objects[chunk].1 = objects[other].1.clone();
    assert!(matches!(replica.import("jo", &info, objects), Err(CheckpointError::CorruptChunk { .. })));
    // Filed under another user, or with an object it does not need.
    let objects = primary.export("jo", info.id, &all).expect("export");
    assert!(matches!(replica.import("kim", &info, objects.clone()), Err(CheckpointError::BadBundle(_))));
    let mut extra = objects.clone();
    extra.push(("chunks/stray".into(), vec![1, 2, 3]));
    assert!(matches!(replica.import("jo", &info, extra), Err(CheckpointError::BadBundle(_))));
    // Damaged bundles.
    let bundle = encode_bundle(&objects);
    for cut in [0, 8, 11, 14, bundle.len() - 1] {
        assert!(matches!(decode_bundle(&bundle[..cut]), Err(CheckpointError::BadBundle(_))), "cut {cut}");
    }
    let mut lie = bundle.clone();
    lie[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_bundle(&lie).is_err());
    // And the honest one goes in.
    replica.import("jo", &info, objects).expect("import");
    assert_eq!(decoded(&replica.restore("jo", Selector::Id(info.id)).expect("restore")).1, phone.memory);
}

/// The decoders of manifests, page tables, chunks and bundles on damaged and random
/// bytes: an error or a value, never a panic (and never a large allocation: every length
/// is checked against the bytes present first).
#[test]
fn decoders_survive_damaged_and_random_input() {
    use crate::manifest::{Manifest, Table};
    let (objects, store) = mem_store();
    let mut phone = Phone::new(1, 1, 21);
    let info = store.put("fuzz", &phone.full(), 0, Some("x".into())).expect("put");
    let manifest = objects.get(&format!("manifests/fuzz/{}", info.id.to_hex())).expect("get").expect("manifest");
    let table_key = store.top_keys("fuzz", info.id).expect("top").into_iter().find(|k| k.starts_with("tables/"));
    let table = objects.get(&table_key.expect("a table")).expect("get").expect("table");
    let chunk_key = store.chunks_of(&store.top_keys("fuzz", info.id).expect("top")).expect("chunks")[0].clone();
    let chunk = objects.get(&chunk_key).expect("get").expect("chunk");
    let bundle = encode_bundle(&store.export("fuzz", info.id, std::slice::from_ref(&chunk_key)).expect("export"));
    let hash = [0u8; 32];
    let mut rng = Rng(99);
    let mut decoded = 0usize;
    for _ in 0..60_000u64 {
        for (kind, seed) in [(0, &manifest), (1, &table), (2, &chunk), (3, &bundle)] {
            let mut bytes = seed.clone();
            match rng.next() % 4 {
                0 => {
                    let at = (rng.next() as usize) % bytes.len();
                    bytes[at] ^= 1 << (rng.next() % 8);
                }
                1 => bytes.truncate((rng.next() as usize) % (bytes.len() + 1)),
                2 => {
                    let at = (rng.next() as usize) % bytes.len().max(1);
                    let word = rng.next().to_le_bytes();
                    for (i, b) in word.iter().enumerate() {
                        if let Some(slot) = bytes.get_mut(at + i) {
                            *slot = *b;
                        }
                    }
                }
                _ => bytes = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect(),
            }
            let ok = match kind {
                0 => Manifest::decode(&bytes).is_ok(),
                1 => Table::decode(&bytes).is_ok(),
                2 => crate::checkpoint::check_chunk(&hash, &bytes, 4096).is_ok(),
                _ => decode_bundle(&bytes).is_ok(),
            };
            decoded += usize::from(ok);
        }
    }
    // Most damage is caught (a flipped bit in a JSON string or a hash can still decode).
    assert!(decoded < 60_000 * 4 / 2, "{decoded} damaged inputs decoded");
}

/// `good` with its last byte flipped.
fn bad_copy(good: &[u8]) -> Vec<u8> {
    let mut bad = good.to_vec();
    if let Some(last) = bad.last_mut() {
        *last ^= 0x55;
    }
    bad
}
