//! A phone saved on this site's disk: the one module that knows the files.
//!
//! - `phones/USER/phone.state`: the phone's last full state with the input numbering, written at a clean stop,
//!   before a restart, and as the base of the journal. The state itself lives in the site's [`StateStore`]
//!   (`state/`, content-addressed: a page every phone of an image holds is on disk once); the file names it;
//! - `phones/USER/journal`: the records appended while the phone runs (docs/ARCHITECTURE.md, "A phone that
//!   outlives its site's crash"), each an incremental snapshot (the pages written since the record before) with the
//!   input numbering, checksummed and synced. A record counts only if its snapshot is the child of the one before it
//!   (the base for the first): a torn tail, or records left from an older base, are ignored.
//!
//! A standby copy on another site (`standby/USER/`) has the same two files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmi_checkpoint::{CheckpointError, CheckpointStore, FsStore, MemStore, ObjectStore, Selector};
use vmi_engine::SnapshotId;

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

/// Writes a saved phone atomically with its state inline, snapshot and input numbering in one file (so a crash
/// can never pair a snapshot with another moment's numbering): `VMIPHONE`, u32 length of the input numbering as
/// JSON, that JSON, then the snapshot (docs/SNAPSHOT_FORMAT.md). What a site without a [`StateStore`] wrote, and
/// what a checked-out phone's base is; a site reads both.
pub fn write_phone(dir: &Path, saved: &SavedPhone) -> Result<(), SiteError> {
    write_state_file(dir, &encode_saved(saved))
}

/// Puts `bytes` in `dir`'s `phone.state` atomically. The journal, whose records followed the old state, goes: the
/// new state is their sum.
fn write_state_file(dir: &Path, bytes: &[u8]) -> Result<(), SiteError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{PHONE_FILE}.tmp"));
    let path = dir.join(PHONE_FILE);
    let written = std::fs::write(&tmp, bytes)
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

/// Where the full states of this site's phones live (`DATA/state/`): the checkpoint store's layout (4 KiB pages
/// as LZ4 chunks named by their blake3, 64 KiB page tables, one manifest per state), shared by every phone here,
/// so a page every phone of an image holds (the code's data, a blank screen's rows) is on disk once and a phone
/// costs the pages it alone has. A phone's `phone.state` names its state here: a key of the directory's own
/// (random, kept across renames: a promoted standby copy, a state set aside) and the snapshot's id.
///
/// Writes are ordered so a crash leaves garbage, never a dangling name: the state, then the file naming it, then
/// the state it replaced goes. [`StateStore::sweep`] (at the site's start) removes states no file names and the
/// pages no state needs.
pub struct StateStore {
    store: CheckpointStore,
}

/// Where a site's [`StateStore`] lives, under its data directory.
pub const STATE_DIR: &str = "state";
/// Where phone directories no longer the site's wait to be removed (their states are no one's).
pub const TRASH_DIR: &str = "discarded";
const REF_MAGIC: &[u8; 8] = b"VMIPHREF";
/// The directories whose `phone.state` files name states in the store.
const STATE_AREAS: [&str; 3] = ["phones", crate::standby::STANDBY_DIR, "superseded"];

/// What a `phone.state` file holds: the state inline, or its name in the store.
enum StateFile {
    Inline(Vec<u8>, HashMap<String, u64>),
    Named { seqs: HashMap<String, u64>, key: String, id: SnapshotId },
}

impl StateStore {
    /// The store of the site whose data directory is `data_dir` (created if need be).
    pub fn open(data_dir: &Path) -> Result<StateStore, SiteError> {
        let objects = FsStore::open(data_dir.join(STATE_DIR))?;
        Ok(StateStore::on(Arc::new(objects)))
    }

    /// A store in memory (tests).
    pub fn in_memory() -> StateStore {
        StateStore::on(Arc::new(MemStore::new()))
    }

    fn on(objects: Arc<dyn ObjectStore>) -> StateStore {
        StateStore { store: CheckpointStore::new(objects) }
    }

