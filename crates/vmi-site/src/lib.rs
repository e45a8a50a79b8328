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

pub mod checkout;
pub mod checkpoints;
mod http;
pub mod migration;
pub mod phone;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vmi_control_api::ControlClient;
use vmi_engine::{Clock, Engine, ImageHash, VirtualPhone, VmConfig};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

use crate::phone::{PhoneCommand, PhoneLink, PhoneTask, SavedPhone};

mod images;
pub use images::{ImageRef, RestartReport};

/// Why a site could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The engine refused.
    #[error("engine")]
    Engine(#[from] vmi_engine::EngineError),
    /// A file in the data directory could not be read or written.
    #[error("{path}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The control service could not be reached or refused.
    #[error("control service")]
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
    /// The phone task did not answer.
    #[error("phone of {0} is not answering")]
    PhoneGone(String),
    /// A migration could not start.
    #[error("migration: {0}")]
    Migration(String),
    /// The phone's image is neither loaded here nor published at the control service.
    #[error("this site cannot run image {0}: it is not published at the control service")]
    WrongImage(String),
    /// The phone could not be snapshotted (it crashed); its state is as it was.
    #[error("{0}")]
    PhoneCannotSnapshot(String),
    /// The checkpoint store refused or failed.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] vmi_checkpoint::CheckpointError),
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
    #[error("image {hash}: {reason}")]
    Image {
        /// The image's hash (hex).
        hash: String,
        /// What went wrong.
        reason: String,
    },
    /// A task running engine work ended without an answer.
    #[error("{0}")]
    Internal(String),
    /// The phone is checked out to a terminal (docs/OFFLINE.md); the message says to
    /// which device and until when.
    #[error("{0}")]
    CheckedOut(String),
    /// The phone is not checked out.
    #[error("{0}'s phone is not checked out")]
    NotCheckedOut(String),
    /// A checkin's lease is not the one out (wrong, ended or expired).
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
    /// A checkout or resume failed on the site's side; the phone is kept.
    #[error("{0}")]
    CheckoutFailed(String),
    /// The site is shutting down.
    #[error("the site is shutting down")]
    Closing,
}

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
}

/// Shared state of a running site.
pub struct SiteState {
    /// Site id.
    pub id: String,
    /// Base URL terminals and operators use.
    pub url: String,
    engine: WasmEngine,
    /// The image built into this binary ([`vmi_phone_image::PHONE_WASM`]): what phones run
    /// when the control service has no version of their image published.
    builtin_image: ImageHash,
    /// Every image loaded here, by hash.
    images: RwLock<HashMap<ImageHash, images::SiteImage>>,
    phones: RwLock<HashMap<String, PhoneLink>>,
    /// Users whose phones are leaving this site right now.
    migrating: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Users whose phones are arriving (staged) right now.
    arriving: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Set when the site starts shutting down: no phone may arrive after it.
    closing: std::sync::atomic::AtomicBool,
    /// Phones checked out to terminals (docs/OFFLINE.md).
    leases: checkout::Leases,
    control: ControlClient,
    config: SiteConfig,
    checkpoints: checkpoints::Checkpoints,
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !user.starts_with('.')
}

impl SiteState {
    /// The control service this site reports to.
    pub fn control_url(&self) -> &str {
        &self.config.control_url
    }

    /// The command channel of `user`'s phone, if it runs here.
    pub fn phone_link(&self, user: &str) -> Option<PhoneLink> {
        self.phone(user)
    }

    fn phone(&self, user: &str) -> Option<PhoneLink> {
        self.phones.read().unwrap_or_else(|p| p.into_inner()).get(user).cloned()
    }

    fn phone_dir(&self, user: &str) -> PathBuf {
        self.config.data_dir.join("phones").join(user)
    }

