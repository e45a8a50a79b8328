//! Images on demand and phones moving between image versions.
//!
//! A site starts with the built-in phone image loaded. Any other image is fetched from the
//! control service when a phone needs it (the version its user should run, or the image
//! of a phone migrating in), checked against its hash, loaded once and kept.
//!
//! A phone changes version only when it boots from its snapshot: at site start and on a
//! restart. If its user's current version differs from the snapshot's image, the phone is
//! upgraded ([`Engine::upgrade`]: the new image boots fresh with the old key-value store);
//! if that fails, it is restored on its old image as it was, and the error is reported.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use vmi_engine::{ImageHash, VirtualPhone};

use crate::phone::PhoneError;
use crate::{SiteError, SiteState, valid_user};

/// An image loaded on this site.
#[derive(Clone)]
struct SiteImage {
    wasm: Arc<[u8]>,
    /// Name and version at the control service, once known (the built-in phone has none
    /// until the control service names it).
    published: Option<(String, u64)>,
}

/// The images loaded on this site, the built-in one first: what phones here can run.
pub(crate) struct LoadedImages {
    builtin: ImageHash,
    by_hash: RwLock<HashMap<ImageHash, SiteImage>>,
}

impl LoadedImages {
    /// Just the built-in phone ([`vmi_phone_image::PHONE_WASM`], loaded as `builtin`).
    pub(crate) fn new(builtin: ImageHash) -> LoadedImages {
        let image = SiteImage { wasm: Arc::from(vmi_phone_image::PHONE_WASM), published: None };
        LoadedImages { builtin, by_hash: RwLock::new(HashMap::from([(builtin, image)])) }
    }

    /// The built-in phone's hash: what phones run when no version of their image is
    /// published.
    pub(crate) fn builtin(&self) -> ImageHash {
        self.builtin
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ImageHash, SiteImage>> {
        self.by_hash.read().unwrap_or_else(|p| p.into_inner())
    }

    fn wasm(&self, hash: &ImageHash) -> Option<Arc<[u8]>> {
        self.read().get(hash).map(|i| i.wasm.clone())
    }

    fn contains(&self, hash: &ImageHash) -> bool {
        self.read().contains_key(hash)
    }

    fn published(&self, hash: &ImageHash) -> Option<(String, u64)> {
        self.read().get(hash).and_then(|i| i.published.clone())
    }

    /// Records the name and version the control service gives a loaded image; false if
    /// it is not loaded here.
    fn name(&self, hash: &ImageHash, published: (String, u64)) -> bool {
        match self.by_hash.write().unwrap_or_else(|p| p.into_inner()).get_mut(hash) {
            Some(image) => {
                image.published = Some(published);
                true
            }
            None => false,
        }
    }

    fn insert(&self, hash: ImageHash, wasm: Arc<[u8]>, published: (String, u64)) {
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, SiteImage { wasm, published: Some(published) });
    }
}

/// Why an image could not be had here (fetched from the control service and loaded).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The control service named an image by something that is not a hash.
    #[error("the control service named image {0:?}, which is not a content hash")]
    MalformedHash(String),
    /// The bytes fetched for a version are not the image its hash names.
    #[error("the bytes of {name} version {version} do not have hash {hash}")]
    HashMismatch {
        /// Image name.
        name: String,
        /// Its version.
        version: u64,
        /// The hash it should have (hex).
        hash: String,
    },
    /// The engine refused the image (the guest ABI check names what is wrong).
    #[error("{name} version {version} does not load")]
    DoesNotLoad {
        /// Image name.
        name: String,
        /// Its version.
        version: u64,
        /// What the engine said.
        #[source]
        source: vmi_engine::EngineError,
    },
}

/// An image as listings and reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    /// Content hash, hex.
    pub hash: String,
    /// Name at the control service (None: the built-in phone, not published).
    pub name: Option<String>,
    /// Version at the control service.
    pub version: Option<u64>,
}

/// What a restart did (`POST /v1/phones/{user}/restart`).
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    /// Whose phone.
    pub user: String,
    /// The image it ran before.
    pub from: ImageRef,
    /// The image it runs now.
    pub to: ImageRef,
    /// Whether it moved to another image version (its key-value store kept).
    pub upgraded: bool,
    /// Why it could not move to its user's current version, if it could not: it then runs
    /// its old image, state unchanged.
    pub upgrade_error: Option<String>,
    /// Why its state could not be written before the restart, if it could not: it runs, but a crash of the
    /// site now would lose it (the site reports itself degraded, and the placer moves it away).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_saved: Option<String>,
}

