//! One hosted phone: a task that owns the VM and is the only thing that touches it.
//!
//! Everything else talks to it through a [`PhoneLink`], whose methods send one command
//! each. Commands come in three kinds, one enum each: what a terminal's session asks
//! ([`TerminalCommand`]), what the site's services and operators ask of a running phone
//! ([`ServiceCommand`]), and what moves the phone through its life: stop, checkout,
//! migration, checkpoints, restore ([`LifecycleCommand`]). The task itself
//! ([`task::PhoneTask`]) is a small state machine (running, frozen for a migration's last
//! step, crashed); the terminals attached to it and what each has been sent live in
//! [`terminals`].

mod task;
mod terminals;

pub use task::{DURABLE_EVERY, PhoneTask};

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use vmi_engine::{Mail, VirtualPhone};
use vmi_protocol::{ErrorCode, Input, Resume, ServerMessage};

/// Inputs held while a phone is stopped for a migration's final step.
pub const MAX_HELD_INPUTS: usize = 4096;
/// Terminals attached to one phone at once.
pub const MAX_SESSIONS: usize = 16;
/// Frames a terminal may have unacknowledged before further damage is coalesced.
pub const MAX_UNACKED_FRAMES: usize = 2;
/// Outgoing messages queued per terminal; a terminal that falls this far behind on
/// notifications is disconnected (frames never queue: they are credit-limited).
pub const SESSION_QUEUE: usize = 256;
/// Guest log lines a site keeps per phone for `vmi vm logs`.
pub const KEPT_LOG_LINES: usize = 256;

