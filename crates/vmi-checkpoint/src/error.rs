//! The one error type of this crate.

use vmi_snapshot::{SnapshotError, SnapshotId};

/// Why a checkpoint could not be stored, listed, restored or collected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// An object key is not of the accepted form (segments of `[A-Za-z0-9._-]`).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// A user name is not 1 to 64 bytes of `[A-Za-z0-9._-]` not starting with `.`.
    #[error("invalid user name {0:?}")]
    InvalidUser(String),
    /// The object store failed.
    #[error("object store {op} of {key:?} failed: {source}")]
    Io {
        /// What was being done (`"put"`, `"get"`, `"delete"`, `"list"`, `"open"`).
        op: &'static str,
        /// The key or path involved.
        key: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The snapshot given to [`put`](crate::CheckpointStore::put) is not a valid snapshot,
    /// or is of another engine or image than its parent.
    #[error("bad snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A pre-copy round is not a consistent state and cannot be checkpointed.
    #[error("a pre-copy snapshot cannot be checkpointed (not a consistent state)")]
    PreCopy,
    /// An incremental snapshot names a parent that is not a checkpoint of this user.
    #[error("user {user:?} has no checkpoint {parent} for the incremental snapshot's parent")]
    UnknownParent {
        /// The user.
        user: String,
        /// The parent the snapshot names.
        parent: SnapshotId,
    },
    /// This snapshot is already a checkpoint of this user.
    #[error("user {user:?} already has checkpoint {id}")]
    Duplicate {
        /// The user.
        user: String,
        /// The snapshot id.
        id: SnapshotId,
    },
    /// The user has no checkpoint at all.
    #[error("user {0:?} has no checkpoints")]
    UnknownUser(String),
    /// The user has no checkpoint with this id.
    #[error("user {user:?} has no checkpoint {id}")]
    UnknownCheckpoint {
        /// The user.
        user: String,
        /// The id asked for.
        id: SnapshotId,
    },
    /// The user has no checkpoint taken at or before this time.
    #[error("user {user:?} has no checkpoint at or before {at_ms} ms")]
    NoneBefore {
        /// The user.
        user: String,
        /// The time asked for.
        at_ms: u64,
    },
    /// A chunk a checkpoint needs is not in the object store.
    #[error("chunk {hash} needed by checkpoint {id} is missing")]
    MissingChunk {
        /// The chunk's blake3 hash, hex.
        hash: String,
        /// The checkpoint that needs it.
        id: SnapshotId,
    },
    /// A chunk's bytes do not decode to content with its hash.
    #[error("chunk {hash} is corrupt: {detail}")]
    CorruptChunk {
        /// The chunk's blake3 hash, hex.
        hash: String,
        /// What is wrong.
        detail: String,
    },
    /// The index names a checkpoint whose manifest is not in the object store.
    #[error("manifest {key:?} is missing")]
    MissingManifest {
        /// The manifest's key.
        key: String,
    },
    /// A manifest or index object does not decode.
    #[error("{key:?} is corrupt: {detail}")]
    CorruptManifest {
        /// The object's key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A replication bundle does not decode or holds something it should not.
    #[error("bad checkpoint bundle: {0}")]
    BadBundle(String),
    /// An imported checkpoint still lacks objects (send them and import again).
    #[error("checkpoint {id} lacks {} objects", missing.len())]
    Incomplete {
        /// The checkpoint.
        id: SnapshotId,
        /// Keys of the objects still missing.
        missing: Vec<String>,
    },
}

/// Result with a [`CheckpointError`].
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

impl CheckpointError {
    /// The keys (`chunks/HASH`, `tables/HASH`) of the object this error finds damaged or missing, if it is a chunk
    /// or page table: what a copy on another site can repair ([`CheckpointStore::repair`](crate::CheckpointStore::repair)).
    pub fn damaged_object(&self) -> Option<[String; 2]> {
        match self {
            CheckpointError::CorruptChunk { hash, .. } | CheckpointError::MissingChunk { hash, .. } => {
                Some([format!("chunks/{hash}"), format!("tables/{hash}")])
            }
            _ => None,
        }
    }
}
