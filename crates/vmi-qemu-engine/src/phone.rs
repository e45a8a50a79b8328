//! One Linux phone: a `qemu-system-x86_64` process, driven over QMP, its screen read over VNC, its guest agent
//! over virtio-serial, its RAM a file in the phone's directory that QEMU maps shared (so a snapshot reads guest
//! memory straight from the file and QEMU's own stream carries only device state, `x-ignore-shared`).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmi_engine::{
    Carryover, Clock, EncodedSnapshot, Event, Frame, KeyCode, Mail, Notification, Rect, ResourceUsage, SnapshotRequest,
    TouchPhase, VirtualPhone, VmConfig, VmError, VmInfo, VmStatus,
};
use vmi_snapshot::{Header, SnapshotId, SnapshotKind};

use crate::agent::Agent;
use crate::display::{self, ActivityListener, Screen, SharedScreen, lock};
use crate::error::QemuError;
use crate::ram::{PageHash, RamFile};
use crate::{Accel, LoadedImage, Settings};

/// Name of the engine, in snapshots and images.
pub const ENGINE_NAME: &str = "qemu";
/// How long QEMU gets to open its sockets after it starts.
const SOCKETS_WITHIN: Duration = Duration::from_secs(20);
/// Largest device state read from QEMU (guest RAM is not in it; virtio-gpu's copies of the display buffers are).
const MAX_DEVICE_STATE: u64 = crate::state::MAX_DEVICE_STATE as u64;
/// How long QEMU gets to write or read its device state.
const STATE_WITHIN: Duration = Duration::from_secs(60);
/// How often at most a site records a Linux phone's state while it changes: each record stops the guest for its
/// device state and fingerprints all its RAM (about a tenth of a second at 384 MiB here).
const RECORD_EVERY: Duration = Duration::from_secs(5);
/// What QEMU itself may use above guest RAM (its code, device models, VNC buffers) under its memory cap.
const QEMU_OVERHEAD: u64 = 512 << 20;
/// TCG's translated-code cache, MiB: QEMU's default (a gigabyte) would grow past the phone's memory cap.
const TCG_CACHE_MIB: u32 = 128;
/// How long the guest gets to pack or unpack the user's home.
const HOME_WITHIN: Duration = Duration::from_secs(120);
/// How long the guest agent gets to answer for a file.
const FILE_WITHIN: Duration = Duration::from_secs(3);
/// More damage rectangles than this in one frame are sent as their bounding box.
const MAX_RECTS: usize = 64;

/// How a phone's QEMU starts.
pub(crate) enum Start {
    /// Boots the image's kernel.
    Boot,
    /// Waits for its device state (`-incoming defer`), its RAM file already laid down.
    Incoming,
}

/// A running (or crashed) Linux phone.
pub struct QemuPhone {
    info: VmInfo,
    status: VmStatus,
    image: Arc<LoadedImage>,
    settings: Arc<Settings>,
    accel: Accel,
    dir: PathBuf,
    /// The user QEMU runs as, if not the engine's.
    uid: Option<u32>,
    child: Child,
    /// Its memory cap and CPU cap (removed after the process, when the phone is dropped).
    cgroup: Option<crate::cgroup::Cgroup>,
    qmp: crate::qmp::Qmp,
    /// Keys and touches, paced (a second QMP session).
    input: crate::input::InputPacer,
    screen: SharedScreen,
    agent: Agent,
    listener: Arc<Mutex<Option<ActivityListener>>>,
    /// The screen as the site last took it.
    rgba: Vec<u8>,
    ram: Arc<RamFile>,
    clock: Arc<dyn Clock>,
    /// Virtual time at `started_ns` of the clock: the phone's clock goes on across restores.
    virtual_base_ns: u64,
    started_ns: u64,
    /// Whether QEMU is stopped (a migration's freeze, a provisional arrival).
    paused: bool,
    /// Every page's fingerprint at the last snapshot (or pre-copy round): what a delta compares against.
    page_hashes: Option<Vec<PageHash>>,
    /// The last snapshot taken (or restored), the end of `chain`.
    last_snapshot: Option<SnapshotId>,
    /// The round of the pre-copy sequence the last snapshot belongs to, if it does.
    precopy_round: Option<u32>,
    chain: Vec<Vec<u8>>,
    notifications: VecDeque<Notification>,
    events: u64,
}

