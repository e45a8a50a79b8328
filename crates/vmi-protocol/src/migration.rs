//! The site-to-site live-migration protocol (docs/MIGRATION.md): the source site streams a
//! phone's snapshot chain to the destination over one WebSocket, one message per binary
//! frame, and the destination answers.
//!
//! Layout: 1 byte tag, then fields little-endian; strings are u16 length + UTF-8, byte
//! strings u32 length + bytes, lists u32 count + items. Every length is checked against
//! the bytes left and the limits below before anything is allocated.

use crate::ProtocolError;

/// Version of the migration protocol this crate speaks.
pub const MIGRATION_VERSION: u16 = 1;
/// Largest snapshot carried in one message.
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// Most devices whose input numbering travels with a phone.
pub const MAX_DEVICES: usize = 4096;
const MAX_TEXT: usize = 4096;

/// One message of a migration, either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationMessage {
    /// Source → destination, first: who is coming.
    Begin {
        /// Protocol version of the source.
        version: u16,
        /// The phone's user.
        user: String,
        /// Content hash of the phone's image.
        image: [u8; 32],
        /// The placement epoch the source owns the phone under; the destination commits
        /// the move with it (compare-and-set at the control service).
        epoch: u64,
        /// Screen width.
        width: u16,
        /// Screen height.
        height: u16,
        /// The ticket of this move: the source tells its terminals to prepare a session at the destination with
        /// it (terminal protocol `Prepare`/`Join`), and the destination holds such a session for this move only.
        /// Empty: no prepared sessions (absent from an older source).
        ticket: String,
    },
    /// Destination → source: staged, send the rounds.
    Ready,
    /// Source → destination: a pre-copy round (the phone still runs at the source).
    Round {
        /// The snapshot (docs/SNAPSHOT_FORMAT.md, kind PreCopy).
        snapshot: Vec<u8>,
    },
    /// Destination → source: a round is applied.
    RoundAck {
        /// Rounds applied so far.
        applied: u32,
    },
    /// Source → destination: the phone is stopped; this is the dirty rest.
    Final {
        /// The last snapshot (kind Incremental, child of the last round).
        snapshot: Vec<u8>,
        /// Last applied input sequence number per device, so no input is applied twice.
        input_seqs: Vec<(String, u64)>,
        /// Per device, the frame update after which its terminal's screen is the frozen screen (all it was sent;
        /// nothing drawn since): a Hello at the destination resuming from that frame is current without hashing
        /// the screen, which keeps the handoff short. Absent from an older source: every Hello is hashed.
        screens: Vec<(String, u64)>,
    },
    /// Destination → source: the destination owns and runs the phone now.
    Committed {
        /// The placement epoch after the move.
        epoch: u64,
        /// How long the phone had run at the destination (provisionally, nothing leaving it) when the commit
        /// landed, µs: the source's downtime ends that much before this answer. 0 from a destination that does
        /// not say (an older one: the field is absent on the wire).
        ran_us: u64,
    },
    /// Either way: the migration is off; the source keeps (or resumes) the phone.
    Abort {
        /// Why.
        reason: String,
    },
}

const BEGIN: u8 = 0x41;
const READY: u8 = 0x42;
const ROUND: u8 = 0x43;
const ROUND_ACK: u8 = 0x44;
const FINAL: u8 = 0x45;
const COMMITTED: u8 = 0x46;
const ABORT: u8 = 0x47;

