//! # vmi-qemu-engine: full-system Linux phones on QEMU
//!
//! The second engine behind the [`vmi_engine::Engine`] contract: each phone is a `qemu-system-x86_64` process
//! running an unmodified Linux guest (Debian's kernel, a read-only root shared by every phone of the image, every
//! change in guest RAM), built from Debian's packages by `scripts/build-linux-image` (docs/LINUX-PHONES.md).
//!
//! - **Control**: QMP on a Unix socket ([`qmp`]): input (an absolute tablet and a keyboard), stop and continue,
//!   device state.
//! - **Screen**: QEMU's VNC server on a Unix socket ([`display`]): damage comes as rectangles, and nothing comes
//!   while nothing changes.
//! - **Agent**: a virtio-serial port ([`agent`]): the guest says its session is up and raises notifications; the
//!   host reads files and sets the guest's clock.
//! - **Snapshots**: guest RAM is a file both QEMU and the engine map ([`ram`]); a snapshot is the changed pages
//!   in the `vmi-snapshot` format plus QEMU's device state taken with `x-ignore-shared` ([`state`]), so
//!   checkpoints, standbys and live migration carry Linux phones the way they carry WebAssembly ones.
//! - **Confinement**: QEMU's seccomp sandbox, no network unless the image asks, an unprivileged user when the site
//!   runs as root, killed with the site ([`Settings`]).

mod agent;
pub mod cgroup;
pub mod display;
mod error;
pub mod image;
mod input;
pub mod network;
mod phone;
pub mod qmp;
mod ram;
mod state;

pub use error::QemuError;
pub use phone::{ENGINE_NAME, QemuPhone};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmi_engine::{
    Carryover, Clock, Engine, EngineError, ImageHash, ImageInfo, RestoreStage, SystemClock, VirtualPhone, VmConfig,
};
use vmi_snapshot::{Limits, SnapshotId, SnapshotKind, SnapshotView};

use crate::display::lock;
use crate::phone::Start;
use crate::ram::RamFile;

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's own translator: works everywhere, slower.
    Tcg,
    /// The kernel's hypervisor.
    Kvm,
}

impl Accel {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Where and how the engine runs QEMU.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Where loaded images are unpacked (one directory per image hash; kept across restarts).
    pub images_dir: PathBuf,
    /// Where each phone's directory goes: its RAM file and sockets. Best on a tmpfs (RAM is read from here).
    pub run_dir: PathBuf,
    /// The accelerator, or `None` to probe once: KVM if it boots the image's kernel, TCG otherwise.
    pub accel: Option<Accel>,
    /// When the engine runs as root: each phone's QEMU runs as its own unprivileged user and group id, this
    /// plus the phone's number (as Firecracker's jailer gives each microVM its own uid), so one QEMU cannot read
    /// another's RAM file. `None`: QEMU runs as the engine's user.
    pub uids_from: Option<u32>,
}

/// Engines made in this process: each gets its own run directory (a test runs several sites in one process).
static ENGINES: AtomicU64 = AtomicU64::new(0);

/// The first of the user ids phones' QEMUs run as, by default: far above any account's.
pub const DEFAULT_UIDS_FROM: u32 = 0x2000_0000;

impl Settings {
    /// Debian's QEMU, images under `state_dir`, phones under /dev/shm (or `state_dir` when there is none).
    pub fn under(state_dir: &Path) -> Settings {
        let shm = Path::new("/dev/shm");
        let run_base = if shm.is_dir() { shm.to_path_buf() } else { state_dir.to_path_buf() };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Settings {
            qemu: PathBuf::from("qemu-system-x86_64"),
            images_dir: state_dir.join("linux-images"),
            run_dir: run_base.join(format!("vmi-qemu-{}-{}", std::process::id(), ENGINES.load(Ordering::Relaxed))),
            accel: None,
            uids_from: root.then_some(DEFAULT_UIDS_FROM),
        }
    }

    /// The user and group phone number `n` of engine `engine`'s QEMU runs as, if not the engine's: apart for
    /// every process, engine and phone (4096 of each before one repeats).
    fn uid_of(&self, engine: u64, n: u64) -> Option<u32> {
        let pid = u64::from(std::process::id());
        let slot = ((pid & 0xfff) << 16) | ((engine & 0xf) << 12) | (n & 0xfff);
        self.uids_from.map(|base| base.wrapping_add(slot as u32))
    }

