//! Live migration between sites (docs/MIGRATION.md).
//!
//! Source: pre-copy rounds while the phone keeps serving its terminals, then a short
//! stop for the dirty rest. Destination: applies each round as it comes, and on the final
//! one restores the phone, moves the placement epoch at the control service with a
//! compare-and-set (the single point where ownership changes), starts the phone, and
//! answers Committed. Then the source fences itself: it redirects its terminals and drops
//! its copy. Any failure before the commit leaves the source running; a lost answer after
//! it is resolved by asking the control service who owns the phone.

//!
//! `source.rs` is the sending side ([`migrate_out`]), `destination.rs` the receiving side
//! ([`migrate_in`], on the `/v1/migrate` WebSocket).

mod destination;
mod source;

pub use destination::migrate_in;
pub use source::migrate_out;

use std::time::Duration;

use serde::Serialize;

use crate::SiteState;
use crate::phone::PhoneError;

/// Most pre-copy rounds before the final stop.
pub const MAX_ROUNDS: usize = 6;
/// A round this small (pages) means the rest can go in the stop.
pub const SMALL_ROUND_PAGES: usize = 64;
/// Tries (100 ms apart) to reach the control service before a migration gives up.
const CONTROL_RETRIES: u32 = 50;
/// Longest wait for any answer from the other site.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a migration did not move the phone (it keeps running where it was).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The control service could not be reached or refused.
    #[error("the control service did not answer")]
    Control(#[source] vmi_control_api::ClientError),
    /// The placement names another site.
    #[error("this site does not own {user}'s phone ({owner} does)")]
    NotOwner {
        /// Whose phone.
        user: String,
        /// The site the placement names.
        owner: String,
    },
    /// The link to the other site failed (connect, send, receive, timeout).
    #[error("the link to the other site failed: {0}")]
    Link(String),
    /// The other site said no, or aborted.
    #[error("the other site refused: {0}")]
    Refused(String),
    /// The other site sent a message out of turn.
    #[error("the other site sent {0} out of turn")]
    OutOfTurn(String),
    /// The phone could not give its state.
    #[error("the phone could not be copied")]
    Phone(#[from] PhoneError),
    /// The destination did not commit, and this site took the placement back.
    #[error("the destination did not commit; the phone runs here again")]
    NotCommitted,
    /// The placement's epoch changed under the migration.
    #[error("the phone's epoch moved to {0} meanwhile")]
    EpochMoved(u64),
}

impl MigrationError {
    /// The reason as one word of a few (the `reason` label of `vmi_site_migration_aborts_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            MigrationError::Control(_) => "control",
            MigrationError::NotOwner { .. } => "not_owner",
            MigrationError::Link(_) => "link",
            MigrationError::Refused(_) => "refused",
            MigrationError::OutOfTurn(_) => "out_of_turn",
            MigrationError::Phone(_) => "phone",
            MigrationError::NotCommitted => "not_committed",
            MigrationError::EpochMoved(_) => "epoch_moved",
        }
    }
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigrationOutcome {
    /// The phone runs on the destination now.
    Committed,
    /// The phone runs here still.
    Aborted,
}

impl MigrationOutcome {
    /// As the control service's log records it.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationOutcome::Committed => "committed",
            MigrationOutcome::Aborted => "aborted",
        }
    }
}

/// What one migration did, as the source saw it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MigrationReport {
    /// The user whose phone moved.
    pub user: String,
    /// From this site.
    pub from: String,
    /// To that site.
    pub to: String,
    /// Committed or aborted.
    pub outcome: MigrationOutcome,
    /// Why it aborted, if it did.
    pub reason: Option<String>,
    /// Pre-copy rounds sent.
    pub rounds: usize,
    /// Bytes of snapshots sent.
    pub bytes: u64,
    /// From the phone stopping at the source to running at the destination, µs.
    pub downtime_us: u64,
    /// Of the downtime: stopping the phone at an event boundary and taking its final delta at the source, µs.
    pub freeze_us: u64,
    /// Of the downtime: the final delta's bytes.
    pub final_bytes: u64,
    /// From the stop to the final delta flushed to the destination's connection, µs: the part of the downtime the
    /// source alone sees, which is what QEMU's `query-migrate` reports as its downtime (the destination's load and
    /// start are not in QEMU's figure; they are in `downtime_us`).
    pub final_sent_us: u64,
    /// How long the destination's compare-and-set of the placement took while the phone already ran there
    /// provisionally (after the downtime; the terminals are sent there once it lands), µs.
    pub commit_us: u64,
    /// The whole migration, ms.
    pub total_ms: f64,
    /// Placement epoch after the move.
    pub epoch: Option<u64>,
}

/// Moves the placement to this site if it is still at `epoch`. A lost answer is settled
/// by reading the placement back: if it names this site, the move happened.
async fn commit(
    site: &SiteState,
    user: &str,
    epoch: u64,
    mut dialed: Option<vmi_control_api::Dialed>,
) -> Result<u64, MigrationError> {
    let mut last_error = None;
    for _ in 0..CONTROL_RETRIES {
        // The first try over the connection opened before the phone stopped (no handshake now); a failure is
        // settled by reading the placement back, so a commit that did land is never taken for a failed one.
        match site.control().move_placement_over(dialed.take(), user, &site.id, Some(epoch)).await {
            Ok(p) => return Ok(p.epoch),
            Err(e) => last_error = Some(e),
        }
        match site.control().placement(user).await {
            Ok(p) if p.site == site.id && p.epoch > epoch => return Ok(p.epoch),
            Ok(p) if p.epoch != epoch => return Err(MigrationError::EpochMoved(p.epoch)),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err(last_error.map(MigrationError::Control).unwrap_or(MigrationError::EpochMoved(epoch)))
}
