//! Where checkpoint objects live: the [`ObjectStore`] trait, a directory ([`FsStore`]) and
//! memory ([`MemStore`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CheckpointError, Result};

/// A key and the size of its object, as [`ObjectStore::list`] gives them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// Bytes stored under it.
    pub bytes: u64,
}

/// A flat store of immutable-or-replaced byte objects under validated keys (see
/// [`validate_key`]). Implementations must make `put` atomic: a reader sees the old
/// object or the new one, never part of one.
pub trait ObjectStore: Send + Sync {
    /// Stores `bytes` under `key`, replacing what was there; putting the same bytes again
    /// is harmless.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// The bytes under `key`, or `None` if there are none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Removes `key`; removing an absent key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Every key starting with `prefix`, sorted, with sizes.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Whether `key` exists (the default reads it).
    fn contains(&self, key: &str) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }
}

const MAX_SEGMENT: usize = 128;
const MAX_SEGMENTS: usize = 4;

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT
        && !s.starts_with('.')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks that `key` is 1 to 4 `/`-separated segments, each 1 to 128 bytes of
/// `[A-Za-z0-9._-]` not starting with `.` (so no `..`, no absolute path, no hidden file).
pub fn validate_key(key: &str) -> Result<()> {
    let segments: Vec<&str> = key.split('/').collect();
    if segments.len() > MAX_SEGMENTS || !segments.iter().all(|s| valid_segment(s)) {
        return Err(CheckpointError::InvalidKey(key.to_owned()));
    }
    Ok(())
}

/// Checks a list prefix: empty, or a key, or a key followed by `/`.
fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

/// Objects as files under a directory: key `a/b` is file `DIR/a/b`. Each put writes a
/// temporary file under `DIR/.tmp`, syncs it, and renames it into place.
#[derive(Debug)]
pub struct FsStore {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    sync: bool,
}

impl FsStore {
    /// Opens (creating it if needed) the store in `dir`, syncing every object to disk
    /// before it becomes visible.
    pub fn open(dir: impl AsRef<Path>) -> Result<FsStore> {
        let dir = dir.as_ref().to_path_buf();
        let tmp = dir.join(".tmp");
        fs::create_dir_all(&tmp).map_err(|e| io_err("open", &tmp.display().to_string(), e))?;
        Ok(FsStore { dir, tmp, counter: AtomicU64::new(0), sync: true })
    }

    /// Whether puts sync files to disk before renaming them (default true; tests and
    /// benchmarks may turn it off).
    pub fn with_sync(mut self, sync: bool) -> FsStore {
        self.sync = sync;
        self
    }

    fn path(&self, key: &str) -> PathBuf {
        key.split('/').fold(self.dir.clone(), |p, s| p.join(s))
    }

    fn walk(&self, dir: &Path, key: &str, prefix: &str, out: &mut Vec<ObjectInfo>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
            Err(e) => return Err(io_err("list", key, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", key, e))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if !valid_segment(&name) {
                continue;
            }
            let child = if key.is_empty() { name } else { format!("{key}/{name}") };
            let as_dir = format!("{child}/");
            let may_match = child.starts_with(prefix) || prefix.starts_with(&as_dir);
            if !may_match {
                continue;
            }
            let meta = entry.metadata().map_err(|e| io_err("list", &child, e))?;
            if meta.is_dir() {
                // Only descend where keys can still match the prefix.
                if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                    self.walk(&entry.path(), &child, prefix, out)?;
                }
            } else if child.starts_with(prefix) {
                out.push(ObjectInfo { key: child, bytes: meta.len() });
            }
        }
        Ok(())
    }
}

fn io_err(op: &'static str, key: &str, source: io::Error) -> CheckpointError {
    CheckpointError::Io { op, key: key.to_owned(), source }
}

impl ObjectStore for FsStore {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        validate_key(key)?;
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err("put", key, e))?;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            if self.sync {
                file.sync_all()?;
            }
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("put", key, e)
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        match fs::read(self.path(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("get", key, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        validate_prefix(prefix)?;
        let mut out = Vec::new();
        // Start in the deepest directory the prefix names whole: a listing of one user's manifests never reads
        // the other users' directories.
        match prefix.rsplit_once('/') {
            Some((dir, _)) if !dir.is_empty() => self.walk(&self.path(dir), dir, prefix, &mut out)?,
            _ => self.walk(&self.dir, "", prefix, &mut out)?,
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn contains(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        match fs::metadata(self.path(key)) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("get", key, e)),
        }
    }
}

/// Objects in memory: for tests and for callers that persist elsewhere.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ObjectStore for MemStore {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        validate_key(key)?;
        self.objects().insert(key.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.objects().get(key).cloned())
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.objects().remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        validate_prefix(prefix)?;
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo { key: k.clone(), bytes: v.len() as u64 })
            .collect())
    }

    fn contains(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        Ok(self.objects().contains_key(key))
    }
}
