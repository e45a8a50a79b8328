//! The registry's data model and the JSON bodies of the HTTP API.
//!
//! The same types are serialized by the server (`vmi-control`) and deserialized by
//! [`ControlClient`](crate::ControlClient), so the two cannot drift. Tenants and images are in
//! [`tenants`](crate::tenants).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A site counts as healthy when its last heartbeat is at most this old.
pub const HEALTHY_WITHIN_MS: u64 = 15_000;

/// Longest user name, device name or site id accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Most sites one terminal report may carry RTT measurements for.
pub const MAX_REPORT_SITES: usize = 64;

/// Longest migration `reason` accepted, in characters.
pub const MAX_REASON_LEN: usize = 256;

/// Migrations listed by `GET /v1/migrations` without a `limit`.
pub const DEFAULT_MIGRATIONS_LISTED: usize = 100;

/// Largest `limit` accepted by `GET /v1/migrations`.
pub const MAX_MIGRATIONS_LISTED: usize = 1000;

/// A user: the owner of one phone and of any number of devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct User {
    /// Unique name, e.g. "alice".
    pub name: String,
    /// The tenant the user belongs to; `None`: no tenant (no quotas, the default image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A device (terminal) registered to a user. Its token is never part of this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Identity {
    /// The device's user.
    pub user: String,
    /// The device the token was issued to.
    pub device_id: u64,
}

/// What a site registers: where it is reachable, where it stands, how many phones it can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Set by `POST /v1/sites/{id}/drain`: the placer moves every phone away and places none here.
    #[serde(default)]
    pub draining: bool,
    /// What the site said in its last heartbeat is wrong with it (it cannot keep phones durable): the placer
    /// moves its phones away and places none there, as for a draining site, until it says it is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

impl Site {
    /// Whether the site's lease is live at `now_ms`: a heartbeat within [`LEASE_MS`].
    pub fn leased_at(&self, now_ms: u64) -> bool {
        self.last_heartbeat_ms.is_some_and(|at| now_ms.saturating_sub(at) <= LEASE_MS)
    }

    /// Whether the site sent a heartbeat within [`HEALTHY_WITHIN_MS`] of `now_ms`.
    pub fn healthy_at(&self, now_ms: u64) -> bool {
        self.last_heartbeat_ms.is_some_and(|at| now_ms.saturating_sub(at) <= HEALTHY_WITHIN_MS)
    }

    /// The WebSocket URL terminals connect to: the base URL with `http`→`ws` (`https`→`wss`) + `/v1/terminal`.
    pub fn ws_url(&self) -> String {
        crate::url::ws_url(&self.url)
    }
}

/// A site as listed by `GET /v1/sites`: the stored record plus its health at the time of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteStatus {
    /// The stored record.
    #[serde(flatten)]
    pub site: Site,
    /// Heartbeat within [`HEALTHY_WITHIN_MS`].
    pub healthy: bool,
    /// Heartbeat within [`LEASE_MS`]: the site holds its lease (it runs its phones; it may stand by for others).
    #[serde(default)]
    pub leased: bool,
}

/// Where a user's phone runs.
///
/// `epoch` starts at 1 and increments every time the placement changes to a different site; setting the same site
/// again leaves it unchanged. Whoever holds the newest epoch owns the phone (used by live migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Placement {
    /// Site id.
    pub site: String,
    /// Ownership epoch.
    pub epoch: u64,
}

/// A placement with the site's base URL, as returned by `GET /v1/users/{user}/placement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlacementInfo {
    /// Site id.
    pub site: String,
    /// The site's base URL.
    pub site_url: String,
    /// Ownership epoch.
    pub epoch: u64,
}

/// Where a terminal finds its phone, as returned by `GET /v1/phone`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhoneLocation {
    /// The token's user.
    pub user: String,
    /// Site id running the phone.
    pub site: String,
    /// The site's base URL.
    pub site_url: String,
    /// WebSocket URL of the site's terminal endpoint.
    pub ws_url: String,
    /// The rules the placer follows the user by, when it runs: a terminal's hint says what it will do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowRules>,
}

/// How the placer follows a user (docs/CONTROL-PLANE.md): another site must answer faster by the margin, for
/// the dwell, in reports no older than the age limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FollowRules {
    /// The better site must beat the current one by at least this many milliseconds ...
    pub min_gain_ms: f64,
    /// ... and by at least this fraction of the current round trip.
    pub min_gain_ratio: f64,
    /// How long it must keep being better before the phone moves.
    pub dwell_ms: u64,
    /// Reports older than this count as none.
    pub report_max_age_ms: u64,
}

/// Body of `POST /v1/users` and `POST /v1/users/{user}/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NameRequest {
    /// The name to create.
    pub name: String,
}

/// Body of `POST /v1/auth`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatRequest {
    /// Phones running on the site now.
    pub phones: u32,
    /// Why the site cannot be trusted with phones now (it cannot write their state), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// The version of the list of placed users the site holds (a [`HeartbeatReply::placed_version`]): if the
    /// list has not changed since, the answer does not repeat it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_version: Option<u64>,
}

/// How long a heartbeat's lease lasts at the control service, counted from when it received the heartbeat: a site
/// whose last heartbeat is older has lost its lease, and its phones with a standby copy are failed over
/// (docs/FAILOVER.md).
pub const LEASE_MS: u64 = 3_000;
/// How much sooner than [`LEASE_MS`] after *sending* a heartbeat a site stops its phones when no newer one was
/// answered: room for clock rate differences and for the time between a site's check and its action.
pub const LEASE_MARGIN_MS: u64 = 1_000;