impl QemuPhone {
    /// Starts QEMU for a phone of `image` in `dir` (which holds its RAM file when `start` is `Incoming`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        image: Arc<LoadedImage>,
        settings: Arc<Settings>,
        accel: Accel,
        config: &VmConfig,
        home: crate::PhoneDir,
        start: Start,
        clock: Arc<dyn Clock>,
        virtual_base_ns: u64,
    ) -> Result<QemuPhone, QemuError> {
        let crate::PhoneDir { path: dir, uid, launcher } = home;
        let started =
            QemuPhone::start(image, settings, accel, config, &dir, uid, launcher, start, clock, virtual_base_ns);
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        started
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        image: Arc<LoadedImage>,
        settings: Arc<Settings>,
        accel: Accel,
        config: &VmConfig,
        dir: &Path,
        uid: Option<u32>,
        launcher: Arc<crate::Launcher>,
        start: Start,
        clock: Arc<dyn Clock>,
        virtual_base_ns: u64,
    ) -> Result<QemuPhone, QemuError> {
        let dir = dir.to_path_buf();
        let memory = image.memory_bytes();
        let ram = Arc::new(match start {
            Start::Boot => RamFile::create(&dir.join("ram"), memory)?,
            Start::Incoming => RamFile::open(&dir.join("ram"), memory)?,
        });
        // QEMU as its own user may not traverse the site's directories to the image: it gets the image's files
        // open, by descriptor, and opens them again through /proc/self/fd (their own modes allow reading).
        let mut inherited = Vec::new();
        let mut parts = Vec::new();
        for name in crate::image::PARTS {
            if uid.is_some() {
                use std::os::fd::AsRawFd;
                let file = std::fs::File::open(image.part(name)).map_err(QemuError::io(format!("opening {name}")))?;
                parts.push(format!("/proc/self/fd/{}", file.as_raw_fd()));
                inherited.push(file);
            } else {
                parts.push(image.part(name));
            }
        }
        let mut cmd = qemu_command(&image, &parts, &settings, accel, config, &dir, &start);
        let log = std::fs::File::create(dir.join("qemu.log")).map_err(QemuError::io("creating qemu.log"))?;
        let log2 = log.try_clone().map_err(QemuError::io("qemu.log"))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        settings.confine(&mut cmd, &dir, uid, &inherited)?;
        // Its memory cap (guest RAM and QEMU's own) and CPU cap, where the host lets the engine set them; and for
        // an image with a network, the fence that keeps it off the site's own addresses (no fence, no phone).
        let group_name = format!(
            "{}.{}",
            dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        );
        let mut cgroup = crate::cgroup::for_phone(&group_name, memory + QEMU_OVERHEAD, image.manifest.cpus);
        if image.manifest.network {
            let fenced = match cgroup.as_mut() {
                Some(group) => group.fence_network(&group_name),
                None => Err("no cgroup could be made for it".to_owned()),
            };
            if let Err(why) = fenced {
                return Err(QemuError::Qemu(format!(
                    "the image asks for a network, and this site cannot fence a phone off its own addresses: {why} \
                     (network phones need cgroup v2 and a site run as root)"
                )));
            }
        }
        let child = launcher.spawn(cmd).map_err(QemuError::io(format!("starting {}", settings.qemu.display())))?;
        let mut phone_child = ChildGuard(Some(child));
        if let Some(group) = &cgroup
            && let Err(e) = group.add(phone_child.pid())
        {
            if image.manifest.network {
                return Err(QemuError::Qemu(format!("QEMU cannot join its fenced cgroup: {e}")));
            }
            tracing::warn!("QEMU runs outside its cgroup: {e}");
        }
        let started = Instant::now();
        let listener: Arc<Mutex<Option<ActivityListener>>> = Arc::default();
        let screen: SharedScreen = Arc::new(Mutex::new(Screen::default()));
        let qmp = crate::qmp::Qmp::connect(&dir.join("qmp.sock"), SOCKETS_WITHIN)
            .map_err(|e| with_log(e, &dir, phone_child.0.as_mut()))?;
        let input = crate::input::InputPacer::start(&dir.join("input.sock"), SOCKETS_WITHIN)?;
        display::start(&dir.join("vnc.sock"), SOCKETS_WITHIN, screen.clone(), listener.clone())?;
        let agent = Agent::start(&dir.join("agent.sock"), SOCKETS_WITHIN, listener.clone())?;
        tracing::debug!(dir = %dir.display(), "QEMU up in {:?}", started.elapsed());
        let (width, height) = (config.width, config.height);
        let now = clock.monotonic_ns();
        Ok(QemuPhone {
            info: VmInfo { image: image.hash, width, height },
            status: VmStatus::Running,
            image,
            settings,
            accel,
            dir,
            uid,
            child: phone_child.take(),
            cgroup,
            qmp,
            input,
            screen,
            agent,
            listener,
            rgba: vec![0; width as usize * height as usize * 4],
            ram,
            clock,
            virtual_base_ns,
            started_ns: now,
            paused: matches!(start, Start::Incoming),
            page_hashes: None,
            last_snapshot: None,
            precopy_round: None,
            chain: Vec::new(),
            notifications: VecDeque::new(),
            events: 0,
        })
    }

    /// Which accelerator runs this phone.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Whether the guest's session is up (its terminal emulator's shell started).
    pub fn session_ready(&self) -> bool {
        self.agent.with_inbox(|i| i.ready)
    }

    /// Waits up to `within` until the guest says it is idle (`true`) or busy (`false`) as `want`; whether it did.
    pub fn wait_idle(&self, want: bool, within: Duration) -> bool {
        self.agent.wait_for(within, |i| (i.idle == Some(want)).then_some(())).is_some()
    }

    /// Waits up to `within` for the session to be up.
    pub fn wait_session(&self, within: Duration) -> bool {
        self.agent.wait_for(within, |i| i.ready.then_some(())).is_some()
    }

    /// Asks the guest agent for a file of at most 48 KiB: how tests and operators read a phone's files.
    pub fn read_guest_file(&self, path: &str, within: Duration) -> Result<Vec<u8>, VmError> {
        self.agent.read_file(path, within).map_err(|e| VmError::Abi(e.to_string()))
    }

    /// The user's home, packed by the guest (a gzipped tar): what an image upgrade carries.
    pub fn pack_home(&self) -> Result<Vec<u8>, QemuError> {
        self.agent.pack_home(HOME_WITHIN)
    }

    /// Unpacks a home packed by [`QemuPhone::pack_home`] into this phone's /home.
    pub fn unpack_home(&self, tar: &[u8]) -> Result<(), QemuError> {
        self.agent.unpack_home(tar, HOME_WITHIN)
    }

    /// The cgroup directories holding its memory cap and CPU cap, if the host let the engine make them.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(|g| g.dirs().to_vec()).unwrap_or_default()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The phone's directory (its RAM file, sockets, QEMU's log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lays down device state and starts the guest from it (`Incoming` phones).
    pub(crate) fn load_device_state(&mut self, state: &[u8]) -> Result<(), QemuError> {
        self.qmp.execute("migrate-set-capabilities", ignore_shared())?;
        let path = self.dir.join("state-in.sock");
        let _ = std::fs::remove_file(&path);
        self.qmp.execute("migrate-incoming", json!({ "uri": format!("unix:{}", path.display()) }))?;
        let mut stream = crate::qmp::connect_within(&path, SOCKETS_WITHIN, "the device state")?;
        stream.write_all(state).map_err(QemuError::io("sending device state to QEMU"))?;
        drop(stream);
        self.wait_migration("incoming")?;
        Ok(())
    }

    /// Makes `chain` (just laid down into this phone's RAM, whose pages' fingerprints are `hashes`) its last good
    /// chain, the next delta against it; the phone's clock goes on from `virtual_ns`, the chain's last.
    pub(crate) fn adopt_chain(
        &mut self,
        chain: Vec<Vec<u8>>,
        hashes: Vec<PageHash>,
        last: SnapshotId,
        pre_copy_round: Option<u32>,
        virtual_ns: u64,
    ) {
        self.virtual_base_ns = virtual_ns;
        self.started_ns = self.clock.monotonic_ns();
        self.page_hashes = Some(hashes);
        self.last_snapshot = Some(last);
        self.precopy_round = pre_copy_round;
        self.chain = chain;
    }

    /// Tells the guest the time (after a restore its clock is where the snapshot left it).
    pub(crate) fn set_guest_time(&self) {
        let secs = self.clock.wall_ns() / 1_000_000_000;
        if let Err(e) = self.agent.send(&format!("time {secs}")) {
            tracing::debug!("cannot set the guest's clock: {e}");
        }
    }

    /// Marks the phone crashed if QEMU has gone.
    fn refresh(&mut self) {
        if !matches!(self.status, VmStatus::Running) {
            return;
        }
        let reason = match self.child.try_wait() {
            Ok(Some(exit)) => Some(format!("QEMU exited ({exit})")),
            Ok(None) => lock(&self.screen).closed.clone().map(|why| format!("the display went away: {why}")),
            Err(e) => Some(format!("cannot watch QEMU: {e}")),
        };
        if let Some(reason) = reason {
            tracing::warn!(dir = %self.dir.display(), "Linux phone crashed: {reason}");
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.status = VmStatus::Crashed { reason };
        }
    }

    fn alive(&mut self) -> Result<(), VmError> {
        self.refresh();
        match &self.status {
            VmStatus::Running => Ok(()),
            VmStatus::Crashed { reason } => Err(VmError::Crashed(reason.clone())),
        }
    }

    fn qmp(&mut self, command: &str, args: Value) -> Result<Value, VmError> {
        match self.qmp.execute(command, args) {
            Ok(v) => Ok(v),
            Err(e @ QemuError::Qmp { .. }) => Err(VmError::Abi(e.to_string())),
            Err(e) => {
                self.refresh();
                Err(VmError::Crashed(e.to_string()))
            }
        }
    }

    fn input(&mut self, events: Vec<Value>) -> Result<(), VmError> {
        match self.input.send(events) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VmError::Full("the phone's input queue")),
            Err(e) => {
                self.refresh();
                Err(VmError::Crashed(e.to_string()))
            }
        }
    }

    /// Writes QEMU's device state (guest RAM left out: it is in the file) and returns it; QEMU must be stopped.
    fn save_device_state(&mut self) -> Result<Vec<u8>, VmError> {
        let path = self.dir.join("state-out.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| VmError::Snapshot(format!("state socket: {e}")))?;
        self.settings.give(&path, self.uid);
        self.qmp("migrate-set-capabilities", ignore_shared())?;
        self.qmp("migrate", json!({ "uri": format!("unix:{}", path.display()) }))?;
        let read = accept_within(&listener, STATE_WITHIN).and_then(|(stream, _)| {
            stream.set_read_timeout(Some(STATE_WITHIN)).map_err(QemuError::io("state socket"))?;
            let mut state = Vec::new();
            stream
                .take(MAX_DEVICE_STATE + 1)
                .read_to_end(&mut state)
                .map_err(QemuError::io("reading QEMU's device state"))?;
            if state.len() as u64 > MAX_DEVICE_STATE {
                return Err(QemuError::Qemu(format!("device state over {MAX_DEVICE_STATE} bytes")));
            }
            Ok(state)
        });
        let state = match read.and_then(|state| self.wait_migration("outgoing").map(|()| state)) {
            Ok(state) => state,
            Err(e) => {
                // QEMU's side ends too, so the guest can run on.
                let _ = self.qmp.execute("migrate_cancel", Value::Null);
                return Err(VmError::Snapshot(e.to_string()));
            }
        };
        let _ = std::fs::remove_file(&path);
        Ok(state)
    }

    fn wait_migration(&mut self, what: &str) -> Result<(), QemuError> {
        let by = Instant::now() + STATE_WITHIN;
        loop {
            let status = self.qmp.execute("query-migrate", Value::Null)?;
            match status["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let why = status["error-desc"].as_str().unwrap_or("no reason given");
                    return Err(QemuError::Qemu(format!("{what} device state: {why}")));
                }
                _ if Instant::now() > by => return Err(QemuError::Qemu(format!("{what} device state timed out"))),
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Takes a snapshot of the guest as it is (stopped, unless `pre_copy`).
    fn take_snapshot(&mut self, request: SnapshotRequest, pre_copy: bool) -> Result<EncodedSnapshot, VmError> {
        let parent = self.last_snapshot.filter(|_| self.page_hashes.is_some());
        let kind = match (request, parent, self.precopy_round) {
            (SnapshotRequest::Full, _, _) => SnapshotKind::Full,
            (SnapshotRequest::Incremental, Some(parent), _) => SnapshotKind::Incremental { parent },
            (SnapshotRequest::Incremental, None, _) => SnapshotKind::Full,
            (SnapshotRequest::PreCopy, Some(parent), Some(round)) => {
                SnapshotKind::PreCopy { round: round + 1, parent: Some(parent) }
            }
            (SnapshotRequest::PreCopy | SnapshotRequest::PreCopyStart, _, _) => {
                SnapshotKind::PreCopy { round: 0, parent: None }
            }
        };
        // The pages are read on other threads while QEMU writes its device state (and it is compressed): a
        // migration's stop holds the longer of the two, not their sum.
        let ram = Arc::clone(&self.ram);
        let old = self.page_hashes.take();
        let (collected, host_state) = std::thread::scope(|scope| {
            let collecting = scope.spawn(|| ram.collect(kind.parent().and(old.as_deref())));
            let device = if pre_copy { Ok(Vec::new()) } else { self.save_device_state() };
            let host_state = device.map(|d| crate::state::encode(&d, self.now_ns()));
            (collecting.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), host_state)
        });
        let host_state = match host_state {
            Ok(h) => h,
            Err(e) => {
                self.page_hashes = old;
                return Err(e);
            }
        };
        let (pages, hashes) = collected;
        let snapshot = vmi_snapshot::Snapshot { header: self.header(kind), globals: Vec::new(), host_state, pages };
        let bytes = snapshot.try_encode().map_err(|e| VmError::Snapshot(e.to_string()))?;
        let id = SnapshotId::of(&bytes);
        let parent = kind.parent();
        if parent.is_none() {
            self.chain.clear();
        }
        self.precopy_round = match kind {
            SnapshotKind::PreCopy { round, .. } => Some(round),
            _ => None,
        };
        self.page_hashes = Some(hashes);
        self.last_snapshot = Some(id);
        self.chain.push(bytes.clone());
        Ok(EncodedSnapshot { id, parent, pages: snapshot.pages.page_count(), bytes })
    }

    fn header(&self, kind: SnapshotKind) -> Header {
        Header {
            engine: ENGINE_NAME.into(),
            image_hash: self.image.hash.0,
            memory_bytes: self.ram.len() as u64,
            kind,
            virtual_ns: self.now_ns(),
            wall_ns: self.clock.wall_ns(),
        }
    }
}

impl Drop for QemuPhone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills QEMU if the launch fails half-way.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn take(&mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Adds QEMU's last words to an error of its start.
fn with_log(e: QemuError, dir: &Path, child: Option<&mut Child>) -> QemuError {
    if let Some(c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let log = read_tail(&dir.join("qemu.log"), 16 << 10);
    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("; ");
    if tail.is_empty() { e } else { QemuError::Qemu(format!("{e}; QEMU said: {tail}")) }
}

/// The last `max` bytes of a file QEMU wrote, as text.
fn read_tail(path: &Path, max: u64) -> String {
    use std::io::Seek;
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(max)));
    let mut tail = Vec::new();
    let _ = file.take(max).read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

fn ignore_shared() -> Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

fn accept_within(
    listener: &UnixListener,
    within: Duration,
) -> Result<(std::os::unix::net::UnixStream, std::os::unix::net::SocketAddr), QemuError> {
    listener.set_nonblocking(true).map_err(QemuError::io("state socket"))?;
    let by = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).map_err(QemuError::io("state socket"))?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < by => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(QemuError::io("QEMU did not connect to write its state")(e)),
        }
    }
}

