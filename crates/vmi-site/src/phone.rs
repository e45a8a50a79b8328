//! One hosted phone: a task that owns the VM and is the only thing that touches it.
//!
//! Everything else talks to it through [`PhoneCommand`]s. After every command or timer
//! the task collects what the guest produced (damage, notifications) and pushes it to the
//! terminals attached to the phone: frames only to awake terminals that have credit
//! (at most [`MAX_UNACKED_FRAMES`] unacknowledged), notifications to all. Damage that
//! cannot be sent yet is remembered and sent later as one coalesced frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vmi_engine::{Clock, Event, KeyCode, Mail, SnapshotRequest, TouchPhase, VirtualPhone, VmStatus};
use vmi_protocol::display::{Encoder, Rect};
use vmi_protocol::{Input, Resume, ServerMessage, Tile};

/// Inputs held while a phone is stopped for a migration's final step.
pub const MAX_HELD_INPUTS: usize = 4096;
/// Terminals attached to one phone at once.
pub const MAX_SESSIONS: usize = 16;
/// Damage rectangles kept per terminal before they are merged into one.
const MAX_PENDING: usize = 64;

/// Frames a terminal may have unacknowledged before further damage is coalesced.
pub const MAX_UNACKED_FRAMES: usize = 2;
/// Outgoing messages queued per terminal; a terminal that falls this far behind on
/// notifications is disconnected (frames never queue: they are credit-limited).
pub const SESSION_QUEUE: usize = 256;

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

/// Requests to a phone task.
pub enum PhoneCommand {
    /// Attach a terminal.
    Attach(Attachment, oneshot::Sender<Attached>),
    /// The terminal went away.
    Detach(u64),
    /// An input from a terminal.
    Input {
        /// Session.
        session: u64,
        /// Sequence number.
        seq: u64,
        /// The input.
        input: Input,
    },
    /// A terminal decoded a frame.
    FrameAck(u64, u64),
    /// A terminal's latency probe.
    Pong(u64, u64),
    /// A message for one terminal (an error before its session closes).
    Say(u64, ServerMessage),
    /// A device was revoked: close its terminals now.
    Revoked(String),
    /// A terminal's screen went off.
    Sleep(u64),
    /// A terminal's screen came on.
    Wake(u64),
    /// A mail for the user; with `true` the phone is told at once (push), else it finds
    /// it on its next scheduled mailbox check.
    Mail(Mail, bool, oneshot::Sender<Result<(), String>>),
    /// The current screen: width, height, RGBA.
    Screen(oneshot::Sender<(u32, u32, Vec<u8>)>),
    /// A value from the phone's key-value store.
    Kv(String, oneshot::Sender<Option<Vec<u8>>>),
    /// Fire timers due by now (after a manual clock moved) and flush output.
    Tick(oneshot::Sender<()>),
    /// Status for listings.
    Status(oneshot::Sender<PhoneStatus>),
    /// Take a full snapshot and stop the task; the reply carries the snapshot and the
    /// per-device input sequence numbers. If no snapshot can be taken the task runs on.
    Stop(oneshot::Sender<Result<SavedPhone, String>>),
    /// Offline checkout (docs/OFFLINE.md): take a full snapshot and stop, telling every
    /// terminal why with the message; if no snapshot can be taken the phone keeps running
    /// and the reply says why.
    CheckOut(ServerMessage, oneshot::Sender<Result<SavedPhone, String>>),
    /// Live migration, while the phone runs: a pre-copy round (bytes, pages); `true`
    /// starts a new sequence (round 0).
    PreCopy(bool, oneshot::Sender<Result<(Vec<u8>, usize), String>>),
    /// Live migration: stop the phone (no events, no timers; inputs held) and take the
    /// dirty rest with the input numbering.
    Freeze(oneshot::Sender<Result<SavedPhone, String>>),
    /// The migration is off: run again, applying the inputs held while frozen.
    Thaw,
    /// The destination owns the phone: redirect every terminal there and end this task
    /// (the VM is dropped: exactly one live copy).
    Fence(String, oneshot::Sender<()>),
    /// A snapshot for a checkpoint: incremental when the phone's last snapshot is the
    /// given one (the last checkpoint stored), else full. The phone keeps running.
    Checkpoint(Option<vmi_snapshot::SnapshotId>, oneshot::Sender<Result<Vec<u8>, String>>),
    /// Put this VM (a restored checkpoint) in place of the running one; attached
    /// terminals stay and get a full repaint. The old VM is dropped.
    Replace(Box<dyn VirtualPhone>, oneshot::Sender<()>),
}