/// Answer to `POST /v1/sites/{id}/heartbeat`: the site's lease, and which phones are placed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatReply {
    /// How long the lease lasts from when the heartbeat was sent, ms (the site takes off [`LEASE_MARGIN_MS`]).
    pub lease_ms: u64,
    /// Users whose phones are placed on this site now: a site back from a lapsed lease runs only those, and
    /// starts those it holds a standby copy of.
    pub placed: Vec<String>,
    /// The version of that list (0: unversioned); a site sends it back with its next heartbeat.
    #[serde(default)]
    pub placed_version: u64,
    /// `placed` is empty because the list is the one at the version the heartbeat named: unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placed_unchanged: bool,
    /// The control plane cannot change any placement now (its store lost its quorum, proven by a majority of
    /// its members): a lease still held is extended, `placed` is empty and means nothing, and nothing is dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

/// Body of `PUT /v1/users/{user}/standby`: the phone's owner says which site holds its standby copy, for
/// which placement epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StandbyRequest {
    /// The site holding the copy.
    pub site: String,
    /// The placement epoch the copy belongs to (the owner's).
    pub epoch: u64,
}

/// Body of `PUT /v1/users/{user}/placement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlacementRequest {
    /// Site id to place the user's phone on.
    pub site: String,
    /// Compare-and-set: apply only if the placement is at this epoch now (0 = never placed), else 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_epoch: Option<u64>,
}

/// Body of `POST /v1/phone/report`: what a terminal sees of the network. Both parts are optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReportRequest {
    /// Latitude of the terminal in degrees, -90..=90 (given together with `lon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude of the terminal in degrees, -180..=180 (given together with `lat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Measured round-trip time to each site, in milliseconds, by site id (at most [`MAX_REPORT_SITES`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rtt_ms: BTreeMap<String, f64>,
}

/// The latest terminal report of a user, as kept in memory and returned by `GET /v1/users/{user}/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TerminalReport {
    /// The reporting token's user.
    pub user: String,
    /// When the control service received it, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Latitude in degrees, if reported.
    pub lat: Option<f64>,
    /// Longitude in degrees, if reported.
    pub lon: Option<f64>,
    /// Measured round-trip times in milliseconds by site id (possibly empty).
    pub rtt_ms: BTreeMap<String, f64>,
}

impl TerminalReport {
    /// The reported position, if both coordinates are present.
    pub fn position(&self) -> Option<(f64, f64)> {
        self.lat.zip(self.lon)
    }
}

/// Body of the order the placer POSTs to `{source_site_url}/v1/phones/{user}/migrate`.
///
/// The site answers once the migration committed (2xx) or aborted (non-2xx); the placer waits up to 30 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateOrder {
    /// Destination site id. The source finds its address in the registry and accepts only a peer whose
    /// certificate names this site; there is no way to name a URL.
    pub to: String,
}

/// `outcome` of a migration whose destination took ownership (the placement moved to it).
pub const OUTCOME_COMMITTED: &str = "committed";

/// `outcome` of a migration that left the phone on its source site.
pub const OUTCOME_ABORTED: &str = "aborted";

/// One live migration as a site reports it (`POST /v1/migrations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MigrationRecord {
    /// Whose phone moved.
    pub user: String,
    /// Source site id.
    pub from: String,
    /// Destination site id.
    pub to: String,
    /// Placement epoch after the migration (the destination's epoch if committed).
    pub epoch: u64,
    /// Time the phone was paused (stop-and-copy), in microseconds.
    pub downtime_us: u64,
    /// Whole migration, first byte to commit or abort, in milliseconds.
    pub total_ms: f64,
    /// Bytes sent from source to destination.
    pub bytes: u64,
    /// [`OUTCOME_COMMITTED`] or [`OUTCOME_ABORTED`].
    pub outcome: String,
    /// Why it happened (e.g. "closer: 12.0 ms -> 3.1 ms") or why it aborted; at most [`MAX_REASON_LEN`] characters.
    pub reason: String,
}

/// A [`MigrationRecord`] as stored and listed by `GET /v1/migrations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoggedMigration {
    /// Log id, increasing with time.
    pub id: u64,
    /// When the control service received the record, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The record as reported.
    #[serde(flatten)]
    pub record: MigrationRecord,
}

/// Most checkpoints one site may report for one user.
pub const MAX_CHECKPOINTS_REPORTED: usize = 10_000;

/// One checkpoint a site holds, as it reports it to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckpointEntry {
    /// Snapshot id, 64 lowercase hex digits.
    pub id: String,
    /// When it was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// Its label, if any.
    #[serde(default)]
    pub label: Option<String>,
    /// Bytes it added to the site's store.
    #[serde(default)]
    pub stored_bytes: u64,
}

/// A checkpoint in the catalogue, with every site holding a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CatalogedCheckpoint {
    /// The checkpoint.
    #[serde(flatten)]
    pub entry: CheckpointEntry,
    /// Sites holding it, sorted.
    pub sites: Vec<String>,
}

/// A one-time pairing code just issued (`POST /v1/users/{user}/pair-code`, `POST /v1/phone/pair-code`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PairCode {
    /// The code to type on the new device, e.g. `4821-0937`.
    pub code: String,
    /// Whose phone it pairs with.
    pub user: String,
    /// When it stops working, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// `POST /v1/pair` body.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
pub struct PairRequest {
    /// The code.
    pub code: String,
    /// A name for the new device.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(url: &str, last: Option<u64>) -> Site {
        Site {
            id: "s".into(),
            url: url.into(),
            lat: 0.0,
            lon: 0.0,
            capacity: 1,
            phones: 0,
            last_heartbeat_ms: last,
            draining: false,
            degraded: None,
        }
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
}
