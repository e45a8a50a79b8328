//! The messages of the terminal protocol (docs/PROTOCOL.md). Each WebSocket binary
//! message carries exactly one, encoded by [`crate::encode_client`] /
//! [`crate::encode_server`].

/// Version of the protocol this crate speaks. Version 3 added the terminal's display (Hello, `Display`, the
/// site's `Screen`), touch pointers, the volume keys and `Clipboard`; version 4 the copy tile
/// ([`TileData::Copy`]: a scrolled region moves on the terminal, only the strip it uncovers is sent) and the
/// prepared handoff of a moving phone ([`ServerMessage::Prepare`], [`ClientMessage::Join`]).
pub const PROTOCOL_VERSION: u16 = 4;
/// The oldest protocol version a site still speaks: a version-1 terminal gets no [`ServerMessage::InputDurable`]
/// and forgets an input once it is applied.
pub const OLDEST_PROTOCOL_VERSION: u16 = 1;

/// A touch phase (the engine's type: one home for both).
pub use vmi_engine::TouchPhase;

/// One input from the terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A touch or mouse event at phone-screen coordinates.
    Touch {
        /// Down, move or up.
        phase: TouchPhase,
        /// Pixel column.
        x: u16,
        /// Pixel row.
        y: u16,
        /// Which finger: 0 for the first (and a mouse), 1 for a second held at the same time, … (version 3 on).
        pointer: u8,
    },
    /// A key: a code from docs/GUEST_ABI.md ("Key codes"), with the text it types.
    Key {
        /// Key code (0 = text only).
        code: u8,
        /// The character typed, if any.
        text: Option<char>,
    },
}

impl Input {
    /// The event the phone gets for this input: the one mapping of wire inputs to engine
    /// events, shared by the site and the offline terminal.
    pub fn to_event(&self) -> vmi_engine::Event {
        match *self {
            Input::Touch { phase, x, y, pointer } => {
                vmi_engine::Event::Touch { phase, x: i32::from(x), y: i32::from(y), pointer }
            }
            Input::Key { code, text } => vmi_engine::Event::Key { code: vmi_engine::KeyCode::from_code(code), text },
        }
    }
}

/// Largest sequence number (inputs and frame updates): 2^53 − 1, so a JavaScript
/// terminal holds every number exactly. Numbers never wrap: at a thousand inputs a second
/// a device reaches it in 285,000 years.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// What a reconnecting terminal already has, so the site sends only what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Resume {
    /// Sequence number of the last frame update the terminal applied (0: none).
    pub last_frame_seq: u64,
    /// [`crate::display::screen_hash`] of the terminal's screen contents after that frame,
    /// so a site can tell whether the terminal's screen is current.
    pub screen_hash: u64,
}

/// The terminal's display, as the device measures it (version 3 on): the phone's screen follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Display {
    /// Width in CSS pixels (points): what the terminal has for the phone's screen.
    pub width: u16,
    /// Height in CSS pixels.
    pub height: u16,
    /// Device pixels per CSS pixel × 100 (`devicePixelRatio`: 300 on many phones).
    pub density: u16,
}

/// Sides a display may have, in CSS pixels.
pub const DISPLAY_SIDES: std::ops::RangeInclusive<u16> = 64..=4096;
/// Densities a display may have (× 100).
pub const DISPLAY_DENSITIES: std::ops::RangeInclusive<u16> = 50..=1000;
/// The longest side, in pixels, a phone's screen gets from a display.
pub const MAX_PHONE_SIDE: u32 = 2048;

/// The screen a phone gets for a display, in the one place both ends agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhoneScreen {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The phone's pixels per CSS pixel × 100 (the guest sizes text and targets by it).
    pub density: u32,
}

impl Display {
    /// Whether each field is within its range; else what is wrong, for the error a site answers.
    pub fn check(&self) -> Result<(), String> {
        if !DISPLAY_SIDES.contains(&self.width) || !DISPLAY_SIDES.contains(&self.height) {
            return Err(format!(
                "display {}x{} CSS px: each side must be within {}..={}",
                self.width,
                self.height,
                DISPLAY_SIDES.start(),
                DISPLAY_SIDES.end()
            ));
        }
        if !DISPLAY_DENSITIES.contains(&self.density) {
            return Err(format!(
                "display density {} (x100): must be within {}..={}",
                self.density,
                DISPLAY_DENSITIES.start(),
                DISPLAY_DENSITIES.end()
            ));
        }
        Ok(())
    }