    /// Confines a QEMU about to start: as its own user (see `uids_from`), killed when the engine goes.
    fn confine(
        &self,
        cmd: &mut Command,
        dir: &Path,
        uid: Option<u32>,
        inherited: &[std::fs::File],
    ) -> Result<(), QemuError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            chown(dir, uid, uid)?;
            for entry in std::fs::read_dir(dir).map_err(QemuError::io("phone directory"))?.flatten() {
                chown(&entry.path(), uid, uid)?;
            }
            // Its own, and no one else's (whatever the process's umask).
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(QemuError::io("phone directory"))?;
            cmd.uid(uid).gid(uid);
        }
        let fds: Vec<i32> = inherited.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: only async-signal-safe calls (fcntl, prctl) between fork and exec; std runs this
        // after the change of user, which would clear the death signal.
        unsafe {
            cmd.pre_exec(move || {
                // The image's files, open for QEMU across exec.
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // A QEMU must never outlive its site: a phone runs in exactly one place. (The signal follows the
                // thread that started QEMU: the engine's launcher thread, which lives as long as the process.)
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Lets QEMU (as `uid`) reach a socket the engine made.
    fn give(&self, path: &Path, uid: Option<u32>) {
        if let Some(uid) = uid
            && let Err(e) = chown(path, uid, uid)
        {
            tracing::warn!("cannot hand {} to QEMU's user: {e}", path.display());
        }
    }
}

/// A spawn request to the launcher thread.
type Launch = (Command, std::sync::mpsc::Sender<std::io::Result<std::process::Child>>);

/// Starts QEMUs from one long-lived thread: a child's death signal fires when the thread that forked it ends, and
/// the threads that create phones (a runtime's blocking pool) come and go.
pub(crate) struct Launcher {
    tx: Mutex<std::sync::mpsc::Sender<Launch>>,
}

impl Launcher {
    fn new() -> Result<Launcher, std::io::Error> {
        let (tx, rx) = std::sync::mpsc::channel::<Launch>();
        std::thread::Builder::new().name("qemu-launcher".into()).spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
        Ok(Launcher { tx: Mutex::new(tx) })
    }

    /// Starts `cmd` on the launcher thread.
    pub(crate) fn spawn(&self, cmd: Command) -> std::io::Result<std::process::Child> {
        let (reply, answer) = std::sync::mpsc::channel();
        let gone = || std::io::Error::other("the QEMU launcher thread is gone");
        lock(&self.tx).send((cmd, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// Hands `path` itself to `uid` (never what a link there points at: the folder belongs to QEMU's user).
fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), QemuError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(QemuError::io(format!("chown {}", path.display())))
}

/// Where a phone lives and who its QEMU runs as.
pub(crate) struct PhoneDir {
    pub(crate) path: PathBuf,
    pub(crate) uid: Option<u32>,
    pub(crate) launcher: Arc<Launcher>,
}

/// An image unpacked on this site.
#[derive(Debug)]
pub struct LoadedImage {
    /// Its content hash.
    pub hash: ImageHash,
    /// How to run it.
    pub manifest: image::Manifest,
    /// Where its parts are.
    pub dir: PathBuf,
    /// Size of the image file.
    pub size_bytes: u64,
}

impl LoadedImage {
    /// The path of one of its parts.
    pub fn part(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Guest RAM of its phones.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.manifest.memory_mib) << 20
    }
}

/// The QEMU engine.
pub struct QemuEngine {
    settings: Arc<Settings>,
    launcher: Arc<Launcher>,
    images: Mutex<HashMap<ImageHash, Arc<LoadedImage>>>,
    clock: Arc<dyn Clock>,
    next_phone: AtomicU64,
    /// This engine's number in the process (its run directory and its QEMUs' user ids are apart).
    number: u64,
}

impl QemuEngine {
    /// An engine with `settings`, on the system clock.
    pub fn new(settings: Settings) -> Result<QemuEngine, EngineError> {
        // Its directories are made when first needed: a site that runs no Linux phone has none.
        let launcher = Launcher::new().map_err(|e| EngineError::Config(format!("the QEMU launcher thread: {e}")))?;
        Ok(QemuEngine {
            settings: Arc::new(settings),
            launcher: Arc::new(launcher),
            images: Mutex::default(),
            clock: SystemClock::shared(),
            next_phone: AtomicU64::new(0),
            number: ENGINES.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The same engine, its phones' clocks read from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> QemuEngine {
        self.clock = clock;
        self
    }

    /// The accelerator phones run on: the one configured, or probed once (with `image`'s kernel) and kept.
    pub fn accel(&self, image: &LoadedImage) -> Accel {
        if let Some(a) = self.settings.accel {
            return a;
        }
        *PROBED.get_or_init(|| probe_accel(&self.settings, image))
    }

    /// The accelerator, if known yet (configured or probed).
    pub fn known_accel(&self) -> Option<Accel> {
        self.settings.accel.or_else(|| PROBED.get().copied())
    }

    fn loaded(&self, hash: &ImageHash) -> Result<Arc<LoadedImage>, EngineError> {
        lock(&self.images).get(hash).cloned().ok_or_else(|| EngineError::UnknownImage(hash.to_hex()))
    }

    /// A fresh directory for a phone, and the user its QEMU runs as.
    fn phone_dir(&self) -> Result<PhoneDir, EngineError> {
        let n = self.next_phone.fetch_add(1, Ordering::Relaxed);
        let run = &self.settings.run_dir;
        ensure_run_dir(run, self.settings.uids_from.is_some())
            .map_err(|e| EngineError::Config(format!("{}: {e}", run.display())))?;
        let dir = run.join(format!("phone-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::Exhausted(format!("phone directory: {e}")))?;
        Ok(PhoneDir { path: dir, uid: self.settings.uid_of(self.number, n), launcher: self.launcher.clone() })
    }

    /// Boots a new phone and returns it as its own type (tests and benchmarks reach the guest agent through it).
    pub fn boot(&self, image: &ImageHash, config: &VmConfig, virtual_ns: u64) -> Result<QemuPhone, EngineError> {
        let loaded = self.loaded(image)?;
        check_config(config)?;
        let accel = self.accel(&loaded);
        let dir = self.phone_dir()?;
        QemuPhone::launch(
            loaded,
            self.settings.clone(),
            accel,
            config,
            dir,
            Start::Boot,
            self.clock.clone(),
            virtual_ns,
        )
        .map_err(start_error)
    }

    /// Restores a phone from a chain and returns it as its own type, running unless `paused`.
    pub fn restore_phone(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
        paused: bool,
    ) -> Result<QemuPhone, EngineError> {
        let mut stage = self.stage(image, config)?;
        for snapshot in chain {
            stage.apply(snapshot)?;
        }
        stage.finish_phone(paused)
    }

    fn stage(&self, image: &ImageHash, config: &VmConfig) -> Result<QemuRestore, EngineError> {
        let loaded = self.loaded(image)?;
        check_config(config)?;
        let dir = self.phone_dir()?;
        let ram = match RamFile::create(&dir.path.join("ram"), loaded.memory_bytes()) {
            Ok(ram) => ram,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir.path);
                return Err(start_error(e));
            }
        };
        Ok(QemuRestore {
            accel: self.accel(&loaded),
            hashes: RamFile::zero_hashes(ram.pages()),
            image: loaded,
            settings: self.settings.clone(),
            clock: self.clock.clone(),
            config: config.clone(),
            dir: Some(dir),
            ram: Some(ram),
            phone: None,
            chain: Vec::new(),
            last: None,
        })
    }
}

/// Makes the run directory, or takes it if it is this process's own: made by this user, a directory and no link,
/// that others may only pass through (0711: each QEMU reaches its own phone directory in it, nothing else).
fn ensure_run_dir(run: &Path, other_users: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(parent) = run.parent() {
        std::fs::create_dir_all(parent)?;
        // QEMU's own users must pass through every folder above it.
        if other_users {
            for ancestor in parent.ancestors() {
                let mode = std::fs::metadata(ancestor)?.mode();
                if mode & 0o001 == 0 {
                    return Err(std::io::Error::other(format!(
                        "QEMU's users cannot reach it: {} is not searchable by others (choose a run directory \
                         under /dev/shm or /run)",
                        ancestor.display()
                    )));
                }
            }
        }
    }
    match std::fs::create_dir(run) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(run)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(std::io::Error::other("is not a directory of this user (made by someone else?)"));
    }
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o711))
}

fn check_config(config: &VmConfig) -> Result<(), EngineError> {
    if !(64..=4096).contains(&config.width) || !(64..=4096).contains(&config.height) {
        return Err(EngineError::Config(format!(
            "a Linux phone's screen is 64 to 4096 pixels a side, not {}x{}",
            config.width, config.height
        )));
    }
    Ok(())
}

fn start_error(e: QemuError) -> EngineError {
    EngineError::Start(vmi_engine::VmError::Crashed(e.to_string()))
}

/// What the probe found: a property of the machine, probed once in a process (every site's engine shares it).
static PROBED: OnceLock<Accel> = OnceLock::new();

/// Longest the KVM probe waits for the image's kernel to reach its init (under working KVM it takes a second or
/// two; here KVM hangs or resets the guest).
const PROBE_WITHIN: Duration = Duration::from_secs(12);

/// Boots the image's kernel under KVM with `seed.probe` (its initramfs answers and powers off at once): KVM is
/// used only where it really boots Linux (on some hosts /dev/kvm exists and the guest resets at once).
fn probe_accel(settings: &Settings, image: &LoadedImage) -> Accel {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
    if let Err(e) = kvm {
        tracing::info!("Linux phones run on TCG: /dev/kvm cannot be opened ({e})");
        return Accel::Tcg;
    }
    let started = Instant::now();
    let child = Command::new(&settings.qemu)
        .args(["-accel", "kvm", "-cpu", "max", "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio", "-kernel", &image.part("vmlinuz"), "-initrd", &image.part("initrd")])
        .args(["-append", "console=ttyS0 seed.probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        tracing::info!("Linux phones run on TCG: QEMU would not start for the KVM probe");
        return Accel::Tcg;
    };
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(o) = out.as_mut() {
            let _ = std::io::Read::read_to_string(o, &mut text);
        }
        text
    });
    let by = Instant::now() + PROBE_WITHIN;
    while Instant::now() < by && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let said = reader.join().unwrap_or_default();
    if said.contains("SEED-PROBE-OK") {
        tracing::info!("Linux phones run on KVM (it booted the image's kernel in {:?})", started.elapsed());
        Accel::Kvm
    } else {
        tracing::info!("Linux phones run on TCG: KVM did not boot the image's kernel ({:?})", started.elapsed());
        Accel::Tcg
    }
}

impl Engine for QemuEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn accepts(&self, bytes: &[u8]) -> bool {
        image::is_linux_image(bytes)
    }

    fn load_image(&self, bytes: &[u8]) -> Result<ImageInfo, EngineError> {
        let file = image::parse(bytes).map_err(|e| EngineError::ImageRefused(e.to_string()))?;
        let hash = ImageHash::of(bytes);
        let dir = self.settings.images_dir.join(hash.to_hex());
        if !dir.join("complete").exists() {
            // Unpacked beside, then renamed: a half-written image is never taken for a whole one.
            let tmp = self.settings.images_dir.join(format!(".{}.{}", hash.to_hex(), std::process::id()));
            let write = || -> std::io::Result<()> {
                let _ = std::fs::remove_dir_all(&tmp);
                std::fs::create_dir_all(&self.settings.images_dir)?;
                std::fs::create_dir_all(&tmp)?;
                use std::os::unix::fs::PermissionsExt;
                // Readable by every phone's QEMU user, whatever the process's umask.
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
                for (name, data) in &file.parts {
                    std::fs::write(tmp.join(name), data)?;
                    std::fs::set_permissions(tmp.join(name), std::fs::Permissions::from_mode(0o644))?;
                }
                std::fs::write(tmp.join("complete"), b"")?;
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&tmp, &dir)
            };
            write().map_err(|e| EngineError::Exhausted(format!("unpacking the image: {e}")))?;
        }
        let loaded = Arc::new(LoadedImage { hash, manifest: file.manifest, dir, size_bytes: bytes.len() as u64 });
        // The accelerator is probed here, where loading may take its time (a site loads images off its async
        // workers), not when a phone must start or arrive.
        self.accel(&loaded);
        let info = info_of(&loaded);
        lock(&self.images).insert(hash, loaded);
        Ok(info)
    }

    fn image(&self, hash: &ImageHash) -> Option<ImageInfo> {
        lock(&self.images).get(hash).map(|i| info_of(i))
    }

    fn create(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(self.boot(image, config, 0)?))
    }

    fn restore(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(self.restore_phone(image, chain, config, false)?))
    }

    fn upgrade(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        // What crosses an image version: the user's home directory and the phone's clock. Everything else (the
        // running programs, /tmp, system files changed in the overlay) belongs to the old image and stays.
        let last = chain.last().ok_or(EngineError::EmptyChain)?;
        let header = vmi_snapshot::Snapshot::peek_header(last)?;
        let from = ImageHash(header.image_hash);
        if self.image(&from).is_none() {
            return Err(EngineError::UnknownImage(format!(
                "{} (the phone's old image, whose guest packs the user's home)",
                from.to_hex()
            )));
        }
        let old = self.restore_phone(&from, chain, config, false)?;
        let home = old.pack_home().map_err(|e| EngineError::Config(format!("packing the user's home: {e}")))?;
        drop(old);
        let new = self.boot(image, config, header.virtual_ns)?;
        if !new.wait_session(Duration::from_secs(180)) {
            return Err(start_error(QemuError::Qemu("the new image's session did not come up".into())));
        }
        new.unpack_home(&home).map_err(|e| EngineError::Config(format!("unpacking the user's home: {e}")))?;
        Ok(Box::new(new))
    }

    fn create_from(
        &self,
        image: &ImageHash,
        carried: &Carryover,
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(self.boot(image, config, carried.virtual_ns)?))
    }

    fn begin_restore(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn RestoreStage>, EngineError> {
        Ok(Box::new(self.stage(image, config)?))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }
}