/// A control-service refusal to admit a phone, as a site error.
pub(crate) fn admission_error(e: vmi_control_api::ClientError) -> SiteError {
    match e {
        vmi_control_api::ClientError::Status { status, body } if (400..500).contains(&status) => {
            SiteError::Admission { status, message: body }
        }
        e => SiteError::Control(e),
    }
}

impl SiteState {
    /// The wasm bytes of an image loaded on this site.
    pub fn image_wasm(&self, hash: &ImageHash) -> Option<Arc<[u8]>> {
        self.images.wasm(hash)
    }

    /// Whether this site has the image loaded.
    pub fn has_image(&self, hash: &ImageHash) -> bool {
        self.images.contains(hash)
    }

    /// The image as listings show it: its hash, and its name and version once known.
    pub fn image_ref(&self, hash: &ImageHash) -> ImageRef {
        let published = self.images.published(hash);
        ImageRef { hash: hash.to_hex(), name: published.as_ref().map(|p| p.0.clone()), version: published.map(|p| p.1) }
    }

    /// Runs blocking work (compiling, booting, restoring, the checkpoint store) off the
    /// async workers.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SiteError> {
        tokio::task::spawn_blocking(work).await.map_err(SiteError::Background)
    }

    /// The image `user`'s phone should run now: the current version of their image at the
    /// control service (fetched and loaded if new here), or the built-in phone when none is
    /// published.
    pub async fn current_image(self: &Arc<Self>, user: &str) -> Result<ImageHash, SiteError> {
        let Some(wanted) = self.control.user_image(user).await? else {
            return Ok(self.images.builtin());
        };
        let hash = ImageHash::from_hex(&wanted.hash).ok_or_else(|| ImageError::MalformedHash(wanted.hash.clone()))?;
        if self.images.name(&hash, (wanted.name.clone(), wanted.version)) {
            return Ok(hash);
        }
        let wasm = self.control.image_wasm(&wanted.name, wanted.version).await?;
        self.load(hash, wasm, (wanted.name, wanted.version)).await?;
        Ok(hash)
    }

    /// Makes sure an image is loaded here, fetching it from the control service by its hash
    /// (withdrawn versions included: a phone may still run one); [`SiteError::WrongImage`]
    /// if the control service does not have it.
    pub async fn ensure_image(self: &Arc<Self>, hash: &ImageHash) -> Result<(), SiteError> {
        if self.has_image(hash) {
            return Ok(());
        }
        let hex = hash.to_hex();
        let versions = self.control.list_images().await?;
        let found = versions.into_iter().find(|v| v.hash == hex).ok_or_else(|| SiteError::WrongImage(hex))?;
        let wasm = self.control.image_wasm(&found.name, found.version).await?;
        self.load(*hash, wasm, (found.name, found.version)).await
    }

    /// Checks fetched bytes against the hash they were named by, and loads them.
    async fn load(self: &Arc<Self>, hash: ImageHash, wasm: Vec<u8>, published: (String, u64)) -> Result<(), SiteError> {
        if ImageHash::of(&wasm) != hash {
            let (name, version) = published;
            return Err(ImageError::HashMismatch { name, version, hash: hash.to_hex() }.into());
        }
        let wasm: Arc<[u8]> = wasm.into();
        let site = self.clone();
        let bytes = wasm.clone();
        // Compiling takes a while: off the async workers. The engine checks the image
        // against the guest ABI here and names what is wrong.
        let loaded = self.blocking(move || site.engine.load_image(&bytes)).await?;
        loaded.map_err(|source| ImageError::DoesNotLoad { name: published.0.clone(), version: published.1, source })?;
        tracing::info!(site = %self.id, image = %published.0, version = published.1, %hash, "image loaded");
        self.images.insert(hash, wasm, published);
        Ok(())
    }

    /// Boots a saved phone (a full snapshot) on its user's current image version: restored
    /// as it was if that is the snapshot's image, upgraded (key-value store kept) if not. A
    /// failed upgrade falls back to restoring the old image; the report says why.
    pub(crate) async fn boot_saved(
        self: &Arc<Self>,
        user: &str,
        snapshot: Arc<[u8]>,
    ) -> Result<(Box<dyn VirtualPhone>, RestartReport), SiteError> {
        let header = vmi_snapshot::Snapshot::peek_header(&snapshot).map_err(vmi_engine::EngineError::from)?;
        let old = ImageHash(header.image_hash);
        let mut report = RestartReport {
            user: user.to_string(),
            from: self.image_ref(&old),
            to: self.image_ref(&old),
            upgraded: false,
            upgrade_error: None,
            not_saved: None,
        };
        let target = match self.current_image(user).await {
            Ok(target) => target,
            Err(e) => {
                // The phone still boots, on what it ran: an unreachable control service or a
                // bad new version must not keep it down.
                tracing::error!(
                    user,
                    "cannot load the user's current image; the phone stays on {old}: {}",
                    vmi_engine::error_chain(&e)
                );
                report.upgrade_error =
                    Some(format!("cannot load the user's current image: {}", vmi_engine::error_chain(&e)));
                old
            }
        };
        if target != old {
            let site = self.clone();
            let bytes = snapshot.clone();
            let config = self.vm_config();
            match self.blocking(move || site.engine.upgrade(&target, &[&bytes], &config)).await? {
                Ok(phone) => {
                    report.to = self.image_ref(&target);
                    report.upgraded = true;
                    tracing::info!(user, from = ?report.from, to = ?report.to, "phone moved to another image version");
                    return Ok((phone, report));
                }
                Err(e) => {
                    tracing::error!(user, from = %old, to = %target, "image upgrade failed; the phone stays on its image: {}", vmi_engine::error_chain(&e));
                    report.upgrade_error =
                        Some(format!("the phone cannot move to image {target}: {}", vmi_engine::error_chain(&e)));
                }
            }
        }
        self.ensure_image(&old).await?;
        let site = self.clone();
        let config = self.vm_config();
        let phone = self.blocking(move || site.engine.restore(&old, &[&snapshot], &config)).await??;
        Ok((phone, report))
    }

    /// Restarts `user`'s phone: stops it with a full snapshot (written to the data
    /// directory first, so nothing is lost whatever happens next), then boots it again on
    /// its user's current image version (see [`SiteState::current_image`]).
    pub async fn restart_phone(self: &Arc<Self>, user: &str) -> Result<RestartReport, SiteError> {
        if !valid_user(user) {
            return Err(SiteError::BadUser(user.to_string()));
        }
        let phone = self.phone(user)?;
        // Marked as leaving: no migration may take the phone while it is down.
        let _leaving = self.phones.mark_leaving(user).ok_or_else(|| SiteError::Moving(user.to_string()))?;
        self.restart_stopped(user, &phone).await
    }

    /// Starts a crashed phone that has no snapshot again on its user's current image,
    /// with what crosses from its crashed VM (key-value store, unread mail, clock), in
    /// place: its terminals stay and get a full repaint.
    async fn restart_fresh(
        self: &Arc<Self>,
        user: &str,
        phone: &crate::phone::PhoneLink,
        reason: String,
    ) -> Result<RestartReport, SiteError> {
        let carried = phone.carryover().await.map_err(|e| SiteError::phone(user, e))?;
        let old = ImageHash::from_hex(&phone.status().await.map_err(|e| SiteError::phone(user, e))?.image)
            .unwrap_or(self.images.builtin());
        let image = self.current_image(user).await?;
        let config = self.vm_config();
        let site = self.clone();
        let target = image;
        let vm = self.blocking(move || site.engine.create_from(&target, &carried, &config)).await??;
        phone.replace(vm).await.map_err(|e| SiteError::phone(user, e))?;
        tracing::warn!(user, %reason, "crashed phone with no snapshot started afresh with its store");
        Ok(RestartReport {
            user: user.to_string(),
            from: self.image_ref(&old),
            to: self.image_ref(&image),
            upgraded: image != old,
            upgrade_error: None,
            not_saved: None,
        })
    }

    async fn restart_stopped(
        self: &Arc<Self>,
        user: &str,
        phone: &crate::phone::PhoneLink,
    ) -> Result<RestartReport, SiteError> {
        // Without a snapshot the task runs on: the restart is refused, nothing is lost. A
        // phone that crashed before any snapshot of it starts afresh with its store.
        let saved = match phone.stop().await {
            Ok(saved) => saved,
            Err(PhoneError::NoGoodState { reason }) => return self.restart_fresh(user, phone, reason).await,
            Err(e) => return Err(SiteError::phone(user, e)),
        };
        self.phones.remove(user);
        // The snapshot is still in memory and boots below; the file is the safety net, and its failure is said.
        let not_saved = self.states.write_phone(&self.phone_dir(user), &saved).err().map(|e| {
            let why = vmi_engine::error_chain(&e);
            tracing::error!(user, "cannot save the phone before its restart: {why}");
            self.disk.failed(user, why.clone());
            why
        });
        let (vm, mut report) = self.boot_saved(user, saved.snapshot.into()).await?;
        report.not_saved = not_saved;
        self.spawn_phone(user, vm, saved.input_seqs);
        tracing::info!(user, upgraded = report.upgraded, "phone restarted");
        Ok(report)
    }
}