/// A phone as saved to disk at shutdown.
#[derive(Debug)]
pub struct SavedPhone {
    /// Full snapshot bytes.
    pub snapshot: Vec<u8>,
    /// Last applied input sequence per device.
    pub input_seqs: HashMap<String, u64>,
}

/// What a listing shows of a phone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhoneStatus {
    /// Running or crashed (with why).
    pub status: String,
    /// Terminals attached.
    pub terminals: usize,
    /// Of which awake.
    pub awake: usize,
    /// Linear memory in bytes.
    pub memory_bytes: u64,
    /// Events delivered.
    pub events: u64,
    /// The image it runs (content hash, hex).
    pub image: String,
}

struct Session {
    device_id: String,
    tx: mpsc::Sender<ServerMessage>,
    encoder: Encoder,
    asleep: bool,
    unacked: Vec<u64>,
    pending: Vec<Rect>,
    /// Send a frame at the next flush even if no tile changed (a Wake's answer).
    owe_frame: bool,
    /// Sequence number of the last frame sent in this session (docs/PROTOCOL.md, rule 3).
    seq: u64,
    /// The next frame repaints every tile (a terminal that did not resume).
    owe_full: bool,
}

/// The phone task's state.
pub struct PhoneTask {
    user: String,
    phone: Box<dyn VirtualPhone>,
    clock: Arc<dyn Clock>,
    sessions: HashMap<u64, Session>,
    input_seqs: HashMap<String, u64>,
    awake_before: bool,
    /// Stopped for the end of a live migration.
    frozen: bool,
    /// Inputs that came while frozen: applied on thaw, resent by terminals to the
    /// destination on fence (they were never acknowledged).
    held: Vec<(u64, u64, Input)>,
}

fn to_event(input: &Input) -> Event {
    match *input {
        Input::Touch { phase, x, y } => Event::Touch {
            phase: match phase {
                vmi_protocol::TouchPhase::Down => TouchPhase::Down,
                vmi_protocol::TouchPhase::Move => TouchPhase::Move,
                vmi_protocol::TouchPhase::Up => TouchPhase::Up,
            },
            x: x as i32,
            y: y as i32,
        },
        Input::Key { code, text } => Event::Key { code: KeyCode::from_code(code), text },
    }
}

impl PhoneTask {
    /// A task for `phone`, with the input sequence numbers it had when saved.
    pub fn new(
        user: String,
        phone: Box<dyn VirtualPhone>,
        clock: Arc<dyn Clock>,
        input_seqs: HashMap<String, u64>,
    ) -> PhoneTask {
        PhoneTask {
            user,
            phone,
            clock,
            sessions: HashMap::new(),
            input_seqs,
            awake_before: false,
            frozen: false,
            held: Vec::new(),
        }
    }