/// Why a phone could not do what was asked. The phone's state is as it was.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// The phone task has ended (the phone stopped, moved or was checked out meanwhile).
    #[error("the phone is no longer running here")]
    Gone,
    /// The phone is stopped for the last step of a migration.
    #[error("the phone is moving to another site; retry in a moment")]
    Moving,
    /// The phone crashed; it runs again once restarted.
    #[error("the phone crashed ({reason}); restart it with `vmi vm restart`")]
    Crashed {
        /// What stopped it.
        reason: String,
    },
    /// The VM refused or failed.
    #[error("the virtual machine failed")]
    Vm(#[from] vmi_engine::VmError),
    /// A crashed phone's last good snapshots could not be merged into one.
    #[error("the crashed phone's last good snapshots do not resolve into one")]
    Chain(#[source] vmi_checkpoint::CheckpointError),
    /// The phone has no screen yet (its guest attached no framebuffer).
    #[error("the phone has no screen yet")]
    NoScreen,
    /// A crashed phone with no snapshot at all of its current image.
    #[error("the phone crashed ({reason}) before any snapshot of it was taken")]
    NoGoodState {
        /// What stopped it.
        reason: String,
    },
}

/// A terminal attached to a phone, as the phone task sees it.
pub struct Attachment {
    /// Session id, unique in this site.
    pub id: u64,
    /// The device behind it.
    pub device_id: String,
    /// Where its messages go.
    pub tx: mpsc::Sender<ServerMessage>,
    /// What it asked for at Hello.
    pub resume: Option<Resume>,
    /// Whether it starts with its screen off.
    pub asleep: bool,
    /// Whether it is told when its inputs are durable (`InputDurable`, protocol version 2).
    pub durable_acks: bool,
    /// Whether it reads `Screen` and `Clipboard` (protocol version 3): an older terminal is closed to reconnect
    /// when the screen changes size, and gets no clipboard.
    pub screen_messages: bool,
    /// Whether it applies copy tiles, so a scroll is sent as a copy, and prepares its session at a migration's
    /// destination when told (protocol version 4).
    pub copies: bool,
    /// The display it said at Hello: the phone's screen follows it before the Welcome.
    pub display: Option<vmi_protocol::Display>,
}

/// What the Welcome message needs.
#[derive(Debug, Clone, Copy)]
pub struct Attached {
    /// Screen width.
    pub width: u16,
    /// Screen height.
    pub height: u16,
    /// Highest input sequence applied for this device.
    pub last_input_seq: u64,
    /// Whether the terminal's screen was already current.
    pub resumed: bool,
}

/// Why a terminal could not attach: the code and words of the `Error` it gets.
#[derive(Debug, Clone)]
pub struct AttachRefusal {
    /// Protocol error code.
    pub code: ErrorCode,
    /// For the person at the terminal.
    pub message: String,
}

/// What a terminal's session asks of its phone.
pub enum TerminalCommand {
    /// Attach a terminal (after its Hello was authenticated).
    Attach {
        /// The terminal.
        attachment: Attachment,
        /// Welcome's fields, or why not.
        reply: oneshot::Sender<Result<Attached, AttachRefusal>>,
    },
    /// The terminal went away.
    Detach {
        /// Its session.
        session: u64,
    },
    /// An input (docs/PROTOCOL.md, rule 7).
    Input {
        /// Its session.
        session: u64,
        /// The terminal's number for it.
        seq: u64,
        /// The input.
        input: Input,
    },
    /// The terminal applied frame updates up to `seq` (rule 4).
    FrameAck {
        /// Its session.
        session: u64,
        /// Highest update applied.
        seq: u64,
    },
    /// The terminal's session at a migration's destination is joined (it was told to prepare one).
    Prepared {
        /// Its session.
        session: u64,
    },
    /// A latency probe, answered through the phone task so a pong never overtakes a frame.
    Ping {
        /// Its session.
        session: u64,
        /// Echoed back.
        nonce: u64,
    },
    /// The session ends with this error (a protocol violation): say it and let go.
    Fail {
        /// Its session.
        session: u64,
        /// Error code.
        code: ErrorCode,
        /// For the person at the terminal.
        message: String,
    },
    /// The terminal's screen went off (rule 6).
    Sleep {
        /// Its session.
        session: u64,
    },
    /// The terminal's screen came on (rule 6).
    Wake {
        /// Its session.
        session: u64,
    },
    /// The terminal's display changed (rotation, a resized window): the phone's screen follows it.
    Display {
        /// Its session.
        session: u64,
        /// The display, already checked ([`vmi_protocol::Display::check`]).
        display: vmi_protocol::Display,
    },
}

/// What the site's services and operators ask of a running phone.
pub enum ServiceCommand {
    /// A device was revoked: close its terminals now.
    Revoked {
        /// The device's id.
        device: String,
    },
    /// A mail for the user; with `push` the phone is told at once, else it finds it on its
    /// next scheduled mailbox check.
    Mail {
        /// The mail.
        mail: Mail,
        /// Tell the phone now.
        push: bool,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), PhoneError>>,
    },
    /// The current screen.
    Screen {
        /// The screen, or why there is none (no framebuffer yet).
        reply: oneshot::Sender<Result<Screenshot, PhoneError>>,
    },
    /// A file of the guest (a Linux phone's, through its agent).
    File {
        /// Its path in the guest.
        path: String,
        /// Its bytes, or why not.
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    /// A value from the phone's key-value store.
    Kv {
        /// Key.
        key: String,
        /// Its value, if set.
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// Fire timers due by now (after a manual clock moved) and flush output.
    Tick {
        /// Done.
        reply: oneshot::Sender<()>,
    },
    /// Status for listings.
    Status {
        /// The status.
        reply: oneshot::Sender<PhoneStatus>,
    },
    /// The guest's recent log lines, oldest first.
    Logs {
        /// The lines.
        reply: oneshot::Sender<Vec<LogLine>>,
    },
}

impl ServiceCommand {
    /// Whether this comes to the phone from outside and keeps it awake for the site's idle time (a mail, an
    /// operator looking at its screen, a revoked device); a status or log query does not.
    pub fn is_activity(&self) -> bool {
        matches!(self, ServiceCommand::Revoked { .. } | ServiceCommand::Mail { .. } | ServiceCommand::Screen { .. })
    }
}

/// What moves a phone through its life.
pub enum LifecycleCommand {
    /// Take a full snapshot and end the task; the reply carries the snapshot and the
    /// per-device input numbering. If no snapshot can be taken the phone runs on.
    Stop {
        /// The saved phone, or why it keeps running.
        reply: oneshot::Sender<Result<SavedPhone, PhoneError>>,
    },
    /// The site shuts down: like `Stop`, but a phone whose state this site's disk holds already (its journal ends at
    /// its last snapshot and nothing happened since, a hibernated phone above all) ends without a snapshot
    /// (`None`): a site of many phones stops in moments, and comes back from the same journal.
    Shutdown {
        /// The saved phone, `None` if its durable state is current, or why it keeps running.
        reply: oneshot::Sender<Result<Option<SavedPhone>, PhoneError>>,
    },
    /// Offline checkout (docs/OFFLINE.md): like `Stop`, telling every terminal why.
    CheckOut {
        /// What the terminals are told.
        goodbye: ServerMessage,
        /// The saved phone, or why it keeps running.
        reply: oneshot::Sender<Result<SavedPhone, PhoneError>>,
    },
    /// Live migration, while the phone runs: a pre-copy round.
    PreCopy {
        /// Starts a new sequence (round 0).
        first: bool,
        /// The round's bytes and pages.
        reply: oneshot::Sender<Result<PreCopyRound, PhoneError>>,
    },
    /// Live migration: stop the phone (no events, no timers; inputs held) and take the
    /// dirty rest with the input numbering.
    Freeze {
        /// The rest, or why the phone runs on.
        reply: oneshot::Sender<Result<FrozenPhone, PhoneError>>,
    },
    /// The migration is off: run again, applying the inputs held while frozen.
    Thaw,
    /// A migration to `url` has begun: tell each terminal that can prepare (protocol version 4) to open its
    /// session there now with `ticket`, so the handoff needs no new connection.
    Prepare {
        /// The destination's terminal URL.
        url: String,
        /// The move's ticket (the destination holds prepared sessions for it only).
        ticket: String,
    },
    /// Answers once every terminal told to prepare has joined the destination (or gone).
    AwaitPrepared {
        /// Done.
        reply: oneshot::Sender<()>,
    },
    /// The destination says it owns the phone (a frozen one): send the terminals there now, while this site
    /// confirms it with the control service before it drops its copy (a Fence), or thaws it (the placement did
    /// not move: the terminals are redirected back).
    Redirect {
        /// The destination's terminal URL.
        url: String,
    },
    /// The destination owns the phone: redirect every terminal there and end the task
    /// (the VM is dropped: exactly one live copy).
    Fence {
        /// The destination's terminal URL.
        url: String,
        /// Done.
        reply: oneshot::Sender<()>,
    },
    /// The ownership of a provisional arrival committed: from now on it runs as any phone (its state kept
    /// durable).
    Commit,
    /// A snapshot for a checkpoint: incremental when the phone's last snapshot is
    /// `parent` (the last checkpoint stored), else full. The phone keeps running.
    Checkpoint {
        /// The last checkpoint stored.
        parent: Option<vmi_snapshot::SnapshotId>,
        /// The snapshot's bytes.
        reply: oneshot::Sender<Result<Vec<u8>, PhoneError>>,
    },
    /// What crosses to a fresh VM (its key-value store, unread mail, clock): how a phone
    /// that crashed before any snapshot of it starts again.
    Carryover {
        /// What the VM holds.
        reply: oneshot::Sender<vmi_engine::Carryover>,
    },
    /// Put this VM (a restored checkpoint, a restart) in place of the running or crashed
    /// one; attached terminals stay and get a full repaint. Refused while frozen.
    Replace {
        /// The new VM.
        phone: Box<dyn VirtualPhone>,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), PhoneError>>,
    },
}

/// Any command to a phone task.
pub enum PhoneCommand {
    /// From a terminal's session.
    Terminal(TerminalCommand),
    /// From the site's services and operators.
    Service(ServiceCommand),
    /// Through the phone's life.
    Lifecycle(LifecycleCommand),
}

/// A phone as saved: on disk, in a checkout, at a migration's end.
#[derive(Debug)]
pub struct SavedPhone {
    /// Snapshot bytes (full, or the dirty rest of a migration).
    pub snapshot: Vec<u8>,
    /// Last applied input sequence per device.
    pub input_seqs: HashMap<String, u64>,
}

/// A phone stopped for a migration's last step.
#[derive(Debug)]
pub struct FrozenPhone {
    /// The dirty rest and the input numbering.
    pub saved: SavedPhone,
    /// Per device, the frame update after which its terminal shows exactly the frozen screen.
    pub screens: Vec<(String, u64)>,
}

/// One pre-copy round of a live migration.
#[derive(Debug)]
pub struct PreCopyRound {
    /// Snapshot bytes of the pages dirtied since the last round.
    pub bytes: Vec<u8>,
    /// How many pages.
    pub pages: usize,
}

/// A phone's screen as it is now.
#[derive(Debug, Clone)]
pub struct Screenshot {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGBA pixels, rows top to bottom.
    pub rgba: Vec<u8>,
}

/// One line the guest logged, as kept for `vmi vm logs`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// When the site took it, ms since the Unix epoch (the site's clock).
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The line.
    pub text: String,
}

