//! [`CheckpointStore`]: put, list, restore, retain, collect.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vmi_snapshot::{Header, Limits, PAGE_SIZE, SnapshotId, SnapshotKind, SnapshotView, encode_full, is_zero_page};

use crate::manifest::{Hash, Manifest, Meta, SEGMENT_PAGES, Table, from_hex, hex, segments_of};
use crate::{CheckpointError, ObjectStore, Result, Retention, validate_key};

pub(crate) const CHUNKS: &str = "chunks/";
pub(crate) const TABLES: &str = "tables/";
const MANIFESTS: &str = "manifests/";
const INDEX: &str = "index/";

/// Chunk encodings: the tag byte before the chunk's bytes.
const RAW: u8 = 0;
const LZ4: u8 = 1;

/// One checkpoint of a user, as [`CheckpointStore::list`] gives it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckpointInfo {
    /// Id of the snapshot checkpointed (blake3 of the file given to `put`).
    pub id: SnapshotId,
    /// When it was taken, ms since the Unix epoch (the caller's clock).
    pub at_ms: u64,
    /// The caller's label, if any.
    pub label: Option<String>,
    /// Linear memory size.
    pub memory_bytes: u64,
    /// Chunks this checkpoint added to the store (the others were already there).
    pub new_chunks: u64,
    /// Bytes this checkpoint added: its new chunks and its manifest.
    pub stored_bytes: u64,
}

/// Which checkpoint to restore.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Selector {
    /// The checkpoint of this snapshot id.
    Id(SnapshotId),
    /// The latest checkpoint taken at or before this time (ms); `u64::MAX` is the latest.
    AtOrBefore(u64),
}

/// What the object store holds, from [`CheckpointStore::stats`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// Chunks (distinct pages and host states).
    pub chunks: u64,
    /// Bytes of all chunks, compressed as stored.
    pub chunk_bytes: u64,
    /// Page tables (distinct segments of memory).
    pub tables: u64,
    /// Bytes of all page tables.
    pub table_bytes: u64,
    /// Manifests (checkpoints of all users).
    pub manifests: u64,
    /// Bytes of all manifests.
    pub manifest_bytes: u64,
}

/// What [`CheckpointStore::retain`] and [`CheckpointStore::gc`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GcReport {
    /// Checkpoints (manifests) deleted.
    pub manifests_deleted: u64,
    /// Chunks and page tables deleted because no manifest referenced them.
    pub chunks_deleted: u64,
    /// Bytes of those objects.
    pub bytes_freed: u64,
}

/// One line of a user's index (JSON).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct IndexEntry {
    id: String,
    at_ms: u64,
    label: Option<String>,
    memory_bytes: u64,
    new_chunks: u64,
    stored_bytes: u64,
}

/// A user's checkpoints, oldest first, and their ids.
pub(crate) struct Index {
    entries: Vec<IndexEntry>,
    ids: Vec<SnapshotId>,
}

impl Index {
    pub(crate) fn position(&self, id: SnapshotId) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }
}

/// Phones' checkpoints in an [`ObjectStore`], content-addressed.
///
/// Objects: `chunks/HASH` (a distinct non-zero 4 KiB page or a host state, keyed by the
/// blake3 of its raw bytes, stored LZ4-compressed or raw behind a tag byte),
/// `tables/HASH` (the chunks of one 64 KiB segment of memory, keyed by the blake3 of the
/// table), `manifests/USER/ID` (one per checkpoint: header fields, globals, host-state
/// chunk, the table of every non-empty segment) and `index/USER` (the user's checkpoints
/// by time, JSON). Every manifest names everything it needs, so deleting one never breaks
/// another; chunks and tables are shared by every manifest with the same content, across
/// time and across phones.
///
/// Writes are ordered so that a crash leaves only garbage, never a dangling reference:
/// chunks, then tables, then the manifest, then the index; retention rewrites the index
/// before deleting manifests, and [`gc`](Self::gc) keeps every table and chunk of every
/// manifest present (so a table present means its chunks are).
/// One `CheckpointStore` must be the only writer of its object store (operations are
/// serialized by a lock inside it).
pub struct CheckpointStore {
    pub(crate) objects: Arc<dyn ObjectStore>,
    lock: Mutex<()>,
}

