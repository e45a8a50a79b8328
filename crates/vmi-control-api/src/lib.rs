//! The control service's API as its callers see it: what sites, terminals and the `vmi` CLI link.
//!
//! The server (`vmi-control`: HTTP, SQLite store, placer) depends on this crate for the same types, so both
//! ends of every exchange agree. This crate links no server: no axum, no SQLite, no engine.
//!
//! - [`model`]: the JSON bodies of the HTTP API: users, devices, sites, placements, terminal reports,
//!   migrations, the checkpoint catalogue, pairing codes. The API itself is listed in `vmi-control`'s crate docs.
//! - [`tenants`]: tenants, admission and image versions.
//! - [`auth`]: principals, the audit log, site enrollment.
//! - [`ControlClient`]: the async client of the control service; [`ClientError`] is why a request failed.
//! - [`http_client`]: the small HTTP/1.1 client under it, and plain requests to any `http://` URL (a site's
//!   operator endpoints, one site asking another, a terminal's offline checkout).
//! - [`url`]: [`ws_url`] (where a site's terminals connect) and path-segment encoding.
//! - [`token`]: random bearer tokens and ids.
//! - [`history`]: a process's history of operations for the fault checker (`vmi nemesis`).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), vmi_control_api::ClientError> {
//! use vmi_control_api::ControlClient;
//!
//! let control = ControlClient::new("http://127.0.0.1:7000", &vmi_control_api::Caller::anonymous())?;
//! let phone = control.phone_for_token("0123...").await?;
//! println!("{} runs on {} ({})", phone.user, phone.site, phone.ws_url);
//! # Ok(())
//! # }
//! ```

pub mod auth;
mod caller;
mod client;
mod error;
pub mod history;
pub mod http_client;
pub mod model;
pub mod tenants;
pub mod time;
pub mod token;
pub mod url;

pub use caller::Caller;
pub use client::{ControlClient, DIALED_FRESH_FOR, Dialed};
pub use error::ClientError;
pub use http_client::{DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES};
pub use model::{
    AuthRequest, CatalogedCheckpoint, CheckpointEntry, DEFAULT_MIGRATIONS_LISTED, Device, HEALTHY_WITHIN_MS,
    HeartbeatRequest, Identity, LoggedMigration, MAX_CHECKPOINTS_REPORTED, MAX_MIGRATIONS_LISTED, MAX_NAME_LEN,
    MAX_REASON_LEN, MAX_REPORT_SITES, MigrateOrder, MigrationRecord, NameRequest, NewDevice, OUTCOME_ABORTED,
    OUTCOME_COMMITTED, PairCode, PairRequest, PhoneLocation, Placement, PlacementInfo, PlacementRequest, ReportRequest,
    Site, SiteSpec, SiteStatus, TerminalReport, User,
};
pub use tenants::{
    Admission, AdmitRequest, DEFAULT_IMAGE, ImageVersion, MAX_IMAGE_BYTES, Tenant, TenantRequest, TenantStatus,
    TenantUpdate, UserImage, UserRequest, format_bytes,
};
pub use token::{TOKEN_BYTES, generate_token};
pub use url::ws_url;
