//! The control service's error type, shared by the [`Store`](crate::Store) and the HTTP layer.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything a store operation or an HTTP request can fail with.
///
/// Each variant maps to one HTTP status (see [`ControlError::status`]). Messages are short and sentence-case;
/// internal causes sit in `#[source]` and are logged once by the HTTP layer, never sent to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The named thing does not exist (404).
    #[error("{what} {id:?} not found")]
    NotFound {
        /// What kind of thing was looked up: "user", "device", "site", "placement", "report", "tenant", "image".
        what: &'static str,
        /// The identifier that was looked up.
        id: String,
    },
    /// The thing to be created already exists (409).
    #[error("{what} {id:?} already exists")]
    Conflict {
        /// What kind of thing: "user".
        what: &'static str,
        /// The identifier that is taken.
        id: String,
    },
    /// A compare-and-set placement change named an epoch that is no longer current (409).
    #[error("placement of {user:?} is at epoch {current}, not the expected epoch {expected}")]
    EpochMismatch {
        /// Whose placement.
        user: String,
        /// The epoch the caller expected.
        expected: u64,
        /// The epoch stored now (0 if the user was never placed).
        current: u64,
    },
    /// A tenant's quota would be exceeded (403); the message names the tenant, the quota and the use.
    #[error("{0}")]
    Quota(String),
    /// The request is well-formed but cannot be done in the current state (409), e.g. rolling back an image that
    /// has no earlier version; the message says why.
    #[error("{0}")]
    Refused(String),
    /// The bearer token is missing, unknown or revoked, or a machine's claim is not backed by its certificate
    /// (401).
    #[error("missing, unknown or revoked token")]
    Unauthorized,
    /// The caller is known but may not do this (403); the message says who may.
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed attempts from this address (429); try again after the given time.
    #[error("too many failed attempts from this address; try again in {} s", retry_after.as_secs().max(1))]
    TooManyAttempts {
        /// How long until the next attempt is considered.
        retry_after: std::time::Duration,
    },
    /// The request is malformed or a field is out of range (400); the message names the problem.
    #[error("{0}")]
    BadRequest(String),
    /// The database failed (500).
    #[error("store failure")]
    Store(#[source] rusqlite::Error),
    /// The distributed store cannot answer now (no quorum, unreachable, or too contended); try again.
    #[error("the control plane's store is unavailable: {0}")]
    Unavailable(String),
    /// The database was written by a newer version of this crate (500 at open time).
    #[error("database schema version {found} is newer than the supported version {supported}")]
    UnsupportedSchema {
        /// Version recorded in the database.
        found: u32,
        /// Newest version this build understands.
        supported: u32,
    },
    /// The provider CA could not issue a certificate (500).
    #[error("cannot issue the certificate")]
    Trust(#[source] vmi_trust::TrustError),
    /// Reading random bytes for a device token failed (500).
    #[error("reading random bytes failed")]
    Entropy(#[source] std::io::Error),
}

impl From<rusqlite::Error> for ControlError {
    fn from(err: rusqlite::Error) -> Self {
        ControlError::Store(err)
    }
}

impl ControlError {
    /// The HTTP status this error is reported with.
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::NotFound { .. } => StatusCode::NOT_FOUND,
            ControlError::Conflict { .. } | ControlError::EpochMismatch { .. } | ControlError::Refused(_) => {
                StatusCode::CONFLICT
            }
            ControlError::Quota(_) | ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ControlError::Unauthorized => StatusCode::UNAUTHORIZED,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Store(_)
            | ControlError::UnsupportedSchema { .. }
            | ControlError::Entropy(_)
            | ControlError::Trust(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        ControlError::NotFound { what, id: id.into() }
    }
}

/// JSON error body: `{"error": "..."}`.
#[derive(serde::Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            // Logged here and only here; the caller gets a generic body.
            let source = std::error::Error::source(&self).map(ToString::to_string);
            if matches!(self, ControlError::Unavailable(_)) {
                tracing::warn!(error = %self, "control request refused: store unavailable");
            } else {
                tracing::error!(error = %self, source = ?source, "control request failed");
            }
            if matches!(self, ControlError::Unavailable(_)) {
                "the control plane's store is unavailable; try again".to_owned()
            } else {
                "internal error".to_owned()
            }
        } else {
            self.to_string()
        };
        let retry_after = match &self {
            ControlError::TooManyAttempts { retry_after } => Some(retry_after.as_secs().max(1)),
            ControlError::Unavailable(_) => Some(1),
            _ => None,
        };
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
