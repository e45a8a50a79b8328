//! The host's end of the guest agent's channel: a virtio-serial port named `org.seed.agent`, which QEMU exposes
//! as a Unix socket in the phone's directory. The guest sends one JSON object a line (`{"ready":true}`,
//! `{"notify":{"title":..,"body":..}}`, `{"file":{..}}`, `{"pong":..}`); the host sends one command a line
//! (`cat PATH`, `time EPOCH`, `ping N`). The guest side is `guest/seed-agent`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::display::{ActivityListener, lock};
use crate::error::QemuError;

/// Longest line the guest may send (a file answer: 48 KiB in base64 and its framing).
const MAX_LINE: usize = 80 << 10;
/// Longest path the host asks the agent for.
const MAX_PATH: usize = 4096;
/// Answers to `ping` kept.
const MAX_PONGS: usize = 16;
/// How long a write to the guest may block before the channel is taken for stuck.
const WRITE_WITHIN: Duration = Duration::from_secs(5);
/// Largest packed home carried across an image upgrade, in base64 characters (about 48 MiB of gzipped tar).
const MAX_HOME_BASE64: usize = 64 << 20;
/// Most notifications held for the site before the oldest are dropped.
const MAX_NOTIFICATIONS: usize = 256;

/// What the guest has said and the host has not taken yet.
#[derive(Debug, Default)]
pub struct Inbox {
    /// The session is up (the terminal emulator's shell started).
    pub ready: bool,
    /// Notifications raised in the guest: title and body.
    pub notifications: Vec<(String, String)>,
    /// Answers to `cat`: path → contents or the guest's error.
    pub files: HashMap<String, Result<Vec<u8>, String>>,
    /// Answers to `ping` (the last few).
    pub pongs: Vec<String>,
    /// Files asked for and not yet answered: only their answers are kept (a guest cannot fill the host).
    pub wanted_files: HashSet<String>,
    /// A packed home is asked for: only then are its lines kept.
    pub home_wanted: bool,
    /// A packed home (`pack-home`): its base64 lines so far, and whether it ended.
    pub home: Vec<String>,
    /// The packed home is whole.
    pub home_end: bool,
    /// How `home-done` went.
    pub home_unpacked: Option<bool>,
    /// Whether the guest last said it was idle (its CPUs quiet), if it has said.
    pub idle: Option<bool>,
    /// Why the channel ended, if it did.
    pub closed: Option<String>,
}

/// The agent channel: commands out, an inbox filled by a reading thread.
pub struct Agent {
    writer: Mutex<UnixStream>,
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
}

impl Agent {
    /// Connects to the agent socket at `path` (waiting up to `within` for QEMU to create it) and starts reading.
    pub fn start(
        path: &Path,
        within: Duration,
        listener: Arc<Mutex<Option<ActivityListener>>>,
    ) -> Result<Agent, QemuError> {
        let stream = crate::qmp::connect_within(path, within, "the agent")?;
        // A guest that stops reading its port must not hold the site: writes give up after a while.
        stream.set_write_timeout(Some(WRITE_WITHIN)).map_err(QemuError::io("agent socket"))?;
        let reader = stream.try_clone().map_err(QemuError::io("agent socket"))?;
        let inbox: Arc<(Mutex<Inbox>, Condvar)> = Arc::default();
        let shared = inbox.clone();
        std::thread::Builder::new()
            .name("qemu-agent".into())
            .spawn(move || {
                let why = read_lines(reader, &shared, &listener);
                tracing::debug!("agent channel ended: {why}");
                lock(&shared.0).closed = Some(why);
                shared.1.notify_all();
            })
            .map_err(QemuError::io("starting the agent thread"))?;
        Ok(Agent { writer: Mutex::new(stream), inbox })
    }

    /// Sends one command line.
    pub fn send(&self, command: &str) -> Result<(), QemuError> {
        let mut line = command.replace('\n', " ");
        line.push('\n');
        lock(&self.writer).write_all(line.as_bytes()).map_err(QemuError::io("writing to the agent"))
    }

    /// Runs `f` on the inbox.
    pub fn with_inbox<T>(&self, f: impl FnOnce(&mut Inbox) -> T) -> T {
        f(&mut lock(&self.inbox.0))
    }

