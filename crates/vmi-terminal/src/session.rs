//! A terminal session: one client of the terminal protocol (docs/PROTOCOL.md), run by a
//! task that owns the WebSocket.
//!
//! [`Terminal::connect`] opens the WebSocket, says `Hello`, waits for `Welcome` and spawns
//! the session task. The task
//!
//! - applies every `FrameUpdate` to its [`Screen`] and answers `FrameAck` (so the site's
//!   flow control sees how fast this terminal really is);
//! - numbers inputs 1, 2, 3, … ([`Terminal::send_input`]), keeps each until the site's
//!   cumulative `InputDurable` covers it (`InputAck` from a version-1 site), and after any
//!   reconnect resends those above `Welcome.last_input_seq`: after a failover of the phone
//!   to another site, that is what the user typed since its last durable state;
//! - follows `Redirect` by itself: closes, connects to the new URL with
//!   `Resume{last_frame_seq, screen_hash}` and carries on with the same screen and inputs
//!   (also when a site answers `Hello` with `Redirect` instead of `Welcome`);
//! - reconnects (with `Resume`) after a lost connection, a bad message or a retryable site
//!   error, a few times with backoff, asking [`TerminalOptions::locate`] (when set) where the
//!   phone runs now: after its site failed, on another one;
//! - records every message in its [`EnergyMeter`].
//!
//! What happens is reported as [`TerminalEvent`]s on a bounded channel. **Read it**: when
//! it is full the session waits for the reader, and the site, getting no `FrameAck`,
//! coalesces frames instead of queueing them. Commands ([`Terminal::send_input`],
//! [`Terminal::sleep`], …) never wait: they change shared state and wake the task.
//!
//! Energy: the session sends nothing on its own except what the user does, `FrameAck`s of
//! frames the site chose to send, and, only if [`TerminalOptions::keepalive`] is set, a
//! `Ping` after that long without sending. A sleeping terminal with no keepalive is
//! silent until the site has something (a notification) for it.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use vmi_protocol::display::Screen;
use vmi_protocol::{
    ClientMessage, ErrorCode, Input, PROTOCOL_VERSION, Resume, ServerMessage, decode_server, encode_client,
};

use crate::TerminalError;
use crate::energy::{Clock, Direction, EnergyMeter, EnergyReport, RadioPolicy, system_clock};

/// Largest message accepted from a site (docs/PROTOCOL.md, "Limits").
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Estimated bytes of a WebSocket opening handshake request (HTTP upgrade, without the
/// URL) and response, for the energy account.
const HANDSHAKE_REQUEST_BYTES: usize = 180;
const HANDSHAKE_RESPONSE_BYTES: usize = 160;

/// Redirects followed in a row while saying Hello (a site may redirect instead of welcoming).
pub const MAX_REDIRECTS: u32 = 4;

/// How long an input may go unacknowledged before the connection counts as lost (a site applies an input in
/// milliseconds; one that does not answer for this long is stopped or cut off, however open its socket looks).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Time allowed to reconnect and be welcomed when the control service can be asked where the phone is: a site
/// that takes longer (stopped, cut off) is passed for wherever the control service says next.
const LOCATED_CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// How many pings may wait for their pong; older ones are forgotten.
const MAX_PINGS_IN_FLIGHT: usize = 8;

type Ws = WebSocketStream<vmi_trust::Stream>;

/// How a session behaves. `TerminalOptions::default()` suits an interactive terminal.
#[derive(Clone)]
pub struct TerminalOptions {
    /// Start asleep (screen off): the site sends no frame, only notifications.
    pub asleep: bool,
    /// The clock packets are recorded with (default: [`system_clock`]).
    pub clock: Clock,
    /// Capacity of the event channel (default 256).
    pub event_capacity: usize,
    /// Most inputs kept waiting for an acknowledgement (default 4096);
    /// [`Terminal::send_input`] fails beyond it.
    pub max_pending_inputs: usize,
    /// Send a `Ping` after this long without sending anything (default `None`: never).
    /// docs/PROTOCOL.md allows one after about 3 minutes, for NATs that drop idle
    /// connections; each one wakes an idle radio (≈ 12.8 J in the LTE model, more than
    /// a whole minute of a polling phone), so leave it off unless the network needs it.
    pub keepalive: Option<Duration>,
    /// Time allowed for connecting and the Hello/Welcome exchange (default 10 s).
    pub connect_timeout: Duration,
    /// Reconnection attempts after a lost connection or a redirect (default 5), with
    /// backoff from 250 ms doubling.
    pub reconnect_attempts: u32,
    /// How sites are dialled: the provider CA `wss://` certificates are checked against (default: none, so only
    /// `ws://` works; [`crate::terminal_caller`] reads the CA the user configured).
    pub caller: vmi_control_api::Caller,
    /// Where the phone runs now (its site's WebSocket URL), asked after a reconnect attempt failed (default:
    /// none, so the session retries the same site). With one, reconnecting goes on for
    /// [`LOCATED_RECONNECT_FOR`]: a failover takes seconds.
    pub locate: Option<Locate>,
    /// The protocol version said in Hello (default: [`PROTOCOL_VERSION`], the newest). An older one makes the
    /// site send only what that version has (benchmarks compare versions with it; compatibility tests use it).
    pub protocol_version: u16,
    /// When the radio is let go early, as the energy account prices it (default:
    /// [`RadioPolicy::FAST_DORMANCY`]).
    pub radio: RadioPolicy,
}

/// Asks the control service where a terminal's phone runs now (see [`TerminalOptions::locate`]).
pub type Locate =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>> + Send + Sync>;

/// How long a session with [`TerminalOptions::locate`] keeps trying to reconnect (a site's lease, the control
/// service's failover, the new site's restore, with room to spare).
pub const LOCATED_RECONNECT_FOR: Duration = Duration::from_secs(60);

impl Default for TerminalOptions {
    fn default() -> Self {
        TerminalOptions {
            asleep: false,
            clock: system_clock(),
            event_capacity: 256,
            max_pending_inputs: 4096,
            keepalive: None,
            connect_timeout: Duration::from_secs(10),
            reconnect_attempts: 5,
            caller: vmi_control_api::Caller::anonymous(),
            locate: None,
            protocol_version: PROTOCOL_VERSION,
            radio: RadioPolicy::FAST_DORMANCY,
        }
    }
}

impl fmt::Debug for TerminalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TerminalOptions")
            .field("asleep", &self.asleep)
            .field("event_capacity", &self.event_capacity)
            .field("max_pending_inputs", &self.max_pending_inputs)
            .field("keepalive", &self.keepalive)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_attempts", &self.reconnect_attempts)
            .finish_non_exhaustive()
    }
}

