//! # vmi-site: the edge site daemon
//!
//! A site hosts many users' phones on one engine and streams them to terminals:
//!
//! - each phone runs in its own task ([`phone::PhoneTask`]) that owns the VM, fires its
//!   timers whether or not a terminal is attached, and pushes damage-tracked frames and
//!   notifications to attached terminals;
//! - terminals connect over WebSocket (`/v1/terminal`, docs/PROTOCOL.md), authenticate
//!   with their device token against the control service, and are redirected when the
//!   phone runs elsewhere;
//! - the browser terminal is served from `/`;
//! - on clean shutdown every phone is snapshotted into the data directory, and brought
//!   back from there on the next start, so a restart loses nothing the user typed;
//! - images are loaded on demand: a phone runs the version of its image the control
//!   service names for its user (`GET /v1/users/{user}/image`), or the built-in phone
//!   when none is published. A phone moves to a new version (or back, after a rollback)
//!   when it boots from its snapshot: at site start and on an operator's restart
//!   (`POST /v1/phones/{user}/restart`). Only its key-value store crosses
//!   ([`Engine::upgrade`]); if the new version cannot boot, the phone stays on its old one;
//! - a new phone is admitted by the control service first (its tenant's quotas).
//!
//! Only this crate speaks HTTP for a site; the engine and protocol crates know nothing
//! of it.

pub mod access;
pub mod checkout;
pub mod checkpoints;
mod error;
pub mod handoff;
pub mod hibernation;
mod http;
pub mod metrics;
pub mod migration;
pub mod peer_socket;
pub mod persist;
pub mod phone;
pub mod registry;
mod session;
pub mod standby;
mod web;

pub use error::SiteError;
pub use http::{HELLOS_AT_ONCE, openapi};
pub use persist::PHONE_FILE;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::registry::{NoRoom, PhoneRegistry};
use std::time::Duration;

use tokio::sync::watch;
use vmi_control_api::ControlClient;
use vmi_engine::{Clock, Engine, ImageHash, VirtualPhone, VmConfig};

use crate::phone::{PhoneError, PhoneLink, PhoneTask, SavedPhone};

mod images;
pub use images::{ImageRef, RestartReport};

/// How soon a heartbeat that failed (or was answered "placements frozen") is sent again.
const HEARTBEAT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// How to run a site.
#[derive(Clone)]
pub struct SiteConfig {
    /// Site id, e.g. `site-a`.
    pub id: String,
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where phones are saved.
    pub data_dir: PathBuf,
    /// Control service base URL.
    pub control_url: String,
    /// Latitude of the site.
    pub lat: f64,
    /// Longitude of the site.
    pub lon: f64,
    /// Most phones it hosts.
    pub capacity: u32,
    /// Time source for the phones.
    pub clock: Arc<dyn Clock>,
    /// How often to tell the control service the site is alive.
    pub heartbeat: Duration,
    /// Screen size of new phones.
    pub screen: (u32, u32),
    /// The URL terminals and other sites use for this site, when it differs from the
    /// listening address (a proxy in front of it); default: the listening address.
    pub public_url: Option<String>,
    /// How often every phone is checkpointed (None: only on demand). `vmi site` uses an
    /// hour.
    pub checkpoint_every: Option<Duration>,
    /// Which checkpoints are kept as they age.
    pub retention: vmi_checkpoint::Retention,
    /// The site's certificate (naming `{id}.site.vmi`) and key, and the provider CA: it serves HTTPS/WSS with
    /// them and proves who it is to the control service and other sites (docs/SECURITY.md).
    pub credentials: vmi_trust::Credentials,
    /// Connection caps and timeouts of the listener.
    pub limits: vmi_trust::ConnectionLimits,
    /// Where every input applied is recorded, with its phone's placement epoch, for the fault checker (`vmi
    /// nemesis`); `None`: nowhere.
    pub history: Option<Arc<vmi_control_api::history::History>>,
    /// When idle phones hibernate (docs/ARCHITECTURE.md, "Hibernation"); `None`: never.
    pub hibernation: Option<hibernation::HibernationPolicy>,
}