impl CheckpointStore {
    /// A store keeping its objects in `objects`.
    pub fn new(objects: Arc<dyn ObjectStore>) -> CheckpointStore {
        CheckpointStore { objects, lock: Mutex::new(()) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checkpoints `snapshot` (a vmi-snapshot file) for `user`, taken at `at_ms`.
    ///
    /// A full snapshot stands alone; an incremental one must name one of the user's
    /// checkpoints as parent, whose pages it is applied to. Pre-copy rounds are refused.
    /// Each distinct non-zero page is stored once as a chunk; only the page tables of
    /// segments the snapshot touched are rewritten, so an incremental checkpoint costs
    /// O(pages changed), not O(memory).
    pub fn put(&self, user: &str, snapshot: &[u8], at_ms: u64, label: Option<String>) -> Result<CheckpointInfo> {
        validate_user(user)?;
        let view = SnapshotView::parse(snapshot, &Limits::default())?;
        let id = SnapshotId::of(snapshot);
        let _guard = self.lock();
        let mut index = self.load_index(user)?;
        if index.position(id).is_some() {
            return Err(CheckpointError::Duplicate { user: user.to_owned(), id });
        }
        let header = &view.header;
        let mut tables = match header.kind {
            SnapshotKind::Full => BTreeMap::new(),
            SnapshotKind::Incremental { parent } => {
                if index.position(parent).is_none() {
                    return Err(CheckpointError::UnknownParent { user: user.to_owned(), parent });
                }
                let base = self.load_manifest(user, parent)?;
                let image = from_hex(&base.meta.image_hash).unwrap_or([0; 32]);
                header.check_compat(&base.meta.engine, &image)?;
                base.tables
            }
            SnapshotKind::PreCopy { .. } => return Err(CheckpointError::PreCopy),
        };

        // The pages the snapshot carries, by segment: Some(chunk) or None (now zero).
        let mut added = Added::default();
        let mut touched: BTreeMap<u32, Vec<(u32, Option<Hash>)>> = BTreeMap::new();
        let data = view.pages.to_pages()?;
        for (page, bytes) in data.iter() {
            let chunk = match bytes {
                Some(bytes) if !is_zero_page(bytes) => Some(self.put_chunk(bytes, &mut added)?),
                _ => None,
            };
            touched.entry(page / SEGMENT_PAGES).or_default().push((page % SEGMENT_PAGES, chunk));
        }
        // Memory never shrinks in a running phone, but a snapshot may say so: drop what
        // lies beyond it.
        let memory_pages = header.memory_bytes / PAGE_SIZE as u64;
        let segments = segments_of(header.memory_bytes);
        tables.retain(|&segment, _| u64::from(segment) < segments);
        if !memory_pages.is_multiple_of(u64::from(SEGMENT_PAGES)) {
            touched.entry((memory_pages / u64::from(SEGMENT_PAGES)) as u32).or_default();
        }
        for (segment, changes) in touched {
            let mut table = match tables.get(&segment) {
                Some(hash) => self.load_table(hash, id)?,
                None => Table::default(),
            };
            for (offset, chunk) in changes {
                match chunk {
                    Some(chunk) => table.pages.insert(offset, chunk),
                    None => table.pages.remove(&offset),
                };
            }
            let first = u64::from(segment) * u64::from(SEGMENT_PAGES);
            table.pages.retain(|&offset, _| first + u64::from(offset) < memory_pages);
            if table.pages.is_empty() {
                tables.remove(&segment);
            } else {
                tables.insert(segment, self.put_table(&table, &mut added)?);
            }
        }
        let host_state = self.put_chunk(view.host_state, &mut added)?;

        let manifest = Manifest {
            meta: Meta {
                user: user.to_owned(),
                id: id.to_hex(),
                at_ms,
                label: label.clone(),
                engine: header.engine.clone(),
                image_hash: hex(&header.image_hash),
                memory_bytes: header.memory_bytes,
                virtual_ns: header.virtual_ns,
                wall_ns: header.wall_ns,
                parent: header.kind.parent().map(|p| p.to_hex()),
                globals: view.globals.iter().map(|&g| g.into()).collect(),
                host_state: hex(&host_state),
                host_state_bytes: view.host_state.len() as u64,
            },
            tables,
        };
        let key = manifest_key(user, id);
        let bytes =
            manifest.encode().map_err(|detail| CheckpointError::CorruptManifest { key: key.clone(), detail })?;
        self.objects.put(&key, &bytes)?;

        let entry = IndexEntry {
            id: id.to_hex(),
            at_ms,
            label,
            memory_bytes: header.memory_bytes,
            new_chunks: added.chunks,
            stored_bytes: added.bytes + bytes.len() as u64,
        };
        let at = index.entries.partition_point(|e| e.at_ms <= at_ms);
        index.entries.insert(at, entry.clone());
        self.save_index(user, &index.entries)?;
        tracing::debug!(user, %id, at_ms, new_chunks = added.chunks, stored_bytes = entry.stored_bytes, "checkpoint");
        Ok(info(id, &entry))
    }

    /// Users with an index in this store, sorted.
    pub fn users(&self) -> Result<Vec<String>> {
        let mut users: Vec<String> = self
            .objects
            .list(INDEX)?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(INDEX).map(str::to_owned))
            .filter(|u| validate_user(u).is_ok())
            .collect();
        users.sort();
        Ok(users)
    }

    /// The user's checkpoints, oldest first (empty for a user without any).
    pub fn list(&self, user: &str) -> Result<Vec<CheckpointInfo>> {
        validate_user(user)?;
        let index = self.load_index(user)?;
        Ok(index.ids.iter().zip(&index.entries).map(|(&id, e)| info(id, e)).collect())
    }

    /// Rebuilds the full snapshot file of a checkpoint: the same header fields (kind
    /// full, no parent), globals, host state and memory as the snapshot checkpointed.
    pub fn restore(&self, user: &str, which: Selector) -> Result<Vec<u8>> {
        Ok(self.restore_with_info(user, which)?.1)
    }

    /// [`restore`](Self::restore), with which checkpoint it chose (the two read under one
    /// lock, so retention cannot come between).
    pub fn restore_with_info(&self, user: &str, which: Selector) -> Result<(CheckpointInfo, Vec<u8>)> {
        validate_user(user)?;
        // Held so that retention cannot delete what is being read.
        let _guard = self.lock();
        let index = self.load_index(user)?;
        if index.ids.is_empty() {
            return Err(CheckpointError::UnknownUser(user.to_owned()));
        }
        let at = match which {
            Selector::Id(id) => {
                index.position(id).ok_or_else(|| CheckpointError::UnknownCheckpoint { user: user.to_owned(), id })?
            }
            Selector::AtOrBefore(at_ms) => index
                .entries
                .partition_point(|e| e.at_ms <= at_ms)
                .checked_sub(1)
                .ok_or_else(|| CheckpointError::NoneBefore { user: user.to_owned(), at_ms })?,
        };
        let id = index.ids[at];
        let chosen = info(id, &index.entries[at]);
        let manifest = self.load_manifest(user, id)?;
        let meta = &manifest.meta;
        let memory_len = usize::try_from(meta.memory_bytes).map_err(|_| CheckpointError::CorruptManifest {
            key: manifest_key(user, id),
            detail: "memory does not fit this machine".into(),
        })?;
        let mut memory = vec![0u8; memory_len];
        let memory_pages = memory_len / PAGE_SIZE;
        // A page seen before is copied from where it was first written.
        let mut first_at: BTreeMap<Hash, usize> = BTreeMap::new();
        for (&segment, table_hash) in &manifest.tables {
            let table = self.load_table(table_hash, id)?;
            for (&offset, hash) in &table.pages {
                let page = segment as usize * SEGMENT_PAGES as usize + offset as usize;
                if page >= memory_pages {
                    return Err(CheckpointError::CorruptChunk {
                        hash: hex(table_hash),
                        detail: format!("page table names page {page} of a {memory_pages}-page memory"),
                    });
                }
                let at = page * PAGE_SIZE;
                if let Some(&from) = first_at.get(hash) {
                    memory.copy_within(from..from + PAGE_SIZE, at);
                } else {
                    let bytes = self.get_chunk(hash, PAGE_SIZE, id)?;
                    memory[at..at + PAGE_SIZE].copy_from_slice(&bytes);
                    first_at.insert(*hash, at);
                }
            }
        }
        let host_hash = from_hex(&meta.host_state).unwrap_or([0; 32]);
        let host_len = usize::try_from(meta.host_state_bytes).unwrap_or(usize::MAX);
        let host_state = self.get_chunk(&host_hash, host_len, id)?;
        let header = Header {
            engine: meta.engine.clone(),
            image_hash: from_hex(&meta.image_hash).ok_or_else(|| CheckpointError::CorruptManifest {
                key: manifest_key(user, id),
                detail: "image hash is not 64 hex digits".into(),
            })?,
            memory_bytes: meta.memory_bytes,
            kind: SnapshotKind::Full,
            virtual_ns: meta.virtual_ns,
            wall_ns: meta.wall_ns,
        };
        let globals: Vec<_> = meta.globals.iter().map(|&g| g.into()).collect();
        let full = encode_full(&header, &globals, &host_state, &memory)
            .map_err(|e| CheckpointError::CorruptManifest { key: manifest_key(user, id), detail: e.to_string() })?;
        Ok((chosen, full.bytes))
    }

    /// Applies `policy` to the user's checkpoints as of `now_ms`, deletes the manifests
    /// not kept (and any of the user's manifests the index does not name), then runs
    /// [`gc`](Self::gc).
    pub fn retain(&self, user: &str, policy: &Retention, now_ms: u64) -> Result<GcReport> {
        let _guard = self.lock();
        let report = self.expire_locked(user, policy, now_ms)?;
        let swept = self.gc_locked()?;
        Ok(GcReport { chunks_deleted: swept.chunks_deleted, bytes_freed: swept.bytes_freed, ..report })
    }

    /// What [`retain`](Self::retain) does without the collection: a site expiring many
    /// users' checkpoints collects once after all of them.
    pub fn expire(&self, user: &str, policy: &Retention, now_ms: u64) -> Result<GcReport> {
        let _guard = self.lock();
        self.expire_locked(user, policy, now_ms)
    }

    fn expire_locked(&self, user: &str, policy: &Retention, now_ms: u64) -> Result<GcReport> {
        validate_user(user)?;
        let index = self.load_index(user)?;
        let times: Vec<u64> = index.entries.iter().map(|e| e.at_ms).collect();
        let keep = policy.keep(&times, now_ms);
        let kept: Vec<IndexEntry> =
            index.entries.iter().zip(&keep).filter(|&(_, &k)| k).map(|(e, _)| e.clone()).collect();
        let kept_keys: HashSet<String> =
            index.ids.iter().zip(&keep).filter(|&(_, &k)| k).map(|(&id, _)| manifest_key(user, id)).collect();
        if !index.entries.is_empty() {
            self.save_index(user, &kept)?;
        }
        let mut report = GcReport::default();
        for object in self.objects.list(&format!("{MANIFESTS}{user}/"))? {
            if !kept_keys.contains(&object.key) {
                self.objects.delete(&object.key)?;
                report.manifests_deleted += 1;
            }
        }
        if report.manifests_deleted > 0 {
            tracing::info!(user, kept = kept.len(), dropped = report.manifests_deleted, "retention");
        }
        Ok(report)
    }

    /// Deletes one of the user's checkpoints (its index entry, then its manifest; the index too when it was the
    /// last), without a collection; `false` if there was none. A store that keeps one state per key (a site's saved
    /// phones) replaces it this way.
    pub fn remove(&self, user: &str, id: SnapshotId) -> Result<bool> {
        validate_user(user)?;
        let _guard = self.lock();
        let index = self.load_index(user)?;
        let Some(at) = index.position(id) else { return Ok(false) };
        let mut entries = index.entries;
        entries.remove(at);
        if entries.is_empty() {
            self.objects.delete(&format!("{INDEX}{user}"))?;
        } else {
            self.save_index(user, &entries)?;
        }
        self.objects.delete(&manifest_key(user, id))?;
        Ok(true)
    }

    /// Deletes every chunk no manifest of any user references (mark and sweep). If any
    /// manifest cannot be read, nothing is deleted.
    pub fn gc(&self) -> Result<GcReport> {
        let _guard = self.lock();
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<GcReport> {
        // Mark: every table of every manifest, every chunk of those tables.
        let mut tables: HashSet<Hash> = HashSet::new();
        let mut chunks: HashSet<Hash> = HashSet::new();
        for object in self.objects.list(MANIFESTS)? {
            let manifest = self.decode_manifest(&object.key)?;
            tables.extend(manifest.tables.values().copied());
            chunks.extend(from_hex(&manifest.meta.host_state));
        }
        for hash in &tables {
            let table = self.load_table(hash, SnapshotId([0; 32]))?;
            chunks.extend(table.pages.values().copied());
        }
        // Tables first: if a delete fails part way, no table is left naming a chunk that
        // is gone (a present table must mean its chunks are present).
        let mut report = GcReport::default();
        for (prefix, marked) in [(TABLES, &tables), (CHUNKS, &chunks)] {
            for object in self.objects.list(prefix)? {
                // Objects that are not content names are not ours to delete.
                let Some(hash) = object.key.strip_prefix(prefix).and_then(from_hex) else { continue };
                if !marked.contains(&hash) {
                    self.objects.delete(&object.key)?;
                    report.chunks_deleted += 1;
                    report.bytes_freed += object.bytes;
                }
            }
        }
        tracing::info!(objects_deleted = report.chunks_deleted, bytes_freed = report.bytes_freed, "gc");
        Ok(report)
    }

    /// Counts what the object store holds.
    pub fn stats(&self) -> Result<Stats> {
        let chunks = self.objects.list(CHUNKS)?;
        let tables = self.objects.list(TABLES)?;
        let manifests = self.objects.list(MANIFESTS)?;
        Ok(Stats {
            chunks: chunks.len() as u64,
            chunk_bytes: chunks.iter().map(|o| o.bytes).sum(),
            tables: tables.len() as u64,
            table_bytes: tables.iter().map(|o| o.bytes).sum(),
            manifests: manifests.len() as u64,
            manifest_bytes: manifests.iter().map(|o| o.bytes).sum(),
        })
    }

    fn put_table(&self, table: &Table, added: &mut Added) -> Result<Hash> {
        let bytes = table.encode();
        let hash = *blake3::hash(&bytes).as_bytes();
        let key = table_key(&hash);
        if !self.objects.contains(&key)? {
            self.objects.put(&key, &bytes)?;
            added.bytes += bytes.len() as u64;
        }
        Ok(hash)
    }

    /// A page table, checked against its name; `id` is the checkpoint that needs it.
    pub(crate) fn load_table(&self, hash: &Hash, id: SnapshotId) -> Result<Table> {
        let Some(bytes) = self.objects.get(&table_key(hash))? else {
            return Err(CheckpointError::MissingChunk { hash: hex(hash), id });
        };
        let corrupt = |detail: String| CheckpointError::CorruptChunk { hash: hex(hash), detail };
        if blake3::hash(&bytes).as_bytes() != hash {
            return Err(corrupt("page table does not match its hash".into()));
        }
        Table::decode(&bytes).map_err(corrupt)
    }

    fn put_chunk(&self, raw: &[u8], added: &mut Added) -> Result<Hash> {
        let hash = *blake3::hash(raw).as_bytes();
        let key = chunk_key(&hash);
        if !self.objects.contains(&key)? {
            let compressed = lz4_flex::block::compress(raw);
            let (tag, body) = if compressed.len() < raw.len() { (LZ4, &compressed[..]) } else { (RAW, raw) };
            let mut bytes = Vec::with_capacity(body.len() + 1);
            bytes.push(tag);
            bytes.extend_from_slice(body);
            self.objects.put(&key, &bytes)?;
            added.chunks += 1;
            added.bytes += bytes.len() as u64;
        }
        Ok(hash)
    }

    /// The raw bytes of chunk `hash`, which must be `len` bytes long; `id` is the
    /// checkpoint that needs it (for the error).
    fn get_chunk(&self, hash: &Hash, len: usize, id: SnapshotId) -> Result<Vec<u8>> {
        let Some(stored) = self.objects.get(&chunk_key(hash))? else {
            return Err(CheckpointError::MissingChunk { hash: hex(hash), id });
        };
        check_chunk(hash, &stored, len)
    }

    /// Adds an imported checkpoint to the user's index (the lock is held).
    pub(crate) fn add_to_index(&self, user: &str, info: &CheckpointInfo) -> Result<()> {
        let mut index = self.load_index(user)?;
        let entry = IndexEntry {
            id: info.id.to_hex(),
            at_ms: info.at_ms,
            label: info.label.clone(),
            memory_bytes: info.memory_bytes,
            new_chunks: info.new_chunks,
            stored_bytes: info.stored_bytes,
        };
        let at = index.entries.partition_point(|e| e.at_ms <= info.at_ms);
        index.entries.insert(at, entry);
        self.save_index(user, &index.entries)
    }

    pub(crate) fn load_manifest(&self, user: &str, id: SnapshotId) -> Result<Manifest> {
        let manifest = self.decode_manifest(&manifest_key(user, id))?;
        if manifest.meta.user != user || manifest.meta.id != id.to_hex() {
            return Err(CheckpointError::CorruptManifest {
                key: manifest_key(user, id),
                detail: format!("it describes {}/{}", manifest.meta.user, manifest.meta.id),
            });
        }
        Ok(manifest)
    }

    fn decode_manifest(&self, key: &str) -> Result<Manifest> {
        let Some(bytes) = self.objects.get(key)? else {
            return Err(CheckpointError::MissingManifest { key: key.to_owned() });
        };
        Manifest::decode(&bytes).map_err(|detail| CheckpointError::CorruptManifest { key: key.to_owned(), detail })
    }

    pub(crate) fn load_index(&self, user: &str) -> Result<Index> {
        let key = format!("{INDEX}{user}");
        let Some(bytes) = self.objects.get(&key)? else {
            return Ok(Index { entries: Vec::new(), ids: Vec::new() });
        };
        let corrupt = |detail: String| CheckpointError::CorruptManifest { key: key.clone(), detail };
        let entries: Vec<IndexEntry> = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let ids = entries
            .iter()
            .map(|e| SnapshotId::from_hex(&e.id).ok_or_else(|| corrupt(format!("bad id {:?}", e.id))))
            .collect::<Result<Vec<_>>>()?;
        if entries.windows(2).any(|w| w[0].at_ms > w[1].at_ms) {
            return Err(corrupt("entries out of time order".into()));
        }
        if ids.iter().collect::<BTreeSet<_>>().len() != ids.len() {
            return Err(corrupt("an id appears twice".into()));
        }
        Ok(Index { entries, ids })
    }

    fn save_index(&self, user: &str, entries: &[IndexEntry]) -> Result<()> {
        let key = format!("{INDEX}{user}");
        let bytes = serde_json::to_vec(entries)
            .map_err(|e| CheckpointError::CorruptManifest { key: key.clone(), detail: e.to_string() })?;
        self.objects.put(&key, &bytes)
    }
}

#[derive(Default)]
struct Added {
    chunks: u64,
    bytes: u64,
}

fn info(id: SnapshotId, e: &IndexEntry) -> CheckpointInfo {
    CheckpointInfo {
        id,
        at_ms: e.at_ms,
        label: e.label.clone(),
        memory_bytes: e.memory_bytes,
        new_chunks: e.new_chunks,
        stored_bytes: e.stored_bytes,
    }
}

impl CheckpointStore {
    /// A chunk or page table (`chunks/HASH`, `tables/HASH`) as stored, if here: what another site's copy repairs
    /// its damaged one from. Other keys are refused.
    pub fn object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        if !(key.starts_with(CHUNKS) || key.starts_with(TABLES)) {
            return Err(CheckpointError::InvalidKey(key.to_owned()));
        }
        self.objects.get(key)
    }

    /// Puts back a chunk or page table that is damaged or missing here (`chunks/HASH` or `tables/HASH`, as
    /// [`CheckpointError::damaged_object`] names it) from `bytes` another store holds: checked first, never
    /// trusted (a table must hash to its name and decode; a chunk must decode to content with its hash).
    pub fn repair(&self, key: &str, bytes: &[u8]) -> Result<()> {
        validate_key(key)?;
        let bad = |detail: String| CheckpointError::BadBundle(format!("{key}: {detail}"));
        if let Some(hex_hash) = key.strip_prefix(TABLES) {
            let hash = from_hex(hex_hash).ok_or_else(|| bad("not a hash".into()))?;
            if blake3::hash(bytes).as_bytes() != &hash {
                return Err(bad("does not match its hash".into()));
            }
            Table::decode(bytes).map_err(bad)?;
        } else if let Some(hex_hash) = key.strip_prefix(CHUNKS) {
            let hash = from_hex(hex_hash).ok_or_else(|| bad("not a hash".into()))?;
            let raw = match bytes.split_first() {
                Some((&RAW, body)) => body.to_vec(),
                Some((&LZ4, body)) => {
                    // LZ4 expands at most about 255 times; a chunk is a page or a host state, far below the cap.
                    let cap = (body.len() * 255 + 16).min(64 << 20);
                    lz4_flex::block::decompress(body, cap).map_err(|e| bad(format!("does not decompress: {e}")))?
                }
                _ => return Err(bad("not a chunk".into())),
            };
            if blake3::hash(&raw).as_bytes() != &hash {
                return Err(bad("content does not match its hash".into()));
            }
        } else {
            return Err(bad("neither a chunk nor a page table".into()));
        }
        self.objects.put(key, bytes)
    }
}

pub(crate) fn chunk_key(hash: &Hash) -> String {
    format!("{CHUNKS}{}", hex(hash))
}

pub(crate) fn table_key(hash: &Hash) -> String {
    format!("{TABLES}{}", hex(hash))
}

pub(crate) fn manifest_key(user: &str, id: SnapshotId) -> String {
    format!("{MANIFESTS}{user}/{}", id.to_hex())
}

/// Resolves a snapshot chain (a full snapshot, then incremental ones in order) into one
/// full snapshot of its last state: what a crashed phone's last good chain is kept as.
pub fn flatten(chain: &[&[u8]]) -> Result<Vec<u8>> {
    let store = CheckpointStore::new(Arc::new(crate::MemStore::new()));
    let mut last = None;
    for (i, snapshot) in chain.iter().enumerate() {
        last = Some(store.put("chain", snapshot, i as u64, None)?.id);
    }
    let last = last.ok_or_else(|| CheckpointError::UnknownUser("chain".into()))?;
    store.restore("chain", Selector::Id(last))
}

/// Checks a user name: 1 to 64 bytes of `[A-Za-z0-9._-]`, not starting with `.` (the
/// rule `vmi-site` applies).
pub fn validate_user(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('.')
        && user.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(CheckpointError::InvalidUser(user.to_owned())) }
}