    pub(crate) fn spawn_phone(&self, user: &str, phone: Box<dyn VirtualPhone>, input_seqs: HashMap<String, u64>) {
        let (tx, rx) = mpsc::channel(256);
        let task = PhoneTask::new(user.to_string(), phone, self.config.clock.clone(), input_seqs);
        tokio::spawn(task.run(rx));
        self.phones.write().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), PhoneLink { tx });
    }

    fn vm_config(&self) -> VmConfig {
        VmConfig { width: self.config.screen.0, height: self.config.screen.1, ..VmConfig::default() }
    }

    /// Marks `user`'s phone as arriving; None if it already is. The mark goes when the
    /// returned guard is dropped.
    pub(crate) fn stage_arrival(&self, user: &str) -> Option<ArrivalGuard<'_>> {
        let mut arriving = self.arriving.lock().unwrap_or_else(|p| p.into_inner());
        if !arriving.insert(user.to_string()) {
            return None;
        }
        Some(ArrivalGuard { site: self, user: user.to_string() })
    }

    /// Now by the site's clock, ms since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.wall_ns() / 1_000_000
    }

    /// Whether `user`'s phone is leaving this site right now.
    pub(crate) fn is_migrating(&self, user: &str) -> bool {
        self.migrating.lock().unwrap_or_else(|p| p.into_inner()).contains(user)
    }

    /// Marks `user`'s phone as moving (what a migration does); None if it already is.
    /// The mark goes when the returned guard is dropped.
    pub(crate) fn mark_moving(&self, user: &str) -> Option<MovingGuard<'_>> {
        let mut moving = self.migrating.lock().unwrap_or_else(|p| p.into_inner());
        moving.insert(user.to_string()).then(|| MovingGuard { site: self, user: user.to_string() })
    }

    /// A phone from a full snapshot, on the image it was taken on (loaded here first,
    /// fetched from the control service if need be): going back to a checkpoint goes
    /// back to its image version too.
    pub(crate) async fn restore_snapshot(self: &Arc<Self>, bytes: &[u8]) -> Result<Box<dyn VirtualPhone>, SiteError> {
        let header = vmi_snapshot::Snapshot::peek_header(bytes)
            .map_err(|e| SiteError::Migration(format!("checkpoint does not read as a snapshot: {e}")))?;
        let image = ImageHash(header.image_hash);
        self.ensure_image(&image).await?;
        Ok(self.engine.restore(&image, &[bytes], &self.vm_config())?)
    }

    /// Whether the site is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Removes a phone's saved state after it moved away, so a restart never brings back
    /// a copy that now lives elsewhere.
    pub(crate) fn forget_saved(&self, user: &str) {
        let dir = self.phone_dir(user);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::error!(user, path = %dir.display(), "cannot remove the moved phone's old snapshot: {e}");
        }
    }

    /// Whether this site can take `user`'s phone of `image` (a migration's destination).
    pub fn can_host(&self, user: &str, image: &ImageHash) -> Result<(), SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        if self.phone(user).is_some() {
            return Err(SiteError::Exists(user.to_string()));
        }
        if let Some(why) = self.checkout_refusal(user) {
            return Err(SiteError::CheckedOut(why));
        }
        // Any image this site has loaded (a migration's destination loads it first, see
        // `ensure_image`).
        if !self.has_image(image) {
            return Err(SiteError::WrongImage(image.to_hex()));
        }
        // Phones arriving count against capacity (this one included).
        let count = self.phones.read().unwrap_or_else(|p| p.into_inner()).len() as u32
            + self.arriving.lock().unwrap_or_else(|p| p.into_inner()).len().saturating_sub(1) as u32;
        if count >= self.config.capacity {
            return Err(SiteError::Full(self.config.capacity));
        }
        Ok(())
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
                return Err(SiteError::Migration(format!(
                    "{user}'s phone is placed on {}; move it with `vmi vm migrate {user} --to {}`",
                    p.site, self.id
                )));
            }
            Ok(_) => {}
            Err(vmi_control_api::ClientError::Status { status: 404, .. }) => {
                return Err(SiteError::Migration(format!(
                    "{user} has no placement: place the phone on this site first (PUT /v1/users/{user}/placement)"
                )));
            }
            Err(e) => return Err(SiteError::Control(e)),
        }
        let config = VmConfig { rng_seed: seed_of(user), ..self.vm_config() };
        self.control.admit(user, config.memory_limit_bytes).await.map_err(images::admission_error)?;
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
        // Running, or arriving (a migration, a restore from a copy): either way it exists.
        if self.phone(user).is_some() || self.arriving.lock().unwrap_or_else(|p| p.into_inner()).contains(user) {
            return Err(SiteError::Exists(user.to_string()));
        }
        // A fresh phone would shadow the one that is out (and overwrite its base at shutdown).
        if let Some(why) = self.checkout_refusal(user) {
            return Err(SiteError::CheckedOut(why));
        }
        let count = self.phones.read().unwrap_or_else(|p| p.into_inner()).len() as u32;
        if count >= self.config.capacity {
            return Err(SiteError::Full(self.config.capacity));
        }
        Ok(())
    }

    /// Users whose phones run here.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.phones.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        users.sort();
        users
    }

    /// Sends a command to a user's phone and waits for the answer.
    pub async fn ask<T>(
        &self,
        user: &str,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> PhoneCommand,
    ) -> Result<T, SiteError> {
        let phone = self.phone(user).ok_or_else(|| SiteError::NoPhone(user.to_string()))?;
        phone.ask(make).await.ok_or_else(|| SiteError::PhoneGone(user.to_string()))
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
            let (bytes, input_seqs) =
                match std::fs::read(&state_path).map_err(|e| e.to_string()).and_then(|b| read_phone(&b)) {
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
                    self.spawn_phone(&user, phone, input_seqs);
                    restored += 1;
                }
                // The file stays where it is: a phone's state is never thrown away.
                Err(e) => tracing::error!(user, path = %state_path.display(), "cannot restore phone: {e:#}"),
            }
        }
        Ok(restored)
    }

    /// Stops every phone and writes its snapshot; returns how many were saved.
    pub async fn save_all(&self) -> usize {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        let phones: Vec<(String, PhoneLink)> = self.phones.write().unwrap_or_else(|p| p.into_inner()).drain().collect();
        let mut saved = 0;
        for (user, phone) in phones {
            match phone.ask(PhoneCommand::Stop).await {
                Some(Ok(s)) => match write_phone(&self.phone_dir(&user), &s) {
                    Ok(()) => saved += 1,
                    Err(e) => tracing::error!(user, "cannot save phone: {e}"),
                },
                Some(Err(e)) => tracing::error!(user, "cannot snapshot phone: {e}"),
                None => tracing::error!(user, "phone task gone before saving"),
            }
        }
        saved
    }
}