/// Shared state of a running site.
pub struct SiteState {
    /// Site id.
    pub id: String,
    /// Base URL terminals and operators use.
    pub url: String,
    /// The engine contract: any engine plugs in here.
    engine: Arc<dyn Engine>,
    /// The images loaded here (the built-in phone first): what phones here can run.
    images: images::LoadedImages,
    /// Which phones run, arrive and leave here.
    phones: PhoneRegistry,
    /// Phones checked out to terminals (docs/OFFLINE.md).
    leases: checkout::Leases,
    control: ControlClient,
    /// How this site calls others: its certificate, claiming `site/{id}`.
    caller: vmi_control_api::Caller,
    /// Lockout of addresses guessing tokens, and audit entries on their way to the control service.
    guard: Arc<access::Guard>,
    /// Turns for large uploads ([`http::UPLOADS_AT_ONCE`]).
    uploads: tokio::sync::Semaphore,
    /// Turns for terminals that have not said Hello yet ([`http::HELLOS_AT_ONCE`]).
    greeting: Arc<tokio::sync::Semaphore>,
    /// Phones whose state cannot be written: the heartbeat says the site is degraded while there are any.
    disk: Arc<persist::DiskHealth>,
    /// The phones' saved states, content-addressed (`DATA/state/`).
    pub(crate) states: Arc<persist::StateStore>,
    /// Standby copies of this site's phones on other sites, and its lease.
    replication: Arc<standby::Replication>,
    /// The standby copies this site holds of other sites' phones.
    standby: standby::Copies,
    /// The registered sites' origins and when they were asked (pages of those may open terminals here).
    origins: std::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
    /// The last list of users placed here the control service sent (a heartbeat names its version, and the list
    /// is sent again only when it changed).
    placed: std::sync::Mutex<Option<standby::PlacedList>>,
    config: SiteConfig,
    checkpoints: checkpoints::Checkpoints,
    /// The hibernation policy and the count of resident phones, when phones hibernate here.
    residency: Option<Arc<hibernation::Residency>>,
    /// Moves arriving here that terminals may join ahead of the handoff.
    pub(crate) handoffs: handoff::Handoffs,
    /// What `GET /metrics` tells operators.
    pub(crate) metrics: Arc<metrics::SiteMetrics>,
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !user.starts_with('.')
}

impl SiteState {
    /// Whether this site holds its lease now (its phones may run).
    pub fn holds_lease(&self) -> bool {
        self.replication.lease().live()
    }

    /// The control service's URL (every replica's, comma-separated).
    pub fn control_url(&self) -> &str {
        &self.config.control_url
    }

    /// The link to `user`'s phone, if it runs here.
    pub fn phone_link(&self, user: &str) -> Option<PhoneLink> {
        self.phones.get(user)
    }

    /// The link to `user`'s phone, or [`SiteError::NoPhone`].
    pub fn phone(&self, user: &str) -> Result<PhoneLink, SiteError> {
        self.phones.get(user).ok_or_else(|| SiteError::NoPhone(user.to_string()))
    }

    /// Which phones run, arrive and leave here.
    pub fn registry(&self) -> &PhoneRegistry {
        &self.phones
    }

    /// The site's client of the control service.
    pub fn control(&self) -> &ControlClient {
        &self.control
    }

    /// How this site calls site `site_id`: as itself, over TLS only, accepting only a peer whose certificate
    /// names `site_id`.
    pub fn peer(&self, site_id: &str) -> Result<vmi_control_api::Caller, SiteError> {
        let name = vmi_trust::site_name(site_id).map_err(|e| SiteError::BadUser(e.to_string()))?;
        Ok(self.caller.clone().expecting(&name).tls_only())
    }