/// The raw bytes of a stored chunk, checked to be `len` bytes that hash to `hash`.
pub(crate) fn check_chunk(hash: &Hash, stored: &[u8], len: usize) -> Result<Vec<u8>> {
    let corrupt = |detail: String| CheckpointError::CorruptChunk { hash: hex(hash), detail };
    let raw = match stored.split_first() {
        Some((&RAW, body)) => body.to_vec(),
        Some((&LZ4, body)) => {
            if len as u64 > 256 * body.len() as u64 + 16 {
                return Err(corrupt(format!("{} bytes cannot hold {len}", body.len())));
            }
            let mut raw = vec![0u8; len];
            match lz4_flex::block::decompress_into(body, &mut raw) {
                Ok(n) if n == len => raw,
                Ok(n) => return Err(corrupt(format!("decompressed to {n} bytes, not {len}"))),
                Err(e) => return Err(corrupt(format!("does not decompress: {e}"))),
            }
        }
        Some((tag, _)) => return Err(corrupt(format!("unknown encoding {tag}"))),
        None => return Err(corrupt("empty".into())),
    };
    if raw.len() != len {
        return Err(corrupt(format!("{} bytes, not {len}", raw.len())));
    }
    if blake3::hash(&raw).as_bytes() != hash {
        return Err(corrupt("content does not match its hash".into()));
    }
    Ok(raw)
}
