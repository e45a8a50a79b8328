//! Input to the guest, paced. QEMU's virtio-input drops a whole report when the guest has no free buffer (its
//! queue holds 64 events, about 16 keys), and a guest under TCG on a busy host takes a while to free them: a burst
//! of keys (a terminal's queue delivered after a snapshot) would lose some. So keys go one at a time, a few
//! milliseconds apart, from a thread with its own QMP session; `deliver` never waits for them, and a snapshot
//! first waits until every key sent before it is in the guest's queue (guest RAM, which the snapshot captures).

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::QemuError;
use crate::qmp::Qmp;

/// Time between two keys: 125 keys a second, faster than anyone types, slow enough for the guest to keep up.
const KEY_GAP: Duration = Duration::from_millis(8);
/// Inputs waiting to be sent before `send` refuses more.
const QUEUE: usize = 4096;

enum Job {
    Events(Vec<Value>),
    /// Answered once everything before it was sent.
    Flush(SyncSender<()>),
}

/// The pacing thread's mouth.
pub struct InputPacer {
    tx: SyncSender<Job>,
}

impl InputPacer {
    /// Connects its own QMP session at `path` (waiting up to `within`) and starts the thread.
    pub fn start(path: &Path, within: Duration) -> Result<InputPacer, QemuError> {
        let qmp = Qmp::connect(path, within)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("qemu-input".into())
            .spawn(move || pace(qmp, rx))
            .map_err(QemuError::io("starting the input thread"))?;
        Ok(InputPacer { tx })
    }

    /// Queues one report's events (`true` if the queue took them; `false`: full).
    pub fn send(&self, events: Vec<Value>) -> Result<bool, QemuError> {
        match self.tx.try_send(Job::Events(events)) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Disconnected(_)) => Err(QemuError::Qemu("the input channel to QEMU is gone".into())),
        }
    }

    /// Waits until every input queued before this call was sent to QEMU.
    pub fn flush(&self) -> Result<(), QemuError> {
        let (done, wait) = sync_channel(1);
        let gone = || QemuError::Qemu("the input channel to QEMU is gone".into());
        self.tx.send(Job::Flush(done)).map_err(|_| gone())?;
        wait.recv().map_err(|_| gone())
    }
}

fn pace(mut qmp: Qmp, rx: Receiver<Job>) {
    for job in rx {
        match job {
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Events(events) => {
                let key = events.iter().any(|e| e["type"] == "key");
                match qmp.execute("input-send-event", json!({ "events": events })) {
                    Ok(_) => {}
                    Err(e @ QemuError::Qmp { .. }) => tracing::debug!("an input QEMU refused: {e}"),
                    Err(e) => {
                        tracing::debug!("the input channel ended: {e}");
                        return;
                    }
                }
                if key {
                    std::thread::sleep(KEY_GAP);
                }
            }
        }
    }
}
