//! The terminals attached to one phone and what each has been sent: its display encoder,
//! frame credit (docs/PROTOCOL.md, rule 4), damage still to send, sleep state (rule 6)
//! and frame numbering (rule 3).

use std::collections::HashMap;

use tokio::sync::mpsc;
use vmi_engine::Frame;
use vmi_protocol::display::{Encoder, Rect};
use vmi_protocol::{ErrorCode, ServerMessage, Tile};

use super::{Attached, Attachment, MAX_SESSIONS, MAX_UNACKED_FRAMES};

/// Damage rectangles kept per terminal before they are merged into one.
const MAX_PENDING: usize = 64;

/// One attached terminal.
struct Terminal {
    device_id: String,
    tx: mpsc::Sender<ServerMessage>,
    encoder: Encoder,
    asleep: bool,
    unacked: Vec<u64>,
    pending: Vec<Rect>,
    /// Send a frame at the next flush even if no tile changed (a Wake's answer).
    owe_frame: bool,
    /// Sequence number of the last frame sent in this session (rule 3).
    seq: u64,
    /// The next frame repaints every tile (a terminal that did not resume).
    owe_full: bool,
    /// When this terminal last did something (attached, typed, touched, woke), in [`Terminals::activity`] ticks.
    last_active: u64,
    /// Whether it is told when its inputs are durable (protocol version 2), and the last number it was told.
    durable_acks: bool,
    durable_told: u64,
    /// Whether it reads `Screen` and `Clipboard` (protocol version 3).
    screen_messages: bool,
    /// Whether it applies copy tiles and prepares handoffs (protocol version 4).
    copies: bool,
    /// Told to prepare a session at a migration's destination, and not yet joined there.
    preparing: bool,
}

impl Terminal {
    fn add_damage(&mut self, damage: &[Rect]) {
        self.pending.extend_from_slice(damage);
        if self.pending.len() > MAX_PENDING {
            self.pending = vec![bounding(&self.pending)];
        }
    }

    fn repaint(&mut self, width: u32, height: u32) {
        self.pending = vec![Rect::new(0, 0, width, height)];
        self.owe_full = true;
    }
}

/// The terminals of one phone, by session id.
#[derive(Default)]
pub(super) struct Terminals {
    by_session: HashMap<u64, Terminal>,
    /// A migration waiting for the terminals told to prepare to have joined its destination.
    handoff_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// A counter that orders the terminals' activity.
    activity: u64,
}

impl Terminals {
    /// Whether another terminal may attach.
    pub fn has_room(&self) -> bool {
        self.by_session.len() < MAX_SESSIONS
    }

    /// Attaches a terminal to a phone whose screen is `screen` with its screen hash (None if it has none yet, or
    /// the terminal does not resume).
    pub fn attach(
        &mut self,
        a: Attachment,
        (width, height): (u32, u32),
        screen: Option<(&[u8], u64)>,
        last_input_seq: u64,
    ) -> Attached {
        let mut encoder = Encoder::new(width as u16, height as u16).with_copies(a.copies);
        // A terminal whose screen already equals ours gets no full resend (rule 8).
        let resumed = match (a.resume, screen) {
            (Some(resume), Some((rgba, hash))) if !rgba.is_empty() && resume.screen_hash == hash => {
                encoder.assume_sent(rgba);
                true
            }
            _ => false,
        };
        let pending = if resumed { Vec::new() } else { vec![Rect::new(0, 0, width, height)] };
        self.by_session.insert(
            a.id,
            Terminal {
                device_id: a.device_id,
                tx: a.tx,
                encoder,
                asleep: a.asleep,
                unacked: Vec::new(),
                pending,
                owe_frame: false,
                seq: a.resume.map(|r| r.last_frame_seq).unwrap_or(0),
                owe_full: !resumed,
                last_active: self.activity + 1,
                durable_acks: a.durable_acks,
                durable_told: 0,
                screen_messages: a.screen_messages,
                copies: a.copies,
                preparing: false,
            },
        );
        self.activity += 1;
        Attached { width: width as u16, height: height as u16, last_input_seq, resumed }
    }

    /// Tells each terminal that keeps its inputs until they are durable the highest of its device's inputs that is
    /// (`durable` maps device → input number), when that moved since it was last told.
    pub fn tell_durable(&mut self, durable: &HashMap<String, u64>) {
        for t in self.by_session.values_mut() {
            let Some(&seq) = durable.get(&t.device_id) else { continue };
            if t.durable_acks && seq > t.durable_told {
                // A full queue drops this one: a later one covers it (the number is cumulative).
                if t.tx.try_send(ServerMessage::InputDurable { seq }).is_ok() {
                    t.durable_told = seq;
                }
            }
        }
    }

