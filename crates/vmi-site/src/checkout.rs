//! Offline checkout and checkin (docs/OFFLINE.md): a phone leaves the site to run on its
//! user's terminal and comes back as a delta against what left.
//!
//! While a phone is out the site holds its **lease** and its **checkout base** (the full
//! snapshot that left, in `phones/USER/phone.state` beside `phones/USER/checkout.lease`)
//! and refuses to run it: no terminal session, no migration, no operator create, no
//! restore at start. Exactly one copy runs, on the terminal.
//!
//! A lease ends in one of three ways, each recorded in `phones/USER/checkout.ended`:
//! - **checked in** by its device: the site restores [base, deltas…], checks the phone
//!   runs, saves it, drops the lease and runs the phone;
//! - **expired** (a timer checks every [`EXPIRY_CHECK`], and once at start): the phone
//!   resumes on the site from the checkout base, and a later checkin of that lease is
//!   refused;
//! - **cancelled** by an operator (`POST /v1/phones/USER/checkout/cancel`, a lost
//!   terminal): as for expiry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmi_engine::{ImageHash, SnapshotId, VirtualPhone};
use vmi_protocol::offline::{Checkin, CheckoutBundle, CheckoutRequest, OfflineLease};
use vmi_protocol::{ErrorCode, ServerMessage};
use vmi_snapshot::{Snapshot, SnapshotKind};

use crate::phone::{PhoneError, SavedPhone};
use crate::{SiteError, SiteState, valid_user};

/// Why an offline checkout, checkin or cancel was refused or failed (docs/OFFLINE.md).
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The phone is not checked out.
    #[error("{0}'s phone is not checked out")]
    NotCheckedOut(String),
    /// A checkin's lease is not the one out (wrong, ended or expired); says which.
    #[error("{0}")]
    LeaseRefused(String),
    /// No valid device token.
    #[error("{0}")]
    Unauthorized(String),
    /// The device may not do this (another user's phone, another device's lease).
    #[error("{0}")]
    Forbidden(String),
    /// A request that cannot be done as asked (a corrupt or foreign checkin, a bad lease
    /// length).
    #[error("{0}")]
    BadRequest(String),
    /// The checkout or resume failed on the site's side; the phone is kept.
    #[error("{0}")]
    Failed(String),
}

/// The lease of a checked-out phone, JSON ([`OfflineLease`]), in the phone's directory.
pub const LEASE_FILE: &str = "checkout.lease";
/// How the phone's last lease ended, JSON ([`EndedLease`]), in the phone's directory.
pub const ENDED_FILE: &str = "checkout.ended";
/// Lease length when the request names none: a day.
pub const DEFAULT_LEASE_SECS: u64 = 24 * 3600;
/// Longest lease: a week.
pub const MAX_LEASE_SECS: u64 = 7 * 24 * 3600;
/// How often the site looks for expired leases.
pub const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// How a lease ended. Written as the words `checked in`, `expired`, `cancelled` (the
/// `checkout.ended` file and the checkin answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// The terminal checked the phone back in.
    #[serde(rename = "checked in")]
    CheckedIn,
    /// The lease ran out; the phone resumed on the site from the checkout base.
    #[serde(rename = "expired")]
    Expired,
    /// An operator cancelled the lease; the phone resumed on the site from the base.
    #[serde(rename = "cancelled")]
    Cancelled,
}

/// How a lease ended, kept so that a late checkin of it gets a clear refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedLease {
    /// The lease.
    pub lease_id: String,
    /// Its device.
    pub device_id: u64,
    /// Checked in, expired or cancelled.
    pub outcome: LeaseOutcome,
    /// When it ended (site wall clock, ms since the Unix epoch).
    pub at_ms: u64,
}

