//! The byte encoding of messages (docs/PROTOCOL.md, "Encoding").
//!
//! A message is a one-byte type tag followed by its fields, little-endian, with no padding
//! and no length prefix: the WebSocket frame that carries it gives its length. Decoding
//! reads the fields in order through a reader that checks every length against the
//! limits and against the bytes that are left *before* it allocates, so a hostile message
//! cannot make a receiver allocate much more than its own size. A decoded message always
//! re-encodes to exactly the bytes it came from (the encoding is canonical).

use std::ops::RangeInclusive;

use crate::error::ProtocolError;
use crate::message::{
    ClientMessage, Display, ErrorCode, Input, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Resume, ServerMessage, Tile,
    TileData, TouchPhase,
};

/// Largest message, in bytes (16 MiB).
pub const MAX_MESSAGE_LEN: usize = 16 << 20;
/// Largest string field, in bytes of UTF-8.
pub const MAX_STRING_LEN: usize = 4096;
/// Largest clipboard text, in bytes of UTF-8 (a string's length is a `u16`).
pub const MAX_CLIPBOARD_LEN: usize = u16::MAX as usize;
/// Largest device token, in bytes of UTF-8.
pub const MAX_TOKEN_LEN: usize = 512;
/// Largest tile width or height, in pixels.
pub const MAX_TILE_SIDE: u16 = 4096;
/// Largest number of tiles in one frame update.
pub const MAX_TILES: usize = 65536;
/// Protocol versions this crate speaks.
pub const SUPPORTED_VERSIONS: RangeInclusive<u16> = OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION;

/// Largest LZ4 block accepted for a tile of `raw_len` uncompressed bytes: the LZ4 worst
/// case, `raw_len + raw_len / 255 + 16`.
pub const fn lz4_max_len(raw_len: usize) -> usize {
    raw_len + raw_len / 255 + 16
}

/// `Ok` when this crate speaks protocol `version`, else
/// [`ProtocolError::UnsupportedVersion`] (a site then answers [`ErrorCode::Version`]).
pub fn check_version(version: u16) -> Result<(), ProtocolError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion { found: version, supported: SUPPORTED_VERSIONS })
    }
}

// Type tags: terminal → site.
const HELLO: u8 = 0x01;
const INPUT: u8 = 0x02;
const FRAME_ACK: u8 = 0x03;
const SLEEP: u8 = 0x04;
const WAKE: u8 = 0x05;
const PING: u8 = 0x06;
const DISPLAY: u8 = 0x07;
const JOIN: u8 = 0x08;
const PREPARED: u8 = 0x09;
// Type tags: site → terminal.
const WELCOME: u8 = 0x81;
const FRAME_UPDATE: u8 = 0x82;
const INPUT_ACK: u8 = 0x83;
const NOTIFICATION: u8 = 0x84;
const REDIRECT: u8 = 0x85;
const PONG: u8 = 0x86;
const ERROR: u8 = 0x87;
const INPUT_DURABLE: u8 = 0x88;
const SCREEN: u8 = 0x89;
const CLIPBOARD: u8 = 0x8a;
const PREPARE: u8 = 0x8b;
const JOINED: u8 = 0x8c;

const INPUT_TOUCH: u8 = 0;
const INPUT_KEY: u8 = 1;
/// A touch of a finger other than the first (version 3): pointer 0 is always sent as [`INPUT_TOUCH`].
const INPUT_TOUCH_POINTER: u8 = 2;
const TILE_SOLID: u8 = 0;
const TILE_LZ4: u8 = 1;
const TILE_RAW: u8 = 2;
/// A copy of a rectangle of the screen (version 4).
const TILE_COPY: u8 = 3;
/// x, y, w, h, encoding, and the smallest payload (a Solid colour).
const MIN_TILE_LEN: usize = 2 * 4 + 1 + 4;

