//! The registry's data model and the JSON bodies of the HTTP API.
//!
//! The same types are serialized by the server and deserialized by [`ControlClient`](crate::ControlClient), so the
//! two cannot drift.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ControlError;

/// A site counts as healthy when its last heartbeat is at most this old.
pub const HEALTHY_WITHIN_MS: u64 = 15_000;

/// Longest user name, device name or site id accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A user: the owner of one phone and of any number of devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Unique name, e.g. "alice".
    pub name: String,
}

/// A device (terminal) registered to a user. Its token is never part of this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Registry-wide device id; never reused.
    pub device_id: u64,
    /// The owning user.
    pub user: String,
    /// Free-form label, e.g. "pixel-7".
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Revoked devices can no longer authenticate.
    pub revoked: bool,
}

/// A freshly created device and its bearer token. The token is shown this once and only its hash is kept.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    /// Id of the new device.
    pub device_id: u64,
    /// 64 lowercase hex digits (32 random bytes).
    pub token: String,
}

impl fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDevice").field("device_id", &self.device_id).field("token", &"<redacted>").finish()
    }
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The device's user.
    pub user: String,
    /// The device the token was issued to.
    pub device_id: u64,
}

/// What a site registers: where it is reachable, where it stands, how many phones it can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSpec {
    /// Base URL, `http://host:port` (`https://` is accepted and stored but the bundled client cannot speak it).
    pub url: String,
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
    /// Most phones the site will run at once.
    pub capacity: u32,
}

/// A registered site as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// Site id, e.g. "site-a".
    pub id: String,
    /// Base URL without a trailing slash.
    pub url: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Most phones the site will run at once.
    pub capacity: u32,
    /// Phones running, as reported by the last heartbeat (0 before the first).
    pub phones: u32,
    /// Time of the last heartbeat, milliseconds since the Unix epoch; `None` before the first.
    pub last_heartbeat_ms: Option<u64>,
}

impl Site {
    /// Whether the site sent a heartbeat within [`HEALTHY_WITHIN_MS`] of `now_ms`.
    pub fn healthy_at(&self, now_ms: u64) -> bool {
        self.last_heartbeat_ms.is_some_and(|at| now_ms.saturating_sub(at) <= HEALTHY_WITHIN_MS)
    }

    /// The WebSocket URL terminals connect to: the base URL with `http`→`ws` (`https`→`wss`) + `/v1/terminal`.
    pub fn ws_url(&self) -> String {
        crate::client::ws_url(&self.url)
    }
}

/// A site as listed by `GET /v1/sites`: the stored record plus its health at the time of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStatus {
    /// The stored record.
    #[serde(flatten)]
    pub site: Site,
    /// Heartbeat within [`HEALTHY_WITHIN_MS`].
    pub healthy: bool,
}

/// Where a user's phone runs.
///
/// `epoch` starts at 1 and increments every time the placement changes to a different site; setting the same site
/// again leaves it unchanged. Whoever holds the newest epoch owns the phone (used by live migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Site id.
    pub site: String,
    /// Ownership epoch.
    pub epoch: u64,
}

/// A placement with the site's base URL, as returned by `GET /v1/users/{user}/placement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementInfo {
    /// Site id.
    pub site: String,
    /// The site's base URL.
    pub site_url: String,
    /// Ownership epoch.
    pub epoch: u64,
}

/// Where a terminal finds its phone, as returned by `GET /v1/phone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneLocation {
    /// The token's user.
    pub user: String,
    /// Site id running the phone.
    pub site: String,
    /// The site's base URL.
    pub site_url: String,
    /// WebSocket URL of the site's terminal endpoint.
    pub ws_url: String,
}

/// Body of `POST /v1/users` and `POST /v1/users/{user}/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRequest {
    /// The name to create.
    pub name: String,
}