    /// Notes that `session` did something: it is the last to be evicted for room.
    pub fn touch(&mut self, session: u64) {
        self.activity += 1;
        if let Some(t) = self.by_session.get_mut(&session) {
            t.last_active = self.activity;
        }
    }

    /// Makes room for one more terminal by closing the one idle the longest, with the reason; which one.
    pub fn evict_idlest(&mut self) -> Option<u64> {
        let (&session, _) = self.by_session.iter().min_by_key(|(_, t)| t.last_active)?;
        let message = format!(
            "closed to make room for a newer terminal: this phone serves {MAX_SESSIONS} at once, and this one was \
             idle the longest"
        );
        self.fail(session, ErrorCode::Internal, message);
        Some(session)
    }

    /// Lets go of a session (its queue closes, so its socket closes).
    pub fn detach(&mut self, session: u64) {
        self.by_session.remove(&session);
        self.settle_handoff();
    }

    /// Whether no terminal is attached.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }

    /// How many are attached.
    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    /// How many have their screen on.
    pub fn awake_count(&self) -> usize {
        self.by_session.values().filter(|t| !t.asleep).count()
    }

    /// The device behind a session.
    pub fn device_of(&self, session: u64) -> Option<&str> {
        self.by_session.get(&session).map(|t| t.device_id.as_str())
    }

    /// Queues `message` for one terminal; one that cannot keep up (or left) is dropped:
    /// it will reconnect and resume.
    pub fn send(&mut self, session: u64, message: ServerMessage) {
        let Some(t) = self.by_session.get(&session) else { return };
        if t.tx.try_send(message).is_err() {
            tracing::info!(session, "dropping a terminal that fell behind");
            self.by_session.remove(&session);
        }
    }

    /// Queues `message` for every terminal.
    pub fn broadcast(&mut self, message: &ServerMessage) {
        for id in self.by_session.keys().copied().collect::<Vec<_>>() {
            self.send(id, message.clone());
        }
    }

    /// Says `message` to every terminal, then lets them all go (their sockets close).
    pub fn close_all(&mut self, message: &ServerMessage) {
        self.broadcast(message);
        self.by_session.clear();
    }

    /// Ends one session with an error.
    pub fn fail(&mut self, session: u64, code: ErrorCode, message: String) {
        self.send(session, ServerMessage::Error { code, message });
        self.by_session.remove(&session);
    }

    /// Closes every terminal of `device` with `Error(Unauthorized)`; how many.
    pub fn close_device(&mut self, device: &str) -> usize {
        let gone: Vec<u64> = self.by_session.iter().filter(|(_, t)| t.device_id == device).map(|(id, _)| *id).collect();
        for &id in &gone {
            self.fail(id, ErrorCode::Unauthorized, "this device was revoked".into());
        }
        gone.len()
    }

    /// A cumulative frame acknowledgement (rule 4).
    pub fn ack_frames(&mut self, session: u64, seq: u64) {
        if let Some(t) = self.by_session.get_mut(&session) {
            t.unacked.retain(|&u| u > seq);
        }
    }

    /// A screen went off.
    pub fn sleep(&mut self, session: u64) {
        if let Some(t) = self.by_session.get_mut(&session) {
            t.asleep = true;
        }
    }

    /// A screen came on: it is owed exactly one update bringing it up to date (rule 6),
    /// sent once its credit allows (rule 4 wins: docs/PROTOCOL.md).
    pub fn wake(&mut self, session: u64, (width, height): (u32, u32)) {
        if let Some(t) = self.by_session.get_mut(&session) {
            t.asleep = false;
            t.owe_frame = true;
            // Tiles that did not change while asleep are not resent: the encoder compares
            // with what this terminal last got.
            t.pending = vec![Rect::new(0, 0, width, height)];
        }
    }

    /// Puts text the phone copied on every terminal's clipboard that can take it (protocol version 3).
    pub fn send_clipboard(&mut self, text: &str) {
        let readers: Vec<u64> = self.by_session.iter().filter(|(_, t)| t.screen_messages).map(|(id, _)| *id).collect();
        for id in readers {
            self.send(id, ServerMessage::Clipboard { text: text.to_string() });
        }
    }

    /// Tells every terminal that can (protocol version 4) to prepare its session at a migration's destination.
    pub fn prepare(&mut self, url: &str, ticket: &str) {
        let preparers: Vec<u64> = self.by_session.iter().filter(|(_, t)| t.copies).map(|(id, _)| *id).collect();
        for id in preparers {
            if let Some(t) = self.by_session.get_mut(&id) {
                t.preparing = true;
            }
            self.send(id, ServerMessage::Prepare { url: url.to_string(), ticket: ticket.to_string() });
        }
    }

