//! A process's history for the fault checker (`vmi nemesis`, docs/CONTROL-PLANE.md): one JSON object per line,
//! each an operation or event with the wall-clock time it happened, appended to a file the process names at start
//! (`--history FILE`; off by default).
//!
//! Every line is written with one `write(2)` on a file opened for appending, with no buffer in this process, so a
//! process killed with SIGKILL loses nothing it recorded, and several processes may share one file. Times are
//! microseconds since the Unix epoch on this machine's clock: every process the checker reads runs on one machine
//! (the simulated cluster), so their times compare.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// An open history file of one process.
#[derive(Debug)]
pub struct History {
    process: String,
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

/// Microseconds since the Unix epoch now, as histories record times.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl History {
    /// Opens (creating it and its directory if needed) the history at `path` for `process` (its name in the
    /// records: a site's id, a control replica's name).
    pub fn open(path: &Path, process: &str) -> std::io::Result<History> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(History { process: process.to_owned(), path: path.to_owned(), file: Mutex::new(file) })
    }

    /// Where it is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `op` now with `fields` (an object; anything else is recorded as `"value"`).
    pub fn record(&self, op: &str, fields: Value) {
        self.record_at(now_us(), op, fields);
    }

    /// Records `op` at `at_us` (microseconds since the Unix epoch) with `fields`.
    pub fn record_at(&self, at_us: u64, op: &str, fields: Value) {
        let mut line = Map::new();
        line.insert("at_us".into(), at_us.into());
        line.insert("process".into(), self.process.clone().into());
        line.insert("op".into(), op.into());
        match fields {
            Value::Object(fields) => line.extend(fields),
            Value::Null => {}
            other => {
                line.insert("value".into(), other);
            }
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write: a line is never torn by a kill, nor interleaved with another writer's.
        if let Err(e) = (&*file).write_all(text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), "cannot record to the history: {e}");
        }
    }
}

/// Every record of the history files `paths`, each as its JSON object, in the order of their times. A line cut
/// short (the disk filled) is skipped and counted in the second value.
pub fn read(paths: &[PathBuf]) -> std::io::Result<(Vec<Value>, usize)> {
    let mut records = Vec::new();
    let mut unreadable = 0;
    for path in paths {
        let text = std::fs::read_to_string(path)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v.is_object() => records.push(v),
                _ => unreadable += 1,
            }
        }
    }
    records.sort_by_key(|r| r["at_us"].as_u64().unwrap_or(0));
    Ok((records, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_two_writers_read_back_in_time_order() {
        let dir = std::env::temp_dir().join(format!("vmi-history-{}", std::process::id()));
        let path = dir.join("h.jsonl");
        let a = History::open(&path, "site-a").expect("open");
        let b = History::open(&path, "site-b").expect("open again");
        b.record_at(20, "apply", serde_json::json!({"user": "u", "seq": 2}));
        a.record_at(10, "apply", serde_json::json!({"user": "u", "seq": 1}));
        a.record("note", Value::Null);
        let (records, unreadable) = read(std::slice::from_ref(&path)).expect("read");
        assert_eq!(unreadable, 0);
        let seen: Vec<(&str, u64)> =
            records.iter().map(|r| (r["process"].as_str().unwrap_or(""), r["at_us"].as_u64().unwrap_or(0))).collect();
        assert_eq!(&seen[..2], &[("site-a", 10), ("site-b", 20)]);
        assert_eq!(records[0]["seq"], 1);
        assert_eq!(records[2]["op"], "note");
        std::fs::write(&path, "{\"at_us\":1,\"op\":\"x\"}\n{\"at_us\":2,\"op").expect("write");
        let (records, unreadable) = read(&[path]).expect("read");
        assert_eq!((records.len(), unreadable), (1, 1), "a torn line is skipped and counted");
        let _ = std::fs::remove_dir_all(dir);
    }
}
