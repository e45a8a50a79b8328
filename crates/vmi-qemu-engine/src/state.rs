//! The host-state blob of a Linux phone's snapshot: QEMU's device state (its migration stream, guest RAM left
//! out) and the phone's virtual clock. Pre-copy rounds, taken while the guest runs, carry no device state.
//!
//! The device state is compressed (LZ4): most of it is virtio-gpu's host-side copies of the guest's display
//! buffers (three 720×1280 buffers, 11 MB), which are mostly one colour, and it goes into every record, checkpoint
//! and migration's stop.

use std::borrow::Cow;

/// The first bytes of the blob, with its version: 01 stored the device state as it is, 02 compressed.
const MAGIC_RAW: &[u8; 8] = b"QEMUHS01";
const MAGIC: &[u8; 8] = b"QEMUHS02";

/// Largest device state a blob may unpack to (a crafted length cannot make the site allocate more).
pub const MAX_DEVICE_STATE: usize = 64 << 20;

/// Writes the blob.
pub fn encode(device: &[u8], virtual_ns: u64) -> Vec<u8> {
    let packed = lz4_flex::block::compress(device);
    let mut out = Vec::with_capacity(24 + packed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&virtual_ns.to_le_bytes());
    out.extend_from_slice(&(device.len() as u64).to_le_bytes());
    out.extend_from_slice(&packed);
    out
}

/// Reads the blob: QEMU's device state (empty for a pre-copy round) and the virtual clock; `None` for a blob that
/// is not a Linux phone's or does not unpack.
pub fn decode(blob: &[u8]) -> Option<(Cow<'_, [u8]>, u64)> {
    if let Some(rest) = blob.strip_prefix(MAGIC_RAW) {
        let (ns, device) = rest.split_at_checked(8)?;
        return Some((Cow::Borrowed(device), u64::from_le_bytes(ns.try_into().ok()?)));
    }
    let rest = blob.strip_prefix(MAGIC)?;
    let (ns, rest) = rest.split_at_checked(8)?;
    let (len, packed) = rest.split_at_checked(8)?;
    let len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
    if len > MAX_DEVICE_STATE {
        return None;
    }
    let device = lz4_flex::block::decompress(packed, len).ok()?;
    let virtual_ns = u64::from_le_bytes(ns.try_into().ok()?);
    (device.len() == len).then_some((Cow::Owned(device), virtual_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blob_reads_back_and_a_foreign_one_is_refused() {
        let device = [b"QEVM".as_slice(), &[0u8; 100_000]].concat();
        let blob = encode(&device, 42);
        assert!(blob.len() < 2_000, "a mostly blank device state packs small: {}", blob.len());
        assert_eq!(decode(&blob), Some((Cow::Borrowed(&device[..]), 42)));
        assert_eq!(decode(&encode(b"", 7)), Some((Cow::Borrowed(&b""[..]), 7)));
        assert_eq!(decode(b"wasm host state"), None);
        assert_eq!(decode(b"QEMUHS02"), None);
        // Version 01 (stored as it was) still reads.
        assert_eq!(decode(b"QEMUHS01\x2a\0\0\0\0\0\0\0QEVM"), Some((Cow::Borrowed(&b"QEVM"[..]), 42)));
        // A length past the bound, or one the data does not fill, is refused.
        let mut huge = blob.clone();
        huge[16..24].copy_from_slice(&(MAX_DEVICE_STATE as u64 + 1).to_le_bytes());
        assert_eq!(decode(&huge), None);
        let mut short = blob.clone();
        short[16..24].copy_from_slice(&(device.len() as u64 + 1).to_le_bytes());
        assert_eq!(decode(&short), None);
    }
}
