//! The host's end of the guest agent's channel: a virtio-serial port named `org.seed.agent`, which QEMU exposes
//! as a Unix socket in the phone's directory. The guest sends one JSON object a line (`{"ready":true}`,
//! `{"notify":{"title":..,"body":..}}`, `{"file":{..}}`, `{"pong":..}`); the host sends one command a line
//! (`cat PATH`, `time EPOCH`, `ping N`). The guest side is `guest/seed-agent`.

use std::collections::HashMap;
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
    /// Answers to `ping`.
    pub pongs: Vec<String>,
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
        let by = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < by => {
                    tracing::trace!("agent socket not there yet: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(QemuError::io(format!("connecting to the agent at {}", path.display()))(e)),
            }
        };
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

    /// Asks the guest for a file (at most 48 KiB) and waits up to `within` for it.
    pub fn read_file(&self, path: &str, within: Duration) -> Result<Vec<u8>, QemuError> {
        self.with_inbox(|i| i.files.remove(path));
        self.send(&format!("cat {path}"))?;
        match self.wait_for(within, |i| i.files.remove(path)) {
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
            Ok(_) if line.len() > MAX_LINE => return format!("the guest sent a line over {MAX_LINE} bytes"),
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
    if let Some(f) = message.get("file") {
        let path = text(&f["path"], 4096);
        let answer = match (f["data"].as_str(), f["error"].as_str()) {
            (Some(data), _) => base64_decode(data).ok_or_else(|| "the agent's answer is not base64".to_owned()),
            (None, Some(why)) => Err(why.to_owned()),
            (None, None) => Err("the agent's answer has neither data nor error".to_owned()),
        };
        inbox.files.insert(path, answer);
        return false;
    }
    if let Some(p) = message.get("pong") {
        inbox.pongs.push(text(p, 64));
    }
    false
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
    }

    #[test]
    fn the_inbox_files_what_the_guest_says() {
        let mut inbox = Inbox::default();
        assert!(take(&mut inbox, &serde_json::json!({"ready": true})));
        assert!(take(&mut inbox, &serde_json::json!({"notify": {"title": "Mail", "body": "from Ann"}})));
        assert!(!take(&mut inbox, &serde_json::json!({"file": {"path": "/h", "data": "aGk="}})));
        assert!(!take(&mut inbox, &serde_json::json!({"file": {"path": "/x", "error": "no such file"}})));
        assert!(inbox.ready);
        assert_eq!(inbox.notifications, vec![("Mail".to_owned(), "from Ann".to_owned())]);
        assert_eq!(inbox.files["/h"], Ok(b"hi".to_vec()));
        assert_eq!(inbox.files["/x"], Err("no such file".to_owned()));
    }
}