/// Something that happened in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TerminalEvent {
    /// A `Welcome`: the session is open (first connect, redirect or reconnect).
    Connected {
        /// Phone screen width.
        width: u16,
        /// Phone screen height.
        height: u16,
        /// The site found this terminal's screen current (no full frame follows).
        resumed: bool,
    },
    /// A frame update was applied to the screen (and acknowledged).
    Frame {
        /// The update's sequence number.
        seq: u64,
        /// Tiles in it (0 for the update that answers `Wake` with nothing changed).
        tiles: usize,
        /// Of those, copies of pixels the screen had (a scroll; protocol version 4).
        copies: usize,
        /// Size of the message, bytes.
        bytes: usize,
    },
    /// Every input up to `seq` has been applied by the phone.
    InputAcked {
        /// Highest input applied.
        seq: u64,
    },
    /// Every input up to `seq` is durable where a failover of the phone brings it back (the terminal forgets
    /// them).
    InputDurable {
        /// Highest input durable.
        seq: u64,
    },
    /// A notification from the phone (these arrive while asleep too).
    Notification {
        /// Title (e.g. sender).
        title: String,
        /// Body (e.g. subject).
        body: String,
        /// When it was raised, ms since the Unix epoch.
        at_ms: u64,
    },
    /// The phone moved; the session follows it to `url`.
    Redirected {
        /// The new site's WebSocket URL.
        url: String,
    },
    /// The phone's screen changed size (another terminal's display, a rotation): the screen is blank at the new
    /// size until the full frame that follows.
    Screen {
        /// Width in pixels.
        width: u16,
        /// Height in pixels.
        height: u16,
    },
    /// The phone copied text to the clipboard.
    Clipboard {
        /// The text.
        text: String,
    },
    /// Round trip of a `Ping`.
    Latency {
        /// Microseconds from sending the ping to reading the pong.
        rtt_us: u64,
    },
    /// Something went wrong; `fatal` says whether the session ends because of it (else it
    /// reconnects).
    Error {
        /// What, for people.
        message: String,
        /// The session ends.
        fatal: bool,
    },
    /// The session has ended; no more events follow.
    Closed,
}

/// A snapshot of a session's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStats {
    /// The site's URL now (changes on redirect).
    pub url: String,
    /// A WebSocket is open and welcomed.
    pub connected: bool,
    /// The session has ended.
    pub ended: bool,
    /// The terminal asked to sleep.
    pub asleep: bool,
    /// Frame updates applied.
    pub frames: u64,
    /// Sequence number of the last frame update applied.
    pub last_frame_seq: u64,
    /// Highest input acknowledged.
    pub acked_input: u64,
    /// Highest input the site said is durable.
    pub durable_input: u64,
    /// Inputs sent or queued but not yet acknowledged.
    pub pending_inputs: usize,
    /// Connections opened after the first (redirects and reconnects).
    pub reconnects: u64,
    /// Last measured round trip, microseconds.
    pub latency_us: Option<u64>,
    /// Time spent decoding and applying frame updates, ns of this machine (what the energy account's
    /// decoding figure is made from).
    pub decode_ns: u64,
    /// Moves of the phone this session followed on a connection prepared while the phone's copy ran (make
    /// before break), without a new connection at the handoff.
    pub prepared_handoffs: u64,
}

struct State {
    screen: Screen,
    last_frame_seq: u64,
    frames: u64,
    decode_ns: u64,
    prepared_handoffs: u64,
    /// A connection prepared for a move was joined: tell the site on the session's connection.
    tell_prepared: bool,
    /// The connection prepared for the current move is joined (its site holds it for the handoff).
    prepare_joined: bool,
    /// The screen hash after frame `.0`, kept while a move is prepared: the Hello of the handoff then needs no
    /// hash of a whole screen (milliseconds) when it counts.
    hashed: Option<(u64, u64)>,
    next_seq: u64,
    pending: VecDeque<(u64, Input)>,
    acked: u64,
    /// Highest input the site said is durable.
    durable: u64,
    /// The site tells when inputs are durable (protocol version 2): inputs are kept until then, not until applied.
    durable_acks: bool,
    asleep: bool,
    /// A ping is wanted (several requests before the next send make one ping).
    ping_wanted: bool,
    /// The display the phone's screen should follow (None: the phone keeps its screen).
    display: Option<vmi_protocol::Display>,
    closing: bool,
    ended: bool,
    connected: bool,
    url: String,
    reconnects: u64,
    latency_us: Option<u64>,
    energy: EnergyMeter,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    close: watch::Sender<bool>,
    /// How sites are dialled (the CA `wss://` is checked against).
    caller: vmi_control_api::Caller,
    /// The protocol version said in Hello.
    protocol_version: u16,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep going with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, direction: Direction, bytes: usize) {
        self.lock().energy.record(direction, bytes);
    }
}