/// What a listing shows of a phone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhoneStatus {
    /// `running`, `moving` or `crashed: why`.
    pub status: String,
    /// Whether it crashed (and needs a restart).
    pub crashed: bool,
    /// Terminals attached.
    pub terminals: usize,
    /// Of which awake.
    pub awake: usize,
    /// Linear memory in bytes (0 while hibernated).
    pub memory_bytes: u64,
    /// Whether it holds its instance and memory now (false: hibernated; anything that needs it wakes it).
    pub resident: bool,
    /// Times it was woken from hibernation on this site.
    pub wakes: u64,
    /// Events delivered.
    pub events: u64,
    /// CPU units (the engine's: fuel, about one WebAssembly instruction each) its events used on this site.
    pub cpu_units: u64,
    /// The image it runs (content hash, hex).
    pub image: String,
    /// The engine that runs it, with its accelerator if it has one: `wasm`, `qemu/tcg`, `qemu/kvm`.
    pub engine: String,
    /// The site holding its standby copy, if one holds it now (docs/FAILOVER.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// How far behind the phone its last record reached the standby copy: from the record's snapshot to the
    /// standby's answer, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_lag_ms: Option<u64>,
}

/// Handle to a phone task: one method per command.
#[derive(Clone)]
pub struct PhoneLink {
    tx: mpsc::Sender<PhoneCommand>,
    started: std::time::Instant,
}