fn qemu_command(
    image: &LoadedImage,
    parts: &[String],
    settings: &Settings,
    accel: Accel,
    config: &VmConfig,
    dir: &Path,
    start: &Start,
) -> Command {
    let m = &image.manifest;
    let mut cmd = Command::new(&settings.qemu);
    let path = |name: &str| dir.join(name).display().to_string();
    cmd.args(["-name", "seed-phone", "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none"]);
    let accel_arg = match accel {
        Accel::Tcg => format!("tcg,tb-size={TCG_CACHE_MIB}"),
        Accel::Kvm => "kvm".to_owned(),
    };
    cmd.args(["-accel", &accel_arg, "-machine", "q35,memory-backend=ram"]);
    cmd.args(["-m", &format!("{}M", m.memory_mib), "-smp", &m.cpus.to_string()]);
    cmd.args([
        "-object",
        &format!("memory-backend-file,id=ram,size={}M,mem-path={},share=on", m.memory_mib, path("ram")),
    ]);
    cmd.args(["-kernel", &parts[0], "-initrd", &parts[1], "-append", &m.cmdline]);
    cmd.args(["-drive", &format!("file={},format=raw,if=virtio,readonly=on", parts[2])]);
    cmd.args(["-device", &format!("virtio-gpu-pci,xres={},yres={}", config.width, config.height)]);
    cmd.args(["-device", "virtio-tablet-pci", "-device", "virtio-keyboard-pci", "-device", "virtio-serial-pci"]);
    cmd.args(["-chardev", &format!("socket,path={},server=on,wait=off,id=agent", path("agent.sock"))]);
    cmd.args(["-device", "virtserialport,chardev=agent,name=org.seed.agent"]);
    cmd.args(["-vnc", &format!("unix:{}", path("vnc.sock"))]);
    cmd.args(["-qmp", &format!("unix:{},server=on,wait=off", path("qmp.sock"))]);
    cmd.args(["-qmp", &format!("unix:{},server=on,wait=off", path("input.sock"))]);
    cmd.args(["-serial", &format!("file:{}", path("console.log"))]);
    // No network unless the image asks for one; then user-mode, fenced off the site (`network`).
    cmd.args(crate::network::qemu_args(m.network));
    // QEMU's own seccomp filter: no new processes, no privilege changes, no obsolete system calls.
    cmd.args(["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
    if matches!(start, Start::Incoming) {
        cmd.args(["-incoming", "defer"]);
    }
    cmd
}

/// QEMU's name (qcode) for the key that types `c`, and whether shift is held for it.
fn qcode_of(c: char) -> Option<(&'static str, bool)> {
    const LETTERS: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v",
        "w", "x", "y", "z",
    ];
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    Some(match c {
        'a'..='z' => (LETTERS[c as usize - 'a' as usize], false),
        'A'..='Z' => (LETTERS[c as usize - 'A' as usize], true),
        '0'..='9' => (DIGITS[c as usize - '0' as usize], false),
        ' ' => ("spc", false),
        '\n' | '\r' => ("ret", false),
        '\t' => ("tab", false),
        '-' => ("minus", false),
        '=' => ("equal", false),
        '[' => ("bracket_left", false),
        ']' => ("bracket_right", false),
        ';' => ("semicolon", false),
        '\'' => ("apostrophe", false),
        '`' => ("grave_accent", false),
        '\\' => ("backslash", false),
        ',' => ("comma", false),
        '.' => ("dot", false),
        '/' => ("slash", false),
        '!' => ("1", true),
        '@' => ("2", true),
        '#' => ("3", true),
        '$' => ("4", true),
        '%' => ("5", true),
        '^' => ("6", true),
        '&' => ("7", true),
        '*' => ("8", true),
        '(' => ("9", true),
        ')' => ("0", true),
        '_' => ("minus", true),
        '+' => ("equal", true),
        '{' => ("bracket_left", true),
        '}' => ("bracket_right", true),
        ':' => ("semicolon", true),
        '"' => ("apostrophe", true),
        '~' => ("grave_accent", true),
        '|' => ("backslash", true),
        '<' => ("comma", true),
        '>' => ("dot", true),
        '?' => ("slash", true),
        _ => return None,
    })
}

fn qcode_of_key(code: KeyCode) -> Option<&'static str> {
    Some(match code {
        KeyCode::Backspace => "backspace",
        KeyCode::Enter => "ret",
        KeyCode::Escape => "esc",
        KeyCode::Left => "left",
        KeyCode::Right => "right",
        KeyCode::Up => "up",
        KeyCode::Down => "down",
        KeyCode::Home => "home",
        KeyCode::Delete => "delete",
        KeyCode::VolumeUp => "volumeup",
        KeyCode::VolumeDown => "volumedown",
        KeyCode::Text => return None,
    })
}