    /// Saves `saved` as `dir`'s state: its pages in the store (only those not there yet are written), then
    /// `phone.state` naming it, atomically; the journal and the state it replaces go.
    pub fn write_phone(&self, dir: &Path, saved: &SavedPhone) -> Result<(), SiteError> {
        let before = match read_state_file(dir) {
            Ok(Some(StateFile::Named { key, id, .. })) => Some((key, id)),
            _ => None,
        };
        let key = before.as_ref().map_or_else(|| fresh_key(dir), |(key, _)| key.clone());
        let id = SnapshotId::of(&saved.snapshot);
        let at_ms = vmi_snapshot::Snapshot::peek_header(&saved.snapshot).map_err(SiteError::CorruptSnapshot)?.wall_ns
            / 1_000_000;
        match self.store.put(&key, &saved.snapshot, at_ms, None) {
            // The same state again (a write retried after its file failed): it is there.
            Ok(_) | Err(CheckpointError::Duplicate { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        write_state_file(dir, &encode_named(&saved.input_seqs, &key, id))?;
        if let Some((key, old)) = before
            && old != id
            && let Err(e) = self.store.remove(&key, old)
        {
            // Garbage only: the next sweep takes it.
            tracing::warn!(dir = %dir.display(), "cannot remove the state the new one replaced: {e}");
        }
        Ok(())
    }

    /// `dir`'s saved state: the full snapshot and the input numbering.
    pub fn read_phone(&self, dir: &Path) -> Result<(Vec<u8>, HashMap<String, u64>), String> {
        self.read_phone_checked(dir).map_err(|e| e.message)
    }

    /// [`StateStore::read_phone`], saying which stored object is damaged or missing when that is why it failed
    /// (what a copy elsewhere can repair: [`StateStore::repair`]).
    pub fn read_phone_checked(&self, dir: &Path) -> Result<(Vec<u8>, HashMap<String, u64>), Unreadable> {
        match read_state_file(dir)? {
            None => Err(format!("{}: no saved state", dir.join(PHONE_FILE).display()).into()),
            Some(StateFile::Inline(snapshot, seqs)) => Ok((snapshot, seqs)),
            Some(StateFile::Named { seqs, key, id }) => {
                let snapshot = self.store.restore(&key, Selector::Id(id)).map_err(|e| Unreadable {
                    message: format!(
                        "{}: its state {key}/{id} cannot be read: {}",
                        dir.display(),
                        vmi_engine::error_chain(&e)
                    ),
                    damaged: e.damaged_object(),
                })?;
                Ok((snapshot, seqs))
            }
        }
    }

    /// A page chunk or page table (`chunks/HASH`, `tables/HASH`) as stored here, if here: the same objects, named
    /// the same way, as a checkpoint store's, so either kind of store repairs the other.
    pub fn object(&self, key: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        self.store.object(key)
    }

    /// Puts back a damaged or missing object from `bytes` another store holds, checked against its name first.
    pub fn repair(&self, key: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.store.repair(key, bytes)
    }

    /// Removes `dir` (a phone's state that is no longer this site's to keep) and its state in the store.
    pub fn remove_dir(&self, dir: &Path) -> std::io::Result<()> {
        let named = match read_state_file(dir) {
            Ok(Some(StateFile::Named { key, id, .. })) => Some((key, id)),
            _ => None,
        };
        std::fs::remove_dir_all(dir)?;
        if let Some((key, id)) = named
            && let Err(e) = self.store.remove(&key, id)
        {
            tracing::warn!(dir = %dir.display(), "cannot remove the state of a removed phone: {e}");
        }
        Ok(())
    }

    /// At the site's start, nothing running yet: removes the states no `phone.state` under `data_dir` names (a
    /// crash between a state and its file, a directory an operator deleted), then the pages no state needs.
    pub fn sweep(&self, data_dir: &Path) -> Result<vmi_checkpoint::GcReport, SiteError> {
        let mut named: HashSet<(String, SnapshotId)> = HashSet::new();
        for area in STATE_AREAS {
            let Ok(entries) = std::fs::read_dir(data_dir.join(area)) else { continue };
            for entry in entries.flatten() {
                match read_state_file(&entry.path()) {
                    Ok(Some(StateFile::Named { key, id, .. })) => {
                        named.insert((key, id));
                    }
                    Ok(_) => {}
                    // A file that cannot be read might name anything: nothing is collected.
                    Err(e) => {
                        tracing::error!(dir = %entry.path().display(), "not sweeping the state store: {e}");
                        return Ok(vmi_checkpoint::GcReport::default());
                    }
                }
            }
        }
        let mut removed = 0;
        for key in self.store.users()? {
            for state in self.store.list(&key)? {
                if !named.contains(&(key.clone(), state.id)) && self.store.remove(&key, state.id)? {
                    removed += 1;
                }
            }
        }
        let report = self.store.gc()?;
        tracing::info!(states = named.len(), removed, pages_freed = report.chunks_deleted, "state store swept");
        Ok(vmi_checkpoint::GcReport { manifests_deleted: removed, ..report })
    }

    /// What the store holds.
    pub fn stats(&self) -> Result<vmi_checkpoint::Stats, SiteError> {
        Ok(self.store.stats()?)
    }
}

/// A key no other directory has: a state's key stays with its directory's file, so two directories never remove
/// each other's states.
fn fresh_key(dir: &Path) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{}|{nanos}|{}|{n}", dir.display(), std::process::id());
    blake3::hash(seed.as_bytes()).to_hex()[..32].to_string()
}

/// `VMIPHREF`, u32 length of the input numbering as JSON, that JSON, u8 length of the key, the key, the state's
/// 32-byte snapshot id.
fn encode_named(seqs: &HashMap<String, u64>, key: &str, id: SnapshotId) -> Vec<u8> {
    let seqs = serde_json::to_vec(seqs).unwrap_or_default();
    let mut bytes = Vec::with_capacity(45 + seqs.len() + key.len());
    bytes.extend_from_slice(REF_MAGIC);
    bytes.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&seqs);
    bytes.push(key.len() as u8);
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&id.0);
    bytes
}