impl Drop for QemuEngine {
    fn drop(&mut self) {
        // Its phones are gone (each removes its own directory); the run directory goes with them.
        let _ = std::fs::remove_dir(&self.settings.run_dir);
    }
}

fn info_of(image: &LoadedImage) -> ImageInfo {
    ImageInfo {
        hash: image.hash,
        size_bytes: image.size_bytes,
        abi_version: 0,
        initial_memory_bytes: image.memory_bytes(),
        max_memory_bytes: Some(image.memory_bytes()),
        captured_globals: 0,
        functions: 0,
        imports: Vec::new(),
        engine: ENGINE_NAME,
    }
}

/// A restore in progress: pages laid into a fresh RAM file as snapshots arrive (a migration's pre-copy rounds
/// while the source still runs), with QEMU started on that file at the first of them and waiting for its device
/// state, which only the last snapshot brings. A migration's stop then holds the final delta and the device state,
/// not QEMU's start nor a pass over every page (each page's fingerprint is taken as it lands).
struct QemuRestore {
    image: Arc<LoadedImage>,
    settings: Arc<Settings>,
    accel: Accel,
    clock: Arc<dyn Clock>,
    config: VmConfig,
    /// The phone's directory until QEMU takes it.
    dir: Option<PhoneDir>,
    ram: Option<RamFile>,
    /// QEMU, started on the RAM file with `-incoming defer`, guest not running.
    phone: Option<QemuPhone>,
    /// Every page's fingerprint as laid down so far.
    hashes: Vec<ram::PageHash>,
    chain: Vec<Vec<u8>>,
    /// The last snapshot applied: its id, kind, device state and clock.
    last: Option<(SnapshotId, SnapshotKind, Vec<u8>, u64)>,
}