    /// Per device with one terminal, the frame update after which that terminal shows exactly the phone's
    /// screen of `size` (everything drawn was sent to it): what a migration's source vouches for.
    pub fn current_screens(&self, (width, height): (u32, u32)) -> Vec<(String, u64)> {
        let mut per_device: HashMap<&str, Vec<&Terminal>> = HashMap::new();
        for t in self.by_session.values() {
            per_device.entry(t.device_id.as_str()).or_default().push(t);
        }
        per_device
            .into_iter()
            .filter_map(|(device, ts)| match ts.as_slice() {
                [t] if t.pending.is_empty()
                    && !t.owe_full
                    && (u32::from(t.encoder.width()), u32::from(t.encoder.height())) == (width, height) =>
                {
                    Some((device.to_string(), t.seq))
                }
                _ => None,
            })
            .collect()
    }

    /// A terminal's session at the destination is joined.
    pub fn prepared(&mut self, session: u64) {
        if let Some(t) = self.by_session.get_mut(&session) {
            t.preparing = false;
        }
        self.settle_handoff();
    }

    /// Answers `reply` once no terminal told to prepare is still preparing.
    pub fn await_prepared(&mut self, reply: tokio::sync::oneshot::Sender<()>) {
        self.handoff_waiters.push(reply);
        self.settle_handoff();
    }

    fn settle_handoff(&mut self) {
        if !self.handoff_waiters.is_empty() && self.by_session.values().all(|t| !t.preparing) {
            for waiter in self.handoff_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Whether any screen is on.
    pub fn any_awake(&self) -> bool {
        self.by_session.values().any(|t| !t.asleep)
    }

    /// Remembers damage for every terminal.
    pub fn add_damage(&mut self, damage: &[Rect]) {
        if damage.is_empty() {
            return;
        }
        for t in self.by_session.values_mut() {
            t.add_damage(damage);
        }
    }

    /// Every terminal gets a full repaint next (a new VM in place of the old).
    pub fn repaint_all(&mut self, size: (u32, u32)) {
        for t in self.by_session.values_mut() {
            t.repaint(size.0, size.1);
        }
    }

    /// Sends each awake terminal with credit the tiles it lacks of `frame`; how many display updates went out.
    pub fn send_frames(&mut self, frame: &Frame<'_>) -> usize {
        let mut sent = 0;
        let damage: Vec<Rect> = frame.damage.clone();
        let mut dead = Vec::new();
        for (id, t) in self.by_session.iter_mut() {
            t.add_damage(&damage);
            // The screen changed size (a display change, or a guest attaching another size than configured): a
            // terminal that reads `Screen` hears the size, then gets every tile; an older one reconnects and reads
            // it in `Welcome`.
            if (frame.width, frame.height) != (u32::from(t.encoder.width()), u32::from(t.encoder.height())) {
                let (width, height) = (frame.width as u16, frame.height as u16);
                if !t.screen_messages || t.tx.try_send(ServerMessage::Screen { width, height }).is_err() {
                    dead.push(*id);
                    continue;
                }
                t.encoder = Encoder::new(width, height).with_copies(t.copies);
                t.repaint(frame.width, frame.height);
                // Frames in flight are of the old size: the new one goes out whatever the credit (rule 4 still
                // bounds what follows).
                t.unacked.clear();
            }
            if t.asleep || t.unacked.len() >= MAX_UNACKED_FRAMES || (t.pending.is_empty() && !t.owe_frame) {
                continue;
            }
            // A terminal that did not resume may hold anything: repaint every tile.
            let tiles: Vec<Tile> = if std::mem::take(&mut t.owe_full) {
                t.encoder.full(frame.rgba)
            } else {
                t.encoder.encode(frame.rgba, &t.pending)
            };
            t.pending.clear();
            if tiles.is_empty() && !t.owe_frame {
                continue;
            }
            t.owe_frame = false;
            t.seq += 1;
            let seq = t.seq;
            if t.tx.try_send(ServerMessage::FrameUpdate { seq, tiles }).is_err() {
                dead.push(*id);
            } else {
                t.unacked.push(seq);
                sent += 1;
            }
        }
        for id in dead {
            self.by_session.remove(&id);
        }
        sent
    }
}

/// The smallest rectangle holding all of `rects` (which is not empty).
fn bounding(rects: &[Rect]) -> Rect {
    rects.iter().skip(1).fold(rects.first().copied().unwrap_or_default(), |acc, r| acc.union(r))
}