    /// The origins (`https://host:port`) of the registered sites, as the control service listed them within the
    /// last 30 s (none while it cannot be asked).
    pub async fn registered_origins(&self) -> Vec<String> {
        const FRESH: Duration = Duration::from_secs(30);
        if let Some((at, origins)) = &*self.origins.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < FRESH
        {
            return origins.clone();
        }
        let origins: Vec<String> = match self.control.list_sites().await {
            Ok(sites) => sites.into_iter().map(|s| s.site.url.trim_end_matches('/').to_owned()).collect(),
            Err(_) => Vec::new(),
        };
        *self.origins.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), origins.clone()));
        origins
    }

    /// The host names this site answers to: its certificate name and its public URL's host.
    pub fn browser_policy(&self) -> vmi_trust::browser::BrowserPolicy {
        let mut names = vec![vmi_trust::site_name(&self.id).unwrap_or_default()];
        if let Some(rest) = self.url.split_once("://").map(|(_, rest)| rest) {
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            names.push(host.to_owned());
        }
        vmi_trust::browser::BrowserPolicy::new(names)
    }

    /// Screen size of the phones this site runs.
    pub fn screen(&self) -> (u32, u32) {
        self.config.screen
    }

    pub(crate) fn phone_dir(&self, user: &str) -> PathBuf {
        self.config.data_dir.join("phones").join(user)
    }

    /// Starts the task of a phone that now runs here. On a site that is shutting down
    /// (a migration's commit or a restore that finished late) the phone is saved to disk
    /// instead: it must not run unsaved past the shutdown's save of every phone.
    /// The phone runs only while the site holds its lease (docs/FAILOVER.md). A standby copy this site held of it
    /// (from when another site ran it) is stale from now on and goes.
    pub(crate) fn spawn_phone(&self, user: &str, phone: Box<dyn VirtualPhone>, input_seqs: HashMap<String, u64>) {
        let mut vm = Some((phone, input_seqs));
        let started = self.phones.insert_unless_closing(user, || {
            let (phone, seqs) = vm.take().expect("the phone is taken once");
            PhoneLink::spawn(self.phone_task(user, phone, seqs))
        });
        if started {
            self.now_running_here(user);
        } else if let Some((mut phone, input_seqs)) = vm {
            let saved = phone
                .snapshot(vmi_engine::SnapshotRequest::Full)
                .map_err(|e| SiteError::phone(user, e.into()))
                .and_then(|s| {
                    self.states.write_phone(&self.phone_dir(user), &SavedPhone { snapshot: s.bytes, input_seqs })
                });
            Self::log_saved_at_shutdown(user, saved);
        }
    }

    /// Starts a migration's arrival before its ownership commits: the VM runs, but nothing it does leaves its task,
    /// and it is in no registry, so no terminal or service reaches it (docs/MIGRATION.md). Then
    /// [`register_arrival`](Self::register_arrival) once the placement names this site, or `stop` and drop it.
    pub(crate) fn spawn_provisional(
        &self,
        user: &str,
        phone: Box<dyn VirtualPhone>,
        input_seqs: HashMap<String, u64>,
        vouched: HashMap<String, u64>,
    ) -> PhoneLink {
        PhoneLink::spawn(self.phone_task(user, phone, input_seqs).provisional(vouched))
    }

    /// A provisional arrival whose ownership committed: terminals and services reach it here from now on; true.
    /// The caller then tells it [`PhoneLink::commit`] (its state is kept durable from then on). On a site that is
    /// shutting down it is saved for its next start instead; false.
    pub(crate) async fn register_arrival(&self, user: &str, link: &PhoneLink) -> bool {
        let mut pending = Some(link.clone());
        if self.phones.insert_unless_closing(user, || pending.take().expect("the link is taken once")) {
            self.now_running_here(user);
            return true;
        }
        link.commit().await;
        let saved = link
            .stop()
            .await
            .map_err(|e| SiteError::phone(user, e))
            .and_then(|s| self.states.write_phone(&self.phone_dir(user), &s));
        Self::log_saved_at_shutdown(user, saved);
        false
    }

    /// The site's hibernation policy and figures (resident phones, timer wakes), when its phones hibernate.
    pub fn residency(&self) -> Option<&hibernation::Residency> {
        self.residency.as_deref()
    }

    /// The distinct pages hibernated phones share here, and their compressed bytes (if the engine keeps any).
    pub fn page_store(&self) -> Option<(usize, usize)> {
        self.engine.page_store()
    }

    /// The site's data directory (phones, standby copies, state store, checkpoints).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// Where the phones' saved states live.
    pub fn state_store(&self) -> &persist::StateStore {
        &self.states
    }

    /// What `GET /v1/phones` says of hibernation here: the policy, the phones resident now (`resident`, as the phone
    /// listing counts them) and the page store the hibernated ones share.
    pub(crate) fn residency_summary(&self, resident: usize) -> serde_json::Value {
        let pages = self.engine.page_store();
        serde_json::json!({
            "policy": self.residency.as_ref().map(|r| serde_json::json!({
                "idle_secs": r.policy.idle.as_secs_f64(),
                "max_resident": r.policy.max_resident,
            })),
            "resident": resident,
            "page_store": pages.map(|p| serde_json::json!({ "pages": p.0, "bytes": p.1 })),
            "timer_wakes": self.residency.as_ref().map(|r| r.timer_wakes()),
        })
    }

    /// The task of `user`'s phone here: durable in its directory while the site holds its lease, recording its
    /// inputs when the site keeps a history. The epoch it runs at is asked again (its first full record does).
    fn phone_task(&self, user: &str, phone: Box<dyn VirtualPhone>, input_seqs: HashMap<String, u64>) -> PhoneTask {
        self.replication.epoch_unknown(user);
        PhoneTask::new(user.to_string(), phone, self.config.clock.clone(), input_seqs)
            .durable_in(self.phone_dir(user), self.disk.clone(), self.replication.clone())
            .recording_to(self.config.history.clone())
            .hibernating(self.residency.clone())
            .counted_in(self.metrics.clone())
            .reporting_crashes(self.id.clone(), self.guard.clone())
    }

    /// A phone now runs here: any standby copy of it this site held (from when another site ran it) is stale.
    fn now_running_here(&self, user: &str) {
        let stale = self.config.data_dir.join(standby::STANDBY_DIR).join(user);
        if stale.exists()
            && let Err(e) = self.discard_dir(&stale)
        {
            tracing::warn!(user, path = %stale.display(), "cannot remove a stale standby copy: {e}");
        }
    }

    fn log_saved_at_shutdown(user: &str, saved: Result<(), SiteError>) {
        match saved {
            Ok(()) => tracing::info!(user, "phone arrived while the site shuts down; saved for its next start"),
            Err(e) => tracing::error!(
                user,
                "phone arrived while the site shuts down and cannot be saved: {}",
                vmi_engine::error_chain(&e)
            ),
        }
    }

    fn vm_config(&self) -> VmConfig {
        VmConfig { width: self.config.screen.0, height: self.config.screen.1, ..VmConfig::default() }
    }

    /// Now by the site's clock, ms since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.wall_ns() / 1_000_000
    }

    /// A phone from a full snapshot, on the image it was taken on (loaded here first,
    /// fetched from the control service if need be): going back to a checkpoint goes
    /// back to its image version too.
    pub(crate) async fn restore_snapshot(self: &Arc<Self>, bytes: &[u8]) -> Result<Box<dyn VirtualPhone>, SiteError> {
        let header = vmi_snapshot::Snapshot::peek_header(bytes).map_err(SiteError::CorruptSnapshot)?;
        let image = ImageHash(header.image_hash);
        self.ensure_image(&image).await?;
        Ok(self.engine.restore(&image, &[bytes], &self.vm_config())?)
    }

    /// Removes a phone's saved state after it moved away, so a restart never brings back
    /// a copy that now lives elsewhere.
    pub(crate) fn forget_saved(&self, user: &str) {
        let dir = self.phone_dir(user);
        if dir.exists()
            && let Err(e) = self.discard_dir(&dir)
        {
            tracing::error!(user, path = %dir.display(), "cannot remove the moved phone's old snapshot: {e}");
        }
    }

    /// Removes a phone's directory that is no longer this site's: moved aside at once (a rename; the phone may
    /// come straight back and write there), then removed with its state in the store off the async workers (files
    /// and syncs there held the terminals of the phones here up; a crash in between leaves it to the next start).
    fn discard_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        static DISCARDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let trash = self.config.data_dir.join(persist::TRASH_DIR);
        std::fs::create_dir_all(&trash)?;
        let n = DISCARDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let aside = trash.join(format!("{name}-{}-{n}", std::process::id()));
        std::fs::rename(dir, &aside)?;
        let states = self.states.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = states.remove_dir(&aside) {
                tracing::warn!(path = %aside.display(), "cannot remove a discarded phone directory: {e}");
            }
        });
        Ok(())
    }

    /// Whether this site can take `user`'s phone of `image` (a migration's destination,
    /// with the phone marked as arriving).
    pub fn can_host(&self, user: &str, image: &ImageHash) -> Result<(), SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        if let Some(why) = self.checkout_refusal(user) {
            return Err(SiteError::CheckedOut(why));
        }
        // Any image this site has loaded (a migration's destination loads it first, see
        // `ensure_image`).
        if !self.has_image(image) {
            return Err(SiteError::WrongImage(image.to_hex()));
        }
        self.phones.room_for_arrival(user).map_err(|e| no_room(user, e))
    }

    fn engine_begin_restore(&self, image: &ImageHash) -> Result<Box<dyn vmi_engine::RestoreStage>, SiteError> {
        Ok(self.engine.begin_restore(image, &self.vm_config())?)
    }

    /// Boots a new phone for `user`: the control service admits it first (its tenant's
    /// quotas; [`SiteError::Admission`] with the reason if refused, and nothing is created),
    /// then it boots on the current version of the user's image.
    pub async fn create_phone(self: &Arc<Self>, user: &str) -> Result<(), SiteError> {
        self.check_room(user)?;
        // The placement must name this site: a phone placed elsewhere may be running
        // there, and a second, empty one here would take its place.
        match self.control.placement(user).await {
            Ok(p) if p.site != self.id => {
                return Err(SiteError::PlacedElsewhere { user: user.into(), site: p.site, here: self.id.clone() });
            }
            Ok(_) => {}
            Err(vmi_control_api::ClientError::Status { status: 404, .. }) => {
                return Err(SiteError::NotPlaced(user.to_string()));
            }
            Err(e) => return Err(SiteError::Control(e)),
        }
        // The engine seeds each new VM from the host's secure random source.
        let config = self.vm_config();
        if let Err(e) = self.control.admit(user, config.memory_limit_bytes).await {
            self.metrics.admission_refused();
            return Err(images::admission_error(e));
        }
        let booted = async {
            let image = self.current_image(user).await?;
            let site = self.clone();
            let phone = self.blocking(move || site.engine.create(&image, &config)).await??;
            // Checked again: another request may have booted this user's phone meanwhile.
            self.check_room(user)?;
            self.spawn_phone(user, phone, HashMap::new());
            tracing::info!(site = %self.id, user, image = %image, "phone created");
            Ok(())
        }
        .await;
        if let Err(e) = &booted
            && !matches!(e, SiteError::Exists(_))
        {
            // The phone does not run: it must not count against the tenant.
            if let Err(release) = self.control.release(user).await {
                tracing::warn!(user, "could not release the admission of a phone that did not boot: {release}");
            }
        }
        booted
    }

    /// Whether a new phone for `user` may boot here now (name, not there yet, capacity).
    fn check_room(&self, user: &str) -> Result<(), SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        // A fresh phone would shadow the one that is out (and overwrite its base at shutdown).
        if self.phones.get(user).is_none()
            && let Some(why) = self.checkout_refusal(user)
        {
            return Err(SiteError::CheckedOut(why));
        }
        // Running, or arriving (a migration, a restore from a copy): either way it exists.
        self.phones.room_for_new(user).map_err(|e| no_room(user, e))
    }

    /// Users whose phones run here.
    pub fn users(&self) -> Vec<String> {
        self.phones.users()
    }

    async fn restore_all(self: &Arc<Self>) -> Result<usize, SiteError> {
        let dir = self.config.data_dir.join("phones");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(SiteError::Io { path: dir, source }),
        };
        let mut restored = 0;
        for entry in entries.flatten() {
            let user = entry.file_name().to_string_lossy().into_owned();
            if !valid_user(&user) {
                continue;
            }
            // A checked-out phone runs on its terminal: it stays out, its lease kept.
            if self.adopt_lease(&user, &entry.path()) {
                continue;
            }
            let state_path = entry.path().join(PHONE_FILE);
            // The saved state and the journal records after it.
            let durable = self.read_durable_repairing(&user, &entry.path()).await;
            if let Ok(d) = &durable
                && d.torn_bytes > 0
            {
                tracing::warn!(user, bytes = d.torn_bytes, "the journal ends in a record a crash cut short: ignored");
            }
            let state_ms = durable.as_ref().ok().and_then(persist::DurableState::at_ms);
            let records = durable.as_ref().map_or(0, |d| d.chain.len().saturating_sub(1));
            let saved = durable.and_then(|d| Ok((d.flatten()?, d.input_seqs)));
            // Never silently back from an older state: a checkpoint newer than the saved state (or a saved state
            // that cannot be read) brings the phone back from that checkpoint instead.
            let newest_checkpoint = match self.checkpoints_of(&user).await {
                Ok(list) => list.iter().map(|c| c.at_ms).max(),
                Err(_) => None,
            };
            let from_checkpoint = match (&saved, newest_checkpoint) {
                (Ok(_), Some(at)) => state_ms.is_some_and(|s| at > s),
                (Err(_), Some(_)) => true,
                (_, None) => false,
            };
            if from_checkpoint {
                let why = match &saved {
                    Ok(_) => "the newest checkpoint is newer than the saved state".to_owned(),
                    Err(e) => format!("the saved state cannot be read ({e})"),
                };
                match self.restore_checkpoint(&user, vmi_checkpoint::Selector::AtOrBefore(u64::MAX)).await {
                    Ok(done) => {
                        tracing::warn!(user, checkpoint = %done.restored.id, at_ms = done.restored.at_ms, "{why}: restored from the checkpoint");
                        restored += 1;
                    }
                    Err(e) => tracing::error!(
                        user,
                        "{why}, and the checkpoint cannot be restored: {}",
                        vmi_engine::error_chain(&e)
                    ),
                }
                continue;
            }
            let (bytes, input_seqs) = match saved {
                Ok(saved) => saved,
                Err(e) => {
                    // Kept where it is for an operator: a phone's state is never thrown away.
                    tracing::error!(path = %state_path.display(), "skipping a phone that cannot be read: {e}");
                    continue;
                }
            };
            // Only a phone this site still owns comes back: one that moved away while the
            // site was down runs elsewhere now (its file is kept for the operator).
            match self.control.placement(&user).await {
                Ok(p) if p.site == self.id => {}
                Ok(p) => {
                    tracing::warn!(user, owner = %p.site, "not restoring a phone that now belongs to another site");
                    continue;
                }
                Err(e) => {
                    tracing::error!(user, "not restoring: cannot ask the control service who owns it: {e}");
                    continue;
                }
            }
            // On the current version of its image: a phone moves to a newly published
            // version (or back after a rollback) here.
            match self.boot_saved(&user, bytes.into()).await {
                Ok((phone, _report)) => {
                    if records > 0 {
                        tracing::info!(user, records, "restored the saved state and the journal after it");
                    }
                    self.spawn_phone(&user, phone, input_seqs);
                    restored += 1;
                }
                // The file stays where it is: a phone's state is never thrown away.
                Err(e) => tracing::error!(
                    user,
                    path = %state_path.display(),
                    "cannot restore phone: {}",
                    vmi_engine::error_chain(&e)
                ),
            }
        }
        Ok(restored)
    }

    /// Stops every phone and writes its snapshot (unless its journal here holds its state already); returns how
    /// many are saved.
    pub async fn save_all(&self) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        for (user, phone) in self.phones.close() {
            let stopped = match phone.shut_down().await {
                // Crashed before any snapshot of it: what crosses to a fresh phone (its
                // store, mail, clock) is saved as one, so the restart brings the data back.
                Err(PhoneError::NoGoodState { .. }) => self.fresh_from_crashed(&user, &phone).await.map(Some),
                other => other.map_err(|e| SiteError::phone(&user, e)),
            };
            let written = stopped.and_then(|s| match s {
                Some(saved) => self.states.write_phone(&self.phone_dir(&user), &saved),
                None => Ok(()),
            });
            match written {
                Ok(()) => report.saved += 1,
                Err(e) => {
                    let why = vmi_engine::error_chain(&e);
                    tracing::error!(user, "cannot save phone: {why}");
                    report.failed.push((user, why));
                }
            }
        }
        report
    }
}