/// What a checkin or a cancel did.
#[derive(Clone, Debug, Serialize)]
pub struct CheckinReport {
    /// Whose phone.
    pub user: String,
    /// The lease that ended.
    pub lease_id: String,
    /// Checked in or cancelled.
    pub outcome: LeaseOutcome,
    /// Snapshots applied on top of the base (0 for a cancel or an unchanged checkin).
    pub applied: usize,
    /// When it ended (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Where one user's checkout stands.
#[derive(Clone, Debug)]
enum Slot {
    /// A checkout, checkin or resume is being done right now (the lease, once there is one).
    Busy(Option<OfflineLease>),
    /// Out with a terminal.
    Held(OfflineLease),
    /// The lease ended but the phone could not be brought back from its base (why): it
    /// stays out of service, its files untouched, until an operator's cancel succeeds.
    Stuck(OfflineLease, String),
}

/// The checkouts of one site, by user.
#[derive(Default)]
pub(crate) struct Leases {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

use vmi_control_api::time::format_ms;

fn refusal(user: &str, slot: &Slot) -> String {
    match slot {
        Slot::Busy(_) => format!("{user}'s phone is being checked out or in right now; retry in a moment"),
        Slot::Held(l) => format!(
            "{user}'s phone is checked out to device {} until {} (lease {})",
            l.device_id,
            format_ms(l.expires_ms),
            l.lease_id
        ),
        Slot::Stuck(l, why) => format!(
            "{user}'s phone was checked out to device {} and cannot resume on this site ({why}); \
             an operator must cancel the checkout (lease {})",
            l.device_id, l.lease_id
        ),
    }
}

/// Writes `value` as JSON to `path` atomically (a temporary file, synced, renamed).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SiteError> {
    let io = |source| SiteError::Io { path: path.to_path_buf(), source };
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

impl SiteState {
    /// Why `user`'s phone cannot run here now, if it is checked out.
    pub fn checkout_refusal(&self, user: &str) -> Option<String> {
        self.leases.lock().get(user).map(|slot| refusal(user, slot))
    }

    /// Users whose phones are checked out from this site, each with what Hello would say.
    pub fn checked_out(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            self.leases.lock().iter().map(|(user, slot)| (user.clone(), refusal(user, slot))).collect();
        out.sort();
        out
    }

    /// The lease of `user`'s checked-out phone, if it is out.
    pub fn lease_of(&self, user: &str) -> Option<OfflineLease> {
        match self.leases.lock().get(user)? {
            Slot::Held(l) | Slot::Stuck(l, _) | Slot::Busy(Some(l)) => Some(l.clone()),
            Slot::Busy(None) => None,
        }
    }

    /// The device behind `token`, which must be one of `user`'s.
    async fn device_of(&self, token: &str, user: &str) -> Result<u64, SiteError> {
        match self.authenticate(token).await? {
            Some(vmi_control_api::auth::Principal::Device { user: owner, device_id }) if owner == user => Ok(device_id),
            Some(vmi_control_api::auth::Principal::Device { user: owner, device_id }) => Err(SiteError::Checkout(
                CheckoutError::Forbidden(format!("device {device_id} belongs to {owner}, not to {user}")),
            )),
            _ => Err(SiteError::Checkout(CheckoutError::Unauthorized("unknown or revoked device token".into()))),
        }
    }

    /// At start: takes over the lease of a phone that was checked out when the site
    /// stopped. True if the phone is out (and must not be restored).
    pub(crate) fn adopt_lease(&self, user: &str, dir: &Path) -> bool {
        let path = dir.join(LEASE_FILE);
        if !path.exists() {
            return false;
        }
        let lease: OfflineLease = match read_json(&path) {
            Ok(lease) => lease,
            Err(e) => {
                // Whom it is out to is unknown: not running it is the safe side (one
                // live copy); the operator decides.
                tracing::error!(user, "unreadable checkout lease, the phone stays out of service: {e}");
                return true;
            }
        };
        // A checkin writes the new state before it drops the lease: a state that is not
        // the lease's base means the checkin finished and only the drop was lost.
        let state = self.states.read_phone(dir);
        if let Ok((snapshot, _)) = &state
            && SnapshotId::of(snapshot).to_hex() != lease.base_id
        {
            tracing::warn!(user, lease = %lease.lease_id, "finishing a checkin cut short by a restart");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(user, "cannot remove the finished lease: {}", vmi_engine::error_chain(&e));
                return true;
            }
            return false;
        }
        tracing::info!(user, device = lease.device_id, until = %format_ms(lease.expires_ms), "phone is checked out");
        self.leases.lock().insert(user.to_string(), Slot::Held(lease));
        true
    }