/// Body of `POST /v1/auth`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRequest {
    /// The bearer token to check.
    pub token: String,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest").field("token", &"<redacted>").finish()
    }
}

/// Body of `POST /v1/sites/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Phones running on the site now.
    pub phones: u32,
}

/// Body of `PUT /v1/users/{user}/placement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// Site id to place the user's phone on.
    pub site: String,
}

/// Checks a user name or site id: 1..=64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub(crate) fn validate_id(kind: &str, value: &str) -> Result<(), ControlError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(ControlError::BadRequest(format!("{kind} must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !value.chars().all(ok_char) || value.starts_with(['.', '-']) {
        return Err(ControlError::BadRequest(format!(
            "{kind} may contain only letters, digits, '.', '_' and '-', and may not start with '.' or '-'"
        )));
    }
    Ok(())
}

/// Checks a device label: 1..=64 characters, no control characters.
pub(crate) fn validate_label(kind: &str, value: &str) -> Result<(), ControlError> {
    if value.is_empty() || value.chars().count() > MAX_NAME_LEN {
        return Err(ControlError::BadRequest(format!("{kind} must be 1 to {MAX_NAME_LEN} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(ControlError::BadRequest(format!("{kind} may not contain control characters")));
    }
    Ok(())
}

/// Validates a site spec and returns its URL normalised (no trailing slash).
pub(crate) fn validate_site_spec(spec: &SiteSpec) -> Result<String, ControlError> {
    let url = spec.url.strip_suffix('/').unwrap_or(&spec.url);
    let authority = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ControlError::BadRequest("site url must start with http:// or https://".to_owned()))?;
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) || authority.chars().any(char::is_control)
    {
        return Err(ControlError::BadRequest("site url must be scheme://host[:port] with no path".to_owned()));
    }
    if !(-90.0..=90.0).contains(&spec.lat) {
        return Err(ControlError::BadRequest("lat must be between -90 and 90".to_owned()));
    }
    if !(-180.0..=180.0).contains(&spec.lon) {
        return Err(ControlError::BadRequest("lon must be between -180 and 180".to_owned()));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(url: &str, last: Option<u64>) -> Site {
        Site { id: "s".into(), url: url.into(), lat: 0.0, lon: 0.0, capacity: 1, phones: 0, last_heartbeat_ms: last }
    }

    #[test]
    fn ws_url_maps_scheme_and_appends_path() {
        assert_eq!(site("http://127.0.0.1:9000", None).ws_url(), "ws://127.0.0.1:9000/v1/terminal");
        assert_eq!(site("https://edge.example", None).ws_url(), "wss://edge.example/v1/terminal");
    }

    #[test]
    fn health_window_is_inclusive_and_requires_a_heartbeat() {
        assert!(!site("http://a:1", None).healthy_at(1_000));
        assert!(site("http://a:1", Some(1_000)).healthy_at(1_000 + HEALTHY_WITHIN_MS));
        assert!(!site("http://a:1", Some(1_000)).healthy_at(1_001 + HEALTHY_WITHIN_MS));
    }

    #[test]
    fn ids_and_urls_are_validated() {
        assert!(validate_id("user", "alice_01.x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id("user", bad).is_err(), "{bad:?}");
        }
        let spec = |url: &str| SiteSpec { url: url.into(), lat: 1.0, lon: 2.0, capacity: 3 };
        assert_eq!(validate_site_spec(&spec("http://127.0.0.1:8080/")).ok().as_deref(), Some("http://127.0.0.1:8080"));
        for bad in ["ftp://x", "http://", "http://a/b", "127.0.0.1:80"] {
            assert!(validate_site_spec(&spec(bad)).is_err(), "{bad:?}");
        }
        assert!(validate_site_spec(&SiteSpec { lat: 91.0, ..spec("http://a:1") }).is_err());
        assert!(validate_site_spec(&SiteSpec { lon: -181.0, ..spec("http://a:1") }).is_err());
    }
}