impl SiteState {
    /// A fresh phone on the crashed one's image with what crosses from it, as saved.
    async fn fresh_from_crashed(&self, user: &str, phone: &PhoneLink) -> Result<SavedPhone, SiteError> {
        let carried = phone.carryover().await.map_err(|e| SiteError::phone(user, e))?;
        let status = phone.status().await.map_err(|e| SiteError::phone(user, e))?;
        let image = ImageHash::from_hex(&status.image).unwrap_or(self.images.builtin());
        let mut fresh = self.engine.create_from(&image, &carried, &self.vm_config())?;
        let snapshot =
            fresh.snapshot(vmi_engine::SnapshotRequest::Full).map_err(|e| SiteError::phone(user, e.into()))?;
        Ok(SavedPhone { snapshot: snapshot.bytes, input_seqs: HashMap::new() })
    }
}

fn no_room(user: &str, e: NoRoom) -> SiteError {
    match e {
        NoRoom::Exists => SiteError::Exists(user.to_string()),
        NoRoom::Full(capacity) => SiteError::Full(capacity),
    }
}

/// What a site's shutdown saved, and which phones it could not save (with why).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Phones written to disk.
    pub saved: usize,
    /// Users whose phones could not be written, and why.
    pub failed: Vec<(String, String)>,
}