    /// Checks `user`'s phone out to the device behind `token`: stops it, keeps its state
    /// as the checkout base with a lease, and returns the bundle the terminal runs.
    pub async fn checkout(
        self: &Arc<Self>,
        token: &str,
        user: &str,
        request: CheckoutRequest,
    ) -> Result<CheckoutBundle, SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        let lease_secs = request.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if !(1..=MAX_LEASE_SECS).contains(&lease_secs) {
            return Err(SiteError::Checkout(CheckoutError::BadRequest(format!(
                "lease_secs {lease_secs} is out of range: 1 to {MAX_LEASE_SECS} (7 days)"
            ))));
        }
        let device = self.device_of(token, user).await?;
        // Marked as leaving, with the lease slot claimed under the same lock that a
        // migration takes: a phone is checked out or migrated, never both at once.
        let leaving = self.phones.leave(user, || {
            let mut slots = self.leases.lock();
            if let Some(slot) = slots.get(user) {
                return Err(SiteError::CheckedOut(refusal(user, slot)));
            }
            if self.phones.is_closing() {
                return Err(SiteError::Closing);
            }
            if self.phones.get(user).is_none() {
                return Err(SiteError::NoPhone(user.to_string()));
            }
            slots.insert(user.to_string(), Slot::Busy(None));
            Ok(())
        })?;
        let Some(_leaving) = leaving else { return Err(SiteError::Moving(user.to_string())) };
        let result = self.checkout_claimed(user, device, lease_secs).await;
        let mut slots = self.leases.lock();
        match &result {
            Ok(bundle) => {
                slots.insert(user.to_string(), Slot::Held(bundle.lease.clone()));
                tracing::info!(user, device, until = %format_ms(bundle.lease.expires_ms), "phone checked out");
            }
            Err(_) => {
                slots.remove(user);
            }
        }
        result
    }

    async fn checkout_claimed(
        self: &Arc<Self>,
        user: &str,
        device: u64,
        lease_secs: u64,
    ) -> Result<CheckoutBundle, SiteError> {
        // A terminal runs WebAssembly phones only: a Linux phone stays on its sites.
        if let Ok(status) = self.phone(user)?.status().await
            && status.engine != "wasm"
        {
            return Err(SiteError::Checkout(CheckoutError::BadRequest(format!(
                "{user}'s phone runs on the {} engine: only WebAssembly phones can be checked out to a terminal",
                status.engine
            ))));
        }
        // No failover may start the phone's standby copy while the user runs it on their device: unnamed first (no
        // checkout without it).
        self.replication.unname(user).await.map_err(SiteError::Control)?;
        // Out of the map first: no new terminal finds the phone while it stops.
        let link = self.phones.remove(user).ok_or_else(|| SiteError::NoPhone(user.to_string()))?;
        let issued_ms = self.now_ms();
        let expires_ms = issued_ms + lease_secs * 1000;
        let message = format!("{user}'s phone is checked out to device {device} until {}", format_ms(expires_ms));
        let goodbye = ServerMessage::Error { code: ErrorCode::NotHere, message };
        let saved = match link.check_out(goodbye).await {
            Ok(saved) => saved,
            Err(PhoneError::Gone) => return Err(SiteError::phone(user, PhoneError::Gone)),
            Err(e) => {
                // Still running: back in the registry.
                self.phones.insert(user, link);
                return Err(SiteError::phone(user, e));
            }
        };
        let image = match Snapshot::peek_header(&saved.snapshot) {
            Ok(header) => ImageHash(header.image_hash),
            Err(e) => {
                return Err(self.undo_checkout(
                    user,
                    saved,
                    format!("its snapshot does not read back: {}", vmi_engine::error_chain(&e)),
                ));
            }
        };
        let Some(wasm) = self.image_wasm(&image) else {
            return Err(self.undo_checkout(user, saved, format!("this site has no bytes of image {}", image.to_hex())));
        };
        let lease = OfflineLease {
            user: user.to_string(),
            site: self.id.clone(),
            site_url: self.url.clone(),
            device_id: device,
            lease_id: match vmi_control_api::generate_token() {
                Ok(id) => id,
                Err(e) => {
                    return Err(self.undo_checkout(
                        user,
                        saved,
                        format!("no lease id: {}", vmi_engine::error_chain(&e)),
                    ));
                }
            },
            issued_ms,
            expires_ms,
            base_id: SnapshotId::of(&saved.snapshot).to_hex(),
            image: image.to_hex(),
            width: self.config.screen.0,
            height: self.config.screen.1,
        };
        // The base is durable before the lease names it: a crash in between leaves a
        // phone that is simply not out.
        let dir = self.phone_dir(user);
        let written = self.states.write_phone(&dir, &saved).and_then(|()| write_json(&dir.join(LEASE_FILE), &lease));
        if let Err(e) = written {
            let _ = std::fs::remove_file(dir.join(LEASE_FILE));
            return Err(self.undo_checkout(
                user,
                saved,
                format!("cannot keep the checkout base: {}", vmi_engine::error_chain(&e)),
            ));
        }
        Ok(CheckoutBundle { lease, snapshot: saved.snapshot, image: wasm.to_vec() })
    }

