//! Copying checkpoints to another store (a replica on a second site).
//!
//! The sender walks down the content tree and asks the receiver at each level what it
//! lacks, so a checkpoint that changed a few pages sends those pages only:
//!
//! ```text
//! sender                                   receiver
//!   top_keys(user, id)  ── tables + host ──▶ missing(keys)
//!                       ◀── lacking ──────
//!   chunks_of(lacking tables) ── chunks ──▶ missing(keys)
//!                       ◀── lacking ──────
//!   export(lacking + manifest) ── bundle ─▶ import(user, entry, bundle)
//! ```
//!
//! The receiver trusts nothing: every object must hash to its name (a manifest must
//! describe the user and id it is filed under), and the checkpoint enters its index only
//! when everything it needs is present. A table present in a store means its chunks are
//! (they are written first and collected after), which is what lets the walk stop there.
//!
//! Bundle layout: magic `SEEDBNDL`, object count `u32`, then per object its key length
//! `u16`, key (UTF-8), byte length `u32` and bytes; at most [`MAX_BUNDLE_BYTES`] in all.

use std::collections::{BTreeMap, HashMap, HashSet};

use vmi_snapshot::{PAGE_SIZE, SnapshotId};

use crate::checkpoint::{CHUNKS, TABLES, chunk_key, table_key};
use crate::manifest::{Hash, Manifest, from_hex};
use crate::{CheckpointError, CheckpointInfo, CheckpointStore, Result, validate_key, validate_user};

/// Largest bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 256 << 20;
const BUNDLE_MAGIC: &[u8; 8] = b"SEEDBNDL";