impl PhoneLink {
    /// Starts the task for `phone` and returns its link.
    pub fn spawn(task: PhoneTask) -> PhoneLink {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(task.run(rx));
        PhoneLink { tx, started: std::time::Instant::now() }
    }

    /// When this phone's task started here.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PhoneCommand) -> Result<T, PhoneError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| PhoneError::Gone)?;
        rx.await.map_err(|_| PhoneError::Gone)
    }

    /// Sends a command that needs no answer; false if the task is gone.
    pub async fn tell(&self, command: TerminalCommand) -> bool {
        self.tx.send(PhoneCommand::Terminal(command)).await.is_ok()
    }

    /// Attaches a terminal.
    pub async fn attach(&self, attachment: Attachment) -> Result<Result<Attached, AttachRefusal>, PhoneError> {
        self.ask(|reply| PhoneCommand::Terminal(TerminalCommand::Attach { attachment, reply })).await
    }

    /// Closes the terminals of a revoked device.
    pub async fn revoke(&self, device: String) {
        let _ = self.tx.send(PhoneCommand::Service(ServiceCommand::Revoked { device })).await;
    }

    /// Hands a mail to the phone.
    pub async fn mail(&self, mail: Mail, push: bool) -> Result<(), PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::Mail { mail, push, reply })).await?
    }

    /// The current screen.
    pub async fn screen(&self) -> Result<Screenshot, PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::Screen { reply })).await?
    }

    /// A file of the guest, or why it cannot be read.
    pub async fn file(&self, path: String) -> Result<Result<Vec<u8>, String>, PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::File { path, reply })).await
    }

    /// A value of the phone's key-value store.
    pub async fn kv(&self, key: String) -> Result<Option<Vec<u8>>, PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::Kv { key, reply })).await
    }

    /// Fires due timers and flushes output.
    pub async fn tick(&self) -> Result<(), PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::Tick { reply })).await
    }

    /// Status for listings.
    pub async fn status(&self) -> Result<PhoneStatus, PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::Status { reply })).await
    }

    /// The guest's recent log lines.
    pub async fn logs(&self) -> Result<Vec<LogLine>, PhoneError> {
        self.ask(|reply| PhoneCommand::Service(ServiceCommand::Logs { reply })).await
    }

    /// Stops the phone with a full snapshot.
    pub async fn stop(&self) -> Result<SavedPhone, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Stop { reply })).await?
    }

    /// Stops the phone as the site shuts down: its snapshot, or `None` when the disk holds its state already.
    pub async fn shut_down(&self) -> Result<Option<SavedPhone>, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Shutdown { reply })).await?
    }

    /// Stops the phone for an offline checkout.
    pub async fn check_out(&self, goodbye: ServerMessage) -> Result<SavedPhone, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::CheckOut { goodbye, reply })).await?
    }

    /// One pre-copy round.
    pub async fn pre_copy(&self, first: bool) -> Result<PreCopyRound, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::PreCopy { first, reply })).await?
    }

    /// Stops the phone for a migration's last step and takes the dirty rest.
    pub async fn freeze(&self) -> Result<FrozenPhone, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Freeze { reply })).await?
    }

    /// Runs the phone again after a migration was called off.
    pub async fn thaw(&self) {
        let _ = self.tx.send(PhoneCommand::Lifecycle(LifecycleCommand::Thaw)).await;
    }

    /// Tells the terminals to prepare a session at `url` (see [`LifecycleCommand::Prepare`]).
    pub async fn prepare(&self, url: String, ticket: String) {
        let _ = self.tx.send(PhoneCommand::Lifecycle(LifecycleCommand::Prepare { url, ticket })).await;
    }

    /// Waits until every terminal told to prepare has joined the destination (or gone): the caller bounds it.
    pub async fn prepared(&self) {
        let _ = self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::AwaitPrepared { reply })).await;
    }

    /// Sends the terminals of a frozen phone to `url` (see [`LifecycleCommand::Redirect`]).
    pub async fn redirect(&self, url: String) {
        let _ = self.tx.send(PhoneCommand::Lifecycle(LifecycleCommand::Redirect { url })).await;
    }

    /// Tells a provisional arrival its ownership committed (see [`LifecycleCommand::Commit`]).
    pub async fn commit(&self) {
        let _ = self.tx.send(PhoneCommand::Lifecycle(LifecycleCommand::Commit)).await;
    }

    /// Redirects the terminals to `url` and ends the task.
    pub async fn fence(&self, url: String) {
        let _ = self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Fence { url, reply })).await;
    }

    /// A snapshot for a checkpoint.
    pub async fn checkpoint(&self, parent: Option<vmi_snapshot::SnapshotId>) -> Result<Vec<u8>, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Checkpoint { parent, reply })).await?
    }

    /// What would cross to a fresh VM.
    pub async fn carryover(&self) -> Result<vmi_engine::Carryover, PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Carryover { reply })).await
    }

    /// Puts `phone` in place of the running VM.
    pub async fn replace(&self, phone: Box<dyn VirtualPhone>) -> Result<(), PhoneError> {
        self.ask(|reply| PhoneCommand::Lifecycle(LifecycleCommand::Replace { phone, reply })).await?
    }
}