/// Encodes a terminal → site message.
///
/// A string longer than its limit ([`MAX_TOKEN_LEN`] for the device token,
/// [`MAX_STRING_LEN`] otherwise) is cut at a character boundary to fit.
pub fn encode_client(msg: &ClientMessage) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        32 + match msg {
            ClientMessage::Hello { device_token, .. } => device_token.len(),
            ClientMessage::Join { device_token, ticket, .. } => device_token.len() + ticket.len(),
            _ => 0,
        },
    ));
    match msg {
        ClientMessage::Hello { version, device_token, resume, asleep, display } => {
            w.u8(HELLO);
            w.u16(*version);
            w.string(device_token, MAX_TOKEN_LEN);
            match resume {
                None => w.u8(0),
                Some(Resume { last_frame_seq, screen_hash }) => {
                    w.u8(1);
                    w.u64(*last_frame_seq);
                    w.u64(*screen_hash);
                }
            }
            w.bool(*asleep);
            // Versions before 3 have no display field: a display cannot be said to them.
            if *version >= 3 {
                match display {
                    None => w.u8(0),
                    Some(d) => {
                        w.u8(1);
                        w.display(d);
                    }
                }
            }
        }
        ClientMessage::Join { version, device_token, ticket } => {
            w.u8(JOIN);
            w.u16(*version);
            w.string(device_token, MAX_TOKEN_LEN);
            w.string(ticket, MAX_TOKEN_LEN);
        }
        ClientMessage::Display(d) => {
            w.u8(DISPLAY);
            w.display(d);
        }
        ClientMessage::Input { seq, input } => {
            w.u8(INPUT);
            w.u64(*seq);
            match input {
                Input::Touch { phase, x, y, pointer } => {
                    w.u8(if *pointer == 0 { INPUT_TOUCH } else { INPUT_TOUCH_POINTER });
                    w.u8(match phase {
                        TouchPhase::Down => 0,
                        TouchPhase::Move => 1,
                        TouchPhase::Up => 2,
                    });
                    w.u16(*x);
                    w.u16(*y);
                    if *pointer != 0 {
                        w.u8(*pointer);
                    }
                }
                Input::Key { code, text } => {
                    w.u8(INPUT_KEY);
                    w.u8(*code);
                    match text {
                        None => w.u8(0),
                        Some(c) => {
                            w.u8(1);
                            w.u32(u32::from(*c));
                        }
                    }
                }
            }
        }
        ClientMessage::FrameAck { seq } => {
            w.u8(FRAME_ACK);
            w.u64(*seq);
        }
        ClientMessage::Sleep => w.u8(SLEEP),
        ClientMessage::Prepared => w.u8(PREPARED),
        ClientMessage::Wake => w.u8(WAKE),
        ClientMessage::Ping { nonce } => {
            w.u8(PING);
            w.u64(*nonce);
        }
    }
    w.0
}

/// Encodes a site → terminal message.
///
/// A string longer than [`MAX_STRING_LEN`] is cut at a character boundary to fit. Tiles
/// are written as given: a caller that builds tiles by hand keeps them within the limits
/// (the [`crate::display::Encoder`] always does), and keeps a frame update under
/// [`MAX_MESSAGE_LEN`] by splitting it.
pub fn encode_server(msg: &ServerMessage) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(server_len_hint(msg)));
    match msg {
        ServerMessage::Welcome { version, width, height, last_input_seq, resumed } => {
            w.u8(WELCOME);
            w.u16(*version);
            w.u16(*width);
            w.u16(*height);
            w.u64(*last_input_seq);
            w.bool(*resumed);
        }
        ServerMessage::FrameUpdate { seq, tiles } => {
            w.u8(FRAME_UPDATE);
            w.u64(*seq);
            w.u32(tiles.len() as u32);
            for tile in tiles {
                w.u16(tile.x);
                w.u16(tile.y);
                w.u16(tile.w);
                w.u16(tile.h);
                match &tile.data {
                    TileData::Solid(rgba) => {
                        w.u8(TILE_SOLID);
                        w.u32(*rgba);
                    }
                    TileData::Lz4(bytes) => {
                        w.u8(TILE_LZ4);
                        w.bytes(bytes);
                    }
                    TileData::Raw(bytes) => {
                        w.u8(TILE_RAW);
                        w.bytes(bytes);
                    }
                    TileData::Copy { src_x, src_y } => {
                        w.u8(TILE_COPY);
                        w.u16(*src_x);
                        w.u16(*src_y);
                    }
                }
            }
        }
        ServerMessage::InputAck { seq } => {
            w.u8(INPUT_ACK);
            w.u64(*seq);
        }
        ServerMessage::InputDurable { seq } => {
            w.u8(INPUT_DURABLE);
            w.u64(*seq);
        }
        ServerMessage::Notification { title, body, at_ms } => {
            w.u8(NOTIFICATION);
            w.string(title, MAX_STRING_LEN);
            w.string(body, MAX_STRING_LEN);
            w.u64(*at_ms);
        }
        ServerMessage::Redirect { url } => {
            w.u8(REDIRECT);
            w.string(url, MAX_STRING_LEN);
        }
        ServerMessage::Pong { nonce } => {
            w.u8(PONG);
            w.u64(*nonce);
        }
        ServerMessage::Screen { width, height } => {
            w.u8(SCREEN);
            w.u16(*width);
            w.u16(*height);
        }
        ServerMessage::Clipboard { text } => {
            w.u8(CLIPBOARD);
            w.string(text, MAX_CLIPBOARD_LEN);
        }
        ServerMessage::Joined => w.u8(JOINED),
        ServerMessage::Prepare { url, ticket } => {
            w.u8(PREPARE);
            w.string(url, MAX_STRING_LEN);
            w.string(ticket, MAX_TOKEN_LEN);
        }
        ServerMessage::Error { code, message } => {
            w.u8(ERROR);
            w.u8(code.wire());
            w.string(message, MAX_STRING_LEN);
        }
    }
    w.0
}

