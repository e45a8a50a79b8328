//! [`ClientError`]: why a request of [`ControlClient`](crate::ControlClient) or of the
//! [`http_client`](crate::http_client) failed.

use std::time::Duration;

/// Why an HTTP request to the control service or to a site failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port]` (plus a path where one is expected).
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument cannot be put in a request (e.g. a token with characters not allowed in a header).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The connection could not be opened or its TLS handshake failed (a certificate not from the provider CA,
    /// or not naming the expected identity).
    #[error("cannot connect securely")]
    Trust(#[source] vmi_trust::TrustError),
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}")]
    Connect {
        /// `host:port` that was dialled.
        addr: String,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting (connection reset, malformed response, ...).
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
    /// The server answered with a non-success status. `body` is the `error` message of a JSON error body, or
    /// the raw body text otherwise.
    #[error("the server answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The error message.
        body: String,
    },
    /// The response body was not the expected JSON.
    #[error("cannot decode the response")]
    Decode(#[source] serde_json::Error),
    /// The response body exceeded the limit of the request.
    #[error("the response exceeds {0} bytes")]
    ResponseTooLarge(usize),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The HTTP status, if the server answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