fn put_device_list(out: &mut Vec<u8>, list: &[(String, u64)]) {
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for (device, n) in list {
        put_str(out, device);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes a migration message.
pub fn encode_migration(m: &MigrationMessage) -> Vec<u8> {
    let mut out = Vec::new();
    match m {
        MigrationMessage::Begin { version, user, image, epoch, width, height, ticket } => {
            out.push(BEGIN);
            out.extend_from_slice(&version.to_le_bytes());
            put_str(&mut out, user);
            out.extend_from_slice(image);
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&width.to_le_bytes());
            out.extend_from_slice(&height.to_le_bytes());
            if !ticket.is_empty() {
                put_str(&mut out, ticket);
            }
        }
        MigrationMessage::Ready => out.push(READY),
        MigrationMessage::Round { snapshot } => {
            out.reserve(snapshot.len() + 5);
            out.push(ROUND);
            put_bytes(&mut out, snapshot);
        }
        MigrationMessage::RoundAck { applied } => {
            out.push(ROUND_ACK);
            out.extend_from_slice(&applied.to_le_bytes());
        }
        MigrationMessage::Final { snapshot, input_seqs, screens } => {
            out.push(FINAL);
            put_bytes(&mut out, snapshot);
            put_device_list(&mut out, input_seqs);
            // No screens, no list: an older destination reads the message as before.
            if !screens.is_empty() {
                put_device_list(&mut out, screens);
            }
        }
        MigrationMessage::Committed { epoch, ran_us } => {
            out.push(COMMITTED);
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&ran_us.to_le_bytes());
        }
        MigrationMessage::Abort { reason } => {
            out.push(ABORT);
            put_str(&mut out, reason);
        }
    }
    out
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated { what, needed: n, available: self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A list of (device id, number).
    fn device_list(&mut self, what: &'static str) -> Result<Vec<(String, u64)>, ProtocolError> {
        let n = self.u32("device count")? as usize;
        // Each entry is at least 10 bytes: a count beyond what is left is a lie.
        if n > MAX_DEVICES || n > self.buf.len() / 10 {
            return Err(ProtocolError::TooLarge { what: "device count", limit: MAX_DEVICES, found: n });
        }
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let device = self.text("device id")?;
            list.push((device, self.u64(what)?));
        }
        Ok(list)
    }

    fn text(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let n = self.u16(what)? as usize;
        if n > MAX_TEXT {
            return Err(ProtocolError::TooLarge { what, limit: MAX_TEXT, found: n });
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtocolError::BadUtf8 { what })
    }
    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, ProtocolError> {
        let n = self.u32(what)? as usize;
        if n > MAX_SNAPSHOT_BYTES {
            return Err(ProtocolError::TooLarge { what, limit: MAX_SNAPSHOT_BYTES, found: n });
        }
        Ok(self.take(n, what)?.to_vec())
    }
}