/// A running site.
pub struct SiteHandle {
    /// Shared state (for in-process tests and benches).
    pub state: Arc<SiteState>,
    /// Base URL, e.g. `https://127.0.0.1:7801` (the public URL when one is configured).
    pub url: String,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    checkpointer: Option<tokio::task::JoinHandle<()>>,
}

impl SiteHandle {
    /// WebSocket URL terminals connect to.
    pub fn ws_url(&self) -> String {
        vmi_control_api::ws_url(&self.url)
    }

    /// Fires every phone's due timers now and waits until their output is sent (for
    /// manual clocks).
    pub async fn tick(&self) {
        for user in self.state.users() {
            if let Some(phone) = self.state.phone_link(&user) {
                let _ = phone.tick().await;
            }
        }
    }

    /// Stops serving, saves every phone to the data directory, and returns how many.
    pub async fn shutdown(self) -> ShutdownReport {
        let _ = self.shutdown.send(true);
        self.heartbeat.abort();
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.abort();
        }
        let report = self.state.save_all().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        tracing::info!(site = %self.state.id, saved = report.saved, failed = report.failed.len(), "site stopped");
        report
    }
}

/// Most phones a site runs with a pooled instance allocator (above it, instances are made on demand).
pub const POOLED_PHONES: u32 = 2048;