    /// A checkout that failed after the phone stopped: run it again from what it saved.
    fn undo_checkout(&self, user: &str, saved: SavedPhone, why: String) -> SiteError {
        tracing::error!(user, "checkout failed after the phone stopped: {why}");
        match self.restore_saved(&saved.snapshot, &[]) {
            Ok(phone) => self.spawn_phone(user, phone, saved.input_seqs),
            Err(e) => {
                // Kept on disk for the operator: a phone's state is never thrown away.
                let _ = self.states.write_phone(&self.phone_dir(user), &saved);
                tracing::error!(user, "and it cannot restart from its snapshot: {}", vmi_engine::error_chain(&e));
            }
        }
        SiteError::Checkout(CheckoutError::Failed(format!("cannot check {user}'s phone out: {why}")))
    }

    /// A phone from a full snapshot and deltas on top of it.
    fn restore_saved(&self, base: &[u8], deltas: &[Vec<u8>]) -> Result<Box<dyn VirtualPhone>, SiteError> {
        let header = Snapshot::peek_header(base).map_err(|e| {
            SiteError::Checkout(CheckoutError::BadRequest(format!("base snapshot: {}", vmi_engine::error_chain(&e))))
        })?;
        let mut chain: Vec<&[u8]> = vec![base];
        chain.extend(deltas.iter().map(Vec::as_slice));
        Ok(self.engine.restore(&ImageHash(header.image_hash), &chain, &self.vm_config())?)
    }