/// A connected terminal. Dropping it ends the session (the task closes the WebSocket).
pub struct Terminal {
    shared: Arc<Shared>,
    events: Option<mpsc::Receiver<TerminalEvent>>,
    task: Option<JoinHandle<()>>,
    max_pending_inputs: usize,
}

impl fmt::Debug for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminal").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Terminal {
    /// Connects to a site's terminal endpoint (`wss://host:port/v1/terminal`, its certificate checked against
    /// the CA in `options.caller`; or `ws://` on loopback), says `Hello` with `token`, waits for `Welcome` and
    /// starts the session task. The first event is [`TerminalEvent::Connected`].
    pub async fn connect(ws_url: &str, token: &str, options: TerminalOptions) -> Result<Terminal, TerminalError> {
        let mut energy = EnergyMeter::new(options.clock.clone());
        energy.set_policy(options.radio);
        energy.set_asleep(options.asleep);
        let (close, close_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                screen: Screen::new(0, 0),
                last_frame_seq: 0,
                frames: 0,
                decode_ns: 0,
                prepared_handoffs: 0,
                tell_prepared: false,
                prepare_joined: false,
                hashed: None,
                next_seq: 1,
                pending: VecDeque::new(),
                durable: 0,
                durable_acks: false,
                acked: 0,
                asleep: options.asleep,
                ping_wanted: false,
                display: None,
                closing: false,
                ended: false,
                connected: false,
                url: ws_url.to_owned(),
                reconnects: 0,
                latency_us: None,
                energy,
            }),
            wake: Notify::new(),
            close,
            caller: options.caller.clone(),
            protocol_version: options.protocol_version,
        });
        let link = open(&shared, ws_url, token, None, options.connect_timeout).await?;
        let (tx, rx) = mpsc::channel(options.event_capacity.max(1));
        let max_pending_inputs = options.max_pending_inputs;
        let session = Session {
            shared: shared.clone(),
            events: tx,
            close: close_rx,
            token: token.to_owned(),
            options,
            prepared: None,
        };
        let task = tokio::spawn(session.run(link));
        Ok(Terminal { shared, events: Some(rx), task: Some(task), max_pending_inputs })
    }

    /// The next event, or `None` once the session has ended (or the receiver was taken).
    pub async fn next_event(&mut self) -> Option<TerminalEvent> {
        self.events.as_mut()?.recv().await
    }

    /// Takes the event receiver, to read events in another task. Later calls return `None`.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<TerminalEvent>> {
        self.events.take()
    }

    /// Queues an input and returns its sequence number. The input is kept (and resent
    /// after a reconnect or redirect) until the site acknowledges it.
    pub fn send_input(&self, input: Input) -> Result<u64, TerminalError> {
        let seq = {
            let mut s = self.shared.lock();
            if s.ended || s.closing {
                return Err(TerminalError::Closed);
            }
            if s.pending.len() >= self.max_pending_inputs {
                return Err(TerminalError::InputQueueFull { limit: self.max_pending_inputs });
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.pending.push_back((seq, input));
            seq
        };
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Screen off: the site stops sending frames (notifications still come).
    pub fn sleep(&self) {
        self.set_asleep(true);
    }

    /// Screen on: the site sends one up-to-date frame, then frames as they change.
    pub fn wake(&self) {
        self.set_asleep(false);
    }

    fn set_asleep(&self, asleep: bool) {
        {
            let mut s = self.shared.lock();
            s.asleep = asleep;
            // The radio may go sooner with the screen off (fast dormancy; energy::RadioPolicy).
            s.energy.set_asleep(asleep);
        }
        self.shared.wake.notify_one();
    }

    /// Whether the terminal asked to sleep.
    pub fn is_asleep(&self) -> bool {
        self.shared.lock().asleep
    }

    /// Says this terminal's display (a window resized, a device rotated): the phone lays its screen out for it
    /// and the site answers with [`TerminalEvent::Screen`] and a full frame. Said again after every reconnect.
    pub fn set_display(&self, display: vmi_protocol::Display) {
        self.shared.lock().display = Some(display);
        self.shared.wake.notify_one();
    }

    /// Sends a latency probe; the answer is a [`TerminalEvent::Latency`].
    pub fn ping(&self) {
        self.shared.lock().ping_wanted = true;
        self.shared.wake.notify_one();
    }

    /// The screen now: width, height and a copy of its RGBA8 pixels.
    pub fn screen(&self) -> (u16, u16, Vec<u8>) {
        let s = self.shared.lock();
        (s.screen.width(), s.screen.height(), s.screen.rgba().to_vec())
    }

    /// The hash of the screen now (what a `Resume` would carry).
    pub fn screen_hash(&self) -> u64 {
        self.shared.lock().screen.hash()
    }

    /// Saves the screen as an RGBA PNG (blocking file I/O; a phone screen takes a few ms).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), TerminalError> {
        let (w, h, rgba) = self.screen();
        write_png(path.as_ref(), w, h, &rgba)
    }

    /// Sends a small exchange beside the session (a position report: `up` bytes out, `down` back) only if it
    /// rides on a radio the session's own traffic keeps up, and so costs no wakeup (reports alone never keep it
    /// up for the next): then it is counted on the session's energy meter and this returns true; with the radio
    /// idle it returns false and the caller holds its report until the radio is up for another reason (a
    /// notification, the screen woken).
    pub fn ride_along(&self, up: usize, down: usize) -> bool {
        let mut s = self.shared.lock();
        let now = s.energy.now_ms();
        if !s.energy.session_keeps_radio_up(now) {
            return false;
        }
        s.energy.record_riding(Direction::Up, up);
        s.energy.record_riding(Direction::Down, down);
        true
    }

    /// What this session's traffic has cost so far in the LTE model.
    pub fn energy(&self) -> EnergyReport {
        self.shared.lock().energy.report()
    }

    /// Runs `f` on the session's energy meter (e.g. to read its packet trace).
    pub fn with_energy_meter<R>(&self, f: impl FnOnce(&EnergyMeter) -> R) -> R {
        f(&self.shared.lock().energy)
    }

    /// The session's counters now.
    pub fn stats(&self) -> SessionStats {
        let s = self.shared.lock();
        SessionStats {
            url: s.url.clone(),
            connected: s.connected,
            ended: s.ended,
            asleep: s.asleep,
            frames: s.frames,
            last_frame_seq: s.last_frame_seq,
            acked_input: s.acked,
            pending_inputs: s.pending.len(),
            durable_input: s.durable,
            reconnects: s.reconnects,
            latency_us: s.latency_us,
            decode_ns: s.decode_ns,
            prepared_handoffs: s.prepared_handoffs,
        }
    }

    /// Ends the session: closes the WebSocket and waits (at most 2 s) for the task. The
    /// event stream ends with [`TerminalEvent::Closed`].
    pub async fn close(mut self) {
        self.request_close();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), task).await.is_err()
        {
            tracing::warn!("terminal session did not stop within 2 s");
        }
    }

    fn request_close(&self) {
        self.shared.lock().closing = true;
        self.shared.close.send_replace(true);
        self.shared.wake.notify_one();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.request_close();
    }
}