    /// The phone's screen for this display: the display's CSS pixels at its density, but at most 2 pixels per
    /// CSS pixel (sharp on any phone; past that a frame costs more than the eye gains) and at least 1, with the
    /// longest side at most [`MAX_PHONE_SIDE`].
    pub fn phone_screen(&self) -> PhoneScreen {
        let mut scale = (f64::from(self.density) / 100.0).clamp(1.0, 2.0);
        let long = f64::from(self.width.max(self.height).max(1));
        scale = scale.min(f64::from(MAX_PHONE_SIDE) / long);
        let px = |css: u16| ((f64::from(css) * scale).round() as u32).clamp(1, MAX_PHONE_SIDE);
        PhoneScreen { width: px(self.width), height: px(self.height), density: (scale * 100.0).round() as u32 }
    }
}

/// Messages from a terminal to a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// First message: who the terminal is and what it has.
    Hello {
        /// Protocol version the terminal speaks.
        version: u16,
        /// The device's token (issued by the control service).
        device_token: String,
        /// Resume state, when reconnecting.
        resume: Option<Resume>,
        /// Start asleep (screen off): only notifications are sent.
        asleep: bool,
        /// The terminal's display, when the phone's screen should follow it (version 3 on; none: the phone keeps
        /// its screen and the terminal scales it).
        display: Option<Display>,
    },
    /// First message of a connection prepared for a phone that is moving to this site (version 4 on): the site
    /// checks the token and the `ticket` (from [`ServerMessage::Prepare`]) and holds the connection, answering
    /// nothing, until the terminal's `Hello` on it (after the old site's `Redirect`), which needs no second
    /// check of the token. If the move is called off the site answers `Error(NotHere)` and closes.
    Join {
        /// Protocol version the terminal speaks (4 or later).
        version: u16,
        /// The device's token.
        device_token: String,
        /// The ticket of this one move.
        ticket: String,
    },
    /// The terminal's display changed (a rotation, a resized window): the phone lays its screen out again and
    /// the site answers with [`ServerMessage::Screen`] and a full frame (version 3 on).
    Display(Display),
    /// An input, numbered by the terminal (1, 2, …); the site acknowledges each once it
    /// has been applied, and ignores a number it has already applied.
    Input {
        /// Sequence number.
        seq: u64,
        /// The input.
        input: Input,
    },
    /// The terminal decoded frame `seq`; the site sends at most a few frames ahead of the
    /// last ack, coalescing the rest, so a slow terminal never builds a queue.
    FrameAck {
        /// Sequence number of the frame.
        seq: u64,
    },
    /// The screen went off: send no frames, only notifications.
    Sleep,
    /// The screen is on again: send one up-to-date frame.
    Wake,
    /// The connection this terminal prepared for a move (after [`ServerMessage::Prepare`]) is joined: the old
    /// site may stop the phone for its handoff now (version 4 on).
    Prepared,
    /// Latency probe; answered by [`ServerMessage::Pong`] with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
}

/// How a tile's pixels are carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TileData {
    /// Every pixel is this RGBA colour (bytes R, G, B, A as a little-endian u32).
    Solid(u32),
    /// `w*h*4` RGBA bytes, LZ4 block-compressed.
    Lz4(Vec<u8>),
    /// `w*h*4` RGBA bytes as they are (when compression does not pay).
    Raw(Vec<u8>),
    /// The tile's rectangle takes the pixels the screen has at (`src_x`, `src_y`), same size, as they are when
    /// this tile is applied (source and destination may overlap: a scroll). Version 4 on.
    Copy {
        /// Left column of the source.
        src_x: u16,
        /// Top row of the source.
        src_y: u16,
    },
}

/// A rectangle of the screen with its new pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Left column.
    pub x: u16,
    /// Top row.
    pub y: u16,
    /// Width.
    pub w: u16,
    /// Height.
    pub h: u16,
    /// The pixels.
    pub data: TileData,
}

