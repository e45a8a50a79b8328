//! What can go wrong on a site. Each variant is mapped to an HTTP status in one place
//! (`http.rs`); the cause of each is its `source`, not repeated in its message.

use std::path::PathBuf;

use crate::phone::PhoneError;

/// Why a site could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The engine refused.
    #[error("the engine refused")]
    Engine(#[from] vmi_engine::EngineError),
    /// A file in the data directory could not be read or written.
    #[error("cannot use {path}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The control service could not be reached or refused.
    #[error("the control service did not answer as expected")]
    Control(#[from] vmi_control_api::ClientError),
    /// The user already has a phone here.
    #[error("{0} already has a phone on this site")]
    Exists(String),
    /// The user has no phone here.
    #[error("no phone for {0} on this site")]
    NoPhone(String),
    /// The site is full.
    #[error("site is at its capacity of {0} phones")]
    Full(u32),
    /// A user name that cannot name a directory.
    #[error("bad user name {0:?}: use letters, digits, '-', '_' or '.'")]
    BadUser(String),
    /// The user's phone could not do what was asked; its state is as it was.
    #[error("{user}'s phone")]
    Phone {
        /// Whose phone.
        user: String,
        /// What the phone said.
        #[source]
        source: PhoneError,
    },
    /// The phone is migrating, restarting or being restored right now.
    #[error("{0}'s phone is moving (a migration, a restart or a restore); try again when it is done")]
    Moving(String),
    /// The phone is placed on another site (docs/MIGRATION.md).
    #[error("{user}'s phone is placed on {site}; move it with `vmi vm migrate {user} --to {here}`")]
    PlacedElsewhere {
        /// Whose phone.
        user: String,
        /// Where it is placed.
        site: String,
        /// This site.
        here: String,
    },
    /// The user has no placement yet.
    #[error("{0} has no placement: place the phone on this site first (PUT /v1/users/{0}/placement)")]
    NotPlaced(String),
    /// A migration to the site the phone is already on.
    #[error("{user}'s phone is already on {site}")]
    AlreadyThere {
        /// Whose phone.
        user: String,
        /// This site.
        site: String,
    },
    /// Bytes that should be a snapshot are not one.
    #[error("the checkpoint does not read as a snapshot")]
    CorruptSnapshot(#[source] vmi_snapshot::SnapshotError),
    /// The phone's image is neither loaded here nor published at the control service.
    #[error("this site cannot run image {0}: it is not published at the control service")]
    WrongImage(String),
    /// The checkpoint store refused or failed.
    #[error("the checkpoint store failed")]
    Checkpoint(#[from] vmi_checkpoint::CheckpointError),
    /// Copying checkpoints to the second site failed.
    #[error("copying checkpoints to the second site failed")]
    Replica(#[from] crate::checkpoints::ReplicaError),
    /// The control service refused to admit a new phone (a tenant quota, an unknown user); `status` is its
    /// HTTP status, `message` its words.
    #[error("{message}")]
    Admission {
        /// HTTP status of the refusal (403 over a quota, 404 unknown user).
        status: u16,
        /// Why, as the control service put it.
        message: String,
    },
    /// An image could not be fetched or loaded.
    #[error("the image could not be had here")]
    Image(#[from] crate::images::ImageError),
    /// A task running engine work ended without an answer.
    #[error("a background task failed")]
    Background(#[source] tokio::task::JoinError),
    /// The phone is checked out to a terminal (docs/OFFLINE.md); the message says to
    /// which device and until when.
    #[error("{0}")]
    CheckedOut(String),
    /// An offline checkout, checkin or cancel was refused or failed.
    #[error(transparent)]
    Checkout(#[from] crate::checkout::CheckoutError),
    /// The site is shutting down.
    #[error("the site is shutting down")]
    Closing,
}

impl SiteError {
    /// `user`'s phone said `source`.
    pub fn phone(user: &str, source: PhoneError) -> SiteError {
        SiteError::Phone { user: user.to_string(), source }
    }
}
