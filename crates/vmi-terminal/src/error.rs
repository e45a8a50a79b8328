//! What a terminal operation can fail with.

use std::io;
use std::path::PathBuf;

use tokio_tungstenite::tungstenite;
use vmi_protocol::{ErrorCode, ProtocolError};

use crate::script::ScriptError;

/// Every way connecting, running a session or running the `vmi terminal` command fails.
///
/// Messages are short; the cause is in `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// The connection to a site could not be made or its certificate was not the provider's.
    #[error("cannot reach {url}")]
    Dial {
        /// The URL dialled.
        url: String,
        /// Why.
        #[source]
        source: vmi_control_api::ClientError,
    },
    /// The WebSocket connection to a site could not be opened.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL dialled.
        url: String,
        /// Why.
        #[source]
        source: tungstenite::Error,
    },
    /// A step did not finish in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The WebSocket failed after it was open.
    #[error("connection to the site failed")]
    WebSocket(#[source] tungstenite::Error),
    /// The site sent bytes that are not a valid message (or tiles that do not fit the screen).
    #[error("bad message from the site")]
    Protocol(#[source] ProtocolError),
    /// The site sent a text WebSocket message, or a message out of order.
    #[error("unexpected {0} from the site")]
    Unexpected(&'static str),
    /// The site sent `Error` (and closes the session).
    #[error("the site ended the session ({code:?}): {message}")]
    Site {
        /// What kind of error.
        code: ErrorCode,
        /// The site's message.
        message: String,
    },
    /// The session has ended; nothing more can be sent.
    #[error("the session has ended")]
    Closed,
    /// The session ended on its own (the site refused a reconnect, or reconnecting failed).
    #[error("the session ended: {0}")]
    Ended(String),
    /// Too many inputs are waiting for the site's acknowledgement.
    #[error("too many unacknowledged inputs (limit {limit})")]
    InputQueueFull {
        /// The limit ([`crate::session::TerminalOptions::max_pending_inputs`]).
        limit: usize,
    },
    /// The control service could not say where the phone runs.
    #[error("cannot find the phone through the control service")]
    Control(#[source] vmi_control_api::ClientError),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A PNG could not be encoded.
    #[error("cannot encode {path} as PNG")]
    Png {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: png::EncodingError,
    },
    /// A script does not parse.
    #[error("bad script {path}")]
    Script {
        /// The script file.
        path: PathBuf,
        /// The line and problem.
        #[source]
        source: ScriptError,
    },
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// The window could not be opened or failed.
    #[error("window failed: {0}")]
    Window(String),
    /// An HTTP exchange with a site failed (offline checkout and checkin).
    #[error("cannot reach {url}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: vmi_control_api::ClientError,
    },
    /// The site refused an offline checkout or checkin; its message says why.
    #[error("the site refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The site's message.
        message: String,
    },
    /// A checkout kept on this terminal is missing, damaged or not what it should be.
    #[error("{0}")]
    Offline(String),
    /// The engine could not load the image or restore the phone offline.
    #[cfg(feature = "offline")]
    #[error("the phone cannot run here")]
    Engine(#[source] vmi_engine::EngineError),
    /// The phone failed while running offline (its last saved state is kept).
    #[cfg(feature = "offline")]
    #[error("the phone failed offline")]
    Vm(#[source] vmi_engine::VmError),
}

impl TerminalError {
    /// Whether reconnecting cannot help: the token, the protocol version or the place are
    /// wrong, or the caller closed the session.
    pub fn is_fatal(&self) -> bool {
        match self {
            TerminalError::Site { code, .. } => {
                matches!(
                    code,
                    ErrorCode::Unauthorized | ErrorCode::Version | ErrorCode::BadMessage | ErrorCode::NotHere
                )
            }
            TerminalError::Protocol(ProtocolError::UnsupportedVersion { .. }) => true,
            TerminalError::Closed
            | TerminalError::Ended(_)
            | TerminalError::Usage(_)
            | TerminalError::Control(_)
            | TerminalError::Read { .. }
            | TerminalError::Write { .. }
            | TerminalError::Png { .. }
            | TerminalError::Script { .. }
            | TerminalError::InputQueueFull { .. }
            | TerminalError::Window(_)
            | TerminalError::Http { .. }
            | TerminalError::Refused { .. }
            | TerminalError::Offline(_) => true,
            #[cfg(feature = "offline")]
            TerminalError::Engine(_) | TerminalError::Vm(_) => true,
            // A certificate that is not the provider's, or a URL that cannot work, will not get better; a
            // connection that broke during the handshake (the site died in the middle of it) may.
            TerminalError::Dial { source, .. } => match source {
                vmi_control_api::ClientError::Trust(trust) => !trust.is_transient(),
                vmi_control_api::ClientError::InvalidUrl { .. } => true,
                _ => false,
            },
            TerminalError::Connect { .. }
            | TerminalError::Timeout(_)
            | TerminalError::WebSocket(_)
            | TerminalError::Protocol(_)
            | TerminalError::Unexpected(_) => false,
        }
    }

    /// Process exit code for the `vmi terminal` command: 2 for a usage or script error, 3
    /// when the site or control service refused the token, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            TerminalError::Usage(_) | TerminalError::Script { .. } => 2,
            TerminalError::Site { code: ErrorCode::Unauthorized, .. } => 3,
            TerminalError::Control(e) if e.status() == Some(401) => 3,
            TerminalError::Refused { status: 401 | 403, .. } => 3,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_threads_and_convert_to_boxed_errors() {
        fn sendable<T: Send + Sync + 'static>() {}
        sendable::<TerminalError>();
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(TerminalError::Closed);
        assert_eq!(boxed.to_string(), "the session has ended");
    }

    #[test]
    fn fatal_errors_and_exit_codes() {
        let site = |code| TerminalError::Site { code, message: String::new() };
        assert!(site(ErrorCode::Unauthorized).is_fatal());
        assert!(!site(ErrorCode::PhoneDown).is_fatal());
        assert!(!TerminalError::Timeout("x").is_fatal());
        // A site that died in the middle of the TLS handshake may be back soon; a certificate refused will not be.
        let handshake = |kind| TerminalError::Dial {
            url: "wss://10.0.0.5:7800/v1/terminal".into(),
            source: vmi_control_api::ClientError::Trust(vmi_trust::TrustError::Handshake {
                addr: "10.0.0.5:7800".into(),
                server_name: "10.0.0.5".into(),
                source: std::io::Error::new(kind, "x"),
            }),
        };
        assert!(!handshake(std::io::ErrorKind::ConnectionReset).is_fatal());
        assert!(!handshake(std::io::ErrorKind::UnexpectedEof).is_fatal());
        assert!(handshake(std::io::ErrorKind::InvalidData).is_fatal());
        assert_eq!(site(ErrorCode::Unauthorized).exit_code(), 3);
        assert_eq!(TerminalError::Usage("x".into()).exit_code(), 2);
        assert_eq!(TerminalError::Closed.exit_code(), 1);
    }
}