/// Error codes a site sends before closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The token is unknown or revoked.
    Unauthorized,
    /// The protocol version is not supported.
    Version,
    /// A message could not be decoded or came out of order.
    BadMessage,
    /// This site does not (or no longer) run the user's phone.
    NotHere,
    /// The phone crashed or cannot run.
    PhoneDown,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// The WebSocket close code a site uses when it closes after this error
    /// (docs/PROTOCOL.md, "Closing"): 4000 + the error's wire code, so a terminal learns
    /// why even if the Error message itself was lost.
    pub fn close_code(self) -> u16 {
        4000 + u16::from(self.wire())
    }

    /// Every error code, in wire order.
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::Unauthorized,
        ErrorCode::Version,
        ErrorCode::BadMessage,
        ErrorCode::NotHere,
        ErrorCode::PhoneDown,
        ErrorCode::Internal,
    ];

    /// The error a site's close code stands for (4001–4006), if it stands for one.
    pub fn from_close_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|e| e.close_code() == code)
    }

    /// The error's code on the wire.
    pub fn wire(self) -> u8 {
        match self {
            ErrorCode::Unauthorized => 1,
            ErrorCode::Version => 2,
            ErrorCode::BadMessage => 3,
            ErrorCode::NotHere => 4,
            ErrorCode::PhoneDown => 5,
            ErrorCode::Internal => 6,
        }
    }
}

/// Close code after a `Redirect` or another planned end of a session (RFC 6455: normal).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code when the site shuts down (RFC 6455: going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Messages from a site to a terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// Answer to Hello: the session is open.
    Welcome {
        /// Protocol version the site speaks.
        version: u16,
        /// Phone screen width.
        width: u16,
        /// Phone screen height.
        height: u16,
        /// Highest input sequence number already applied for this device (resend the rest).
        last_input_seq: u64,
        /// Whether the terminal's resume state is current (no full frame follows).
        resumed: bool,
    },
    /// Changed tiles of the screen.
    FrameUpdate {
        /// Sequence number, increasing by one per update sent on this phone.
        seq: u64,
        /// The tiles, applied in order: a [`TileData::Copy`] reads the screen as the tiles before it left it.
        tiles: Vec<Tile>,
    },
    /// Input `seq` (and every one before it) has been applied.
    InputAck {
        /// Sequence number.
        seq: u64,
    },
    /// Input `seq` (and every one before it) is durable: kept where a failover of the phone's site brings it back
    /// (the phone's standby copy on another site, else the site's disk). Until then the terminal keeps the input
    /// and resends it after any reconnect above `Welcome.last_input_seq`. Version 2 on.
    InputDurable {
        /// Sequence number.
        seq: u64,
    },
    /// Something the user should know, sent even while the terminal sleeps.
    Notification {
        /// Title (e.g. sender).
        title: String,
        /// Body (e.g. subject).
        body: String,
        /// When it was raised, ms since the Unix epoch.
        at_ms: u64,
    },
    /// The phone moved: reconnect to `url` with the resume state.
    Redirect {
        /// WebSocket URL of the new site.
        url: String,
    },
    /// Answer to Ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The phone's screen is now `width × height`: the next frame update repaints all of it (version 3 on; an
    /// older terminal is closed to reconnect and read the size in `Welcome`).
    Screen {
        /// Width in pixels.
        width: u16,
        /// Height in pixels.
        height: u16,
    },
    /// The phone is moving to the site at `url` (a live migration has begun): open a connection there now and
    /// say [`ClientMessage::Join`] with `ticket`, then keep using this one until its `Redirect` (version 4 on).
    /// The ticket is good for this one move only; a terminal that prepares nothing follows the `Redirect` as
    /// before.
    Prepare {
        /// WebSocket URL of the site the phone is moving to.
        url: String,
        /// The move's ticket.
        ticket: String,
    },
    /// Answer to a good [`ClientMessage::Join`]: the connection is held for the move (version 4 on).
    Joined,
    /// The phone copied text: put it on the terminal's clipboard (version 3 on).
    Clipboard {
        /// The text (at most [`crate::MAX_CLIPBOARD_LEN`] bytes).
        text: String,
    },
    /// Something went wrong; the site closes the session after this.
    Error {
        /// What kind.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}
