//! A phone saved on this site's disk: the one module that knows the files.
//!
//! - `phones/USER/phone.state`: a full snapshot with the input numbering, written at a clean stop, before a
//!   restart, and as the base of the journal;
//! - `phones/USER/journal`: the records appended while the phone runs (docs/ARCHITECTURE.md, "A phone that
//!   outlives its site's crash"), each an incremental snapshot (the pages written since the record before) with the
//!   input numbering, checksummed and synced. A record counts only if its snapshot is the child of the one before it
//!   (the base for the first): a torn tail, or records left from an older base, are ignored.
//!
//! A standby copy on another site (`standby/USER/`) has the same two files.

use std::collections::HashMap;
use std::path::Path;

use crate::SiteError;
use crate::phone::SavedPhone;

/// The file a saved phone lives in, in its directory under `phones/`.
pub const PHONE_FILE: &str = "phone.state";
/// The journal of records after the saved state, in the same directory.
pub const JOURNAL_FILE: &str = "journal";
/// Largest journal record read back (a record is an incremental snapshot: far smaller).
const MAX_RECORD: usize = 1 << 30;
const PHONE_MAGIC: &[u8; 8] = b"VMIPHONE";
const MAX_INPUTS_JSON: usize = 1 << 20;

/// Writes a saved phone atomically, snapshot and input numbering in one file (so a crash
/// can never pair a snapshot with another moment's numbering): `VMIPHONE`, u32 length of
/// the input numbering as JSON, that JSON, then the snapshot (docs/SNAPSHOT_FORMAT.md).
/// The journal, whose records followed the old state, goes: the new state is their sum.
pub fn write_phone(dir: &Path, saved: &SavedPhone) -> Result<(), SiteError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes = encode_saved(saved);
    let tmp = dir.join(format!("{PHONE_FILE}.tmp"));
    let path = dir.join(PHONE_FILE);
    let written = std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(io(&tmp))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(io(&path)));
    if written.is_err() {
        // A half-written file is never left behind to be mistaken for state.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable only once the directory is; only then may the journal (whose records the new state
    // holds) go, and its removal is made durable too.
    let sync_dir = || std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir));
    sync_dir()?;
    let journal = dir.join(JOURNAL_FILE);
    match std::fs::remove_file(&journal) {
        Ok(()) => sync_dir(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&journal)(e)),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SiteError + use<> {
    let path = path.to_path_buf();
    move |source| SiteError::Io { path, source }
}

/// `VMIPHONE`, u32 length of the input numbering as JSON, that JSON, then the snapshot.
pub(crate) fn encode_saved(saved: &SavedPhone) -> Vec<u8> {
    let seqs = serde_json::to_vec(&saved.input_seqs).unwrap_or_default();
    let mut bytes = Vec::with_capacity(12 + seqs.len() + saved.snapshot.len());
    bytes.extend_from_slice(PHONE_MAGIC);
    bytes.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&seqs);
    bytes.extend_from_slice(&saved.snapshot);
    bytes
}

/// Appends one record (an incremental snapshot, the child of the last one, with the input numbering after it) to
/// the journal in `dir` and syncs it: u64 length, blake3 of the body, the body as [`write_phone`] lays it out. A
/// failed append is cut off again, so the next one follows the last good record.
pub fn append_journal(dir: &Path, record: &SavedPhone) -> Result<(), SiteError> {
    use std::io::Write;
    let path = dir.join(JOURNAL_FILE);
    let body = encode_saved(record);
    let mut framed = Vec::with_capacity(40 + body.len());
    framed.extend_from_slice(&(body.len() as u64).to_le_bytes());
    framed.extend_from_slice(blake3::hash(&body).as_bytes());
    framed.extend_from_slice(&body);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
    let before = file.metadata().map_err(io(&path))?.len();
    let written = file.write_all(&framed).and_then(|()| file.sync_data());
    if let Err(e) = written {
        let _ = file.set_len(before);
        return Err(io(&path)(e));
    }
    Ok(())
}

