//! A checkpoint's manifest and its page tables: two levels, so a checkpoint that changed
//! a few pages writes a few small objects, however large the memory.
//!
//! Memory is cut into segments of [`SEGMENT_PAGES`] pages. A **page table** lists, for
//! one segment, the chunk of each non-zero page; it is an object of its own keyed by the
//! blake3 of its bytes (`tables/HASH`), so a segment that did not change since the last
//! checkpoint, or that another phone of the same image holds identically, is the same
//! object. A **manifest** (`manifests/USER/ID`) has everything about the state except
//! page bytes, and the table of each non-empty segment.
//!
//! Manifest layout: magic `SEEDCKPT`, format version `u16` (2), body length `u32`, body,
//! then the first 16 bytes of blake3 of the body. Body, little-endian: JSON metadata
//! length `u32` and the [`Meta`] JSON; segment count `u32` and per segment its index
//! `u32` and table hash (32 bytes), indices strictly increasing.
//!
//! Table layout: magic `SEEDTBL1`, a `u32` bitmap of the segment's non-zero pages (bit
//! *i* = page *i* of the segment, higher bits zero), then one 32-byte chunk hash per set bit, in bit order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vmi_snapshot::{GlobalValue, Limits, PAGE_SIZE};

/// A chunk's (or table's) identity: blake3 of its raw bytes.
pub(crate) type Hash = [u8; 32];

/// Pages per segment: one page table covers 64 KiB of memory and is at most 524 bytes.
pub(crate) const SEGMENT_PAGES: u32 = 16;

const MAGIC: &[u8; 8] = b"SEEDCKPT";
const VERSION: u16 = 2;
const CHECK: usize = 16;
const TABLE_MAGIC: &[u8; 8] = b"SEEDTBL1";
/// Largest manifest body accepted (a 4 GiB memory has 65536 segments: 2.3 MiB).
const MAX_BODY: u64 = 8 << 20;

/// A global, as stored in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum Global {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

impl From<GlobalValue> for Global {
    fn from(g: GlobalValue) -> Self {
        match g {
            GlobalValue::I32(v) => Global::I32(v),
            GlobalValue::I64(v) => Global::I64(v),
            GlobalValue::F32(v) => Global::F32(v),
            GlobalValue::F64(v) => Global::F64(v),
        }
    }
}

impl From<Global> for GlobalValue {
    fn from(g: Global) -> Self {
        match g {
            Global::I32(v) => GlobalValue::I32(v),
            Global::I64(v) => GlobalValue::I64(v),
            Global::F32(v) => GlobalValue::F32(v),
            Global::F64(v) => GlobalValue::F64(v),
        }
    }
}

/// What a manifest says besides its page tables.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub user: String,
    /// The checkpointed snapshot's id, hex.
    pub id: String,
    pub at_ms: u64,
    pub label: Option<String>,
    pub engine: String,
    /// hex
    pub image_hash: String,
    pub memory_bytes: u64,
    pub virtual_ns: u64,
    pub wall_ns: u64,
    /// The parent of the snapshot as given, if it was incremental (hex); informative.
    pub parent: Option<String>,
    pub globals: Vec<Global>,
    /// Chunk holding the host state, hex.
    pub host_state: String,
    pub host_state_bytes: u64,
}

/// A decoded manifest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Manifest {
    pub meta: Meta,
    /// Segment index → page table hash, for every segment with a non-zero page.
    pub tables: BTreeMap<u32, Hash>,
}