impl QemuRestore {
    /// Starts QEMU on the RAM file if it has not started yet.
    fn start_qemu(&mut self) -> Result<&mut QemuPhone, EngineError> {
        if self.phone.is_none() {
            let dir = self.dir.take().ok_or(EngineError::EmptyChain)?;
            let phone = QemuPhone::launch(
                self.image.clone(),
                self.settings.clone(),
                self.accel,
                &self.config,
                dir,
                Start::Incoming,
                self.clock.clone(),
                0,
            )
            .map_err(start_error)?;
            self.phone = Some(phone);
        }
        self.phone.as_mut().ok_or(EngineError::EmptyChain)
    }

    fn finish_phone(mut self, paused: bool) -> Result<QemuPhone, EngineError> {
        let (id, kind, device, virtual_ns) = self.last.take().ok_or(EngineError::EmptyChain)?;
        if device.is_empty() {
            return Err(EngineError::Config("the chain ends in a pre-copy round, not a consistent state".into()));
        }
        drop(self.ram.take());
        self.start_qemu()?;
        let mut phone = self.phone.take().ok_or(EngineError::EmptyChain)?;
        phone.load_device_state(&device).map_err(start_error)?;
        let round = match kind {
            SnapshotKind::PreCopy { round, .. } => Some(round),
            _ => None,
        };
        phone.adopt_chain(std::mem::take(&mut self.chain), std::mem::take(&mut self.hashes), id, round, virtual_ns);
        if !paused {
            vmi_engine::VirtualPhone::resume(&mut phone).map_err(EngineError::Start)?;
        }
        phone.set_guest_time();
        Ok(phone)
    }
}

