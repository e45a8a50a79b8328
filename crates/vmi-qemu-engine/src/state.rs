//! The host-state blob of a Linux phone's snapshot: QEMU's device state (its migration stream, guest RAM left
//! out) and the phone's virtual clock. Pre-copy rounds, taken while the guest runs, carry no device state.

/// The first bytes of the blob, with its version.
const MAGIC: &[u8; 8] = b"QEMUHS01";

/// Writes the blob.
pub fn encode(device: &[u8], virtual_ns: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + device.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&virtual_ns.to_le_bytes());
    out.extend_from_slice(device);
    out
}

/// Reads the blob: QEMU's device state (empty for a pre-copy round) and the virtual clock.
pub fn decode(blob: &[u8]) -> Option<(&[u8], u64)> {
    let rest = blob.strip_prefix(MAGIC)?;
    let (ns, device) = rest.split_at_checked(8)?;
    Some((device, u64::from_le_bytes(ns.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_blob_reads_back_and_a_foreign_one_is_refused() {
        let blob = super::encode(b"QEVM", 42);
        assert_eq!(super::decode(&blob), Some((&b"QEVM"[..], 42)));
        assert_eq!(super::decode(b"wasm host state"), None);
        assert_eq!(super::decode(b"QEMUHS01"), None);
    }
}