/// What a directory holds of a phone: its saved state and the journal records that follow it.
pub struct DurableState {
    /// The full snapshot, then each journal record's incremental snapshot, each the child of the one before.
    pub chain: Vec<Vec<u8>>,
    /// The input numbering of the last of them.
    pub input_seqs: HashMap<String, u64>,
    /// Bytes of the journal past its last good record (a write a crash cut short), if any.
    pub torn_bytes: usize,
}

impl DurableState {
    /// The state as one full snapshot (the chain flattened).
    pub fn flatten(&self) -> Result<Vec<u8>, String> {
        match self.chain.as_slice() {
            [] => Err("no saved state".into()),
            [full] => Ok(full.clone()),
            chain => {
                let parts: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
                vmi_checkpoint::flatten(&parts)
                    .map_err(|e| format!("the journal does not apply to the saved state: {e}"))
            }
        }
    }

    /// Time of the newest state it holds (the last snapshot's wall clock), ms since the Unix epoch.
    pub fn at_ms(&self) -> Option<u64> {
        let last = self.chain.last()?;
        vmi_snapshot::Snapshot::peek_header(last).ok().map(|h| h.wall_ns / 1_000_000)
    }
}

/// Reads `dir`'s saved state and the journal records that follow it (see the module's doc).
pub fn read_durable(dir: &Path) -> Result<DurableState, String> {
    let state_path = dir.join(PHONE_FILE);
    let base = std::fs::read(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let (snapshot, input_seqs) = read_phone(&base)?;
    let mut state = DurableState { chain: vec![snapshot], input_seqs, torn_bytes: 0 };
    let journal = match std::fs::read(dir.join(JOURNAL_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(format!("{}: {e}", dir.join(JOURNAL_FILE).display())),
    };
    let mut rest = journal.as_slice();
    while !rest.is_empty() {
        let Some(record) = next_record(rest) else { break };
        let (body, after) = record;
        let Ok((snapshot, seqs)) = read_phone(body) else { break };
        // Only the child of the last state counts: records of an older base are left over, not ours.
        let parent = vmi_snapshot::Snapshot::peek_header(&snapshot).ok().and_then(|h| h.kind.parent());
        let last = state.chain.last().map(|s| vmi_snapshot::SnapshotId::of(s));
        if parent.is_none() || parent != last {
            break;
        }
        state.chain.push(snapshot);
        state.input_seqs = seqs;
        rest = after;
    }
    state.torn_bytes = rest.len();
    Ok(state)
}

/// The next record's body and what follows it, if the record is whole and its checksum holds.
fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok().filter(|&l| l <= MAX_RECORD)?;
    let (hash, rest) = rest.split_first_chunk::<32>()?;
    if rest.len() < len {
        return None;
    }
    let (body, after) = rest.split_at(len);
    (blake3::hash(body).as_bytes() == hash).then_some((body, after))
}

/// Which phones' state this site could not write lately, and why: what its heartbeat reports as degraded, so
/// the control service moves its phones away before a crash could lose them.
#[derive(Default)]
pub struct DiskHealth {
    failing: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl DiskHealth {
    /// `user`'s state could not be written, because `why`.
    pub fn failed(&self, user: &str, why: String) {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), why);
    }

    /// `user`'s state was written, or `user`'s phone left: nothing failing for it.
    pub fn clear(&self, user: &str) {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// What is wrong, if anything: how many phones cannot be kept durable, and the first reason.
    pub fn degraded(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let (user, why) = failing.iter().next()?;
        Some(format!("cannot write the state of {} phone(s) ({user}: {why})", failing.len()))
    }
}

/// Reads what [`write_phone`] wrote: the snapshot and the input numbering.
pub fn read_phone(bytes: &[u8]) -> Result<(Vec<u8>, HashMap<String, u64>), String> {
    let rest = bytes.strip_prefix(PHONE_MAGIC).ok_or("not a saved phone (bad magic)")?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or("saved phone ends early")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_INPUTS_JSON || len > rest.len() {
        return Err(format!("input numbering of {len} bytes does not fit"));
    }
    let (json, snapshot) = rest.split_at(len);
    let seqs = serde_json::from_slice(json).map_err(|e| format!("input numbering: {e}"))?;
    Ok((snapshot.to_vec(), seqs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_saved_phone_reads_back_and_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!("vmi-site-save-{}", std::process::id()));
        let saved = SavedPhone { snapshot: b"SEEDSNAP...".to_vec(), input_seqs: HashMap::from([("7".into(), 42)]) };
        write_phone(&dir, &saved).expect("write");
        let bytes = std::fs::read(dir.join(PHONE_FILE)).expect("read");
        let (snapshot, seqs) = read_phone(&bytes).expect("parse");
        assert_eq!(snapshot, saved.snapshot);
        assert_eq!(seqs, saved.input_seqs);
        assert!(read_phone(b"garbage").is_err());
        assert!(read_phone(&bytes[..10]).is_err());
        let mut lie = bytes.clone();
        lie[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_phone(&lie).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_journal_extends_the_saved_state_and_a_torn_or_stale_tail_is_ignored() {
        use vmi_engine::{Engine, Event, SnapshotRequest, VmConfig};
        let dir = std::env::temp_dir().join(format!("vmi-site-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = vmi_wasm_engine::WasmEngine::new().expect("engine");
        let image = engine.load_image(vmi_phone_image::PHONE_WASM).expect("image").hash;
        let mut phone = engine.create(&image, &VmConfig::default()).expect("phone");
        let base = phone.snapshot(SnapshotRequest::Full).expect("full");
        write_phone(&dir, &SavedPhone { snapshot: base.bytes.clone(), input_seqs: HashMap::new() }).expect("base");
        for (i, c) in "hi".chars().enumerate() {
            phone.deliver(Event::text(c)).expect("key");
            let delta = phone.snapshot(SnapshotRequest::Incremental).expect("delta");
            let seqs = HashMap::from([("d".to_string(), i as u64 + 1)]);
            append_journal(&dir, &SavedPhone { snapshot: delta.bytes, input_seqs: seqs }).expect("append");
        }
        let read = read_durable(&dir).expect("read");
        assert_eq!((read.chain.len(), read.input_seqs.get("d"), read.torn_bytes), (3, Some(&2), 0));
        let full = read.flatten().expect("flatten");
        let mut back = engine.restore(&image, &[&full], &VmConfig::default()).expect("restore");
        let screen = |p: &mut Box<dyn vmi_engine::VirtualPhone>| p.frame().expect("frame").rgba.to_vec();
        assert!(screen(&mut back) == screen(&mut phone), "the restored phone shows what the journal's last state did");

        // A crash in the middle of an append: the half record is ignored, the ones before count.
        let journal = dir.join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&journal).expect("journal");
        let whole = bytes.len();
        bytes.extend_from_slice(&[7; 20]);
        std::fs::write(&journal, &bytes).expect("tear");
        let read = read_durable(&dir).expect("read torn");
        assert_eq!((read.chain.len(), read.torn_bytes), (3, 20));
        // A flipped byte in the last record: its checksum fails, the first record still counts.
        bytes.truncate(whole);
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        std::fs::write(&journal, &bytes).expect("flip");
        assert_eq!(read_durable(&dir).expect("read flipped").chain.len(), 2);
        // A new base: the old records do not follow it and are gone.
        std::fs::write(&journal, &bytes[..whole]).expect("restore journal");
        let fresh = phone.snapshot(SnapshotRequest::Full).expect("full again");
        write_phone(&dir, &SavedPhone { snapshot: fresh.bytes, input_seqs: HashMap::new() }).expect("new base");
        assert!(!journal.exists(), "a new base removes the journal");
        assert_eq!(read_durable(&dir).expect("read new").chain.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