/// Starts a site on the default engine (WebAssembly micro-VMs, `vmi-wasm-engine`).
pub async fn start(config: SiteConfig) -> Result<SiteHandle, SiteError> {
    // The pooling allocator reserves address space for a slot per phone that may run at once (a few GiB each,
    // mostly guard): right for a site that runs every phone it holds. A site holding more phones than that, most
    // of them hibernated, makes each instance when it wakes instead (measured alike for wakes and boots).
    let max_vms = if config.capacity <= POOLED_PHONES { config.capacity + 8 } else { 0 };
    let engine_config = vmi_wasm_engine::WasmEngineConfig { max_vms, ..Default::default() };
    let engine = vmi_wasm_engine::WasmEngine::with_config(engine_config, config.clock.clone())?;
    // Linux phones beside them, on QEMU (used once a Linux image is loaded; docs/LINUX-PHONES.md).
    let linux = vmi_qemu_engine::QemuEngine::new(vmi_qemu_engine::Settings::under(&config.data_dir))
        .map(|e| e.with_clock(config.clock.clone()));
    let engine: Arc<dyn Engine> = match linux {
        Ok(linux) => Arc::new(vmi_engine::Engines::new(Arc::new(engine), vec![Arc::new(linux)])),
        Err(e) => {
            tracing::warn!("this site runs no Linux phones: {e}");
            Arc::new(engine)
        }
    };
    start_with_engine(config, engine).await
}

