//! Checking that snapshots form a restorable chain.

use crate::{Header, SnapshotError, SnapshotId, SnapshotKind};

/// Checks that `chain` (each snapshot's id and header, oldest first) can be applied in
/// order onto zeroed memory:
///
/// - the first is a base: [`Full`](SnapshotKind::Full), or pre-copy round 0 without parent;
/// - each next one is a delta whose parent is the id of the one before: an
///   [`Incremental`](SnapshotKind::Incremental), or a [`PreCopy`](SnapshotKind::PreCopy)
///   round numbered one more than a pre-copy before it (0 after any other kind);
/// - all come from the first one's engine and image.
///
/// A chain that ends in a pre-copy round is well formed but not a consistent state: the
/// phone was running while it was taken. Migration ends it with an `Incremental`.
pub fn check_chain(chain: &[(SnapshotId, &Header)]) -> Result<(), SnapshotError> {
    let Some(&(_, base)) = chain.first() else {
        return Err(SnapshotError::NotABase);
    };
    if !base.kind.is_base() {
        return Err(SnapshotError::NotABase);
    }
    if let SnapshotKind::PreCopy { round, .. } = base.kind
        && round != 0
    {
        return Err(SnapshotError::RoundMismatch { position: 0, expected: 0, found: round });
    }
    for (position, pair) in chain.windows(2).enumerate() {
        let position = position + 1;
        let (prev_id, prev) = pair[0];
        let (_, this) = pair[1];
        this.check_compat(&base.engine, &base.image_hash)?;
        let Some(parent) = this.kind.parent() else {
            return Err(SnapshotError::NotADelta { position });
        };
        if parent != prev_id {
            return Err(SnapshotError::ParentMismatch { position, expected: prev_id, found: parent });
        }
        if let SnapshotKind::PreCopy { round, .. } = this.kind {
            let expected = match prev.kind {
                SnapshotKind::PreCopy { round, .. } => round.wrapping_add(1),
                _ => 0,
            };
            if round != expected {
                return Err(SnapshotError::RoundMismatch { position, expected, found: round });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: SnapshotKind) -> Header {
        Header { engine: "wasm".into(), image_hash: [1; 32], memory_bytes: 65536, kind, virtual_ns: 0, wall_ns: 0 }
    }

    fn id(n: u8) -> SnapshotId {
        SnapshotId([n; 32])
    }

    fn incremental(parent: u8) -> Header {
        header(SnapshotKind::Incremental { parent: id(parent) })
    }

    fn pre_copy(round: u32, parent: Option<u8>) -> Header {
        header(SnapshotKind::PreCopy { round, parent: parent.map(id) })
    }

    #[test]
    fn full_then_incrementals_is_a_chain() {
        let (a, b, c) = (header(SnapshotKind::Full), incremental(1), incremental(2));
        assert_eq!(check_chain(&[(id(1), &a)]), Ok(()));
        assert_eq!(check_chain(&[(id(1), &a), (id(2), &b), (id(3), &c)]), Ok(()));
    }

    #[test]
    fn a_chain_needs_a_base() {
        let b = incremental(1);
        assert_eq!(check_chain(&[]), Err(SnapshotError::NotABase));
        assert_eq!(check_chain(&[(id(2), &b)]), Err(SnapshotError::NotABase));
        let p = pre_copy(0, Some(9));
        assert_eq!(check_chain(&[(id(2), &p)]), Err(SnapshotError::NotABase));
    }

    #[test]
    fn each_delta_names_the_one_before() {
        let (a, b, c) = (header(SnapshotKind::Full), incremental(1), incremental(1));
        assert_eq!(
            check_chain(&[(id(1), &a), (id(2), &b), (id(3), &c)]),
            Err(SnapshotError::ParentMismatch { position: 2, expected: id(2), found: id(1) })
        );
        let full_again = header(SnapshotKind::Full);
        assert_eq!(check_chain(&[(id(1), &a), (id(2), &full_again)]), Err(SnapshotError::NotADelta { position: 1 }));
    }

    #[test]
    fn a_chain_keeps_its_engine_and_image() {
        let a = header(SnapshotKind::Full);
        let mut b = incremental(1);
        b.engine = "qemu".into();
        assert!(matches!(check_chain(&[(id(1), &a), (id(2), &b)]), Err(SnapshotError::WrongEngine { .. })));
        let mut b = incremental(1);
        b.image_hash = [2; 32];
        assert!(matches!(check_chain(&[(id(1), &a), (id(2), &b)]), Err(SnapshotError::WrongImage { .. })));
    }

    #[test]
    fn pre_copy_rounds_count_up_and_end_in_an_incremental() {
        let r0 = pre_copy(0, None);
        let r1 = pre_copy(1, Some(1));
        let r2 = pre_copy(2, Some(2));
        let last = incremental(3);
        assert_eq!(check_chain(&[(id(1), &r0), (id(2), &r1), (id(3), &r2), (id(4), &last)]), Ok(()));

        // Pre-copy on top of a full snapshot the target already has.
        let full = header(SnapshotKind::Full);
        let r0 = pre_copy(0, Some(1));
        assert_eq!(check_chain(&[(id(1), &full), (id(2), &r0)]), Ok(()));

        let skipped = pre_copy(2, Some(1));
        assert_eq!(
            check_chain(&[(id(1), &pre_copy(0, None)), (id(2), &skipped)]),
            Err(SnapshotError::RoundMismatch { position: 1, expected: 1, found: 2 })
        );
        assert_eq!(
            check_chain(&[(id(1), &pre_copy(3, None))]),
            Err(SnapshotError::RoundMismatch { position: 0, expected: 0, found: 3 })
        );
    }
}