/// Clears a moving mark when dropped.
pub(crate) struct MovingGuard<'a> {
    site: &'a SiteState,
    user: String,
}

impl Drop for MovingGuard<'_> {
    fn drop(&mut self) {
        self.site.migrating.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.user);
    }
}

/// Clears an arrival mark when dropped.
pub(crate) struct ArrivalGuard<'a> {
    site: &'a SiteState,
    user: String,
}

impl Drop for ArrivalGuard<'_> {
    fn drop(&mut self) {
        self.site.arriving.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.user);
    }
}

/// A phone's RNG seed from its user name (FNV-1a: a seed needs spread, not secrecy).
fn seed_of(user: &str) -> u64 {
    user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)) | 1
}

/// The file a saved phone lives in, in its directory under `phones/`.
pub const PHONE_FILE: &str = "phone.state";
const PHONE_MAGIC: &[u8; 8] = b"VMIPHONE";
const MAX_INPUTS_JSON: usize = 1 << 20;

/// Writes a saved phone atomically, snapshot and input numbering in one file (so a crash
/// can never pair a snapshot with another moment's numbering): `VMIPHONE`, u32 length of
/// the input numbering as JSON, that JSON, then the snapshot (docs/SNAPSHOT_FORMAT.md).
pub(crate) fn write_phone(dir: &Path, saved: &SavedPhone) -> Result<(), SiteError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SiteError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let seqs = serde_json::to_vec(&saved.input_seqs).unwrap_or_default();
    let mut bytes = Vec::with_capacity(12 + seqs.len() + saved.snapshot.len());
    bytes.extend_from_slice(PHONE_MAGIC);
    bytes.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&seqs);
    bytes.extend_from_slice(&saved.snapshot);
    let tmp = dir.join(format!("{PHONE_FILE}.tmp"));
    let path = dir.join(PHONE_FILE);
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Reads what [`write_phone`] wrote: the snapshot and the input numbering.
fn read_phone(bytes: &[u8]) -> Result<(Vec<u8>, HashMap<String, u64>), String> {
    let rest = bytes.strip_prefix(PHONE_MAGIC).ok_or("not a saved phone (bad magic)")?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or("saved phone ends early")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_INPUTS_JSON || len > rest.len() {
        return Err(format!("input numbering of {len} bytes does not fit"));
    }
    let (json, snapshot) = rest.split_at(len);
    let seqs = serde_json::from_slice(json).map_err(|e| format!("input numbering: {e}"))?;
    Ok((snapshot.to_vec(), seqs))
}