    /// Runs until stopped or until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<PhoneCommand>) {
        // The first flush starts from a clean damage slate: terminals get full frames.
        let _ = self.phone.frame();
        loop {
            // A frozen phone fires no timers: its state is on its way to another site.
            let wait = if self.frozen { Duration::from_secs(3600) } else { self.until_next_timer() };
            let command = tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => Some(c),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => None,
            };
            match command {
                None => self.fire_timers(),
                Some(PhoneCommand::Stop(reply)) => match self.save() {
                    Ok(saved) => {
                        let _ = reply.send(Ok(saved));
                        return;
                    }
                    // No snapshot, no stop: the phone keeps running rather than vanish.
                    Err(e) => {
                        tracing::error!(user = %self.user, "cannot stop the phone: {e}");
                        let _ = reply.send(Err(e));
                    }
                },
                Some(PhoneCommand::CheckOut(message, reply)) => match self.save() {
                    // Only once the site holds the snapshot may the VM go: one live copy,
                    // and never none.
                    Ok(saved) => match reply.send(Ok(saved)) {
                        Ok(()) => {
                            for id in self.sessions.keys().copied().collect::<Vec<_>>() {
                                self.send(id, message.clone());
                            }
                            tracing::info!(user = %self.user, "phone checked out; stopped");
                            return;
                        }
                        Err(_) => tracing::warn!(user = %self.user, "checkout gave up; the phone keeps running"),
                    },
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Some(PhoneCommand::Fence(url, reply)) => {
                    for id in self.sessions.keys().copied().collect::<Vec<_>>() {
                        self.send(id, ServerMessage::Redirect { url: url.clone() });
                    }
                    tracing::info!(user = %self.user, %url, "phone moved away; fenced");
                    let _ = reply.send(());
                    return;
                }
                Some(c) => self.handle(c),
            }
            self.flush();
        }
        tracing::debug!(user = %self.user, "phone task ends");
    }

    fn until_next_timer(&self) -> Duration {
        // Timers are in the phone's virtual time, which runs at wall speed; an idle
        // phone with no timer still wakes once a minute (cheaply) in case the clock
        // is a manual one that moved.
        match self.phone.next_timer_ns() {
            Some(t) => Duration::from_nanos(t.saturating_sub(self.phone.now_ns())).min(Duration::from_secs(60)),
            None => Duration::from_secs(60),
        }
    }

    fn fire_timers(&mut self) {
        if let Err(e) = self.phone.fire_due_timers() {
            tracing::warn!(user = %self.user, "timer event failed: {e}");
        }
    }

    fn save(&mut self) -> Result<SavedPhone, String> {
        let snapshot = match self.phone.status() {
            VmStatus::Running => {
                self.phone.snapshot(SnapshotRequest::Full).map(|s| s.bytes).map_err(|e| e.to_string())?
            }
            // A crashed phone is saved as its last good state.
            VmStatus::Crashed { reason } => {
                let chain: Vec<&[u8]> = self.phone.last_good_chain().iter().map(|s| s.bytes.as_slice()).collect();
                match chain.as_slice() {
                    [] => return Err(format!("phone crashed ({reason}) with no good snapshot to keep")),
                    [full] => full.to_vec(),
                    // Checkpoints extend the chain: resolve it into one full snapshot.
                    chain => vmi_checkpoint::flatten(chain)
                        .map_err(|e| format!("phone crashed ({reason}); its last good chain does not resolve: {e}"))?,
                }
            }
        };
        Ok(SavedPhone { snapshot, input_seqs: self.input_seqs.clone() })
    }

    fn awake(&self) -> bool {
        self.sessions.values().any(|s| !s.asleep)
    }

    fn handle(&mut self, command: PhoneCommand) {
        match command {
            PhoneCommand::Attach(_, _) if self.sessions.len() >= MAX_SESSIONS => {
                tracing::warn!(user = %self.user, "refusing a terminal: {MAX_SESSIONS} already attached");
            }
            PhoneCommand::Attach(a, reply) => {
                let (width, height) = (self.phone.info().width, self.phone.info().height);
                let mut encoder = Encoder::new(width as u16, height as u16);
                let mut resumed = false;
                let mut pending = vec![Rect { x: 0, y: 0, w: width, h: height }];
                let damage = match self.phone.frame() {
                    Ok(frame) => {
                        // A terminal whose screen already equals ours gets no full resend.
                        if let Some(resume) = a.resume
                            && !frame.rgba.is_empty()
                            && resume.screen_hash == vmi_protocol::display::screen_hash(frame.rgba)
                        {
                            encoder.assume_sent(frame.rgba);
                            resumed = true;
                            pending.clear();
                        }
                        frame.damage
                    }
                    Err(_) => Vec::new(),
                };
                self.spread_damage(damage);
                let last_input_seq = self.input_seqs.get(&a.device_id).copied().unwrap_or(0);
                self.sessions.insert(
                    a.id,
                    Session {
                        device_id: a.device_id,
                        tx: a.tx,
                        encoder,
                        asleep: a.asleep,
                        unacked: Vec::new(),
                        pending,
                        owe_frame: false,
                        seq: a.resume.map(|r| r.last_frame_seq).unwrap_or(0),
                        owe_full: !resumed,
                    },
                );
                let _ = reply.send(Attached { width: width as u16, height: height as u16, last_input_seq, resumed });
            }
            PhoneCommand::Detach(id) => {
                self.sessions.remove(&id);
            }
            // Held inputs are unacknowledged: beyond the cap they are dropped and the
            // terminal resends them.
            PhoneCommand::Input { session, seq, input } if self.frozen => {
                if self.held.len() < MAX_HELD_INPUTS {
                    self.held.push((session, seq, input));
                }
            }
            PhoneCommand::Input { session, seq, input } => {
                let Some(s) = self.sessions.get(&session) else { return };
                let device = s.device_id.clone();
                let last = self.input_seqs.get(&device).copied().unwrap_or(0);
                if seq > last {
                    if let Err(e) = self.phone.deliver(to_event(&input)) {
                        // Not applied: not acknowledged either.
                        tracing::warn!(user = %self.user, "input failed: {e}");
                        return;
                    }
                    self.input_seqs.insert(device, seq);
                }
                // Acknowledge duplicates too: the terminal resent because it missed the ack.
                self.send(session, ServerMessage::InputAck { seq: seq.max(last) });
            }
            PhoneCommand::FrameAck(session, seq) => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.unacked.retain(|&u| u > seq);
                }
            }
            PhoneCommand::Pong(session, nonce) => self.send(session, ServerMessage::Pong { nonce }),
            PhoneCommand::Say(session, message) => self.send(session, message),
            PhoneCommand::Revoked(device) => {
                let gone: Vec<u64> =
                    self.sessions.iter().filter(|(_, s)| s.device_id == device).map(|(id, _)| *id).collect();
                for id in gone {
                    let message = "this device was revoked".to_string();
                    self.send(id, ServerMessage::Error { code: vmi_protocol::ErrorCode::Unauthorized, message });
                    // Dropping the session closes its queue: the terminal's socket closes.
                    self.sessions.remove(&id);
                    tracing::info!(user = %self.user, device, "revoked device's terminal closed");
                }
            }
            PhoneCommand::Sleep(session) => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.asleep = true;
                }
            }
            PhoneCommand::Wake(session) => {
                let (w, h) = (self.phone.info().width, self.phone.info().height);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.asleep = false;
                    s.owe_frame = true;
                    // Tiles that did not change while asleep are not resent: the encoder
                    // compares with what this terminal last got.
                    s.pending = vec![Rect { x: 0, y: 0, w, h }];
                }
            }
            PhoneCommand::Mail(_, _, reply) if self.frozen => {
                let _ = reply.send(Err("the phone is moving to another site; retry in a moment".into()));
            }
            PhoneCommand::Mail(mail, push, reply) => {
                let r = self
                    .phone
                    .push_mail(mail)
                    .and_then(|()| if push { self.phone.deliver(Event::MailArrived) } else { Ok(()) })
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            PhoneCommand::Screen(reply) => {
                if let Ok(frame) = self.phone.frame() {
                    let (w, h, rgba) = (frame.width, frame.height, frame.rgba.to_vec());
                    let damage = frame.damage;
                    self.spread_damage(damage);
                    let _ = reply.send((w, h, rgba));
                }
            }
            PhoneCommand::Kv(key, reply) => {
                let _ = reply.send(self.phone.kv_get(key.as_bytes()));
            }
            PhoneCommand::PreCopy(first, reply) => {
                let request = if first { SnapshotRequest::PreCopyStart } else { SnapshotRequest::PreCopy };
                let r = self.phone.snapshot(request).map(|s| (s.bytes, s.pages));
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            PhoneCommand::Freeze(reply) => {
                self.frozen = true;
                let r = self
                    .phone
                    .snapshot(SnapshotRequest::Incremental)
                    .map(|s| SavedPhone { snapshot: s.bytes, input_seqs: self.input_seqs.clone() });
                if r.is_err() {
                    self.frozen = false;
                }
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            PhoneCommand::Thaw => {
                self.frozen = false;
                for (session, seq, input) in std::mem::take(&mut self.held) {
                    self.handle(PhoneCommand::Input { session, seq, input });
                }
            }
            PhoneCommand::Tick(reply) if self.frozen => {
                let _ = reply.send(());
            }
            PhoneCommand::Tick(reply) => {
                self.fire_timers();
                self.flush();
                let _ = reply.send(());
            }
            PhoneCommand::Status(reply) => {
                let usage = self.phone.usage();
                let status = match self.phone.status() {
                    VmStatus::Running => "running".to_string(),
                    VmStatus::Crashed { reason } => format!("crashed: {reason}"),
                };
                let _ = reply.send(PhoneStatus {
                    status,
                    terminals: self.sessions.len(),
                    awake: self.sessions.values().filter(|s| !s.asleep).count(),
                    memory_bytes: usage.memory_bytes,
                    events: usage.events,
                    image: self.phone.info().image.to_hex(),
                });
            }
            PhoneCommand::Checkpoint(_, reply) if self.frozen => {
                let _ = reply.send(Err("the phone is stopped for a migration".into()));
            }
            PhoneCommand::Checkpoint(parent, reply) => {
                let last = self.phone.last_good_chain().last().map(|s| s.id);
                let request = if parent.is_some() && last == parent {
                    SnapshotRequest::Incremental
                } else {
                    SnapshotRequest::Full
                };
                let _ = reply.send(self.phone.snapshot(request).map(|s| s.bytes).map_err(|e| e.to_string()));
            }
            PhoneCommand::Replace(phone, reply) => {
                self.phone = phone;
                let (width, height) = (self.phone.info().width, self.phone.info().height);
                // The new VM's damage starts from nothing: repaint every terminal fully.
                let _ = self.phone.frame();
                for s in self.sessions.values_mut() {
                    s.pending = vec![Rect { x: 0, y: 0, w: width, h: height }];
                    s.owe_full = true;
                }
                // Tell the restored VM whether a screen is on, whatever it last knew.
                self.awake_before = !self.awake();
                tracing::info!(user = %self.user, "phone replaced by a restored checkpoint");
                let _ = reply.send(());
            }
            PhoneCommand::Stop(_) | PhoneCommand::Fence(..) | PhoneCommand::CheckOut(..) => {}
        }
    }

    fn send(&mut self, session: u64, message: ServerMessage) {
        let Some(s) = self.sessions.get(&session) else { return };
        if s.tx.try_send(message).is_err() {
            // Full or closed: this terminal cannot keep up (or left); drop it. It will
            // reconnect and resume.
            tracing::info!(user = %self.user, session, "dropping a terminal that fell behind");
            self.sessions.remove(&session);
        }
    }

    fn spread_damage(&mut self, damage: Vec<vmi_engine::Rect>) {
        if damage.is_empty() {
            return;
        }
        for s in self.sessions.values_mut() {
            for d in &damage {
                s.pending.push(Rect { x: d.x, y: d.y, w: d.w, h: d.h });
            }
            if s.pending.len() > MAX_PENDING {
                s.pending = vec![bounding(&s.pending)];
            }
        }
    }

    /// Pushes what the guest produced to the terminals.
    fn flush(&mut self) {
        // Sleep and wake of the phone follow its terminals: awake if any screen is on.
        let awake = self.awake();
        // A frozen phone's state is already on its way: nothing may change it.
        if awake != self.awake_before && !self.frozen {
            let event = if awake { Event::Wake } else { Event::Sleep };
            if let Err(e) = self.phone.deliver(event) {
                tracing::warn!(user = %self.user, "wake/sleep event failed: {e}");
            }
            self.awake_before = awake;
        }
        let notifications = self.phone.take_notifications();
        let now_ms = self.clock.wall_ns() / 1_000_000;
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for n in &notifications {
            for &id in &ids {
                self.send(
                    id,
                    ServerMessage::Notification { title: n.title.clone(), body: n.body.clone(), at_ms: now_ms },
                );
            }
        }
        let Ok(frame) = self.phone.frame() else { return };
        if frame.rgba.is_empty() {
            return;
        }
        let damage: Vec<Rect> = frame.damage.iter().map(|d| Rect { x: d.x, y: d.y, w: d.w, h: d.h }).collect();
        let mut dead = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            s.pending.extend_from_slice(&damage);
            if s.pending.len() > MAX_PENDING {
                s.pending = vec![bounding(&s.pending)];
            }
            // A guest may attach a framebuffer of another size than configured.
            if (frame.width, frame.height) != (s.encoder.width() as u32, s.encoder.height() as u32) {
                s.encoder = Encoder::new(frame.width as u16, frame.height as u16);
                s.pending = vec![Rect { x: 0, y: 0, w: frame.width, h: frame.height }];
                s.owe_full = true;
            }
            if s.asleep || s.unacked.len() >= MAX_UNACKED_FRAMES || (s.pending.is_empty() && !s.owe_frame) {
                continue;
            }
            // A terminal that did not resume may hold anything: repaint every tile.
            let tiles: Vec<Tile> = if std::mem::take(&mut s.owe_full) {
                s.encoder.full(frame.rgba)
            } else {
                s.encoder.encode(frame.rgba, &s.pending)
            };
            s.pending.clear();
            if tiles.is_empty() && !s.owe_frame {
                continue;
            }
            s.owe_frame = false;
            s.seq += 1;
            let seq = s.seq;
            if s.tx.try_send(ServerMessage::FrameUpdate { seq, tiles }).is_err() {
                dead.push(*id);
            } else {
                s.unacked.push(seq);
            }
        }
        for id in dead {
            self.sessions.remove(&id);
        }
    }
}

/// The smallest rectangle holding all of `rects` (which is not empty).
fn bounding(rects: &[Rect]) -> Rect {
    let x0 = rects.iter().map(|r| r.x).min().unwrap_or(0);
    let y0 = rects.iter().map(|r| r.y).min().unwrap_or(0);
    let x1 = rects.iter().map(|r| r.x + r.w).max().unwrap_or(0);
    let y1 = rects.iter().map(|r| r.y + r.h).max().unwrap_or(0);
    Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
}

/// Handle to a phone task.
#[derive(Clone)]
pub struct PhoneLink {
    /// Commands in.
    pub tx: mpsc::Sender<PhoneCommand>,
}

impl PhoneLink {
    /// Sends a command and waits for its reply; None if the phone task is gone.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PhoneCommand) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }
}
