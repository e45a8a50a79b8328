//! A whole snapshot, owned, and the encoders that read linear memory directly.

use std::fmt;

use crate::codec::{self, PageBytes};
use crate::pages::{check_memory, scan_dirty, scan_full};
use crate::{GlobalValue, Header, Limits, PageRun, Pages, RunKind, SnapshotError, SnapshotId};

/// A VM at an event boundary: header, globals, host state and memory pages.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// What the snapshot says about itself.
    pub header: Header,
    /// The VM's globals, in the engine's order.
    pub globals: Vec<GlobalValue>,
    /// The engine's serialized host state (timers, clocks, RNG, mailbox, KV store).
    pub host_state: Vec<u8>,
    /// The memory pages it records.
    pub pages: Pages,
}

impl Snapshot {
    /// Encodes to the file format (docs/SNAPSHOT_FORMAT.md).
    ///
    /// # Panics
    /// If [`try_encode`](Self::try_encode) fails: the engine name is empty or longer than
    /// [`MAX_ENGINE_NAME`](crate::MAX_ENGINE_NAME) bytes, `memory_bytes` is not whole pages,
    /// or a page lies beyond `memory_bytes`.
    pub fn encode(&self) -> Vec<u8> {
        match self.try_encode() {
            Ok(bytes) => bytes,
            Err(e) => panic!("{e}"),
        }
    }

    /// Encodes to the file format, or says why these parts are not a valid snapshot.
    pub fn try_encode(&self) -> Result<Vec<u8>, SnapshotError> {
        codec::encode_parts(
            &self.header,
            &self.globals,
            &self.host_state,
            self.pages.runs(),
            PageBytes::Packed(self.pages.data()),
        )
    }

    /// Checks and decodes untrusted bytes, allocating only within `limits`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Snapshot, SnapshotError> {
        crate::SnapshotView::parse(bytes, limits)?.to_snapshot()
    }

    /// Reads only the header (from the first few hundred bytes, which may be all the
    /// caller has read): checks magic, version and the header's own checksum, not the
    /// rest of the file.
    pub fn peek_header(bytes: &[u8]) -> Result<Header, SnapshotError> {
        codec::peek_header(bytes)
    }
}

/// Decodes without checking either checksum: lets tests reach the structural parser with
/// mutated bytes, which a checksum would otherwise stop first.
#[cfg(test)]
pub(crate) fn decode_unchecked(bytes: &[u8], limits: &Limits) -> Result<Snapshot, SnapshotError> {
    codec::parse(bytes, limits, false)?.to_snapshot()
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("header", &self.header)
            .field("globals", &self.globals.len())
            .field("host_state", &self.host_state.len())
            .field("pages", &self.pages)
            .finish()
    }
}

/// An encoded snapshot with its id and what it holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Encoded {
    /// blake3 of `bytes`.
    pub id: SnapshotId,
    /// The file bytes.
    pub bytes: Vec<u8>,
    /// Pages recorded, zero or data.
    pub page_count: usize,
    /// Pages recorded with data.
    pub data_pages: usize,
}

/// Encodes a snapshot of every non-zero page of `memory` straight from it, without
/// building [`Pages`]: for [`Full`](crate::SnapshotKind::Full) snapshots and the first
/// pre-copy round. `header.memory_bytes` must be `memory.len()`.
pub fn encode_full(
    header: &Header,
    globals: &[GlobalValue],
    host_state: &[u8],
    memory: &[u8],
) -> Result<Encoded, SnapshotError> {
    check_input(header, memory)?;
    encode_runs(header, globals, host_state, memory, &scan_full(memory))
}

/// Encodes a snapshot of pages `dirty` of `memory` (strictly increasing page indices)
/// straight from it: the zero ones as zero pages, the others as data. For
/// [`Incremental`](crate::SnapshotKind::Incremental) snapshots and later pre-copy rounds.
/// `header.memory_bytes` must be `memory.len()`.
pub fn encode_dirty(
    header: &Header,
    globals: &[GlobalValue],
    host_state: &[u8],
    memory: &[u8],
    dirty: &[u32],
) -> Result<Encoded, SnapshotError> {
    check_input(header, memory)?;
    let runs = scan_dirty(memory, dirty).map_err(SnapshotError::BadInput)?;
    encode_runs(header, globals, host_state, memory, &runs)
}

fn check_input(header: &Header, memory: &[u8]) -> Result<(), SnapshotError> {
    check_memory(memory).map_err(SnapshotError::BadInput)?;
    if memory.len() as u64 != header.memory_bytes {
        return Err(SnapshotError::BadInput("memory length differs from the header's"));
    }
    Ok(())
}

fn encode_runs(
    header: &Header,
    globals: &[GlobalValue],
    host_state: &[u8],
    memory: &[u8],
    runs: &[PageRun],
) -> Result<Encoded, SnapshotError> {
    let bytes = codec::encode_parts(header, globals, host_state, runs, PageBytes::Memory(memory))?;
    let count = |kind: Option<RunKind>| {
        runs.iter().filter(|r| kind.is_none_or(|k| r.kind == k)).map(|r| r.count as usize).sum()
    };
    Ok(Encoded { id: SnapshotId::of(&bytes), page_count: count(None), data_pages: count(Some(RunKind::Data)), bytes })
}