    /// Whether `token`'s device may upload a checkin of `user`'s phone at all (one of the user's devices, and the
    /// one the lease went to if one is out), asked before the upload is received: a stranger does not get to hold
    /// an upload slot.
    pub async fn may_check_in(&self, token: &str, user: &str) -> Result<(), SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        let device = self.device_of(token, user).await?;
        match self.leases.lock().get(user) {
            Some(Slot::Held(lease)) if lease.device_id == device => Ok(()),
            Some(Slot::Held(lease)) => Err(SiteError::Checkout(CheckoutError::Forbidden(format!(
                "{user}'s phone is out to device {}, not to device {device}",
                lease.device_id
            )))),
            // No lease out (ended, cancelled, never taken): the checkin itself says which, from its lease id.
            _ => Ok(()),
        }
    }

    /// Takes the phone back from the terminal holding lease `checkin.header.lease_id`.
    pub async fn checkin(
        self: &Arc<Self>,
        token: &str,
        user: &str,
        checkin: Checkin,
    ) -> Result<CheckinReport, SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        let device = self.device_of(token, user).await?;
        let given = checkin.header.lease_id.clone();
        let now = self.now_ms();
        let lease = {
            let mut slots = self.leases.lock();
            match slots.get(user) {
                None => return Err(SiteError::Checkout(CheckoutError::LeaseRefused(self.ended_refusal(user, &given)))),
                Some(Slot::Held(lease)) if lease.lease_id != given => {
                    return Err(SiteError::Checkout(CheckoutError::LeaseRefused(format!(
                        "lease {given} is not the one out: {user}'s phone is out under lease {} to device {}",
                        lease.lease_id, lease.device_id
                    ))));
                }
                Some(Slot::Held(lease)) if lease.device_id != device => {
                    return Err(SiteError::Checkout(CheckoutError::Forbidden(format!(
                        "lease {given} was given to device {}, not to device {device}",
                        lease.device_id
                    ))));
                }
                Some(Slot::Held(lease)) if now >= lease.expires_ms => {
                    return Err(SiteError::Checkout(CheckoutError::LeaseRefused(format!(
                        "lease expired at {}; the phone resumes on the site from the checkout base",
                        format_ms(lease.expires_ms)
                    ))));
                }
                Some(Slot::Held(lease)) => {
                    let lease = lease.clone();
                    slots.insert(user.to_string(), Slot::Busy(Some(lease.clone())));
                    lease
                }
                Some(slot) => return Err(SiteError::Checkout(CheckoutError::LeaseRefused(refusal(user, slot)))),
            }
        };
        let s = self.clone();
        let (u, l) = (user.to_string(), lease.clone());
        let result = match self.owned_here(user).await {
            // Restoring and snapshotting a phone is CPU work: off the async workers.
            Ok(()) => {
                tokio::task::spawn_blocking(move || s.checkin_claimed(&u, &l, checkin)).await.unwrap_or_else(|e| {
                    Err(SiteError::Checkout(CheckoutError::Failed(format!(
                        "checkin failed: {}",
                        vmi_engine::error_chain(&e)
                    ))))
                })
            }
            Err(e) => Err(e),
        };
        let mut slots = self.leases.lock();
        match &result {
            Ok(report) => {
                slots.remove(user);
                tracing::info!(user, device, applied = report.applied, "phone checked in; runs here again");
            }
            // The base and the lease are as they were: the terminal may try again.
            Err(e) => {
                tracing::warn!(user, device, "checkin refused: {}", vmi_engine::error_chain(&e));
                slots.insert(user.to_string(), Slot::Held(lease));
            }
        }
        result
    }

    fn checkin_claimed(&self, user: &str, lease: &OfflineLease, checkin: Checkin) -> Result<CheckinReport, SiteError> {
        let dir = self.phone_dir(user);
        let (base, mut seqs) = self.states.read_phone(&dir).map_err(|e| {
            SiteError::Checkout(CheckoutError::BadRequest(format!("the checkout base does not read: {e}")))
        })?;
        let base_id = SnapshotId::of(&base);
        if base_id.to_hex() != lease.base_id {
            return Err(SiteError::Checkout(CheckoutError::BadRequest(format!(
                "the checkout base on this site ({}) is not the lease's ({})",
                base_id.to_hex(),
                lease.base_id
            ))));
        }
        // The first snapshot says what the chain is; the engine checks every link after it.
        let mut on_base = true;
        if let Some(first) = checkin.chain.first() {
            let header = Snapshot::peek_header(first).map_err(|e| {
                SiteError::Checkout(CheckoutError::BadRequest(format!(
                    "snapshot 1 of the checkin is corrupt: {}",
                    vmi_engine::error_chain(&e)
                )))
            })?;
            // The checkin runs what was checked out: the base's engine and image, nothing the user names.
            let base_header = Snapshot::peek_header(&base).map_err(|e| {
                SiteError::Checkout(CheckoutError::BadRequest(format!(
                    "the checkout base: {}",
                    vmi_engine::error_chain(&e)
                )))
            })?;
            if header.engine != base_header.engine || header.image_hash != base_header.image_hash {
                return Err(SiteError::Checkout(CheckoutError::BadRequest(
                    "the checkin names another engine or image than its checkout".into(),
                )));
            }
            match header.kind {
                SnapshotKind::Incremental { parent } if parent == base_id => {}
                SnapshotKind::Full => on_base = false,
                SnapshotKind::Incremental { parent } => {
                    return Err(SiteError::Checkout(CheckoutError::BadRequest(format!(
                        "the delta's parent is {}, not the checkout base {}: it was not taken against this checkout",
                        parent.to_hex(),
                        base_id.to_hex()
                    ))));
                }
                SnapshotKind::PreCopy { .. } => {
                    return Err(SiteError::Checkout(CheckoutError::BadRequest(
                        "a pre-copy snapshot cannot be checked in".into(),
                    )));
                }
            }
        }
        let mut phone = if on_base {
            self.restore_saved(&base, &checkin.chain)
        } else {
            self.restore_saved(&checkin.chain[0], &checkin.chain[1..])
        }
        .map_err(|e| {
            SiteError::Checkout(CheckoutError::BadRequest(format!(
                "the checked-in state does not restore: {}",
                vmi_engine::error_chain(&e)
            )))
        })?;
        // It must run, not just load: fire what is due and draw.
        phone.fire_due_timers().and_then(|_| phone.frame().map(|_| ())).map_err(|e| {
            SiteError::Checkout(CheckoutError::BadRequest(format!(
                "the checked-in phone does not run: {}",
                vmi_engine::error_chain(&e)
            )))
        })?;
        let snapshot = phone.snapshot(vmi_engine::SnapshotRequest::Full).map_err(|e| {
            SiteError::Checkout(CheckoutError::BadRequest(format!(
                "the checked-in phone cannot be snapshotted: {}",
                vmi_engine::error_chain(&e)
            )))
        })?;
        for (device, seq) in &checkin.header.input_seqs {
            let known = seqs.entry(device.clone()).or_insert(0);
            *known = (*known).max(*seq);
        }
        let saved = SavedPhone { snapshot: snapshot.bytes, input_seqs: seqs };
        // New state first, then the lease goes (adopt_lease finishes a checkin cut there).
        self.states.write_phone(&dir, &saved)?;
        let at_ms = self.now_ms();
        let ended = EndedLease {
            lease_id: lease.lease_id.clone(),
            device_id: lease.device_id,
            outcome: LeaseOutcome::CheckedIn,
            at_ms,
        };
        self.end_lease(&dir, &ended);
        if !self.phones.is_closing() {
            self.spawn_phone(user, phone, saved.input_seqs);
        }
        Ok(CheckinReport {
            user: user.to_string(),
            lease_id: lease.lease_id.clone(),
            outcome: ended.outcome,
            applied: checkin.chain.len(),
            at_ms,
        })
    }

    /// Records how a lease ended and drops it.
    fn end_lease(&self, dir: &Path, ended: &EndedLease) {
        if let Err(e) = write_json(&dir.join(ENDED_FILE), ended) {
            tracing::warn!(dir = %dir.display(), "cannot record how the lease ended: {}", vmi_engine::error_chain(&e));
        }
        if let Err(e) = std::fs::remove_file(dir.join(LEASE_FILE)) {
            tracing::error!(dir = %dir.display(), "cannot remove the ended lease: {}", vmi_engine::error_chain(&e));
        }
    }

    /// Whether the control service still places `user`'s phone here: a phone that was
    /// brought up elsewhere while it was out (its site lost, restored from a copy) must
    /// not come back to life here too.
    async fn owned_here(&self, user: &str) -> Result<(), SiteError> {
        match self.control.placement(user).await {
            Ok(p) if p.site == self.id => Ok(()),
            Ok(p) => Err(SiteError::Checkout(CheckoutError::LeaseRefused(format!(
                "{user}'s phone now belongs to {} (placed there while it was out); it does not resume here",
                p.site
            )))),
            // Unknown is not yes: ask again later.
            Err(e) => Err(SiteError::Control(e)),
        }
    }

    /// Why a checkin of `lease_id` is refused when no lease is out.
    fn ended_refusal(&self, user: &str, lease_id: &str) -> String {
        match read_json::<EndedLease>(&self.phone_dir(user).join(ENDED_FILE)) {
            Ok(ended) if ended.lease_id == lease_id => match ended.outcome {
                LeaseOutcome::Expired => {
                    format!("lease expired; the phone resumed on the site at {}", format_ms(ended.at_ms))
                }
                LeaseOutcome::Cancelled => format!(
                    "lease was cancelled by an operator; the phone resumed on the site at {}",
                    format_ms(ended.at_ms)
                ),
                LeaseOutcome::CheckedIn => format!("lease already checked in at {}", format_ms(ended.at_ms)),
            },
            _ => format!("{user}'s phone is not checked out (no lease {lease_id} on this site)"),
        }
    }

    /// Brings a checked-out phone back from its checkout base (lease expired or
    /// cancelled); the slot must be Busy with `lease`.
    async fn resume_from_base(
        self: &Arc<Self>,
        user: &str,
        lease: &OfflineLease,
        outcome: LeaseOutcome,
    ) -> Result<u64, SiteError> {
        self.owned_here(user).await?;
        let s = self.clone();
        let (u, l, o) = (user.to_string(), lease.clone(), outcome);
        tokio::task::spawn_blocking(move || {
            let dir = s.phone_dir(&u);
            let (base, seqs) = s.states.read_phone(&dir).map_err(|e| {
                SiteError::Checkout(CheckoutError::BadRequest(format!("the checkout base does not read: {e}")))
            })?;
            let phone = s.restore_saved(&base, &[])?;
            let at_ms = s.now_ms();
            s.end_lease(&dir, &EndedLease { lease_id: l.lease_id.clone(), device_id: l.device_id, outcome: o, at_ms });
            if !s.registry().is_closing() {
                s.spawn_phone(&u, phone, seqs);
            }
            Ok(at_ms)
        })
        .await
        .unwrap_or_else(|e| {
            Err(SiteError::Checkout(CheckoutError::Failed(format!("resume failed: {}", vmi_engine::error_chain(&e)))))
        })
    }

    /// Operator: breaks `user`'s lease (a lost terminal); the phone resumes here from the
    /// checkout base and a later checkin of the lease is refused.
    pub async fn cancel_checkout(self: &Arc<Self>, user: &str) -> Result<CheckinReport, SiteError> {
        let lease = {
            let mut slots = self.leases.lock();
            match slots.get(user) {
                None => return Err(SiteError::Checkout(CheckoutError::NotCheckedOut(user.to_string()))),
                Some(Slot::Busy(_)) => {
                    return Err(SiteError::CheckedOut(refusal(user, &Slot::Busy(None))));
                }
                Some(Slot::Held(lease) | Slot::Stuck(lease, _)) => {
                    let lease = lease.clone();
                    slots.insert(user.to_string(), Slot::Busy(Some(lease.clone())));
                    lease
                }
            }
        };
        let result = self.resume_from_base(user, &lease, LeaseOutcome::Cancelled).await;
        let mut slots = self.leases.lock();
        match result {
            Ok(at_ms) => {
                slots.remove(user);
                tracing::warn!(user, lease = %lease.lease_id, device = lease.device_id, "checkout cancelled; phone resumed from its base");
                Ok(CheckinReport {
                    user: user.to_string(),
                    lease_id: lease.lease_id,
                    outcome: LeaseOutcome::Cancelled,
                    applied: 0,
                    at_ms,
                })
            }
            Err(e) => {
                tracing::error!(
                    user,
                    "cannot resume the phone from its checkout base: {}",
                    vmi_engine::error_chain(&e)
                );
                slots.insert(user.to_string(), Slot::Stuck(lease, e.to_string()));
                Err(e)
            }
        }
    }

    /// Resumes every phone whose lease has run out.
    pub(crate) async fn expire_leases(self: &Arc<Self>) {
        let now = self.now_ms();
        let due: Vec<(String, OfflineLease)> = {
            let mut slots = self.leases.lock();
            let due: Vec<(String, OfflineLease)> = slots
                .iter()
                .filter_map(|(u, s)| match s {
                    Slot::Held(l) if now >= l.expires_ms => Some((u.clone(), l.clone())),
                    _ => None,
                })
                .collect();
            for (user, lease) in &due {
                slots.insert(user.clone(), Slot::Busy(Some(lease.clone())));
            }
            due
        };
        for (user, lease) in due {
            let result = self.resume_from_base(&user, &lease, LeaseOutcome::Expired).await;
            let mut slots = self.leases.lock();
            match result {
                Ok(_) => {
                    slots.remove(&user);
                    tracing::warn!(
                        user,
                        lease = %lease.lease_id,
                        device = lease.device_id,
                        expired = %format_ms(lease.expires_ms),
                        "checkout lease expired; phone resumed from its checkout base"
                    );
                }
                // The control service did not answer who owns the phone: try again later.
                Err(SiteError::Control(e)) => {
                    tracing::warn!(
                        user,
                        "lease expired; resuming waits for the control service: {}",
                        vmi_engine::error_chain(&e)
                    );
                    slots.insert(user, Slot::Held(lease));
                }
                Err(e) => {
                    tracing::error!(
                        user,
                        "lease expired but the phone cannot resume from its base: {}",
                        vmi_engine::error_chain(&e)
                    );
                    slots.insert(user, Slot::Stuck(lease, e.to_string()));
                }
            }
        }
    }
}

/// Starts the task that ends expired leases (its first look is at once: leases that ran
/// out while the site was down end at start).
pub(crate) fn spawn_expiry(site: &Arc<SiteState>) {
    let weak = Arc::downgrade(site);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EXPIRY_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(site) = weak.upgrade() else { return };
            if site.registry().is_closing() {
                return;
            }
            site.expire_leases().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_ms(1_764_078_245_123), "2025-11-25T13:44:05Z");
    }
}