/// Writes RGBA8 pixels of a phone's screen as a PNG file, opaque: the screen is, whatever
/// alpha the guest wrote (docs/PROTOCOL.md, "Display model").
pub fn write_png(path: &Path, width: u16, height: u16, rgba: &[u8]) -> Result<(), TerminalError> {
    let file = File::create(path).map_err(|source| TerminalError::Write { path: path.to_owned(), source })?;
    let png_err = |source| TerminalError::Png { path: path.to_owned(), source };
    let mut encoder = png::Encoder::new(BufWriter::new(file), u32::from(width), u32::from(height));
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&vmi_protocol::display::opaque(rgba)).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

/// Bytes a WebSocket message of `payload` bytes takes on the wire: the frame header
/// (2, 4 or 10 bytes) plus the 4-byte mask on client frames.
fn ws_wire_bytes(payload: usize, from_client: bool) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    payload + header + if from_client { 4 } else { 0 }
}

/// An open, welcomed connection.
struct Link {
    ws: Ws,
    url: String,
    /// What the site was last told: asleep or awake.
    asleep_sent: bool,
    /// The display the site was last told.
    display_sent: Option<vmi_protocol::Display>,
    /// Highest input seq sent on this connection.
    sent_upto: u64,
    /// When the oldest input not yet acknowledged on this connection was sent.
    input_sent_at: Option<Instant>,
    /// When this terminal last sent anything (keepalive).
    last_sent: Instant,
}

async fn send(shared: &Shared, ws: &mut Ws, msg: &ClientMessage) -> Result<(), TerminalError> {
    let bytes = encode_client(msg);
    shared.record(Direction::Up, ws_wire_bytes(bytes.len(), true));
    ws.send(Message::binary(bytes)).await.map_err(TerminalError::WebSocket)
}

/// The answer to a Hello.
enum Answer {
    /// The session is open.
    Welcome {
        ws: Box<Ws>,
        version: u16,
        asleep_sent: bool,
        /// The display said in Hello.
        display_sent: Option<vmi_protocol::Display>,
        width: u16,
        height: u16,
        last_input_seq: u64,
        resumed: bool,
    },
    /// The phone is elsewhere: say Hello there.
    Redirect(String),
}

/// Opens a WebSocket to `url` (the TLS and WebSocket handshakes), counting its bytes.
async fn dial(shared: &Shared, url: &str) -> Result<Ws, TerminalError> {
    let config =
        WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES));
    let stream =
        shared.caller.dial_ws(url).await.map_err(|source| TerminalError::Dial { url: url.to_owned(), source })?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|source| TerminalError::Connect { url: url.to_owned(), source })?;
    shared.record(Direction::Up, HANDSHAKE_REQUEST_BYTES + url.len());
    shared.record(Direction::Down, HANDSHAKE_RESPONSE_BYTES);
    Ok(ws)
}

/// Connects to `url`, says Hello and reads the answer.
async fn hello(shared: &Shared, url: &str, token: &str, resume: Option<Resume>) -> Result<Answer, TerminalError> {
    let ws = dial(shared, url).await?;
    greet(shared, ws, token, resume).await
}