/// Starts a site on `engine` (any engine behind the contract of `vmi-engine`): restores
/// its saved phones, listens, registers with the control service.
pub async fn start_with_engine(config: SiteConfig, engine: Arc<dyn Engine>) -> Result<SiteHandle, SiteError> {
    let builtin_image = engine.load_image(vmi_phone_image::PHONE_WASM)?.hash;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SiteError::Io { path: PathBuf::from(config.listen.to_string()), source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SiteError::Io { path: PathBuf::from(config.listen.to_string()), source })?;
    let url = config.public_url.clone().unwrap_or_else(|| format!("https://{addr}"));
    let caller = vmi_control_api::Caller::machine(&config.credentials, &format!("site/{}", config.id))?;
    let tls = vmi_trust::server_config(&config.credentials)
        .map_err(|e| SiteError::Io { path: PathBuf::from("site certificate"), source: std::io::Error::other(e) })?;
    let control = ControlClient::new(&config.control_url, &caller)?;
    let position = (config.lat, config.lon);
    // The saved states: what a crash between a state and the file naming it left is swept before anything runs.
    let states = {
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let states = persist::StateStore::open(&data_dir)?;
            // What an earlier life discarded and did not finish removing goes first; the sweep then takes its states.
            let _ = std::fs::remove_dir_all(data_dir.join(persist::TRASH_DIR));
            states.sweep(&data_dir)?;
            Ok::<_, SiteError>(Arc::new(states))
        })
        .await
        .map_err(|e| SiteError::Io {
            path: config.data_dir.join(persist::STATE_DIR),
            source: std::io::Error::other(e),
        })??
    };
    let metrics = Arc::new(metrics::SiteMetrics::new());
    let replication = Arc::new(standby::Replication::new(
        &config.id,
        position,
        caller.clone(),
        control.clone(),
        states.clone(),
        metrics.clone(),
    ));
    let state = Arc::new(SiteState {
        id: config.id.clone(),
        url: url.clone(),
        engine,
        images: images::LoadedImages::new(builtin_image),
        phones: PhoneRegistry::new(config.capacity),
        leases: checkout::Leases::default(),
        control,
        caller,
        guard: Arc::default(),
        uploads: tokio::sync::Semaphore::new(http::UPLOADS_AT_ONCE),
        greeting: Arc::new(tokio::sync::Semaphore::new(http::HELLOS_AT_ONCE)),
        disk: Arc::default(),
        states,
        replication,
        standby: standby::Copies::default(),
        origins: std::sync::Mutex::new(None),
        placed: std::sync::Mutex::new(None),
        checkpoints: checkpoints::Checkpoints::open(&config.data_dir.join("checkpoints"), config.retention)?,
        residency: config.hibernation.map(|policy| Arc::new(hibernation::Residency::new(policy))),
        handoffs: handoff::Handoffs::default(),
        metrics,
        config: config.clone(),
    });
    let restored = state.restore_all().await?;
    checkout::spawn_expiry(&state);
    tracing::info!(site = %config.id, %url, restored, "site listening");

    let spec =
        vmi_control_api::SiteSpec { url: url.clone(), lat: config.lat, lon: config.lon, capacity: config.capacity };
    state.control.register_site(&config.id, &spec).await?;
    let (shutdown, mut stop) = watch::channel(false);
    let beat_state = state.clone();
    let heartbeat = tokio::spawn(async move {
        let mut every = tokio::time::interval(beat_state.config.heartbeat);
        loop {
            every.tick().await;
            let beat = vmi_control_api::model::HeartbeatRequest {
                phones: u32::try_from(beat_state.phones.count()).unwrap_or(u32::MAX),
                degraded: beat_state.disk.degraded(),
                placed_version: beat_state.placed_version(),
            };
            let sent = std::time::Instant::now();
            match beat_state.control.heartbeat_with(&beat_state.id, &beat).await {
                Ok(reply) => {
                    // A frozen answer extends the lease only a little at a time: ask again soon.
                    if reply.frozen {
                        every.reset_after(HEARTBEAT_RETRY);
                    }
                    beat_state.after_heartbeat(sent, reply);
                }
                Err(e) => {
                    tracing::warn!(site = %beat_state.id, "heartbeat failed: {e}");
                    // The lease runs out in two heartbeats: try again before the next one is due.
                    every.reset_after(HEARTBEAT_RETRY);
                }
            }
            // Off the heartbeat's loop: a slow audit report must not delay the next heartbeat (the lease).
            let audit = beat_state.guard.take_pending();
            if !audit.is_empty() {
                let site = beat_state.clone();
                tokio::spawn(async move {
                    if let Err(e) = site.control.report_audit(&audit).await {
                        tracing::warn!(site = %site.id, "cannot send the audit log: {e}");
                        site.guard.put_back(audit);
                    }
                });
            }
        }
    });
    let checkpointer = config.checkpoint_every.map(|every| {
        let state = state.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                state.checkpoint_round().await;
            }
        })
    });
    let app = http::router(state.clone());
    let limits = config.limits;
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // HTTPS for everyone; plain HTTP only for peers on this machine (the browser demo).
        if let Err(e) = vmi_trust::serve(listener, app, Some(tls), limits, stopped).await {
            tracing::error!("site server failed: {e}");
        }
    });
    Ok(SiteHandle { state, url, addr, shutdown, server, heartbeat, checkpointer })
}
