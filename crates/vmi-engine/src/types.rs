//! Plain data that crosses the engine boundary.

use vmi_snapshot::SnapshotId;

/// Content hash (blake3) of an image's bytes: an image's identity everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageHash(pub [u8; 32]);

impl ImageHash {
    /// Hashes image bytes.
    pub fn of(bytes: &[u8]) -> ImageHash {
        ImageHash(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex of the whole hash.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ImageHash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ImageHash(out))
    }
}

impl std::fmt::Debug for ImageHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageHash({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ImageHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

/// What an engine learned about an image when it loaded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Content hash of the image bytes.
    pub hash: ImageHash,
    /// Size of the image in bytes.
    pub size_bytes: u64,
    /// Guest ABI version the image speaks.
    pub abi_version: u32,
    /// Linear memory the image starts with, in bytes.
    pub initial_memory_bytes: u64,
    /// Largest memory the image declares (None: unbounded, capped by [`VmConfig`]).
    pub max_memory_bytes: Option<u64>,
    /// Mutable globals captured in snapshots (including non-exported ones).
    pub captured_globals: u32,
    /// Functions the image defines.
    pub functions: u32,
    /// Host functions the image imports.
    pub imports: Vec<String>,
    /// Engine that loaded it.
    pub engine: &'static str,
}

/// How to run one phone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Screen width in pixels.
    pub width: u32,
    /// Screen height in pixels.
    pub height: u32,
    /// Cap on the phone's memory, in bytes.
    pub memory_limit_bytes: u64,
    /// CPU budget per event, in engine units (wasm: fuel, about one per instruction).
    pub cpu_budget_per_event: u64,
    /// Seed of a fresh phone's RNG. `None` (the default, and what production uses): the
    /// engine draws a new seed from the host's secure random source for every phone it
    /// boots, so no two phones share a stream. `Some` is for deterministic tests and
    /// benchmarks only. A restored phone ignores it and continues its saved stream.
    pub rng_seed: Option<u64>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            width: 720,
            height: 1280,
            memory_limit_bytes: 64 << 20,
            cpu_budget_per_event: 2_000_000_000,
            rng_seed: None,
        }
    }
}

/// Identity of one running phone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    /// The image it runs.
    pub image: ImageHash,
    /// Screen width in pixels.
    pub width: u32,
    /// Screen height in pixels.
    pub height: u32,
}

/// Whether a phone runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmStatus {
    /// Takes events.
    Running,
    /// Stopped by a trap or by its CPU budget; takes no more events.
    Crashed {
        /// What stopped it.
        reason: String,
    },
}

/// Largest screen side, in pixels, a phone may have (configured, attached by its guest or asked by a terminal).
pub const MAX_SCREEN_SIDE: u32 = 8192;

/// Phase of a touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchPhase {
    /// Finger down.
    Down,
    /// Finger moved.
    Move,
    /// Finger up.
    Up,
}

/// A key (docs/GUEST_ABI.md, "Key codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCode {
    /// Types its text only.
    Text = 0,
    /// Erase backwards.
    Backspace = 1,
    /// Enter.
    Enter = 2,
    /// Back.
    Escape = 3,
    /// Left arrow.
    Left = 4,
    /// Right arrow.
    Right = 5,
    /// Up arrow.
    Up = 6,
    /// Down arrow.
    Down = 7,
    /// Home screen.
    Home = 8,
    /// Erase forwards.
    Delete = 9,
    /// The volume-up hardware key.
    VolumeUp = 10,
    /// The volume-down hardware key.
    VolumeDown = 11,
}

impl KeyCode {
    /// The key of an ABI key code (docs/GUEST_ABI.md; the terminal protocol carries the
    /// same numbers); an unknown code types its text only.
    pub fn from_code(code: u8) -> KeyCode {
        match code {
            1 => KeyCode::Backspace,
            2 => KeyCode::Enter,
            3 => KeyCode::Escape,
            4 => KeyCode::Left,
            5 => KeyCode::Right,
            6 => KeyCode::Up,
            7 => KeyCode::Down,
            8 => KeyCode::Home,
            9 => KeyCode::Delete,
            10 => KeyCode::VolumeUp,
            11 => KeyCode::VolumeDown,
            _ => KeyCode::Text,
        }
    }

    /// Parses a key name as written in event scripts and protocols (`enter`, `home`…).
    pub fn from_name(name: &str) -> Option<KeyCode> {
        Some(match name.to_ascii_lowercase().as_str() {
            "backspace" => KeyCode::Backspace,
            "enter" | "return" => KeyCode::Enter,
            "escape" | "esc" | "back" => KeyCode::Escape,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "home" => KeyCode::Home,
            "delete" | "del" => KeyCode::Delete,
            "volume-up" | "volumeup" => KeyCode::VolumeUp,
            "volume-down" | "volumedown" => KeyCode::VolumeDown,
            _ => return None,
        })
    }
}

