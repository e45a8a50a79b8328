//! Offline checkout and checkin (docs/OFFLINE.md): what a site and a terminal exchange
//! when the phone leaves the site to run on the terminal and comes back.
//!
//! Both are plain HTTP bodies, not WebSocket messages:
//!
//! ```text
//! checkout answer (POST /v1/phones/USER/checkout):
//!   "VMIOFFL1"                     8 bytes
//!   u32 n, n bytes                 the lease, JSON (OfflineLease)
//!   u32 s, s bytes                 the checkout base: a full snapshot (docs/SNAPSHOT_FORMAT.md)
//!   u32 w, w bytes                 the phone's image (.wasm)
//!
//! checkin body (POST /v1/phones/USER/checkin):
//!   "VMICHKIN"                     8 bytes
//!   u32 n, n bytes                 JSON: {"lease_id": "...", "input_seqs": {"DEVICE": SEQ}}
//!   u32 k                          snapshots that follow (0 to MAX_CHECKIN_SNAPSHOTS)
//!   k × (u32 len, len bytes)       a chain: incremental snapshots whose first names the
//!                                  checkout base as parent, or a full snapshot first
//! ```
//!
//! Integers are little-endian. Every length is checked against the bytes left and the
//! limits here before anything is allocated; nothing may follow the last field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ProtocolError;
use crate::migration::MAX_SNAPSHOT_BYTES;

/// First bytes of a checkout answer.
pub const BUNDLE_MAGIC: &[u8; 8] = b"VMIOFFL1";
/// First bytes of a checkin body.
pub const CHECKIN_MAGIC: &[u8; 8] = b"VMICHKIN";
/// Largest JSON header of a bundle or a checkin.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Largest image carried in a bundle.
pub const MAX_IMAGE_BYTES: usize = 64 << 20;
/// Most snapshots in one checkin (the offline runs since checkout, one delta each).
pub const MAX_CHECKIN_SNAPSHOTS: usize = 64;
/// Largest checkin body a site accepts.
pub const MAX_CHECKIN_BYTES: usize = MAX_SNAPSHOT_BYTES + (1 << 20);

/// A checkout lease: the terminal holds the phone until `expires_ms`; until then the
/// site refuses to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineLease {
    /// Whose phone.
    pub user: String,
    /// The site that holds the lease.
    pub site: String,
    /// That site's base URL (checkin goes there).
    pub site_url: String,
    /// The device the phone was checked out to.
    pub device_id: u64,
    /// Random id of this lease; a checkin must name it.
    pub lease_id: String,
    /// When the lease was issued (site wall clock, ms since the Unix epoch).
    pub issued_ms: u64,
    /// When it ends unless checked in (site wall clock, ms since the Unix epoch).
    pub expires_ms: u64,
    /// Id (blake3, hex) of the checkout base snapshot; a delta's parent must be it.
    pub base_id: String,
    /// Content hash (hex) of the phone's image.
    pub image: String,
    /// Screen width.
    pub width: u32,
    /// Screen height.
    pub height: u32,
}

/// Body of `POST /v1/phones/USER/checkout` (JSON; an empty body takes the defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// How long the lease lasts, in seconds (default and cap: the site's).
    #[serde(default)]
    pub lease_secs: Option<u64>,
}

/// What a checkout answers: the lease, the base snapshot and the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutBundle {
    /// The lease.
    pub lease: OfflineLease,
    /// The checkout base, a full snapshot.
    pub snapshot: Vec<u8>,
    /// The image the snapshot runs on.
    pub image: Vec<u8>,
}

/// The JSON header of a checkin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinHeader {
    /// The lease being returned.
    pub lease_id: String,
    /// Last applied input number per device, if the terminal numbered inputs offline;
    /// the site keeps the higher of this and what it saved at checkout.
    #[serde(default)]
    pub input_seqs: BTreeMap<String, u64>,
}

/// A checkin: the lease and the offline state as a snapshot chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkin {
    /// Which lease, and input numbering.
    pub header: CheckinHeader,
    /// Incremental snapshots, the first a child of the checkout base; or a full snapshot
    /// first; empty to return the phone unchanged.
    pub chain: Vec<Vec<u8>>,
}

fn put_blob(out: &mut Vec<u8>, blob: &[u8]) {
    out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    out.extend_from_slice(blob);
}

/// Encodes a checkout answer.
pub fn encode_bundle(bundle: &CheckoutBundle) -> Vec<u8> {
    // Serializing a struct of strings and integers cannot fail.
    let lease = serde_json::to_vec(&bundle.lease).unwrap_or_default();
    let mut out = Vec::with_capacity(20 + lease.len() + bundle.snapshot.len() + bundle.image.len());
    out.extend_from_slice(BUNDLE_MAGIC);
    put_blob(&mut out, &lease);
    put_blob(&mut out, &bundle.snapshot);
    put_blob(&mut out, &bundle.image);
    out
}

