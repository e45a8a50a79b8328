//! # vmi-checkpoint: a phone's history, incremental and content-addressed
//!
//! A phone's snapshots (vmi-snapshot files, full or incremental) become **checkpoints**
//! a user can go back to for days. A [`CheckpointStore`] splits each snapshot's memory
//! into 4 KiB pages and stores each distinct non-zero page once, as an LZ4-compressed
//! chunk keyed by the blake3 of its bytes, in an [`ObjectStore`] ([`FsStore`] or
//! [`MemStore`]). A page that did not change since the last checkpoint, or that another
//! phone of the same image also holds, costs nothing but its 32-byte reference in the
//! checkpoint's manifest. The host state is a chunk of its own.
//!
//! - [`CheckpointStore::put`] takes a full snapshot, or an incremental one whose parent
//!   is one of the user's checkpoints (its pages are resolved against the parent's).
//! - [`CheckpointStore::restore`] rebuilds a full snapshot file of any checkpoint, by id
//!   or "the latest at or before" a time; the engine restores it like any snapshot.
//! - [`CheckpointStore::retain`] applies a [`Retention`] policy, then
//!   [`CheckpointStore::gc`] deletes the chunks no remaining manifest references. Each
//!   manifest lists every page it needs, so dropping one never affects another.
//!
//! ```
//! use std::sync::Arc;
//! use vmi_checkpoint::*;
//! use vmi_snapshot::*;
//!
//! let store = CheckpointStore::new(Arc::new(MemStore::new()));
//! let mut memory = vec![0u8; 8 * PAGE_SIZE];
//! memory[PAGE_SIZE..2 * PAGE_SIZE].fill(7);
//! let header = Header {
//!     engine: "wasm".into(),
//!     image_hash: [0; 32],
//!     memory_bytes: memory.len() as u64,
//!     kind: SnapshotKind::Full,
//!     virtual_ns: 0,
//!     wall_ns: 0,
//! };
//! let snapshot = encode_full(&header, &[], b"host", &memory)?;
//! let info = store.put("alice", &snapshot.bytes, 1_000, Some("before update".into()))?;
//! assert_eq!(store.list("alice")?, vec![info]);
//! let restored = store.restore("alice", Selector::AtOrBefore(5_000))?;
//! assert_eq!(restored, snapshot.bytes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod checkpoint;
mod error;
mod manifest;
mod replica;
mod retention;
mod store;

#[cfg(test)]
mod tests;

pub use checkpoint::{CheckpointInfo, CheckpointStore, GcReport, Selector, Stats, flatten, validate_user};
pub use error::{CheckpointError, Result};
pub use replica::{MAX_BUNDLE_BYTES, decode_bundle, encode_bundle};
pub use retention::{DAY_MS, HOUR_MS, Retention};
pub use store::{FsStore, MemStore, ObjectInfo, ObjectStore, validate_key};