impl Drop for QemuRestore {
    fn drop(&mut self) {
        drop(self.ram.take());
        // A started QEMU removes its directory as it goes.
        drop(self.phone.take());
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir.path);
        }
    }
}

impl RestoreStage for QemuRestore {
    fn apply(&mut self, snapshot: &[u8]) -> Result<(), EngineError> {
        let view = SnapshotView::parse(snapshot, &Limits::default())?;
        let header = &view.header;
        header.check_compat(ENGINE_NAME, &self.image.hash.0)?;
        if header.memory_bytes != self.image.memory_bytes() {
            return Err(EngineError::Config(format!(
                "a snapshot of {} bytes of RAM for an image of {}",
                header.memory_bytes,
                self.image.memory_bytes()
            )));
        }
        let id = SnapshotId::of(snapshot);
        // The chain so far is known by its last link: this one must be its base or follow it.
        match &self.last {
            None => vmi_snapshot::check_chain(&[(id, header)])?,
            Some((prev, prev_kind, ..)) => check_link(*prev, *prev_kind, header.kind)?,
        }
        let (device, virtual_ns) = state::decode(view.host_state).ok_or_else(|| {
            EngineError::Config("the snapshot's host state is not a Linux phone's, or does not unpack".into())
        })?;
        // QEMU starts at the first round (a migration's first is while the source still runs), waiting for the
        // device state; the pages are laid into the file it maps, each page's fingerprint taken as it lands.
        self.start_qemu()?;
        let ram = self.ram.as_mut().ok_or(EngineError::EmptyChain)?;
        view.pages.apply_to(ram.bytes_mut())?;
        for run in view.pages.runs() {
            for i in run.first..run.first + run.count {
                self.hashes[i as usize] = ram.page_hash(i as usize);
            }
        }
        self.chain.push(snapshot.to_vec());
        self.last = Some((id, header.kind, device.to_vec(), virtual_ns));
        Ok(())
    }