/// An event delivered to a phone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A touch (or mouse) at screen coordinates.
    Touch {
        /// Down, move or up.
        phase: TouchPhase,
        /// Pixel column.
        x: i32,
        /// Pixel row.
        y: i32,
        /// Which finger (0 for the first or only one, 1 for a second one held at the same time…): a guest
        /// tracks each finger's strokes apart.
        pointer: u8,
    },
    /// A key press.
    Key {
        /// Which key.
        code: KeyCode,
        /// The character it types, if any.
        text: Option<char>,
    },
    /// Timer `id` of the guest is due (engines fire these themselves, see
    /// [`VirtualPhone::fire_due_timers`]).
    Timer(u32),
    /// New mail waits in the mailbox.
    MailArrived,
    /// A terminal is watching again.
    Wake,
    /// No terminal is watching.
    Sleep,
    /// The terminal's display changed (a rotation, a resized window, another device): the guest lays its screen
    /// out again for `width × height` pixels at `density` (pixels per CSS pixel, × 100) and attaches a framebuffer
    /// of that size. Guests of ABI version 1 never get it (docs/GUEST_ABI.md).
    Display {
        /// Screen width in pixels.
        width: u32,
        /// Screen height in pixels.
        height: u32,
        /// Pixels per CSS pixel (point), × 100: 200 on a typical phone.
        density: u32,
    },
}

impl Event {
    /// A key that types `c`.
    pub fn text(c: char) -> Event {
        Event::Key { code: KeyCode::Text, text: Some(c) }
    }
}

/// A rectangle of pixels: damage a phone reports, and what a terminal repaints. It may
/// reach past the screen's edges; the part outside is ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// The rectangle at (`x`, `y`) of `w` × `h` pixels.
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect { x, y, w, h }
    }

    /// Area in pixels.
    pub fn area(&self) -> u64 {
        self.w as u64 * self.h as u64
    }

    /// The smallest rectangle holding both.
    pub fn union(&self, other: &Rect) -> Rect {
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = (self.x + self.w).max(other.x + other.w);
        let y1 = (self.y + self.h).max(other.y + other.h);
        Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
    }

    /// Whether the two share a pixel.
    pub fn intersects(&self, other: &Rect) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }
}

/// A view of the framebuffer at an event boundary.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width*height*4` bytes of RGBA8, rows top to bottom. Empty if the guest never
    /// attached a framebuffer.
    pub rgba: &'a [u8],
    /// Rectangles changed since the previous read, clipped to the screen.
    pub damage: Vec<Rect>,
}

/// A notification raised by the guest for the user's terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Title (e.g. the sender).
    pub title: String,
    /// Body (e.g. the subject).
    pub body: String,
    /// Virtual time it was raised.
    pub at_ns: u64,
}

/// How much a guest log line matters (docs/GUEST_ABI.md, `log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Level 0.
    Error,
    /// Level 1.
    Warn,
    /// Level 2.
    Info,
    /// Level 3.
    Debug,
    /// Level 4, and any level the ABI does not name.
    Trace,
}

impl LogLevel {
    /// The level of the ABI's number (0 error … 4 trace; anything else is trace).
    pub fn from_abi(level: i32) -> LogLevel {
        match level {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    /// Lowercase name (`error`, `warn`, `info`, `debug`, `trace`).
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A line the guest logged, as the engine hands it to the host (bounded and rate-limited,
/// see docs/GUEST_ABI.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// Virtual time it was logged.
    pub at_ns: u64,
    /// The text: UTF-8 (invalid bytes replaced), control characters turned into spaces,
    /// cut to the ABI's line limit.
    pub text: String,
}

/// What crosses from one life of a phone to the next when its memory does not: an image
/// upgrade or rollback, or a fresh start of a phone that crashed (docs/GUEST_ABI.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carryover {
    /// The persistent key-value store, sorted by key.
    pub kv: Vec<(Vec<u8>, Vec<u8>)>,
    /// Mails the guest had not fetched yet, oldest first.
    pub mailbox: Vec<Mail>,
    /// The phone's virtual monotonic time when this was taken: the next life's clock goes
    /// on from here (plus the wall time that passes until it boots), never back.
    pub virtual_ns: u64,
    /// Host wall time when this was taken.
    pub wall_ns: u64,
}

/// A mail for the user's mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// Sender.
    pub from: String,
    /// Subject.
    pub subject: String,
    /// Body text.
    pub body: String,
}

/// Which snapshot to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotRequest {
    /// Every non-zero page.
    Full,
    /// Pages written since the previous snapshot (falls back to full when there is none).
    Incremental,
    /// A live-migration pre-copy round, taken while the phone keeps running: the first
    /// round holds every non-zero page, each later one the pages written since the round
    /// before. The migration ends with an `Incremental` snapshot (the dirty rest) taken
    /// with the phone stopped.
    PreCopy,
    /// Round 0 of a new pre-copy sequence, whatever came before (a migration that was
    /// aborted leaves its sequence open).
    PreCopyStart,
}

/// A snapshot in its file format, with its identity.
#[derive(Clone, Debug)]
pub struct EncodedSnapshot {
    /// blake3 of `bytes`.
    pub id: SnapshotId,
    /// The parent this one is a delta against, for incremental snapshots.
    pub parent: Option<SnapshotId>,
    /// The encoded snapshot (docs/SNAPSHOT_FORMAT.md).
    pub bytes: Vec<u8>,
    /// Pages it carries (data or zero).
    pub pages: usize,
}

/// What a phone uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// Current linear memory size.
    pub memory_bytes: u64,
    /// Events delivered so far (including timers).
    pub events: u64,
    /// CPU units (fuel) the last event used.
    pub cpu_last_event: u64,
    /// CPU units used over the phone's life in this process.
    pub cpu_total: u64,
    /// Armed timers.
    pub timers: u32,
    /// Undelivered notifications.
    pub pending_notifications: u32,
    /// Bytes in the persistent key-value store.
    pub kv_bytes: u64,
    /// Times the phone was woken from hibernation in this process.
    pub wakes: u64,
}
