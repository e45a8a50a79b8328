//! A QMP client: QEMU's JSON control protocol over the phone's Unix socket, one command at a time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::QemuError;

/// How long a QMP command may take before QEMU is taken for hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// An open QMP session (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The id of the next command: a late reply (after a timeout) is never taken for another command's.
    next_id: u64,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path`, waiting up to `within` for QEMU to create it.
    pub fn connect(path: &Path, within: Duration) -> Result<Qmp, QemuError> {
        let stream = connect_within(path, within, "QMP")?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(QemuError::io("QMP socket"))?;
        let writer = stream.try_clone().map_err(QemuError::io("QMP socket"))?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer, next_id: 0 };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::Qemu(format!("QMP greeting expected, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` (`Null`: none) and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QemuError> {
        self.next_id += 1;
        let id = self.next_id;
        let request = if arguments.is_null() {
            json!({ "execute": command, "id": id })
        } else {
            json!({ "execute": command, "arguments": arguments, "id": id })
        };
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(QemuError::io(format!("sending QMP {command}")))?;
        loop {
            let message = self.read_message()?;
            // Events (STOP, RESUME, ...) are not needed: the engine asks for what it wants to know.
            if message.get("event").is_some() || message.get("id").is_some_and(|i| *i != id) {
                continue;
            }
            if let Some(ret) = message.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = message.get("error") {
                let message = error["desc"].as_str().unwrap_or("no description").to_owned();
                return Err(QemuError::Qmp { command: command.to_owned(), message });
            }
        }
    }

    fn read_message(&mut self) -> Result<Value, QemuError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(QemuError::io("reading QMP"))?;
        if n == 0 {
            return Err(QemuError::Qemu("QEMU closed its QMP socket (it has exited)".into()));
        }
        serde_json::from_str(&line).map_err(|e| QemuError::Qemu(format!("QMP sent something not JSON: {e}")))
    }
}

/// Connects to the Unix socket QEMU serves `what` on at `path`, waiting up to `within` for QEMU to create it (it
/// does so a few milliseconds after it starts).
pub(crate) fn connect_within(path: &Path, within: Duration, what: &str) -> Result<UnixStream, QemuError> {
    let by = Instant::now() + within;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < by => {
                tracing::trace!("{what} socket not there yet: {e}");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(QemuError::io(format!("connecting to {what} at {}", path.display()))(e)),
        }
    }
}
