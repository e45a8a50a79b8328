//! The Seed VMI terminal protocol: the messages a **terminal** (the user's thin device)
//! and a **site** (the edge daemon that runs the user's phone) exchange over a WebSocket,
//! their byte encoding, and the display codec that turns a phone's framebuffer into tiles.
//!
//! The normative description, with a sequence diagram and the exact byte layout, is
//! docs/PROTOCOL.md; a browser terminal implements the same document in JavaScript.
//!
//! This crate is pure: no I/O, no async runtime, no serde. The site daemon and the
//! terminals own the sockets and call in here with whole messages (one per WebSocket
//! binary frame).
//!
//! # Session
//!
//! ```text
//!  terminal                                   site
//!     | -- Hello{version, token, resume?} ------> |
//!     | <------ Welcome{size, last_input_seq} --- |
//!     | <------ FrameUpdate{1, every tile} ------- |  (none if Welcome.resumed)
//!     | -- FrameAck{1} --------------------------> |
//!     | -- Input{seq 1, touch} ------------------> |
//!     | <------ InputAck{1} ---------------------- |
//!     | <------ FrameUpdate{2, changed tiles} ---- |  (at most 2 un-acked; the rest coalesced)
//!     | -- Sleep --------------------------------> |
//!     | <------ Notification --------------------- |  (no frames while asleep)
//!     | -- Wake ---------------------------------> |
//!     | <------ FrameUpdate{3, what changed} ----- |  (exactly one)
//!     | <------ Redirect{url} -------------------- |  (the phone moved)
//!     |           reconnect to url: Hello{resume: last frame + screen hash},
//!     |           resend inputs above Welcome.last_input_seq (the site dedups by seq)
//! ```
//!
//! # Messages
//!
//! [`ClientMessage`] goes from terminal to site, [`ServerMessage`] from site to terminal.
//! [`encode_client`] / [`decode_client`] and [`encode_server`] / [`decode_server`] turn
//! them into bytes and back:
//!
//! ```
//! use vmi_protocol::{ClientMessage, Input, TouchPhase, decode_client, encode_client};
//!
//! let msg = ClientMessage::Input { seq: 1, input: Input::Touch { phase: TouchPhase::Down, x: 100, y: 200, pointer: 0 } };
//! let bytes = encode_client(&msg);
//! assert_eq!(bytes, [0x02, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 0, 200, 0]);
//! assert_eq!(decode_client(&bytes)?, msg);
//! # Ok::<(), vmi_protocol::ProtocolError>(())
//! ```
//!
//! Decoders take untrusted bytes. They never panic, check every length against the
//! [limits](wire) and the bytes left before allocating, and report precisely what was
//! wrong ([`ProtocolError`]). Decoding is canonical: a decoded message re-encodes to the
//! very bytes it came from.
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] travels in `Hello` and `Welcome`. A decoder refuses a `Hello` or
//! `Welcome` outside [`SUPPORTED_VERSIONS`] with [`ProtocolError::UnsupportedVersion`],
//! whose [`ProtocolError::error_code`] is the [`ErrorCode::Version`] a site answers with.
//!
//! # Display
//!
//! The site keeps one [`display::Encoder`] per session and calls
//! [`display::Encoder::encode`] with the rectangles the phone damaged since the last
//! update; it returns only the 64×64 grid tiles whose pixels changed (none for a repaint
//! of identical pixels, and then the site sends nothing). [`display::Encoder::full`] is
//! the first update of a session that is not resumed. The terminal applies the tiles to a
//! [`display::Screen`]:
//!
//! ```
//! use vmi_protocol::display::{Encoder, Rect, Screen};
//!
//! let (w, h) = (100u16, 70u16);
//! let mut phone = vec![0u8; 100 * 70 * 4];
//! let mut encoder = Encoder::new(w, h);
//! let mut screen = Screen::new(w, h);
//! screen.apply(&encoder.full(&phone))?;
//!
//! phone[4 * (10 * 100 + 80)..][..4].copy_from_slice(&[255, 0, 0, 255]); // pixel (80, 10) turns red
//! let tiles = encoder.encode(&phone, &[Rect::new(0, 0, 100, 70)]);
//! assert_eq!(tiles.len(), 1); // only the tile at (64, 0) changed
//! screen.apply(&tiles)?;
//! assert_eq!(screen.rgba(), &phone[..]);
//! assert_eq!(screen.hash(), encoder.hash()); // what Resume.screen_hash compares
//! assert!(encoder.encode(&phone, &[Rect::new(0, 0, 100, 70)]).is_empty()); // nothing new: 0 bytes
//! # Ok::<(), vmi_protocol::ProtocolError>(())
//! ```
//!
//! `examples/codec_measure.rs` measures the tile codecs on screenshots of the phone.

pub mod display;
pub mod error;
pub mod message;
pub mod migration;
pub mod offline;
pub mod wire;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod test_rng;

pub use error::ProtocolError;
pub use message::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, ClientMessage, DISPLAY_DENSITIES, DISPLAY_SIDES, Display, ErrorCode, Input,
    MAX_PHONE_SIDE, MAX_SEQ, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, PhoneScreen, Resume, ServerMessage, Tile,
    TileData, TouchPhase,
};
pub use wire::{
    MAX_CLIPBOARD_LEN, SUPPORTED_VERSIONS, check_version, decode_client, decode_server, encode_client, encode_server,
};