    /// Waits up to `within` for `f` to find something in the inbox.
    pub fn wait_for<T>(&self, within: Duration, mut f: impl FnMut(&mut Inbox) -> Option<T>) -> Option<T> {
        let by = Instant::now() + within;
        let mut inbox = lock(&self.inbox.0);
        loop {
            if let Some(found) = f(&mut inbox) {
                return Some(found);
            }
            let left = by.checked_duration_since(Instant::now())?;
            if inbox.closed.is_some() {
                return None;
            }
            inbox = self.inbox.1.wait_timeout(inbox, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Packs the user's home in the guest (a gzipped tar) and returns it, waiting up to `within`.
    pub fn pack_home(&self, within: Duration) -> Result<Vec<u8>, QemuError> {
        self.with_inbox(|i| {
            i.home.clear();
            i.home_end = false;
            i.home_wanted = true;
        });
        let packed =
            self.send("pack-home").map(|()| self.wait_for(within, |i| i.home_end.then(|| std::mem::take(&mut i.home))));
        self.with_inbox(|i| {
            i.home_wanted = false;
            i.home.clear();
        });
        let lines =
            packed?.ok_or_else(|| QemuError::Qemu(format!("the guest did not pack its home within {within:?}")))?;
        if lines.first().is_some_and(|l| l.starts_with('!')) {
            return Err(QemuError::Qemu(format!("the home is over {MAX_HOME_BASE64} bytes of base64")));
        }
        let mut tar = Vec::new();
        for line in &lines {
            tar.extend(base64_decode(line).ok_or_else(|| QemuError::Qemu("the packed home is not base64".into()))?);
        }
        Ok(tar)
    }

    /// Unpacks a home packed by [`Agent::pack_home`] into the guest's /home, waiting up to `within`.
    pub fn unpack_home(&self, tar: &[u8], within: Duration) -> Result<(), QemuError> {
        self.with_inbox(|i| i.home_unpacked = None);
        self.send("home-reset")?;
        for chunk in tar.chunks(36 << 10) {
            self.send(&format!("home-chunk {}", base64_encode(chunk)))?;
        }
        self.send("home-done")?;
        match self.wait_for(within, |i| i.home_unpacked.take()) {
            Some(true) => Ok(()),
            Some(false) => Err(QemuError::Qemu("the guest could not unpack the carried home".into())),
            None => Err(QemuError::Qemu(format!("the guest did not unpack the home within {within:?}"))),
        }
    }

    /// Asks the guest for a file (at most 48 KiB) and waits up to `within` for it.
    pub fn read_file(&self, path: &str, within: Duration) -> Result<Vec<u8>, QemuError> {
        if path.len() > MAX_PATH || path.contains('\n') {
            return Err(QemuError::Qemu(format!("a path of at most {MAX_PATH} bytes on one line")));
        }
        self.with_inbox(|i| {
            i.files.remove(path);
            i.wanted_files.insert(path.to_owned());
        });
        let answer = self.send(&format!("cat {path}")).map(|()| self.wait_for(within, |i| i.files.remove(path)));
        self.with_inbox(|i| {
            i.wanted_files.remove(path);
            i.files.remove(path);
        });
        match answer? {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(why)) => Err(QemuError::Qemu(format!("the guest agent could not read {path}: {why}"))),
            None => Err(QemuError::Qemu(format!("the guest agent did not answer for {path} within {within:?}"))),
        }
    }
}

fn read_lines(
    stream: UnixStream,
    inbox: &(Mutex<Inbox>, Condvar),
    listener: &Mutex<Option<ActivityListener>>,
) -> String {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a guest cannot make the host buffer an endless line.
        match Read::take(&mut reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) => return "QEMU closed the agent channel".into(),
            Ok(_) if line.len() > MAX_LINE => {
                // Skipped to its end, not fatal: the channel goes on.
                tracing::debug!("the guest agent sent a line over {MAX_LINE} bytes: skipped");
                if let Err(e) = reader.skip_until(b'\n') {
                    return format!("reading the agent channel: {e}");
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => return format!("reading the agent channel: {e}"),
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            tracing::debug!("the guest agent sent a line that is not JSON: {:?}", String::from_utf8_lossy(&line));
            continue;
        };
        let tell = {
            let mut i = lock(&inbox.0);
            take(&mut i, &message)
        };
        inbox.1.notify_all();
        if tell && let Some(tell) = lock(listener).as_ref() {
            tell();
        }
    }
}

/// Files `message` in the inbox; whether the site should look (a notification, the session up).
fn take(inbox: &mut Inbox, message: &Value) -> bool {
    let text = |v: &Value, max: usize| v.as_str().unwrap_or("").chars().take(max).collect::<String>();
    if message["ready"] == true {
        inbox.ready = true;
        return true;
    }
    if let Some(n) = message.get("notify") {
        if inbox.notifications.len() >= MAX_NOTIFICATIONS {
            inbox.notifications.remove(0);
        }
        inbox.notifications.push((text(&n["title"], 256), text(&n["body"], 4096)));
        return true;
    }
    if let Some(idle) = message.get("idle").and_then(Value::as_bool) {
        inbox.idle = Some(idle);
        // A busy guest changes by itself: the site records it (a quiet one leaves nothing new to record).
        return !idle;
    }
    if let Some(f) = message.get("file") {
        let path = text(&f["path"], MAX_PATH);
        if !inbox.wanted_files.remove(&path) {
            return false;
        }
        let answer = match (f["data"].as_str(), f["error"].as_str()) {
            (Some(data), _) => base64_decode(data).ok_or_else(|| "the agent's answer is not base64".to_owned()),
            (None, Some(why)) => Err(why.to_owned()),
            (None, None) => Err("the agent's answer has neither data nor error".to_owned()),
        };
        inbox.files.insert(path, answer);
        return false;
    }
    if let Some(chunk) = message.get("home").and_then(Value::as_str) {
        if !inbox.home_wanted {
            return false;
        }
        if inbox.home.iter().map(String::len).sum::<usize>() + chunk.len() <= MAX_HOME_BASE64 {
            inbox.home.push(chunk.to_owned());
        } else {
            inbox.home_end = true;
            inbox.home.clear();
            inbox.home.push(String::from("!too large"));
        }
        return false;
    }
    if message["home_end"] == true && inbox.home_wanted {
        inbox.home_end = true;
        return false;
    }
    if let Some(done) = message.get("home_unpacked").and_then(Value::as_bool) {
        inbox.home_unpacked = Some(done);
        return false;
    }
    if let Some(p) = message.get("pong") {
        if inbox.pongs.len() >= MAX_PONGS {
            inbox.pongs.remove(0);
        }
        inbox.pongs.push(text(p, 64));
    }
    false
}

/// Standard base64 with padding, as coreutils' `base64 -d` reads it.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for three in bytes.chunks(3) {
        let n = (u32::from(three[0]) << 16)
            | (u32::from(*three.get(1).unwrap_or(&0)) << 8)
            | u32::from(*three.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= three.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (with padding), as `base64 -w0` writes it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end().as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks_exact(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_reads_what_coreutils_writes() {
        assert_eq!(base64_decode("aGVsbG8K").as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aA==").as_deref(), Some(&b"h"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("a*=="), None);
        assert_eq!(base64_decode("abc"), None);
        for sample in [&b""[..], b"h", b"hi", b"hello", b"\xff\x00\x10binary"] {
            assert_eq!(base64_decode(&base64_encode(sample)).as_deref(), Some(sample), "{sample:?}");
        }
        assert_eq!(base64_encode(b"hello\n"), "aGVsbG8K");
    }

    #[test]
    fn the_inbox_files_what_the_guest_says() {
        let mut inbox = Inbox::default();
        assert!(take(&mut inbox, &serde_json::json!({"ready": true})));
        assert!(take(&mut inbox, &serde_json::json!({"notify": {"title": "Mail", "body": "from Ann"}})));
        // Answers nobody asked for are not kept.
        assert!(!take(&mut inbox, &serde_json::json!({"file": {"path": "/unasked", "data": "aGk="}})));
        assert!(!take(&mut inbox, &serde_json::json!({"home": "aGk="})));
        assert!(inbox.files.is_empty() && inbox.home.is_empty());
        inbox.wanted_files.extend(["/h".to_owned(), "/x".to_owned()]);
        assert!(!take(&mut inbox, &serde_json::json!({"file": {"path": "/h", "data": "aGk="}})));
        assert!(!take(&mut inbox, &serde_json::json!({"file": {"path": "/x", "error": "no such file"}})));
        for n in 0..100 {
            take(&mut inbox, &serde_json::json!({"pong": n.to_string()}));
        }
        assert_eq!(inbox.pongs.len(), MAX_PONGS);
        assert!(inbox.ready);
        assert!(take(&mut inbox, &serde_json::json!({"idle": false})), "a busy guest is activity");
        assert!(!take(&mut inbox, &serde_json::json!({"idle": true})), "a quiet one is not");
        assert_eq!(inbox.idle, Some(true));
        assert_eq!(inbox.notifications, vec![("Mail".to_owned(), "from Ann".to_owned())]);
        assert_eq!(inbox.files["/h"], Ok(b"hi".to_vec()));
        assert_eq!(inbox.files["/x"], Err("no such file".to_owned()));
    }
}