/// Says Hello on an open connection and reads the answer.
async fn greet(shared: &Shared, mut ws: Ws, token: &str, resume: Option<Resume>) -> Result<Answer, TerminalError> {
    let asleep = shared.lock().asleep;
    let display = shared.lock().display;
    let hello = ClientMessage::Hello {
        version: shared.protocol_version,
        device_token: token.to_owned(),
        resume,
        asleep,
        display,
    };
    send(shared, &mut ws, &hello).await?;
    match read(shared, &mut ws).await? {
        Some((ServerMessage::Welcome { version, width, height, last_input_seq, resumed }, _)) => Ok(Answer::Welcome {
            ws: Box::new(ws),
            version,
            asleep_sent: asleep,
            display_sent: display,
            width,
            height,
            last_input_seq,
            resumed,
        }),
        Some((ServerMessage::Redirect { url }, _)) => {
            let _ = ws.close(None).await;
            Ok(Answer::Redirect(url))
        }
        Some((ServerMessage::Error { code, message }, _)) => Err(TerminalError::Site { code, message }),
        Some(_) => Err(TerminalError::Unexpected("message before Welcome")),
        None => Err(TerminalError::Unexpected("close before Welcome")),
    }
}

/// A connection opened ahead of a handoff: dialled and joined to the move while the phone's copy runs
/// (docs/MIGRATION.md, "The terminal's handoff").
struct Prepared {
    /// The destination's terminal URL (the Redirect that uses this connection names it).
    url: String,
    /// When the site said Prepare: past [`PREPARED_FOR`] the move is over one way or the other.
    at: Instant,
    /// The connection once dialled and joined.
    task: tokio::task::JoinHandle<Result<Ws, TerminalError>>,
}

/// Dials `url` and joins the move with `ticket`, in the background.
fn prepare(shared: &Arc<Shared>, url: String, token: String, ticket: String) -> Prepared {
    let shared = shared.clone();
    let target = url.clone();
    let task = tokio::spawn(async move {
        let mut ws = dial(&shared, &target).await?;
        let join = ClientMessage::Join { version: shared.protocol_version, device_token: token, ticket };
        send(&shared, &mut ws, &join).await?;
        match read(&shared, &mut ws).await? {
            Some((ServerMessage::Joined, _)) => {
                // The old site may stop the phone for its handoff now: say so on the session's connection.
                {
                    let mut s = shared.lock();
                    s.tell_prepared = true;
                    s.prepare_joined = true;
                }
                shared.wake.notify_one();
                Ok(ws)
            }
            Some((ServerMessage::Error { code, message }, _)) => Err(TerminalError::Site { code, message }),
            _ => Err(TerminalError::Unexpected("no Joined for a Join")),
        }
    });
    Prepared { url, at: Instant::now(), task }
}

/// How long a prepared connection is kept for its move's Redirect (a site holds a joined connection 120 s; a move
/// called off says nothing to the terminal, whose connection its site closes).
const PREPARED_FOR: Duration = Duration::from_secs(120);

/// Connects, says Hello (with `resume` when reconnecting) and waits for Welcome, following
/// at most [`MAX_REDIRECTS`] redirects sent instead of Welcome; updates the screen size and
/// the input queue from the Welcome. Returns the events to report: a `Redirected` per
/// redirect followed, `Connected` and, if Welcome says kept inputs were already applied,
/// `InputAcked`.
async fn open(
    shared: &Shared,
    url: &str,
    token: &str,
    resume: Option<Resume>,
    timeout: Duration,
) -> Result<(Link, Vec<TerminalEvent>), TerminalError> {
    open_on(shared, None, url, token, resume, timeout).await
}

/// [`open`], saying the first Hello on `ready` (a connection prepared for a handoff) when there is one.
async fn open_on(
    shared: &Shared,
    mut ready: Option<Ws>,
    url: &str,
    token: &str,
    resume: Option<Resume>,
    timeout: Duration,
) -> Result<(Link, Vec<TerminalEvent>), TerminalError> {
    let mut events = Vec::new();
    let mut url = url.to_owned();
    let mut hops = 0;
    let (ws, version, asleep_sent, display_sent, width, height, last_input_seq, resumed) = loop {
        let answer = match ready.take() {
            Some(ws) => tokio::time::timeout(timeout, greet(shared, ws, token, resume)).await,
            None => tokio::time::timeout(timeout, hello(shared, &url, token, resume)).await,
        };
        let answer = answer.map_err(|_| TerminalError::Timeout("waiting for Welcome"))??;
        match answer {
            Answer::Welcome { ws, version, asleep_sent, display_sent, width, height, last_input_seq, resumed } => {
                break (ws, version, asleep_sent, display_sent, width, height, last_input_seq, resumed);
            }
            Answer::Redirect(next) if hops < MAX_REDIRECTS => {
                hops += 1;
                events.push(TerminalEvent::Redirected { url: next.clone() });
                url = next;
            }
            Answer::Redirect(_) => return Err(TerminalError::Unexpected("redirect loop")),
        }
    };
    let mut applied = None;
    {
        let mut s = shared.lock();
        if (s.screen.width(), s.screen.height()) != (width, height) {
            s.screen = Screen::new(width, height);
        }
        // Inputs up to last_input_seq are applied: resend only the rest. A version-1 site's applied inputs are
        // forgotten; a version-2 site's are kept until it says they are durable (a failover before then brings
        // back a phone without them, and they are resent to it).
        s.durable_acks = version >= 2;
        let forget = if s.durable_acks { s.durable } else { last_input_seq };
        while s.pending.front().is_some_and(|&(seq, _)| seq <= forget) {
            s.pending.pop_front();
        }
        if last_input_seq > s.acked {
            applied = Some(last_input_seq);
        }
        if s.pending.is_empty() {
            s.next_seq = s.next_seq.max(last_input_seq + 1);
        }
        s.acked = s.acked.max(last_input_seq);
        s.connected = true;
        s.url.clone_from(&url);
    }
    let link = Link {
        ws: *ws,
        url,
        asleep_sent,
        display_sent,
        sent_upto: last_input_seq,
        input_sent_at: None,
        last_sent: Instant::now(),
    };
    events.push(TerminalEvent::Connected { width, height, resumed });
    events.extend(applied.map(|seq| TerminalEvent::InputAcked { seq }));
    Ok((link, events))
}

