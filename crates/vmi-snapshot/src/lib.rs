//! # vmi-snapshot: the Seed VMI snapshot format
//!
//! A virtual phone is a WebAssembly micro-VM. Between two events it is quiescent, and a
//! [`Snapshot`] captures it whole: its linear memory as 4 KiB pages, its globals, and an
//! opaque host-state blob the engine serializes (timers, clocks, RNG, mailbox, KV store).
//! This crate is the file format and nothing else: no engine, no I/O.
//!
//! ## Concepts
//!
//! - **Kinds.** A [`Full`](SnapshotKind::Full) snapshot holds every non-zero page (absent
//!   pages are zero). An [`Incremental`](SnapshotKind::Incremental) one holds the pages
//!   changed since its parent, a page that became zero recorded as a zero page.
//!   [`PreCopy`](SnapshotKind::PreCopy) rounds carry live migration: memory sent while the
//!   phone runs, then a final delta. All kinds share one page encoding.
//! - **Chains.** A restore applies a base and its deltas in order; [`check_chain`] says
//!   whether a list of headers is such a chain.
//! - **Identity.** A [`SnapshotId`] is the blake3 hash of the encoded bytes.
//!
//! ## Format
//!
//! Versioned ([`MAGIC`], [`FORMAT_VERSION`]; a newer file is refused with
//! [`SnapshotError::FutureVersion`]), size-limited ([`Limits`]), checksummed (CRC32 of the
//! header, and of the whole file in a trailer), pages as sorted runs of zero or data pages
//! with data LZ4-compressed in chunks of up to [`CHUNK_PAGES`] pages. The byte layout,
//! with diagrams, is in `docs/SNAPSHOT_FORMAT.md`.
//!
//! ## Fast paths
//!
//! [`Snapshot::encode`] and [`Snapshot::decode`] go through [`Pages`], which holds a copy
//! of the raw page bytes. The engine's hot paths skip that copy:
//!
//! - [`encode_full`] and [`encode_dirty`] compress straight from linear memory;
//! - [`SnapshotView::parse`] checks a file in place and [`PagesView::apply_to`]
//!   decompresses straight into linear memory.
//!
//! ```
//! use vmi_snapshot::*;
//!
//! let mut memory = vec![0u8; 16 * PAGE_SIZE];
//! memory[5 * PAGE_SIZE..6 * PAGE_SIZE].fill(0x42);
//! let header = Header {
//!     engine: "wasm".into(),
//!     image_hash: [0; 32],
//!     memory_bytes: memory.len() as u64,
//!     kind: SnapshotKind::Full,
//!     virtual_ns: 0,
//!     wall_ns: 0,
//! };
//! let full = encode_full(&header, &[GlobalValue::I32(7)], b"host", &memory)?;
//!
//! let view = SnapshotView::parse(&full.bytes, &Limits::default())?;
//! let mut restored = vec![0u8; view.header.memory_bytes as usize];
//! view.pages.apply_to(&mut restored)?;
//! assert_eq!(restored, memory);
//! # Ok::<(), SnapshotError>(())
//! ```

#![deny(missing_docs)]

mod chain;
mod codec;
mod error;
mod header;
mod id;
mod pages;
mod snapshot;

#[cfg(test)]
mod tests;

pub use chain::check_chain;
pub use codec::{CHUNK_PAGES, MAGIC, MAX_CHUNK_PAGES, PagesView, SnapshotView};
pub use error::SnapshotError;
pub use header::{GlobalValue, Header, Limits, MAX_ENGINE_NAME, SnapshotKind};
pub use id::SnapshotId;
pub use pages::{PageRun, Pages, RunKind, is_zero_page};
pub use snapshot::{Encoded, Snapshot, encode_dirty, encode_full};

/// Bytes in a memory page of a snapshot.
pub const PAGE_SIZE: usize = 4096;

/// Format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
