//! Snapshot identity.

use std::fmt;

/// Identity of an encoded snapshot: the blake3 hash of its bytes.
///
/// `Display` shows the first 8 bytes in hex (16 characters, enough to tell snapshots of
/// one phone apart in logs); [`to_hex`](Self::to_hex) gives all 32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct SnapshotId(pub [u8; 32]);

impl SnapshotId {
    /// The id of these encoded snapshot bytes.
    pub fn of(bytes: &[u8]) -> SnapshotId {
        SnapshotId(*blake3::hash(bytes).as_bytes())
    }

    /// All 32 bytes as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits (either case); `None` if `s` is anything else.
    pub fn from_hex(s: &str) -> Option<SnapshotId> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(SnapshotId(out))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..8]))
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_blake3_and_displays_short_hex() {
        let id = SnapshotId::of(b"abc");
        assert_eq!(id.0, *blake3::hash(b"abc").as_bytes());
        assert_eq!(id.to_string().len(), 16);
        assert!(id.to_hex().starts_with(&id.to_string()));
    }

    #[test]
    fn hex_round_trips() {
        let id = SnapshotId::of(b"xyz");
        assert_eq!(SnapshotId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(SnapshotId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        assert_eq!(SnapshotId::from_hex("00"), None);
        assert_eq!(SnapshotId::from_hex(&"g".repeat(64)), None);
    }
}