fn key(qcode: &str, down: bool) -> Value {
    json!({ "type": "key", "data": { "down": down, "key": { "type": "qcode", "data": qcode } } })
}

/// Merges many small rectangles (QEMU reports 16-pixel tiles) into their bounding box when there are too many.
fn simplify(mut damage: Vec<Rect>, width: u32, height: u32) -> Vec<Rect> {
    damage.retain(|r| r.w > 0 && r.h > 0 && r.x < width && r.y < height);
    if damage.len() > MAX_RECTS
        && let Some(first) = damage.first().copied()
    {
        let all = damage.iter().fold(first, |a, r| a.union(r));
        return vec![all];
    }
    damage
}

impl VirtualPhone for QemuPhone {
    fn info(&self) -> &VmInfo {
        &self.info
    }

    fn status(&self) -> &VmStatus {
        &self.status
    }

    fn deliver(&mut self, event: Event) -> Result<(), VmError> {
        self.alive()?;
        self.events += 1;
        match event {
            Event::Touch { phase, x, y, pointer: 0 } => {
                let scale = |v: i32, side: u32| v.clamp(0, side as i32 - 1) as i64 * 32767 / (side.max(2) as i64 - 1);
                let mut events = vec![
                    json!({ "type": "abs", "data": { "axis": "x", "value": scale(x, self.info.width) } }),
                    json!({ "type": "abs", "data": { "axis": "y", "value": scale(y, self.info.height) } }),
                ];
                match phase {
                    TouchPhase::Down => {
                        events.push(json!({ "type": "btn", "data": { "down": true, "button": "left" } }))
                    }
                    TouchPhase::Up => {
                        events.push(json!({ "type": "btn", "data": { "down": false, "button": "left" } }))
                    }
                    TouchPhase::Move => {}
                }
                self.input(events)
            }
            // A tablet has one pointer: other fingers are not passed on.
            Event::Touch { .. } => Ok(()),
            Event::Key { code, text } => {
                let (qcode, shift) = match (code, text) {
                    (KeyCode::Text, Some(c)) => match qcode_of(c) {
                        Some(k) => k,
                        // A character no US key types: not passed on (the terminal's text input is ASCII here).
                        None => return Ok(()),
                    },
                    (code, _) => match qcode_of_key(code) {
                        Some(q) => (q, false),
                        None => return Ok(()),
                    },
                };
                let mut events = Vec::new();
                if shift {
                    events.push(key("shift", true));
                }
                events.push(key(qcode, true));
                events.push(key(qcode, false));
                if shift {
                    events.push(key("shift", false));
                }
                self.input(events)
            }
            // The guest keeps its own timers and mail; its screen is read whether watched or not.
            Event::Timer(_) | Event::MailArrived | Event::Wake | Event::Sleep | Event::Display { .. } => Ok(()),
        }
    }