/// Objects (key, bytes) in one message.
pub fn encode_bundle(objects: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 12 + objects.iter().map(|(k, b)| 6 + k.len() + b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(BUNDLE_MAGIC);
    out.extend_from_slice(&(objects.len() as u32).to_le_bytes());
    for (key, bytes) in objects {
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Decodes a bundle from untrusted bytes.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |detail: &str| CheckpointError::BadBundle(detail.to_owned());
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(bad("larger than the limit"));
    }
    let rest = bytes.strip_prefix(BUNDLE_MAGIC).ok_or_else(|| bad("bad magic"))?;
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated count"))?;
    let count = u32::from_le_bytes(*count) as usize;
    // Each object takes at least 6 bytes: a count beyond that is a lie.
    if count > rest.len() / 6 {
        return Err(bad("object count does not fit"));
    }
    // The count is a claim: reserve for what is plausible, grow with what is there.
    let mut objects = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<2>().ok_or_else(|| bad("truncated key length"))?;
        let len = u16::from_le_bytes(*len) as usize;
        let (key, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated key"))?;
        let key = std::str::from_utf8(key).map_err(|_| bad("key is not UTF-8"))?.to_owned();
        validate_key(&key)?;
        let (len, tail) = tail.split_first_chunk::<4>().ok_or_else(|| bad("truncated object length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (body, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated object"))?;
        objects.push((key, body.to_vec()));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(objects)
}

impl CheckpointStore {
    /// The first level of a checkpoint's content: its page tables and host-state chunk.
    pub fn top_keys(&self, user: &str, id: SnapshotId) -> Result<Vec<String>> {
        validate_user(user)?;
        let manifest = self.load_manifest(user, id)?;
        let mut keys: Vec<String> = manifest.tables.values().map(table_key).collect();
        keys.extend(from_hex(&manifest.meta.host_state).as_ref().map(chunk_key));
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// The chunks named by these page tables (keys `tables/HASH`; others are ignored).
    pub fn chunks_of(&self, table_keys: &[String]) -> Result<Vec<String>> {
        let mut keys = HashSet::new();
        for key in table_keys {
            if let Some(hash) = key.strip_prefix(TABLES).and_then(from_hex) {
                let table = self.load_table(&hash, SnapshotId([0; 32]))?;
                keys.extend(table.pages.values().map(chunk_key));
            }
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        Ok(keys)
    }

    /// Which of `keys` this store does not hold.
    pub fn missing(&self, keys: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for key in keys {
            validate_key(key)?;
            if !self.objects.contains(key)? {
                missing.push(key.clone());
            }
        }
        Ok(missing)
    }

    /// The objects of these keys, with the manifest of `user`'s checkpoint `id` last.
    pub fn export(&self, user: &str, id: SnapshotId, keys: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        validate_user(user)?;
        let mut objects = Vec::with_capacity(keys.len() + 1);
        for key in keys {
            validate_key(key)?;
            let bytes = self.objects.get(key)?.ok_or_else(|| CheckpointError::MissingManifest { key: key.clone() })?;
            objects.push((key.clone(), bytes));
        }
        let key = crate::checkpoint::manifest_key(user, id);
        let bytes = self.objects.get(&key)?.ok_or_else(|| CheckpointError::MissingManifest { key: key.clone() })?;
        objects.push((key, bytes));
        Ok(objects)
    }

    /// Takes in a checkpoint another store exported: checks every object, writes them
    /// (chunks, tables, then the manifest) and adds the checkpoint to `user`'s index once
    /// nothing it needs is missing. Already present: nothing to do.
    ///
    /// Fails with [`CheckpointError::Incomplete`] naming what is still missing (what was
    /// received stays, as garbage until the next [`gc`](Self::gc) if never completed).
    pub fn import(&self, user: &str, info: &CheckpointInfo, objects: Vec<(String, Vec<u8>)>) -> Result<()> {
        validate_user(user)?;
        let manifest_key = crate::checkpoint::manifest_key(user, info.id);
        let bad = |detail: String| CheckpointError::BadBundle(detail);
        let mut by_key: HashMap<String, Vec<u8>> = HashMap::new();
        for (key, bytes) in objects {
            validate_key(&key)?;
            by_key.insert(key, bytes);
        }
        let manifest_bytes =
            by_key.remove(&manifest_key).ok_or_else(|| bad(format!("the bundle has no {manifest_key}")))?;
        let manifest = Manifest::decode(&manifest_bytes)
            .map_err(|detail| CheckpointError::CorruptManifest { key: manifest_key.clone(), detail })?;
        if manifest.meta.user != user || manifest.meta.id != info.id.to_hex() || manifest.meta.at_ms != info.at_ms {
            return Err(bad(format!("the manifest describes {}/{}", manifest.meta.user, manifest.meta.id)));
        }

        let _guard = self.lock();
        let index = self.load_index(user)?;
        if index.position(info.id).is_some() {
            return Ok(());
        }
        // Tables: received ones must hash to their names; their chunks must then be here.
        let mut need_chunks: BTreeMap<Hash, usize> = BTreeMap::new();
        if let Some(host) = from_hex(&manifest.meta.host_state) {
            need_chunks.insert(host, manifest.meta.host_state_bytes as usize);
        }
        let mut new_tables = Vec::new();
        let mut missing = Vec::new();
        let distinct: std::collections::BTreeSet<&Hash> = manifest.tables.values().collect();
        for hash in distinct {
            let key = table_key(hash);
            if let Some(bytes) = by_key.remove(&key) {
                if blake3::hash(&bytes).as_bytes() != hash {
                    return Err(bad(format!("{key} does not match its content")));
                }
                let table = crate::manifest::Table::decode(&bytes).map_err(|d| bad(format!("{key}: {d}")))?;
                need_chunks.extend(table.pages.values().map(|h| (*h, PAGE_SIZE)));
                new_tables.push((key, bytes));
            } else if !self.objects.contains(&key)? {
                missing.push(key);
            }
        }
        // Chunks: received ones are checked by decoding them to their hash.
        let mut new_chunks = Vec::new();
        for (hash, len) in &need_chunks {
            let key = chunk_key(hash);
            if let Some(bytes) = by_key.remove(&key) {
                crate::checkpoint::check_chunk(hash, &bytes, *len)?;
                new_chunks.push((key, bytes));
            } else if !self.objects.contains(&key)? {
                missing.push(key);
            }
        }
        if let Some(key) = by_key.keys().next() {
            return Err(bad(format!("{key} is not part of checkpoint {}", info.id)));
        }
        // Chunks first; tables only once nothing is missing, so that a table present
        // in a store always means its chunks are (the walk stops at present tables).
        for (key, bytes) in &new_chunks {
            debug_assert!(key.starts_with(CHUNKS));
            self.objects.put(key, bytes)?;
        }
        if !missing.is_empty() {
            // The tables received but not written are needed again too.
            missing.extend(new_tables.into_iter().map(|(key, _)| key));
            missing.sort();
            missing.dedup();
            return Err(CheckpointError::Incomplete { id: info.id, missing });
        }
        for (key, bytes) in &new_tables {
            self.objects.put(key, bytes)?;
        }
        self.objects.put(&manifest_key, &manifest_bytes)?;
        self.add_to_index(user, info)?;
        tracing::debug!(user, id = %info.id, chunks = new_chunks.len(), tables = new_tables.len(), "imported");
        Ok(())
    }
}
