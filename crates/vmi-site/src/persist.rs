//! A phone saved on this site's disk (`phones/USER/phone.state`): written at a clean
//! stop and before a restart, read back at start. The one module that knows the file.

use std::collections::HashMap;
use std::path::Path;

use crate::SiteError;
use crate::phone::SavedPhone;

/// The file a saved phone lives in, in its directory under `phones/`.
pub const PHONE_FILE: &str = "phone.state";
const PHONE_MAGIC: &[u8; 8] = b"VMIPHONE";
const MAX_INPUTS_JSON: usize = 1 << 20;

/// Writes a saved phone atomically, snapshot and input numbering in one file (so a crash
/// can never pair a snapshot with another moment's numbering): `VMIPHONE`, u32 length of
/// the input numbering as JSON, that JSON, then the snapshot (docs/SNAPSHOT_FORMAT.md).
pub fn write_phone(dir: &Path, saved: &SavedPhone) -> Result<(), SiteError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SiteError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let seqs = serde_json::to_vec(&saved.input_seqs).unwrap_or_default();
    let mut bytes = Vec::with_capacity(12 + seqs.len() + saved.snapshot.len());
    bytes.extend_from_slice(PHONE_MAGIC);
    bytes.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&seqs);
    bytes.extend_from_slice(&saved.snapshot);
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
    // The rename is durable only once the directory is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
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
}
