//! The one error type of this crate.

use crate::SnapshotId;

/// Why a snapshot could not be encoded, decoded, applied or chained.
///
/// Decoding errors fall in three groups: the input is not (or not yet) a whole snapshot
/// ([`BadMagic`](Self::BadMagic), [`FutureVersion`](Self::FutureVersion),
/// [`Truncated`](Self::Truncated)); it was damaged ([`ChecksumMismatch`](Self::ChecksumMismatch));
/// or its content is wrong or too big ([`Corrupt`](Self::Corrupt), [`TooLarge`](Self::TooLarge)).
/// The other variants come from checks against the caller's expectations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes do not start with the snapshot magic.
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    /// The snapshot was written by a newer format version than this build reads.
    #[error("snapshot format version {found} is newer than supported version {supported}")]
    FutureVersion {
        /// Version in the file.
        found: u16,
        /// Newest version this build reads ([`FORMAT_VERSION`](crate::FORMAT_VERSION)).
        supported: u16,
    },
    /// The input ends before the end it announces (an incomplete file or read).
    #[error("snapshot truncated in {what}: {needed} bytes needed, {available} available")]
    Truncated {
        /// The part being read.
        what: &'static str,
        /// Bytes that part needs.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },
    /// A CRC32 does not match: the bytes were damaged.
    #[error("{what} checksum mismatch: stored {expected:08x}, computed {found:08x}")]
    ChecksumMismatch {
        /// `"header"` or `"file"`.
        what: &'static str,
        /// The CRC stored in the file.
        expected: u32,
        /// The CRC of the bytes read.
        found: u32,
    },
    /// The bytes are structurally wrong (checksums pass, content does not).
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// A part is bigger than the [`Limits`](crate::Limits) allow.
    #[error("{what} too large: {found} exceeds the limit of {limit}")]
    TooLarge {
        /// The part.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// Its size in the file.
        found: u64,
    },
    /// The snapshot was taken from another image.
    #[error("snapshot is of image {found}, expected {expected}")]
    WrongImage {
        /// Image hash expected, hex.
        expected: String,
        /// Image hash in the snapshot, hex.
        found: String,
    },
    /// The snapshot was taken by another engine.
    #[error("snapshot is from engine {found:?}, expected {expected:?}")]
    WrongEngine {
        /// Engine expected.
        expected: String,
        /// Engine in the snapshot.
        found: String,
    },
    /// A delta in a chain names another parent than the snapshot before it.
    #[error("snapshot {position} of the chain has parent {found}, expected {expected}")]
    ParentMismatch {
        /// Index in the chain.
        position: usize,
        /// Id of the snapshot before it.
        expected: SnapshotId,
        /// Parent it names.
        found: SnapshotId,
    },
    /// A chain is empty or does not start with a base (a full snapshot, or the first
    /// pre-copy round without parent).
    #[error("chain does not start with a full snapshot")]
    NotABase,
    /// A snapshot after the first in a chain is not a delta against its predecessor.
    #[error("snapshot {position} of the chain is not a delta")]
    NotADelta {
        /// Index in the chain.
        position: usize,
    },
    /// A pre-copy round in a chain is out of sequence.
    #[error("snapshot {position} of the chain is pre-copy round {found}, expected round {expected}")]
    RoundMismatch {
        /// Index in the chain.
        position: usize,
        /// Round expected.
        expected: u32,
        /// Round found.
        found: u32,
    },
    /// A page lies beyond the memory it is applied to.
    #[error("page {index} is beyond memory of {memory_bytes} bytes")]
    PageOutOfBounds {
        /// Page index.
        index: u32,
        /// Size of the memory.
        memory_bytes: u64,
    },
    /// The encoder was given inconsistent parts (a caller bug, not bad bytes).
    #[error("cannot encode snapshot: {0}")]
    BadInput(&'static str),
}