/// Reads the next protocol message and its size; `None` when the site closed the WebSocket.
async fn read(shared: &Shared, ws: &mut Ws) -> Result<Option<(ServerMessage, usize)>, TerminalError> {
    loop {
        let Some(message) = ws.next().await else { return Ok(None) };
        match message.map_err(TerminalError::WebSocket)? {
            Message::Binary(bytes) => {
                shared.record(Direction::Down, ws_wire_bytes(bytes.len(), false));
                return decode_server(&bytes).map(|m| Some((m, bytes.len()))).map_err(TerminalError::Protocol);
            }
            Message::Text(text) => {
                shared.record(Direction::Down, ws_wire_bytes(text.len(), false));
                return Err(TerminalError::Unexpected("text message"));
            }
            Message::Ping(payload) => {
                // tungstenite answers with a pong by itself.
                shared.record(Direction::Down, ws_wire_bytes(payload.len(), false));
                shared.record(Direction::Up, ws_wire_bytes(payload.len(), true));
            }
            Message::Pong(payload) => shared.record(Direction::Down, ws_wire_bytes(payload.len(), false)),
            Message::Close(frame) => {
                shared.record(Direction::Down, ws_wire_bytes(2, false));
                // The close code says why even if the Error before it was lost
                // (docs/PROTOCOL.md "Closing").
                if let Some(frame) = frame
                    && let Some(code) = ErrorCode::from_close_code(u16::from(frame.code))
                {
                    return Err(TerminalError::Site { code, message: frame.reason.to_string() });
                }
                return Ok(None);
            }
            Message::Frame(_) => {}
        }
    }
}

/// Why a connection ended.
enum Outcome {
    /// The terminal asked to close.
    Closed,
    /// The site redirected the session.
    Redirect(String),
    /// The connection failed; reconnect unless the error is fatal.
    Lost(TerminalError),
}

struct Session {
    shared: Arc<Shared>,
    events: mpsc::Sender<TerminalEvent>,
    close: watch::Receiver<bool>,
    token: String,
    options: TerminalOptions,
    /// The connection opened ahead of a move the site announced, until its Redirect uses it.
    prepared: Option<Prepared>,
}

impl Session {
    /// Delivers an event, waiting while the channel is full, unless the terminal closes.
    async fn emit(&mut self, event: TerminalEvent) {
        let events = self.events.clone();
        tokio::select! {
            _ = events.send(event) => {}
            _ = self.close.wait_for(|closing| *closing) => {}
        }
    }

    fn closing(&self) -> bool {
        self.shared.lock().closing
    }

    async fn run(mut self, first: (Link, Vec<TerminalEvent>)) {
        let (mut link, connected) = first;
        for event in connected {
            self.emit(event).await;
        }
        loop {
            let outcome = self.serve(&mut link).await;
            self.shared.lock().connected = false;
            // Make before break: after a Redirect, the connection opened while the phone's copy ran carries the
            // Hello at once, and the old one closes after.
            if let Outcome::Redirect(url) = &outcome {
                self.emit(TerminalEvent::Redirected { url: url.clone() }).await;
                if let Some(next) = self.switch(url).await {
                    let old = std::mem::replace(&mut link, next);
                    tokio::spawn(async move {
                        let mut ws = old.ws;
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    });
                    continue;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), link.ws.close(None)).await;
            let (url, lost) = match outcome {
                Outcome::Closed => break,
                Outcome::Redirect(url) => (url, false),
                Outcome::Lost(error) => {
                    let fatal = error.is_fatal();
                    tracing::warn!(error = %error_chain(&error), fatal, "terminal session lost");
                    self.emit(TerminalEvent::Error { message: error_chain(&error), fatal }).await;
                    if fatal {
                        break;
                    }
                    (link.url.clone(), true)
                }
            };
            match self.reconnect(&url, lost).await {
                Some(next) => link = next,
                None => break,
            }
        }
        {
            let mut s = self.shared.lock();
            s.ended = true;
            s.connected = false;
        }
        // Never wait here: a reader that stopped reading still sees the channel end.
        let _ = self.events.try_send(TerminalEvent::Closed);
    }

    /// The session on the connection prepared for a move to `url`, if there is one and the site welcomes it there
    /// (else the caller reconnects as for any Redirect).
    async fn switch(&mut self, url: &str) -> Option<Link> {
        let prepared = self.prepared.take().filter(|p| p.url == url)?;
        let timeout = self.options.connect_timeout;
        let ws = match tokio::time::timeout(timeout, prepared.task).await {
            Ok(Ok(Ok(ws))) => ws,
            Ok(Ok(Err(error))) => {
                tracing::info!(error = %error_chain(&error), "the prepared connection failed; reconnecting");
                return None;
            }
            _ => return None,
        };
        let resume = self.resume_state();
        match open_on(&self.shared, Some(ws), url, &self.token, resume, timeout).await {
            Ok((link, events)) => {
                {
                    let mut s = self.shared.lock();
                    s.reconnects += 1;
                    s.prepared_handoffs += 1;
                }
                for event in events {
                    self.emit(event).await;
                }
                Some(link)
            }
            Err(error) => {
                tracing::info!(error = %error_chain(&error), "the prepared connection was not welcomed; reconnecting");
                None
            }
        }
    }

