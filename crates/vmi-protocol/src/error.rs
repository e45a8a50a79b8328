//! Why a message or a tile was refused.

use std::ops::RangeInclusive;

use crate::message::ErrorCode;

/// A message (or a frame update's tiles) that cannot be accepted.
///
/// Every variant says precisely what was wrong, so a peer's bug can be found from a log
/// line. None of them is "need more bytes": a WebSocket frame holds a whole message, so a
/// short message is [`ProtocolError::Truncated`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The message has no bytes at all.
    #[error("empty message")]
    Empty,
    /// The first byte is not a known message type for this direction.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The message ends inside a field.
    #[error("message ends inside {what}: {needed} bytes needed, {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        available: usize,
    },
    /// A length or count is over its limit (docs/PROTOCOL.md, "Limits").
    #[error("{what} too large: {found} (limit {limit})")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// The largest value allowed.
        limit: usize,
        /// The value found.
        found: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        what: &'static str,
    },
    /// A field holds a value outside its domain: an unknown enum tag, a bool other than
    /// 0 or 1, a `char` that is not a Unicode scalar, a zero-size or off-screen tile…
    #[error("bad {what}: {value}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// An LZ4 tile does not decompress to exactly `w*h*4` bytes.
    #[error("LZ4 tile data does not decompress to {expected} bytes")]
    BadLz4 {
        /// The size it must decompress to.
        expected: usize,
    },
    /// A JSON field (an offline checkout's lease or checkin header) does not parse.
    #[error("bad {what}: {reason}")]
    BadJson {
        /// The field.
        what: &'static str,
        /// What the JSON parser said.
        reason: String,
    },
    /// Bytes are left after the last field of the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A Hello or Welcome carries a protocol version this side does not speak.
    #[error("unsupported protocol version {found} (supported {}..={})", supported.start(), supported.end())]
    UnsupportedVersion {
        /// The peer's version.
        found: u16,
        /// The versions this crate speaks.
        supported: RangeInclusive<u16>,
    },
}

impl ProtocolError {
    /// The [`ErrorCode`] a site sends before closing a session over this error:
    /// [`ErrorCode::Version`] for an unsupported version, else [`ErrorCode::BadMessage`].
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::Version,
            _ => ErrorCode::BadMessage,
        }
    }
}