/// Encodes a checkin body.
pub fn encode_checkin(checkin: &Checkin) -> Vec<u8> {
    let header = serde_json::to_vec(&checkin.header).unwrap_or_default();
    let total: usize = checkin.chain.iter().map(|s| s.len() + 4).sum();
    let mut out = Vec::with_capacity(16 + header.len() + total);
    out.extend_from_slice(CHECKIN_MAGIC);
    put_blob(&mut out, &header);
    out.extend_from_slice(&(checkin.chain.len() as u32).to_le_bytes());
    for snapshot in &checkin.chain {
        put_blob(&mut out, snapshot);
    }
    out
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(ProtocolError::Truncated { what, needed: n, available: self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<usize, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn blob(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], ProtocolError> {
        let n = self.u32(what)?;
        if n > limit {
            return Err(ProtocolError::TooLarge { what, limit, found: n });
        }
        self.take(n, what)
    }

    fn magic(&mut self, magic: &[u8; 8], what: &'static str) -> Result<(), ProtocolError> {
        let found = self.take(8, what)?;
        if found != magic {
            let mut v = [0u8; 8];
            v.copy_from_slice(found);
            return Err(ProtocolError::BadValue { what, value: u64::from_be_bytes(v) });
        }
        Ok(())
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, what: &'static str) -> Result<T, ProtocolError> {
        let bytes = self.blob(what, MAX_HEADER_BYTES)?;
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::BadJson { what, reason: e.to_string() })
    }

    fn end(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() { Ok(()) } else { Err(ProtocolError::TrailingBytes(self.buf.len())) }
    }
}

/// Decodes a checkout answer; never panics, allocates only what the input justifies.
pub fn decode_bundle(bytes: &[u8]) -> Result<CheckoutBundle, ProtocolError> {
    let mut c = Cursor { buf: bytes };
    c.magic(BUNDLE_MAGIC, "checkout bundle magic")?;
    let lease = c.json("checkout lease")?;
    let snapshot = c.blob("checkout snapshot", MAX_SNAPSHOT_BYTES)?.to_vec();
    let image = c.blob("checkout image", MAX_IMAGE_BYTES)?.to_vec();
    c.end()?;
    Ok(CheckoutBundle { lease, snapshot, image })
}

/// Decodes a checkin body; never panics, allocates only what the input justifies.
pub fn decode_checkin(bytes: &[u8]) -> Result<Checkin, ProtocolError> {
    let mut c = Cursor { buf: bytes };
    c.magic(CHECKIN_MAGIC, "checkin magic")?;
    let header = c.json("checkin header")?;
    let count = c.u32("checkin snapshot count")?;
    if count > MAX_CHECKIN_SNAPSHOTS {
        return Err(ProtocolError::TooLarge {
            what: "checkin snapshot count",
            limit: MAX_CHECKIN_SNAPSHOTS,
            found: count,
        });
    }
    let mut chain = Vec::with_capacity(count);
    for _ in 0..count {
        chain.push(c.blob("checkin snapshot", MAX_SNAPSHOT_BYTES)?.to_vec());
    }
    c.end()?;
    Ok(Checkin { header, chain })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> OfflineLease {
        OfflineLease {
            user: "alice".into(),
            site: "site-a".into(),
            site_url: "http://127.0.0.1:1".into(),
            device_id: 7,
            lease_id: "abc".into(),
            issued_ms: 1,
            expires_ms: 2,
            base_id: "00".into(),
            image: "11".into(),
            width: 720,
            height: 1280,
        }
    }

    #[test]
    fn bundles_and_checkins_round_trip() {
        let bundle = CheckoutBundle { lease: lease(), snapshot: b"snap".to_vec(), image: b"\0asm".to_vec() };
        assert_eq!(decode_bundle(&encode_bundle(&bundle)).expect("decodes"), bundle);
        let checkin = Checkin {
            header: CheckinHeader { lease_id: "abc".into(), input_seqs: BTreeMap::from([("7".into(), 3)]) },
            chain: vec![b"one".to_vec(), Vec::new()],
        };
        assert_eq!(decode_checkin(&encode_checkin(&checkin)).expect("decodes"), checkin);
    }

    #[test]
    fn damaged_bodies_are_refused_with_what_was_wrong() {
        let bundle = CheckoutBundle { lease: lease(), snapshot: b"snap".to_vec(), image: b"\0asm".to_vec() };
        let bytes = encode_bundle(&bundle);
        // Every truncation is an error, never a panic.
        for n in 0..bytes.len() {
            assert!(decode_bundle(&bytes[..n]).is_err(), "truncated at {n}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_bundle(&extra), Err(ProtocolError::TrailingBytes(1)));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(decode_bundle(&magic), Err(ProtocolError::BadValue { .. })));
        assert!(matches!(decode_checkin(&bytes), Err(ProtocolError::BadValue { what: "checkin magic", .. })));

        let mut lie = CHECKIN_MAGIC.to_vec();
        lie.extend_from_slice(&2u32.to_le_bytes());
        lie.extend_from_slice(b"{}");
        lie.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_checkin(&lie), Err(ProtocolError::BadJson { .. })), "lease_id is required");
        let mut lie = CHECKIN_MAGIC.to_vec();
        let header = br#"{"lease_id":"x"}"#;
        lie.extend_from_slice(&(header.len() as u32).to_le_bytes());
        lie.extend_from_slice(header);
        lie.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_checkin(&lie), Err(ProtocolError::TooLarge { .. })));
    }
}