    /// What this terminal's screen holds, for a Hello on a new connection.
    fn resume_state(&self) -> Option<Resume> {
        let s = self.shared.lock();
        let screen_hash = match s.hashed {
            Some((seq, hash)) if seq == s.last_frame_seq => hash,
            _ => s.screen.hash(),
        };
        Some(Resume { last_frame_seq: s.last_frame_seq, screen_hash })
    }

    /// Opens a new connection to `url` with the current resume state, retrying with backoff.
    /// `lost`: the connection was lost (not redirected), so where the phone runs is asked first, when it can be.
    async fn reconnect(&mut self, url: &str, lost: bool) -> Option<Link> {
        let mut backoff = Duration::from_millis(250);
        let mut target = url.to_owned();
        let located_until = self.options.locate.as_ref().map(|_| Instant::now() + LOCATED_RECONNECT_FOR);
        if lost
            && let Some(locate) = &self.options.locate
            && let Some(now) = locate().await
        {
            target = now;
        }
        // With the control service to ask, a site that does not welcome promptly is passed for its answer.
        let within = match located_until {
            Some(_) => self.options.connect_timeout.min(LOCATED_CONNECT_WITHIN),
            None => self.options.connect_timeout,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.closing() {
                return None;
            }
            let url = target.as_str();
            let resume = self.resume_state();
            match open(&self.shared, url, &self.token, resume, within).await {
                Ok((link, connected)) => {
                    self.shared.lock().reconnects += 1;
                    for event in connected {
                        self.emit(event).await;
                    }
                    return Some(link);
                }
                Err(error) => {
                    let out_of_time = match located_until {
                        Some(until) => Instant::now() >= until,
                        None => attempt >= self.options.reconnect_attempts.max(1),
                    };
                    // Told the phone is not there (yet): with the control service to ask, it is somewhere soon.
                    let located = self.options.locate.is_some()
                        && matches!(error, TerminalError::Site { code: ErrorCode::NotHere, .. });
                    let fatal = (error.is_fatal() && !located) || out_of_time;
                    tracing::warn!(url, attempt, error = %error_chain(&error), "reconnect failed");
                    if fatal {
                        self.emit(TerminalEvent::Error { message: error_chain(&error), fatal: true }).await;
                        return None;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.close.wait_for(|closing| *closing) => return None,
            }
            match &self.options.locate {
                // The phone may run elsewhere now (its site failed): ask, and retry soon rather than back off far.
                Some(locate) => {
                    if let Some(now) = locate().await {
                        target = now;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                None => backoff *= 2,
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, link: &mut Link) -> Outcome {
        let mut nonce = 0u64;
        let mut pings: VecDeque<(u64, std::time::Instant)> = VecDeque::new();
        loop {
            if let Err(error) = self.flush(link, &mut nonce, &mut pings).await {
                return Outcome::Lost(error);
            }
            if self.closing() {
                return Outcome::Closed;
            }
            let keepalive_at = self.options.keepalive.map(|period| link.last_sent + period);
            let keepalive = async move {
                match keepalive_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // An input the site does not acknowledge within ANSWER_WITHIN: the site is gone (a stopped process, a
            // partition) even if its connection looks open.
            let unanswered_at = {
                let s = self.shared.lock();
                (s.acked < link.sent_upto).then(|| link.input_sent_at.map(|at| at + ANSWER_WITHIN)).flatten()
            };
            let unanswered = async move {
                match unanswered_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let shared = self.shared.clone();
            tokio::select! {
                () = unanswered => {
                    return Outcome::Lost(TerminalError::Timeout("the site did not acknowledge an input"));
                }
                message = read(&shared, &mut link.ws) => {
                    let (message, bytes) = match message {
                        Ok(Some(message)) => message,
                        Ok(None) => return Outcome::Lost(TerminalError::Unexpected("close")),
                        Err(error) => return Outcome::Lost(error),
                    };
                    if let Some(outcome) = self.handle(link, message, bytes, &mut pings).await {
                        return outcome;
                    }
                }
                () = shared.wake.notified() => {}
                () = keepalive => {
                    shared.lock().ping_wanted = true;
                }
            }
        }
    }

    /// Sends whatever the shared state asks for: sleep/wake changes, unsent inputs, pings.
    async fn flush(
        &mut self,
        link: &mut Link,
        nonce: &mut u64,
        pings: &mut VecDeque<(u64, std::time::Instant)>,
    ) -> Result<(), TerminalError> {
        let mut out = Vec::new();
        {
            let mut s = self.shared.lock();
            if s.asleep != link.asleep_sent {
                out.push(if s.asleep { ClientMessage::Sleep } else { ClientMessage::Wake });
                link.asleep_sent = s.asleep;
            }
            if let Some(display) = s.display
                && link.display_sent != Some(display)
            {
                out.push(ClientMessage::Display(display));
                link.display_sent = Some(display);
            }
            for (seq, input) in s.pending.iter().filter(|(seq, _)| *seq > link.sent_upto) {
                out.push(ClientMessage::Input { seq: *seq, input: input.clone() });
            }
            if let Some((seq, _)) = s.pending.back() {
                if *seq > link.sent_upto && s.acked >= link.sent_upto {
                    link.input_sent_at = Some(Instant::now());
                }
                link.sent_upto = link.sent_upto.max(*seq);
            }
            if std::mem::take(&mut s.ping_wanted) {
                *nonce += 1;
                out.push(ClientMessage::Ping { nonce: *nonce });
            }
            if std::mem::take(&mut s.tell_prepared) {
                out.push(ClientMessage::Prepared);
            }
        }
        for msg in &out {
            if let ClientMessage::Ping { nonce } = msg {
                if pings.len() == MAX_PINGS_IN_FLIGHT {
                    pings.pop_front();
                }
                pings.push_back((*nonce, std::time::Instant::now()));
            }
            send(&self.shared, &mut link.ws, msg).await?;
            link.last_sent = Instant::now();
        }
        Ok(())
    }

    /// Handles one message; `Some` ends the connection.
    async fn handle(
        &mut self,
        link: &mut Link,
        message: ServerMessage,
        bytes: usize,
        pings: &mut VecDeque<(u64, std::time::Instant)>,
    ) -> Option<Outcome> {
        match message {
            ServerMessage::FrameUpdate { seq, tiles } => {
                let applied = {
                    let mut s = self.shared.lock();
                    let started = Instant::now();
                    match s.screen.apply(&tiles) {
                        Ok(()) => {
                            s.decode_ns += started.elapsed().as_nanos() as u64;
                            s.last_frame_seq = seq;
                            s.frames += 1;
                            // Kept only while a prepared connection may still carry the handoff.
                            let live = self.prepared.as_ref().is_some_and(|p| {
                                p.at.elapsed() < PREPARED_FOR && (!p.task.is_finished() || s.prepare_joined)
                            });
                            s.hashed = live.then(|| (seq, s.screen.hash()));
                            Ok(())
                        }
                        Err(error) => Err(error),
                    }
                };
                if let Err(error) = applied {
                    return Some(Outcome::Lost(TerminalError::Protocol(error)));
                }
                // Ack first: the site's next frame should not wait on whoever reads events.
                // (The screen hash is computed only when a resume needs it: it costs
                // milliseconds on a full screen.)
                if let Err(error) = send(&self.shared, &mut link.ws, &ClientMessage::FrameAck { seq }).await {
                    return Some(Outcome::Lost(error));
                }
                link.last_sent = Instant::now();
                let copies = tiles.iter().filter(|t| matches!(t.data, vmi_protocol::TileData::Copy { .. })).count();
                self.emit(TerminalEvent::Frame { seq, tiles: tiles.len(), copies, bytes }).await;
            }
            ServerMessage::InputAck { seq } => {
                {
                    let mut s = self.shared.lock();
                    if !s.durable_acks {
                        while s.pending.front().is_some_and(|&(pending, _)| pending <= seq) {
                            s.pending.pop_front();
                        }
                    }
                    s.acked = s.acked.max(seq);
                    // Progress: the site is there; the clock for what is still unanswered starts again.
                    link.input_sent_at = (s.acked < link.sent_upto).then(Instant::now);
                }
                self.emit(TerminalEvent::InputAcked { seq }).await;
            }
            ServerMessage::InputDurable { seq } => {
                {
                    let mut s = self.shared.lock();
                    while s.pending.front().is_some_and(|&(pending, _)| pending <= seq) {
                        s.pending.pop_front();
                    }
                    s.durable = s.durable.max(seq);
                }
                self.emit(TerminalEvent::InputDurable { seq }).await;
            }
            ServerMessage::Notification { title, body, at_ms } => {
                self.emit(TerminalEvent::Notification { title, body, at_ms }).await;
            }
            ServerMessage::Redirect { url } => return Some(Outcome::Redirect(url)),
            ServerMessage::Prepare { url, ticket } => {
                // A later move replaces an earlier one's connection (which its site closes when that move ends).
                if let Some(old) = self.prepared.take() {
                    old.task.abort();
                }
                self.shared.lock().prepare_joined = false;
                self.prepared = Some(prepare(&self.shared, url, self.token.clone(), ticket));
                // The handoff's Hello will carry the screen's hash: take it now, and after each frame until then.
                let mut s = self.shared.lock();
                s.hashed = Some((s.last_frame_seq, s.screen.hash()));
            }
            ServerMessage::Screen { width, height } => {
                self.shared.lock().screen = Screen::new(width, height);
                self.emit(TerminalEvent::Screen { width, height }).await;
            }
            ServerMessage::Clipboard { text } => self.emit(TerminalEvent::Clipboard { text }).await,
            ServerMessage::Pong { nonce } => {
                if let Some(i) = pings.iter().position(|&(n, _)| n == nonce) {
                    let (_, sent) = pings.remove(i)?;
                    let rtt_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.shared.lock().latency_us = Some(rtt_us);
                    self.emit(TerminalEvent::Latency { rtt_us }).await;
                }
            }
            ServerMessage::Error { code, message } => {
                return Some(Outcome::Lost(TerminalError::Site { code, message }));
            }
            ServerMessage::Welcome { .. } => {
                return Some(Outcome::Lost(TerminalError::Unexpected("second Welcome")));
            }
            ServerMessage::Joined => {
                return Some(Outcome::Lost(TerminalError::Unexpected("Joined on a session that joined nothing")));
            }
        }
        None
    }
}

pub(crate) use vmi_engine::error_chain;