/// Decodes a migration message; never panics, allocates only what the input justifies.
pub fn decode_migration(bytes: &[u8]) -> Result<MigrationMessage, ProtocolError> {
    let (&tag, rest) = bytes.split_first().ok_or(ProtocolError::Empty)?;
    let mut c = Cursor { buf: rest };
    let m = match tag {
        BEGIN => {
            let version = c.u16("migration version")?;
            if version != MIGRATION_VERSION {
                return Err(ProtocolError::UnsupportedVersion {
                    found: version,
                    supported: MIGRATION_VERSION..=MIGRATION_VERSION,
                });
            }
            let user = c.text("user")?;
            let mut image = [0u8; 32];
            image.copy_from_slice(c.take(32, "image hash")?);
            let (epoch, width, height) = (c.u64("epoch")?, c.u16("width")?, c.u16("height")?);
            // Absent from an older source's Begin.
            let ticket = if c.buf.is_empty() { String::new() } else { c.text("ticket")? };
            MigrationMessage::Begin { version, user, image, epoch, width, height, ticket }
        }
        READY => MigrationMessage::Ready,
        ROUND => MigrationMessage::Round { snapshot: c.bytes("round snapshot")? },
        ROUND_ACK => MigrationMessage::RoundAck { applied: c.u32("rounds applied")? },
        FINAL => {
            let snapshot = c.bytes("final snapshot")?;
            let input_seqs = c.device_list("input seq")?;
            // Absent from an older source.
            let screens = if c.buf.is_empty() { Vec::new() } else { c.device_list("screen frame seq")? };
            MigrationMessage::Final { snapshot, input_seqs, screens }
        }
        COMMITTED => {
            let epoch = c.u64("epoch")?;
            // Absent from an older destination's answer.
            let ran_us = if c.buf.is_empty() { 0 } else { c.u64("ran_us")? };
            MigrationMessage::Committed { epoch, ran_us }
        }
        ABORT => MigrationMessage::Abort { reason: c.text("reason")? },
        other => return Err(ProtocolError::UnknownType(other)),
    };
    if !c.buf.is_empty() {
        return Err(ProtocolError::TrailingBytes(c.buf.len()));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<MigrationMessage> {
        vec![
            MigrationMessage::Begin {
                version: MIGRATION_VERSION,
                user: "alice".into(),
                image: [7; 32],
                epoch: 42,
                width: 720,
                height: 1280,
                ticket: "5f3a".into(),
            },
            MigrationMessage::Ready,
            MigrationMessage::Round { snapshot: vec![1, 2, 3] },
            MigrationMessage::RoundAck { applied: 2 },
            MigrationMessage::Final {
                snapshot: vec![9; 100],
                input_seqs: vec![("1".into(), 17), ("ü".into(), 0)],
                screens: vec![("1".into(), 40)],
            },
            MigrationMessage::Committed { epoch: 43, ran_us: 2_700 },
            MigrationMessage::Abort { reason: "destination full".into() },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            assert_eq!(decode_migration(&encode_migration(&m)).expect("decodes"), m);
        }
    }

    #[test]
    fn a_commit_from_an_older_destination_reads_as_no_time_run() {
        let mut old = vec![COMMITTED];
        old.extend_from_slice(&43u64.to_le_bytes());
        assert_eq!(decode_migration(&old), Ok(MigrationMessage::Committed { epoch: 43, ran_us: 0 }));
    }

    #[test]
    fn hostile_bytes_give_precise_errors() {
        assert_eq!(decode_migration(&[]), Err(ProtocolError::Empty));
        assert_eq!(decode_migration(&[0x99]), Err(ProtocolError::UnknownType(0x99)));
        let mut begin = encode_migration(&all()[0]);
        begin[1] = 9;
        assert!(matches!(decode_migration(&begin), Err(ProtocolError::UnsupportedVersion { found: 9, .. })));
        // A round claiming 4 GiB in a 9-byte message.
        let lie = [ROUND, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(decode_migration(&lie), Err(ProtocolError::TooLarge { .. })));
        let lie = [FINAL, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        assert!(matches!(decode_migration(&lie), Err(ProtocolError::TooLarge { .. })));
        let mut extra = encode_migration(&MigrationMessage::Ready);
        extra.push(0);
        assert_eq!(decode_migration(&extra), Err(ProtocolError::TrailingBytes(1)));
    }

    #[test]
    fn every_prefix_and_every_byte_flip_is_handled() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for m in all() {
            let bytes = encode_migration(&m);
            for cut in 0..bytes.len() {
                // An older destination's Committed is this one without its last field, an older source's Begin
                // this one without its ticket.
                let old_commit = matches!(m, MigrationMessage::Committed { .. }) && cut == 9;
                let old_begin = matches!(m, MigrationMessage::Begin { .. }) && cut == bytes.len() - 6;
                // An older source's Final: this one without its screens (4 + 2 + 1 + 8 bytes).
                let old_final = matches!(m, MigrationMessage::Final { .. }) && cut == bytes.len() - 15;
                let old = old_commit || old_begin || old_final;
                assert!(decode_migration(&bytes[..cut]).is_err() != old, "prefix {cut} of {m:?}");
            }
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut b = bytes.clone();
                let i = (x as usize) % b.len();
                b[i] ^= (x >> 32) as u8 | 1;
                if let Ok(d) = decode_migration(&b) {
                    assert_eq!(decode_migration(&encode_migration(&d)).expect("re-decodes"), d);
                }
            }
        }
    }
}