/// What `dir`'s `phone.state` holds, `None` if there is none.
fn read_state_file(dir: &Path) -> Result<Option<StateFile>, String> {
    let path: PathBuf = dir.join(PHONE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = |e: String| format!("{}: {e}", path.display());
    let Some(rest) = bytes.strip_prefix(REF_MAGIC) else {
        let (snapshot, seqs) = read_phone(&bytes).map_err(bad)?;
        return Ok(Some(StateFile::Inline(snapshot, seqs)));
    };
    let (seqs, rest) = split_seqs(rest).map_err(bad)?;
    let (&len, rest) = rest.split_first().ok_or_else(|| bad("ends before its key".into()))?;
    let (key, rest) = rest.split_at_checked(usize::from(len)).ok_or_else(|| bad("ends in its key".into()))?;
    let key = std::str::from_utf8(key).map_err(|_| bad("its key is not text".into()))?.to_owned();
    vmi_checkpoint::validate_user(&key).map_err(|e| bad(e.to_string()))?;
    let id: [u8; 32] = rest.try_into().map_err(|_| bad(format!("a state id of {} bytes", rest.len())))?;
    Ok(Some(StateFile::Named { seqs, key, id: SnapshotId(id) }))
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

/// Why a phone's saved state could not be read, and which stored object is damaged or missing when that is why
/// (`chunks/HASH` or `tables/HASH`: either, as the store cannot tell a chunk's hash from a table's).
#[derive(Debug)]
pub struct Unreadable {
    /// What went wrong, for a person.
    pub message: String,
    /// The object a copy elsewhere could repair, if that is what failed.
    pub damaged: Option<[String; 2]>,
}

impl From<String> for Unreadable {
    fn from(message: String) -> Unreadable {
        Unreadable { message, damaged: None }
    }
}

/// Reads `dir`'s saved state and the journal records that follow it (see the module's doc).
pub fn read_durable(states: &StateStore, dir: &Path) -> Result<DurableState, String> {
    read_durable_checked(states, dir).map_err(|e| e.message)
}

/// [`read_durable`], saying which stored object is damaged or missing when that is why it failed.
pub fn read_durable_checked(states: &StateStore, dir: &Path) -> Result<DurableState, Unreadable> {
    let (snapshot, input_seqs) = states.read_phone_checked(dir)?;
    let mut state = DurableState { chain: vec![snapshot], input_seqs, torn_bytes: 0 };
    let journal = match std::fs::read(dir.join(JOURNAL_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(format!("{}: {e}", dir.join(JOURNAL_FILE).display()).into()),
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

/// Reads what [`write_phone`] wrote (and what a record's body is): the snapshot and the input numbering.
pub fn read_phone(bytes: &[u8]) -> Result<(Vec<u8>, HashMap<String, u64>), String> {
    let rest = bytes.strip_prefix(PHONE_MAGIC).ok_or("not a saved phone (bad magic)")?;
    let (seqs, snapshot) = split_seqs(rest)?;
    Ok((snapshot.to_vec(), seqs))
}

/// The input numbering (u32 length, JSON) at the start of `bytes`, and what follows it.
fn split_seqs(bytes: &[u8]) -> Result<(HashMap<String, u64>, &[u8]), String> {
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or("saved phone ends early")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_INPUTS_JSON || len > rest.len() {
        return Err(format!("input numbering of {len} bytes does not fit"));
    }
    let (json, rest) = rest.split_at(len);
    let seqs = serde_json::from_slice(json).map_err(|e| format!("input numbering: {e}"))?;
    Ok((seqs, rest))
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
        let states = StateStore::in_memory();
        states
            .write_phone(&dir, &SavedPhone { snapshot: base.bytes.clone(), input_seqs: HashMap::new() })
            .expect("base");
        for (i, c) in "hi".chars().enumerate() {
            phone.deliver(Event::text(c)).expect("key");
            let delta = phone.snapshot(SnapshotRequest::Incremental).expect("delta");
            let seqs = HashMap::from([("d".to_string(), i as u64 + 1)]);
            append_journal(&dir, &SavedPhone { snapshot: delta.bytes, input_seqs: seqs }).expect("append");
        }
        let read = read_durable(&states, &dir).expect("read");
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
        let read = read_durable(&states, &dir).expect("read torn");
        assert_eq!((read.chain.len(), read.torn_bytes), (3, 20));
        // A flipped byte in the last record: its checksum fails, the first record still counts.
        bytes.truncate(whole);
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        std::fs::write(&journal, &bytes).expect("flip");
        assert_eq!(read_durable(&states, &dir).expect("read flipped").chain.len(), 2);
        // A new base: the old records do not follow it and are gone.
        std::fs::write(&journal, &bytes[..whole]).expect("restore journal");
        let fresh = phone.snapshot(SnapshotRequest::Full).expect("full again");
        states.write_phone(&dir, &SavedPhone { snapshot: fresh.bytes, input_seqs: HashMap::new() }).expect("new base");
        assert!(!journal.exists(), "a new base removes the journal");
        assert_eq!(read_durable(&states, &dir).expect("read new").chain.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn saved_states_share_their_pages_and_the_store_keeps_only_what_files_name() {
        use vmi_engine::{Engine, Event, SnapshotRequest, VmConfig};
        let data = std::env::temp_dir().join(format!("vmi-site-states-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let states = StateStore::open(&data).expect("store");
        let engine = vmi_wasm_engine::WasmEngine::new().expect("engine");
        let image = engine.load_image(vmi_phone_image::PHONE_WASM).expect("image").hash;
        let stored = |states: &StateStore| {
            let s = states.stats().expect("stats");
            s.chunk_bytes + s.table_bytes + s.manifest_bytes
        };
        let mut phones = Vec::new();
        let mut sizes = Vec::new();
        for (i, user) in ["alice", "bob"].into_iter().enumerate() {
            let config = VmConfig { rng_seed: Some(i as u64 + 1), ..VmConfig::default() };
            let mut phone = engine.create(&image, &config).expect("phone");
            let snapshot = phone.snapshot(SnapshotRequest::Full).expect("full").bytes;
            let before = stored(&states);
            let seqs = HashMap::from([("t".to_string(), 7)]);
            let dir = data.join("phones").join(user);
            states
                .write_phone(&dir, &SavedPhone { snapshot: snapshot.clone(), input_seqs: seqs.clone() })
                .expect("write");
            sizes.push((snapshot.len() as u64, stored(&states) - before));
            assert_eq!(states.read_phone(&dir).expect("read"), (snapshot, seqs), "{user}'s state reads back whole");
            phones.push(phone);
        }
        // The second phone of the image costs the pages it alone has: a small share of its snapshot.
        assert!(
            sizes[1].1 * 10 < sizes[1].0,
            "the second phone stored {} bytes of a {}-byte state",
            sizes[1].1,
            sizes[1].0
        );
        assert!(
            sizes[1].1 * 4 < sizes[0].1,
            "the second phone ({}) shares the first's ({}) pages",
            sizes[1].1,
            sizes[0].1
        );

        // A new state replaces the old one in the store: one state per directory.
        let alice = data.join("phones").join("alice");
        phones[0].deliver(Event::text('x')).expect("key");
        let newer = phones[0].snapshot(SnapshotRequest::Full).expect("full").bytes;
        states.write_phone(&alice, &SavedPhone { snapshot: newer.clone(), input_seqs: HashMap::new() }).expect("again");
        assert_eq!(states.stats().expect("stats").manifests, 2, "alice's older state went");
        assert_eq!(states.read_phone(&alice).expect("read").0, newer);

        // A directory renamed (a promoted copy, a state set aside) keeps its state; a new one in its place gets its own.
        let aside = data.join("superseded").join("alice-1");
        std::fs::create_dir_all(aside.parent().expect("parent")).expect("mkdir");
        std::fs::rename(&alice, &aside).expect("rename");
        phones[0].deliver(Event::text('y')).expect("key");
        let first = phones[0].snapshot(SnapshotRequest::Full).expect("full").bytes;
        states.write_phone(&alice, &SavedPhone { snapshot: first, input_seqs: HashMap::new() }).expect("fresh");
        assert_eq!(states.read_phone(&aside).expect("aside").0, newer, "the renamed directory's state is kept");

        // The site's start sweeps what no file names (a crash between a state and its file, a removed directory).
        let bob = data.join("phones").join("bob");
        std::fs::remove_dir_all(&bob).expect("operator removes bob");
        let swept = states.sweep(&data).expect("sweep");
        assert_eq!(swept.manifests_deleted, 1, "bob's state is no one's now");
        assert!(swept.chunks_deleted > 0, "the pages only bob had went with it");
        assert_eq!(states.read_phone(&aside).expect("aside after sweep").0, newer);
        assert!(states.read_phone(&alice).is_ok());

        // A removed phone takes its state with it; a state file written inline (an older site) still reads.
        states.remove_dir(&alice).expect("remove");
        assert_eq!(states.stats().expect("stats").manifests, 1);
        let inline = SavedPhone { snapshot: newer.clone(), input_seqs: HashMap::new() };
        write_phone(&alice, &inline).expect("inline");
        assert_eq!(states.read_phone(&alice).expect("inline read").0, newer);
        let _ = std::fs::remove_dir_all(&data);
    }

    /// A damaged page of a saved state is named by the read, and a good copy of it (here: another store holding the
    /// same page) puts it back; a bad copy is refused.
    #[test]
    fn a_damaged_page_of_a_state_is_named_and_repaired_from_a_copy() {
        use vmi_engine::{Engine, SnapshotRequest, VmConfig};
        let data = std::env::temp_dir().join(format!("vmi-site-state-repair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let (states, copy) = (StateStore::open(&data).expect("store"), StateStore::in_memory());
        let engine = vmi_wasm_engine::WasmEngine::new().expect("engine");
        let image = engine.load_image(vmi_phone_image::PHONE_WASM).expect("image").hash;
        let mut phone = engine.create(&image, &VmConfig::default()).expect("phone");
        let snapshot = phone.snapshot(SnapshotRequest::Full).expect("full").bytes;
        let saved = SavedPhone { snapshot: snapshot.clone(), input_seqs: HashMap::new() };
        let dir = data.join("phones").join("alice");
        states.write_phone(&dir, &saved).expect("write");
        copy.write_phone(&data.join("elsewhere"), &saved).expect("copy");

        let mut chunks: Vec<_> = std::fs::read_dir(data.join(STATE_DIR).join("chunks"))
            .expect("chunks")
            .flatten()
            .map(|e| e.path())
            .collect();
        chunks.retain(|p| p.is_file());
        chunks.sort();
        let damaged = chunks.first().expect("a chunk").clone();
        let mut bytes = std::fs::read(&damaged).expect("read chunk");
        let end = bytes.len() - 1;
        bytes[end] ^= 0x55;
        std::fs::write(&damaged, &bytes).expect("damage");

        let failure = read_durable_checked(&states, &dir).err().expect("a damaged page is found");
        let keys = failure.damaged.expect("the damaged object is named");
        let name = damaged.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(keys[0].ends_with(name), "{keys:?} names {name}");
        assert!(states.repair(&keys[0], &bytes).is_err(), "a damaged copy is refused");
        let good = copy.object(&keys[0]).expect("copy reads").expect("the copy holds the page");
        states.repair(&keys[0], &good).expect("repair");
        assert_eq!(read_durable(&states, &dir).expect("whole again").chain, vec![snapshot]);
        let _ = std::fs::remove_dir_all(&data);
    }
}