/// Decodes a terminal → site message (one whole WebSocket binary frame).
///
/// A `Hello` with a version outside [`SUPPORTED_VERSIONS`] is
/// [`ProtocolError::UnsupportedVersion`], returned as soon as the version is read.
pub fn decode_client(bytes: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let (tag, mut r) = open(bytes)?;
    let msg = match tag {
        HELLO => {
            let version = r.u16("Hello version")?;
            check_version(version)?;
            let device_token = r.string("device token", MAX_TOKEN_LEN)?;
            let resume = if r.option("Hello resume")? {
                Some(Resume {
                    last_frame_seq: r.u64("resume last_frame_seq")?,
                    screen_hash: r.u64("resume screen_hash")?,
                })
            } else {
                None
            };
            let asleep = r.bool("Hello asleep")?;
            let display = if version >= 3 && r.option("Hello display")? { Some(r.display()?) } else { None };
            ClientMessage::Hello { version, device_token, resume, asleep, display }
        }
        JOIN => {
            let version = r.u16("Join version")?;
            check_version(version)?;
            if version < 4 {
                return Err(bad("Join version (4 or later)", version));
            }
            let device_token = r.string("device token", MAX_TOKEN_LEN)?;
            let ticket = r.string("Join ticket", MAX_TOKEN_LEN)?;
            ClientMessage::Join { version, device_token, ticket }
        }
        DISPLAY => ClientMessage::Display(r.display()?),
        INPUT => {
            let seq = r.u64("input seq")?;
            let input = match r.u8("input kind")? {
                kind @ (INPUT_TOUCH | INPUT_TOUCH_POINTER) => {
                    let phase = match r.u8("touch phase")? {
                        0 => TouchPhase::Down,
                        1 => TouchPhase::Move,
                        2 => TouchPhase::Up,
                        other => return Err(bad("touch phase", other)),
                    };
                    let (x, y) = (r.u16("touch x")?, r.u16("touch y")?);
                    let pointer = if kind == INPUT_TOUCH_POINTER { r.u8("touch pointer")? } else { 0 };
                    // Canonical: the first finger is always a plain touch.
                    if kind == INPUT_TOUCH_POINTER && pointer == 0 {
                        return Err(bad("touch pointer (0 is sent as a plain touch)", 0u8));
                    }
                    Input::Touch { phase, x, y, pointer }
                }
                INPUT_KEY => {
                    let code = r.u8("key code")?;
                    let text = if r.option("key text")? {
                        let scalar = r.u32("key text")?;
                        Some(char::from_u32(scalar).ok_or_else(|| bad("key text char", scalar))?)
                    } else {
                        None
                    };
                    Input::Key { code, text }
                }
                other => return Err(bad("input kind", other)),
            };
            ClientMessage::Input { seq, input }
        }
        FRAME_ACK => ClientMessage::FrameAck { seq: r.u64("frame ack seq")? },
        SLEEP => ClientMessage::Sleep,
        PREPARED => ClientMessage::Prepared,
        WAKE => ClientMessage::Wake,
        PING => ClientMessage::Ping { nonce: r.u64("ping nonce")? },
        other => return Err(ProtocolError::UnknownType(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Decodes a site → terminal message (one whole WebSocket binary frame).
///
/// A `Welcome` with a version outside [`SUPPORTED_VERSIONS`] is
/// [`ProtocolError::UnsupportedVersion`]. Tiles are checked against the limits of
/// docs/PROTOCOL.md; whether they lie inside the screen is checked by
/// [`crate::display::Screen::apply`], which knows the screen.
pub fn decode_server(bytes: &[u8]) -> Result<ServerMessage, ProtocolError> {
    let (tag, mut r) = open(bytes)?;
    let msg = match tag {
        WELCOME => {
            let version = r.u16("Welcome version")?;
            check_version(version)?;
            ServerMessage::Welcome {
                version,
                width: r.u16("Welcome width")?,
                height: r.u16("Welcome height")?,
                last_input_seq: r.u64("Welcome last_input_seq")?,
                resumed: r.bool("Welcome resumed")?,
            }
        }
        FRAME_UPDATE => {
            let seq = r.u64("frame seq")?;
            let count = r.u32("tile count")? as usize;
            if count > MAX_TILES {
                return Err(ProtocolError::TooLarge { what: "tile count", limit: MAX_TILES, found: count });
            }
            // Every tile takes at least MIN_TILE_LEN bytes: refuse a count the bytes cannot
            // hold before reserving room for it.
            r.need(count * MIN_TILE_LEN, "tiles")?;
            let mut tiles = Vec::with_capacity(count);
            for _ in 0..count {
                tiles.push(r.tile()?);
            }
            ServerMessage::FrameUpdate { seq, tiles }
        }
        INPUT_ACK => ServerMessage::InputAck { seq: r.u64("input ack seq")? },
        INPUT_DURABLE => ServerMessage::InputDurable { seq: r.u64("input durable seq")? },
        NOTIFICATION => ServerMessage::Notification {
            title: r.string("notification title", MAX_STRING_LEN)?,
            body: r.string("notification body", MAX_STRING_LEN)?,
            at_ms: r.u64("notification at_ms")?,
        },
        REDIRECT => ServerMessage::Redirect { url: r.string("redirect url", MAX_STRING_LEN)? },
        PONG => ServerMessage::Pong { nonce: r.u64("pong nonce")? },
        SCREEN => ServerMessage::Screen { width: r.u16("screen width")?, height: r.u16("screen height")? },
        CLIPBOARD => ServerMessage::Clipboard { text: r.string("clipboard text", MAX_CLIPBOARD_LEN)? },
        JOINED => ServerMessage::Joined,
        PREPARE => ServerMessage::Prepare {
            url: r.string("prepare url", MAX_STRING_LEN)?,
            ticket: r.string("prepare ticket", MAX_TOKEN_LEN)?,
        },
        ERROR => {
            let code = match r.u8("error code")? {
                1 => ErrorCode::Unauthorized,
                2 => ErrorCode::Version,
                3 => ErrorCode::BadMessage,
                4 => ErrorCode::NotHere,
                5 => ErrorCode::PhoneDown,
                6 => ErrorCode::Internal,
                other => return Err(bad("error code", other)),
            };
            ServerMessage::Error { code, message: r.string("error message", MAX_STRING_LEN)? }
        }
        other => return Err(ProtocolError::UnknownType(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Exact size for frame updates (they can be megabytes), a small guess for the rest.
fn server_len_hint(msg: &ServerMessage) -> usize {
    match msg {
        ServerMessage::FrameUpdate { tiles, .. } => {
            13 + tiles
                .iter()
                .map(|t| match &t.data {
                    TileData::Solid(_) | TileData::Copy { .. } => MIN_TILE_LEN,
                    TileData::Lz4(b) | TileData::Raw(b) => MIN_TILE_LEN + b.len(),
                })
                .sum::<usize>()
        }
        ServerMessage::Notification { title, body, .. } => 16 + title.len() + body.len(),
        ServerMessage::Redirect { url } => 4 + url.len(),
        ServerMessage::Error { message, .. } => 4 + message.len(),
        _ => 32,
    }
}

fn bad(what: &'static str, value: impl Into<u64>) -> ProtocolError {
    ProtocolError::BadValue { what, value: value.into() }
}

/// Checks the message size and splits off the type tag.
fn open(bytes: &[u8]) -> Result<(u8, Reader<'_>), ProtocolError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLarge { what: "message", limit: MAX_MESSAGE_LEN, found: bytes.len() });
    }
    let (&tag, rest) = bytes.split_first().ok_or(ProtocolError::Empty)?;
    Ok((tag, Reader { rest }))
}

/// Appends little-endian fields.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn display(&mut self, d: &Display) {
        self.u16(d.width);
        self.u16(d.height);
        self.u16(d.density);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    /// `u16` length + UTF-8, cut to `limit` bytes at a character boundary.
    fn string(&mut self, s: &str, limit: usize) {
        let mut end = s.len().min(limit);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    /// `u32` length + bytes.
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// Reads fields from the bytes after the type tag, checking each length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn need(&self, needed: usize, what: &'static str) -> Result<(), ProtocolError> {
        if needed > self.rest.len() {
            Err(ProtocolError::Truncated { what, needed, available: self.rest.len() })
        } else {
            Ok(())
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        self.need(n, what)?;
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(ProtocolError::Truncated { what, needed: N, available: self.rest.len() }),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u8` that must be 0 or 1.
    fn bool(&mut self, what: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad(what, other)),
        }
    }

    /// The presence byte of an `Option`.
    fn option(&mut self, what: &'static str) -> Result<bool, ProtocolError> {
        self.bool(what)
    }

    /// A display's fields as sent; whether they are in range is the site's to check ([`Display::check`]), so it
    /// can say which is wrong.
    fn display(&mut self) -> Result<Display, ProtocolError> {
        Ok(Display {
            width: self.u16("display width")?,
            height: self.u16("display height")?,
            density: self.u16("display density")?,
        })
    }

    fn string(&mut self, what: &'static str, limit: usize) -> Result<String, ProtocolError> {
        let len = usize::from(self.u16(what)?);
        if len > limit {
            return Err(ProtocolError::TooLarge { what, limit, found: len });
        }
        let bytes = self.take(len, what)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ProtocolError::BadUtf8 { what })?;
        Ok(s.to_owned())
    }

    fn tile_side(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let side = self.u16(what)?;
        if side == 0 {
            return Err(bad(what, side));
        }
        if side > MAX_TILE_SIDE {
            return Err(ProtocolError::TooLarge { what, limit: usize::from(MAX_TILE_SIDE), found: usize::from(side) });
        }
        Ok(side)
    }

    fn tile(&mut self) -> Result<Tile, ProtocolError> {
        let x = self.u16("tile x")?;
        let y = self.u16("tile y")?;
        let w = self.tile_side("tile width")?;
        let h = self.tile_side("tile height")?;
        let raw_len = usize::from(w) * usize::from(h) * 4;
        let data = match self.u8("tile encoding")? {
            TILE_SOLID => TileData::Solid(self.u32("solid tile colour")?),
            TILE_LZ4 => {
                let len = self.u32("lz4 tile length")? as usize;
                let limit = lz4_max_len(raw_len);
                if len > limit {
                    return Err(ProtocolError::TooLarge { what: "lz4 tile data", limit, found: len });
                }
                TileData::Lz4(self.take(len, "lz4 tile data")?.to_vec())
            }
            TILE_RAW => {
                let len = self.u32("raw tile length")?;
                if len as usize != raw_len {
                    return Err(bad("raw tile length", len));
                }
                TileData::Raw(self.take(raw_len, "raw tile data")?.to_vec())
            }
            TILE_COPY => TileData::Copy { src_x: self.u16("copy source x")?, src_y: self.u16("copy source y")? },
            other => return Err(bad("tile encoding", other)),
        };
        Ok(Tile { x, y, w, h, data })
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() { Ok(()) } else { Err(ProtocolError::TrailingBytes(self.rest.len())) }
    }
}

#[cfg(test)]
mod tests;
