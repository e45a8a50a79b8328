//! A checkpoint's manifest: everything about the state except page bytes, and which
//! chunk holds each non-zero page.
//!
//! Layout: magic `SEEDCKPT`, format version `u16`, raw body length `u32`, then the body
//! LZ4-compressed (block format). The body, little-endian: JSON metadata length `u32` and
//! the [`Meta`] JSON; distinct chunk hash count `u32` and the 32-byte hashes; entry count
//! `u32` and the non-zero pages as runs: first page `u32`, page count `u32`, hash number
//! of the first page `u32`, stride `u8` (0: every page of the run has that hash, a flat
//! band; 1: the next pages have the next hash numbers, as fresh distinct pages do since
//! hashes are numbered in first-use order), runs sorted and disjoint; then the first 16
//! bytes of blake3 of everything before.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use vmi_snapshot::{GlobalValue, Limits, PAGE_SIZE};

/// A chunk's identity: blake3 of its raw bytes.
pub(crate) type Hash = [u8; 32];

const MAGIC: &[u8; 8] = b"SEEDCKPT";
const VERSION: u16 = 1;
const CHECK: usize = 16;
/// Largest raw manifest body accepted (a 4 GiB memory of distinct pages needs 40 MiB).
const MAX_BODY: u64 = 64 << 20;

/// Bytes of one encoded page run.
const RUN_BYTES: usize = 13;

/// Consecutive pages whose hash numbers are equal (stride 0) or consecutive (stride 1).
struct Run {
    first: u32,
    count: u32,
    first_hash: u32,
    stride: u32,
}

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

/// What a manifest says besides its page table.
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
    /// Non-zero page index → chunk hash.
    pub pages: BTreeMap<u32, Hash>,
}

impl Manifest {
    /// Every chunk it references: the pages' and the host state's (if its hash parses).
    pub fn chunks(&self) -> impl Iterator<Item = Hash> + '_ {
        self.pages.values().copied().chain(from_hex(&self.meta.host_state))
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| e.to_string())?;
        let mut numbers: HashMap<Hash, u32> = HashMap::new();
        let mut hashes: Vec<&Hash> = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        for (&page, hash) in &self.pages {
            let n = *numbers.entry(*hash).or_insert_with(|| {
                hashes.push(hash);
                (hashes.len() - 1) as u32
            });
            if let Some(run) = runs.last_mut().filter(|r| r.first + r.count == page) {
                let next = run.first_hash + run.stride * run.count;
                if run.count == 1 && n.checked_sub(run.first_hash).is_some_and(|d| d <= 1) {
                    run.stride = n - run.first_hash;
                    run.count += 1;
                    continue;
                }
                if n == next {
                    run.count += 1;
                    continue;
                }
            }
            runs.push(Run { first: page, count: 1, first_hash: n, stride: 0 });
        }
        let mut entries = Vec::with_capacity(runs.len() * RUN_BYTES);
        for run in &runs {
            entries.extend_from_slice(&run.first.to_le_bytes());
            entries.extend_from_slice(&run.count.to_le_bytes());
            entries.extend_from_slice(&run.first_hash.to_le_bytes());
            entries.push(run.stride as u8);
        }
        let mut body = Vec::with_capacity(12 + meta.len() + hashes.len() * 32 + entries.len() + CHECK);
        body.extend_from_slice(&len32(meta.len())?.to_le_bytes());
        body.extend_from_slice(&meta);
        body.extend_from_slice(&len32(hashes.len())?.to_le_bytes());
        hashes.iter().for_each(|h| body.extend_from_slice(&h[..]));
        body.extend_from_slice(&len32(runs.len())?.to_le_bytes());
        body.extend_from_slice(&entries);
        let check = blake3::hash(&body);
        body.extend_from_slice(&check.as_bytes()[..CHECK]);

        let mut out = Vec::with_capacity(14 + body.len() / 2);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&len32(body.len())?.to_le_bytes());
        out.extend_from_slice(&lz4_flex::block::compress(&body));
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
        let raw_len = u64::from(r.u32()?);
        let compressed = r.0;
        if raw_len > MAX_BODY || raw_len > 256 * compressed.len() as u64 + 16 {
            return Err(format!("body of {raw_len} bytes is implausible for {} compressed", compressed.len()));
        }
        let mut body = vec![0u8; raw_len as usize];
        match lz4_flex::block::decompress_into(compressed, &mut body) {
            Ok(n) if n == body.len() => {}
            Ok(n) => return Err(format!("body decompressed to {n} bytes, not {raw_len}")),
            Err(e) => return Err(format!("body does not decompress: {e}")),
        }
        let Some(split) = body.len().checked_sub(CHECK) else {
            return Err("body too short".into());
        };
        let (content, check) = body.split_at(split);
        if &blake3::hash(content).as_bytes()[..CHECK] != check {
            return Err("checksum mismatch".into());
        }

        let mut r = Reader(content);
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
        let hash_count = r.u32()? as usize;
        let table = r.take(hash_count.checked_mul(32).ok_or("hash count overflows")?)?;
        let hashes: Vec<Hash> = table.chunks_exact(32).map(|h| h.try_into().unwrap_or([0; 32])).collect();
        let run_count = r.u32()? as usize;
        let entries = r.take(run_count.checked_mul(RUN_BYTES).ok_or("run count overflows")?)?;
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }
        let memory_pages = meta.memory_bytes / PAGE_SIZE as u64;
        let mut pages = BTreeMap::new();
        let mut end = 0u64;
        for e in entries.chunks_exact(RUN_BYTES) {
            let word = |at: usize| u64::from(u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]));
            let (first, count, first_hash, stride) = (word(0), word(4), word(8), u64::from(e[12]));
            // Runs are sorted, disjoint and inside memory, so this loops at most once per page.
            if count == 0 || first < end || first + count > memory_pages || stride > 1 {
                return Err(format!("run of {count} pages at {first} (stride {stride}) is out of place"));
            }
            if first_hash + stride * (count - 1) >= hash_count as u64 {
                return Err(format!("run at page {first} names hashes beyond the {hash_count} listed"));
            }
            for i in 0..count {
                pages.insert((first + i) as u32, hashes[(first_hash + stride * i) as usize]);
            }
            end = first + count;
        }
        Ok(Manifest { meta, pages })
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