    fn applied(&self) -> usize {
        self.chain.len()
    }

    fn finish(self: Box<Self>) -> Result<Box<dyn VirtualPhone>, EngineError> {
        // Paused: a migration's arrival runs only once the control service has moved the phone here.
        Ok(Box::new((*self).finish_phone(true)?))
    }
}

/// Checks that a snapshot of `kind` follows the one before (`prev`, of `prev_kind`) as `check_chain` would: a
/// delta naming it as parent, a pre-copy round numbered one more than a pre-copy round before it (0 after another).
fn check_link(prev: SnapshotId, prev_kind: SnapshotKind, kind: SnapshotKind) -> Result<(), EngineError> {
    use vmi_snapshot::SnapshotError;
    let position = 1;
    let Some(parent) = kind.parent() else { return Err(SnapshotError::NotADelta { position }.into()) };
    if parent != prev {
        return Err(SnapshotError::ParentMismatch { position, expected: prev, found: parent }.into());
    }
    if let SnapshotKind::PreCopy { round, .. } = kind {
        let expected = match prev_kind {
            SnapshotKind::PreCopy { round, .. } => round.wrapping_add(1),
            _ => 0,
        };
        if round != expected {
            return Err(SnapshotError::RoundMismatch { position, expected, found: round }.into());
        }
    }
    Ok(())
}
