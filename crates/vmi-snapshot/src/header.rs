//! What a snapshot says about itself, and what a reader accepts.

use crate::{SnapshotError, SnapshotId, id::hex};

/// Longest engine name a header holds, in bytes.
pub const MAX_ENGINE_NAME: usize = 64;

/// What a snapshot is relative to others.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SnapshotKind {
    /// Every non-zero page; pages absent from it are zero. A chain starts here.
    Full,
    /// Only the pages changed since `parent`; a page that became zero is recorded as zero.
    Incremental {
        /// The snapshot this one is a delta against.
        parent: SnapshotId,
    },
    /// One round of a live migration, taken while the phone keeps running. Round 0 has
    /// every non-zero page (or, with a parent, the pages changed since it); round `n` the
    /// pages written during round `n - 1`. An [`Incremental`](Self::Incremental) taken
    /// with the phone paused ends the sequence and is the only consistent point.
    PreCopy {
        /// Round number, from 0.
        round: u32,
        /// The previous round, or for round 0 a snapshot the target already has.
        parent: Option<SnapshotId>,
    },
}

impl SnapshotKind {
    /// The snapshot this one is a delta against, if any.
    pub fn parent(&self) -> Option<SnapshotId> {
        match *self {
            SnapshotKind::Full => None,
            SnapshotKind::Incremental { parent } => Some(parent),
            SnapshotKind::PreCopy { parent, .. } => parent,
        }
    }

    /// Whether a chain may start with this snapshot: it needs no parent.
    pub fn is_base(&self) -> bool {
        self.parent().is_none()
    }
}

/// One WebAssembly global value; floats are kept as their bits so NaNs survive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum GlobalValue {
    /// An `i32`.
    I32(i32),
    /// An `i64`.
    I64(i64),
    /// An `f32`, as `f32::to_bits`.
    F32(u32),
    /// An `f64`, as `f64::to_bits`.
    F64(u64),
}

/// What a snapshot says about itself; [`Snapshot::peek_header`](crate::Snapshot::peek_header)
/// reads it without the body.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Header {
    /// Engine that took the snapshot (e.g. `"wasm"`), 1 to [`MAX_ENGINE_NAME`] bytes.
    pub engine: String,
    /// blake3 of the image bytes the phone runs (computed by the engine).
    pub image_hash: [u8; 32],
    /// Linear memory size when the snapshot was taken; a multiple of
    /// [`PAGE_SIZE`](crate::PAGE_SIZE).
    pub memory_bytes: u64,
    /// Full, incremental or pre-copy.
    pub kind: SnapshotKind,
    /// The phone's virtual clock at the snapshot, in nanoseconds.
    pub virtual_ns: u64,
    /// Wall time when the snapshot was taken, in nanoseconds since the Unix epoch.
    pub wall_ns: u64,
}

impl Header {
    /// Checks that the snapshot was taken by `engine` from the image with `image_hash`.
    pub fn check_compat(&self, engine: &str, image_hash: &[u8; 32]) -> Result<(), SnapshotError> {
        if self.engine != engine {
            return Err(SnapshotError::WrongEngine { expected: engine.to_owned(), found: self.engine.clone() });
        }
        if &self.image_hash != image_hash {
            return Err(SnapshotError::WrongImage { expected: hex(image_hash), found: hex(&self.image_hash) });
        }
        Ok(())
    }
}

/// How much a decoder accepts from untrusted bytes.
///
/// Every length field is checked against these limits and against the bytes actually
/// present *before* anything is allocated, so a small hostile file cannot make the
/// decoder allocate much more than its own size (page data is further bounded by the
/// best compression ratio LZ4 can reach).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Limits {
    /// Largest snapshot file.
    pub max_file_bytes: u64,
    /// Largest linear memory (bounds the page data a decoder allocates).
    pub max_memory_bytes: u64,
    /// Largest host-state blob.
    pub max_host_state_bytes: u64,
    /// Most globals.
    pub max_globals: u32,
}

impl Limits {
    /// 4 GiB of memory (all a 32-bit WebAssembly memory can hold), 64 MiB of host state,
    /// 100 000 globals, and a file big enough for an incompressible snapshot of those.
    pub const DEFAULT: Limits = Limits {
        max_file_bytes: 5 << 30,
        max_memory_bytes: 4 << 30,
        max_host_state_bytes: 64 << 20,
        max_globals: 100_000,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            engine: "wasm".into(),
            image_hash: [7; 32],
            memory_bytes: 65536,
            kind: SnapshotKind::Full,
            virtual_ns: 1,
            wall_ns: 2,
        }
    }

    #[test]
    fn compat_names_engine_then_image() {
        let h = header();
        assert_eq!(h.check_compat("wasm", &[7; 32]), Ok(()));
        assert!(matches!(h.check_compat("qemu", &[7; 32]), Err(SnapshotError::WrongEngine { .. })));
        let err = h.check_compat("wasm", &[8; 32]).unwrap_err();
        assert_eq!(err, SnapshotError::WrongImage { expected: "08".repeat(32), found: "07".repeat(32) });
    }

    #[test]
    fn kinds_know_their_parent() {
        let p = SnapshotId([1; 32]);
        assert!(SnapshotKind::Full.is_base());
        assert_eq!(SnapshotKind::Incremental { parent: p }.parent(), Some(p));
        assert!(SnapshotKind::PreCopy { round: 0, parent: None }.is_base());
        assert!(!SnapshotKind::PreCopy { round: 0, parent: Some(p) }.is_base());
    }
}