    fn next_timer_ns(&self) -> Option<u64> {
        // The guest's timers run inside it: the site has none to fire.
        None
    }

    fn fire_due_timers(&mut self) -> Result<usize, VmError> {
        self.alive().map(|()| 0)
    }

    fn now_ns(&self) -> u64 {
        self.virtual_base_ns + self.clock.monotonic_ns().saturating_sub(self.started_ns)
    }

    fn frame(&mut self) -> Result<Frame<'_>, VmError> {
        self.alive()?;
        let (width, height) = (self.info.width, self.info.height);
        let damage = {
            let mut s = lock(&self.screen);
            let damage = std::mem::take(&mut s.damage);
            // The guest's screen is copied where it overlaps the phone's (before its mode is set it is smaller).
            let (sw, sh) = (s.width.min(width), s.height.min(height));
            for r in &damage {
                let (x0, y0) = (r.x.min(sw), r.y.min(sh));
                let (x1, y1) = ((r.x + r.w).min(sw), (r.y + r.h).min(sh));
                for y in y0..y1 {
                    let src = (y as usize * s.width as usize + x0 as usize) * 4;
                    let dst = (y as usize * width as usize + x0 as usize) * 4;
                    let n = (x1 - x0) as usize * 4;
                    self.rgba[dst..dst + n].copy_from_slice(&s.rgba[src..src + n]);
                }
            }
            damage
        };
        Ok(Frame { width, height, rgba: &self.rgba, damage: simplify(damage, width, height) })
    }

    fn take_notifications(&mut self) -> Vec<Notification> {
        let at_ns = self.now_ns();
        let raised = self.agent.with_inbox(|i| std::mem::take(&mut i.notifications));
        self.notifications.extend(raised.into_iter().map(|(title, body)| Notification { title, body, at_ns }));
        self.notifications.drain(..).collect()
    }

    fn push_mail(&mut self, _mail: Mail) -> Result<(), VmError> {
        // A Linux phone fetches its own mail, with its own software.
        Err(VmError::Unsupported("take host mail: a Linux phone's own software fetches its mail".into()))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, VmError> {
        self.read_guest_file(path, FILE_WITHIN)
    }

    fn mailbox_len(&self) -> usize {
        0
    }

    fn kv_get(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn carryover(&self) -> Carryover {
        Carryover { kv: Vec::new(), mailbox: Vec::new(), virtual_ns: self.now_ns(), wall_ns: self.clock.wall_ns() }
    }

    fn snapshot(&mut self, request: SnapshotRequest) -> Result<EncodedSnapshot, VmError> {
        self.alive()?;
        let pre_copy = matches!(request, SnapshotRequest::PreCopy | SnapshotRequest::PreCopyStart);
        // A consistent snapshot stops the guest for its device state and pages; a pre-copy round reads the pages
        // while it runs (the stopped final delta carries whatever changed after).
        let stop = !pre_copy && !self.paused;
        // Every input delivered before the snapshot is in it: sent into the guest's queue (guest RAM) first.
        if !pre_copy && let Err(e) = self.input.flush() {
            self.refresh();
            return Err(VmError::Crashed(e.to_string()));
        }
        if stop {
            self.qmp("stop", Value::Null)?;
        }
        let taken = self.take_snapshot(request, pre_copy);
        if stop {
            self.qmp("cont", Value::Null)?;
        }
        taken
    }

    fn last_snapshot_id(&self) -> Option<SnapshotId> {
        self.last_snapshot
    }

    fn last_good_chain(&self) -> Result<Vec<Vec<u8>>, VmError> {
        Ok(self.chain.clone())
    }

    fn usage(&self) -> ResourceUsage {
        ResourceUsage {
            memory_bytes: self.ram.len() as u64,
            events: self.events,
            pending_notifications: self.notifications.len() as u32,
            ..ResourceUsage::default()
        }
    }

    fn pause(&mut self) -> Result<(), VmError> {
        self.alive()?;
        if !self.paused {
            // What was delivered before the stop reaches the guest's queue first.
            if let Err(e) = self.input.flush() {
                self.refresh();
                return Err(VmError::Crashed(e.to_string()));
            }
            self.qmp("stop", Value::Null)?;
            self.paused = true;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), VmError> {
        self.alive()?;
        if self.paused {
            self.qmp("cont", Value::Null)?;
            self.paused = false;
        }
        Ok(())
    }

    fn set_activity_listener(&mut self, listener: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.listener) = Some(listener);
    }

    fn engine(&self) -> &'static str {
        ENGINE_NAME
    }

    fn accelerator(&self) -> Option<&'static str> {
        Some(self.accel.as_str())
    }

    fn record_every(&self) -> Option<Duration> {
        Some(RECORD_EVERY)
    }

    fn runs_by_itself(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printable_ascii_character_has_a_key() {
        for c in ' '..='~' {
            assert!(qcode_of(c).is_some(), "{c:?}");
        }
        assert_eq!(qcode_of('H'), Some(("h", true)));
        assert_eq!(qcode_of('>'), Some(("dot", true)));
        assert_eq!(qcode_of('é'), None);
    }

    #[test]
    fn many_tiles_become_their_bounding_box() {
        let tiles: Vec<Rect> = (0..100).map(|i| Rect::new(16 * (i % 10), 16 * (i / 10), 16, 16)).collect();
        assert_eq!(simplify(tiles, 720, 1280), vec![Rect::new(0, 0, 160, 160)]);
        let few = vec![Rect::new(0, 0, 16, 16), Rect::new(800, 0, 16, 16)];
        assert_eq!(simplify(few, 720, 1280), vec![Rect::new(0, 0, 16, 16)]);
    }
}