impl Manifest {
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| e.to_string())?;
        let mut body = Vec::with_capacity(8 + meta.len() + self.tables.len() * 36);
        body.extend_from_slice(&len32(meta.len())?.to_le_bytes());
        body.extend_from_slice(&meta);
        body.extend_from_slice(&len32(self.tables.len())?.to_le_bytes());
        for (segment, hash) in &self.tables {
            body.extend_from_slice(&segment.to_le_bytes());
            body.extend_from_slice(hash);
        }
        let mut out = Vec::with_capacity(14 + body.len() + CHECK);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&len32(body.len())?.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&blake3::hash(&body).as_bytes()[..CHECK]);
        Ok(out)
    }

    /// Decodes untrusted bytes; every count is checked against the bytes left first.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return Err("bad magic".into());
        }
        let version = u16::from_le_bytes([r.u8()?, r.u8()?]);
        if version != VERSION {
            return Err(format!("manifest version {version}, this build reads {VERSION}"));
        }
        let body_len = u64::from(r.u32()?);
        if body_len > MAX_BODY {
            return Err(format!("body of {body_len} bytes is over the limit"));
        }
        let body = r.take(body_len as usize)?;
        if r.take(CHECK)? != &blake3::hash(body).as_bytes()[..CHECK] {
            return Err("checksum mismatch".into());
        }
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }

        let mut r = Reader(body);
        let meta_len = r.u32()? as usize;
        let meta: Meta = serde_json::from_slice(r.take(meta_len)?).map_err(|e| format!("metadata: {e}"))?;
        let limits = Limits::default();
        if meta.memory_bytes > limits.max_memory_bytes || !meta.memory_bytes.is_multiple_of(PAGE_SIZE as u64) {
            return Err(format!("memory of {} bytes is not allowed", meta.memory_bytes));
        }
        if meta.host_state_bytes > limits.max_host_state_bytes {
            return Err(format!("host state of {} bytes is over the limit", meta.host_state_bytes));
        }
        if from_hex(&meta.host_state).is_none() {
            return Err("host state hash is not 64 hex digits".into());
        }
        let count = r.u32()? as usize;
        let entries = r.take(count.checked_mul(36).ok_or("segment count overflows")?)?;
        if !r.0.is_empty() {
            return Err("trailing bytes in the body".into());
        }
        let segments = segments_of(meta.memory_bytes);
        let mut tables = BTreeMap::new();
        let mut next = 0u64;
        for e in entries.chunks_exact(36) {
            let segment = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            if u64::from(segment) < next || u64::from(segment) >= segments {
                return Err(format!("segment {segment} is out of order or beyond the memory"));
            }
            next = u64::from(segment) + 1;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&e[4..]);
            tables.insert(segment, hash);
        }
        Ok(Manifest { meta, tables })
    }
}

/// Segments a memory of `memory_bytes` has.
pub(crate) fn segments_of(memory_bytes: u64) -> u64 {
    (memory_bytes / PAGE_SIZE as u64).div_ceil(u64::from(SEGMENT_PAGES))
}

/// One segment's non-zero pages: offset in the segment → chunk hash.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct Table {
    pub pages: BTreeMap<u32, Hash>,
}

impl Table {
    pub fn encode(&self) -> Vec<u8> {
        let bitmap = self.pages.keys().fold(0u32, |b, &offset| b | 1 << offset);
        let mut out = Vec::with_capacity(12 + self.pages.len() * 32);
        out.extend_from_slice(TABLE_MAGIC);
        out.extend_from_slice(&bitmap.to_le_bytes());
        self.pages.values().for_each(|h| out.extend_from_slice(h));
        out
    }

    /// Decodes untrusted bytes (the caller checks they hash to the table's name).
    pub fn decode(bytes: &[u8]) -> Result<Table, String> {
        let mut r = Reader(bytes);
        if r.take(8)? != TABLE_MAGIC {
            return Err("bad page table magic".into());
        }
        let bitmap = r.u32()?;
        if u64::from(bitmap) >> SEGMENT_PAGES != 0 {
            return Err(format!("page bitmap {bitmap:#x} marks pages beyond the segment"));
        }
        if r.0.len() != bitmap.count_ones() as usize * 32 {
            return Err(format!("{} pages marked but {} bytes of hashes", bitmap.count_ones(), r.0.len()));
        }
        let mut pages = BTreeMap::new();
        let mut hashes = r.0.chunks_exact(32);
        for offset in (0..SEGMENT_PAGES).filter(|o| bitmap & (1 << o) != 0) {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(hashes.next().ok_or("hashes end early")?);
            pages.insert(offset, hash);
        }
        Ok(Table { pages })
    }
}

fn len32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{n} does not fit a manifest length"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("truncated: {n} bytes needed, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// 64 lowercase hex digits.
pub(crate) fn hex(hash: &Hash) -> String {
    vmi_snapshot::SnapshotId(*hash).to_hex()
}

/// 32 bytes from 64 hex digits.
pub(crate) fn from_hex(s: &str) -> Option<Hash> {
    vmi_snapshot::SnapshotId::from_hex(s).map(|id| id.0)
}