/// A running site.
pub struct SiteHandle {
    /// Shared state (for in-process tests and benches).
    pub state: Arc<SiteState>,
    /// Base URL, e.g. `http://127.0.0.1:7801`.
    pub url: String,
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
            let _ = self.state.ask(&user, PhoneCommand::Tick).await;
        }
    }

    /// Stops serving, saves every phone to the data directory, and returns how many.
    pub async fn shutdown(self) -> usize {
        let _ = self.shutdown.send(true);
        self.heartbeat.abort();
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.abort();
        }
        let saved = self.state.save_all().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        tracing::info!(site = %self.state.id, saved, "site stopped");
        saved
    }
}

/// Starts a site: restores its saved phones, listens, registers with the control service.
pub async fn start(config: SiteConfig) -> Result<SiteHandle, SiteError> {
    let engine_config = WasmEngineConfig { max_vms: config.capacity + 8, ..WasmEngineConfig::default() };
    let engine = WasmEngine::with_config(engine_config, config.clock.clone())?;
    let builtin_image = engine.load_image(vmi_phone_image::PHONE_WASM)?.hash;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SiteError::Io { path: PathBuf::from(config.listen.to_string()), source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SiteError::Io { path: PathBuf::from(config.listen.to_string()), source })?;
    let url = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let control = ControlClient::new(&config.control_url)?;
    let state = Arc::new(SiteState {
        id: config.id.clone(),
        url: url.clone(),
        engine,
        builtin_image,
        images: RwLock::new(HashMap::from([(builtin_image, images::SiteImage::builtin())])),
        phones: RwLock::new(HashMap::new()),
        migrating: std::sync::Mutex::new(std::collections::HashSet::new()),
        arriving: std::sync::Mutex::new(std::collections::HashSet::new()),
        closing: std::sync::atomic::AtomicBool::new(false),
        leases: checkout::Leases::default(),
        control,
        checkpoints: checkpoints::Checkpoints::open(&config.data_dir.join("checkpoints"), config.retention)?,
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
            let phones = beat_state.users().len() as u32;
            if let Err(e) = beat_state.control.heartbeat(&beat_state.id, phones).await {
                tracing::warn!(site = %beat_state.id, "heartbeat failed: {e}");
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
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // Inputs and frames are small and latency-bound: no Nagle delay on any socket.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::error!("site server failed: {e}");
        }
    });
    Ok(SiteHandle { state, url, shutdown, server, heartbeat, checkpointer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_phone_reads_back_and_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!("vmi-site-save-{}", std::process::id()));
        let saved = SavedPhone { snapshot: b"SEEDSNAP...".to_vec(), input_seqs: HashMap::from([("7".into(), 42)]) };
        write_phone(&dir, &saved).expect("write");
        let bytes = std::fs::read(dir.join(PHONE_FILE)).expect("read");
        let (snapshot, seqs) = read_phone(&bytes).expect("parse");
        assert_eq!(snapshot, saved.snapshot);
        assert_eq!(seqs, saved.input_seqs);
        assert!(read_phone(b"garbage").is_err());
        assert!(read_phone(&bytes[..10]).is_err());
        let mut lie = bytes.clone();
        lie[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_phone(&lie).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
