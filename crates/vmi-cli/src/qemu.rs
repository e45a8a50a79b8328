//! The QEMU/KVM side of `vmi bench migrate`: live-migrates a real KVM guest of the same memory size
//! as the phone, over loopback, so the two migrations can be compared side by side.
//!
//! The guest is [`GUEST`], a 560-byte multiboot kernel (source: [`GUEST_ASM`]) that QEMU loads with
//! `-kernel`. It enters long mode, writes one word into every 4 KiB page of its RAM above 2 MiB (so
//! its whole memory is in use: QEMU can skip no page as a zero page, and `ram.transferred` comes to
//! about the memory size; compare it with a phone whose memory is in use likewise), prints a marker
//! on the serial port and then idles in `hlt`; on each 100 Hz timer tick it dirties 64 pages
//! (256 KiB), like an idle phone, and every 20 ticks prints a tick line.
//!
//! Why the first anchor is not Linux: a Debian cloud kernel needs more than 64 MiB just to decompress itself (its boot
//! page tables land at ~67 MiB), so 16 and 64 MiB guests cannot boot it at all; and on hosts whose
//! KVM is the nested `kvm-pvm` (a software KVM that emulates an unmodified guest instruction by
//! instruction) it takes minutes to boot and then stops on a `cmpxchg16b` the emulator cannot do.
//! QEMU's migration cost depends on the guest's RAM size, which pages are zero and how fast pages
//! are dirtied, not on which OS does the dirtying; this guest fixes all three plainly.
//!
//! One run: start the source (`qemu-system-x86_64 -enable-kvm -m N -kernel guest.bin …`) and a
//! destination with the same command line plus `-incoming tcp:127.0.0.1:PORT`; wait for the guest's
//! marker and first tick on the source's serial port; QMP `migrate`; poll `query-migrate` until
//! `completed`; read `downtime`, `total-time` and `ram.transferred`; check that the destination is
//! `running` and its guest goes on ticking; kill both. Migration parameters are QEMU's defaults,
//! untouched (see [`measure`]).
//!
//! The second anchor ([`measure_linux`]) is a real Linux guest after all, under QEMU's TCG where KVM cannot boot
//! it (this machine's KVM resets Debian's kernel right after "Probing EDD"): Debian's cloud kernel
//! and an initramfs of `busybox-static` that [`initramfs`] packs, 128 MiB (the least that kernel boots in), 16 MiB
//! of random data written to its tmpfs, then a tick line 5 times a second. `scripts/setup-qemu` downloads the two
//! packages into `~/.cache/vmi/linux-guest` (or `$VMI_LINUX_GUEST_DIR`).
//!
//! Only std, serde_json and tracing: `std::process` for QEMU, `UnixStream` for QMP.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What one QEMU live migration measured.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuMigration {
    /// Guest memory (`-m`), MiB.
    pub memory_mib: u64,
    /// `query-migrate` `downtime`: how long the guest was stopped, ms (QEMU counts whole ms).
    pub downtime_ms: f64,
    /// `query-migrate` `total-time`: `migrate` issued to completed, ms.
    pub total_ms: f64,
    /// `query-migrate` `ram.transferred`, bytes.
    pub transferred_bytes: u64,
    /// QEMU's version as its QMP greeting gives it, e.g. "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".
    pub qemu_version: String,
}

const QEMU: &str = "qemu-system-x86_64";
const FIX: &str = "run scripts/setup-qemu";
/// Printed by the guest on COM1 once every page has been touched.
const READY_MARKER: &str = "VMI-GUEST-READY";
/// Printed by the guest every 20 timer ticks (5 a second).
const TICK_MARKER: &str = "vmi-guest-tick";
/// The guest writes below 2 MiB (its image at 1 MiB) and touches pages from 2 MiB up.
const MIN_MEMORY_MIB: u64 = 4;
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);
/// After `completed`: how long the destination's guest may take to tick again.
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `runs` live migrations of a `memory_mib` guest over loopback and returns each, or Err(reason) saying plainly why it was skipped
/// (no /dev/kvm or no access to it, no qemu-system-x86_64 — with the fix, e.g. "run scripts/setup-qemu").
///
/// Migration parameters are left at QEMU's defaults (nothing is sent with `migrate-set-parameters`
/// or `migrate-set-capabilities`); for QEMU 7.2 those are `downtime-limit` 300 ms and
/// `max-bandwidth` 128 MiB/s (134217728 B/s, which bounds `total_ms` for a guest whose memory is
/// all in use), with no capability on (no xbzrle, compression, multifd, postcopy or auto-converge).
///
/// Blocking: about 3 s a run (mostly the two QEMUs starting), runs one after another; both QEMUs of
/// a run are killed before the next starts or before an error returns.
pub fn measure(memory_mib: u64, runs: usize) -> Result<Vec<QemuMigration>, String> {
    if memory_mib < MIN_MEMORY_MIB {
        return Err(format!(
            "a {memory_mib} MiB QEMU guest is too small (the guest needs {MIN_MEMORY_MIB} MiB or more)"
        ));
    }
    let qemu = find_qemu()?;
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs {
        let m = migrate_once(&qemu, memory_mib)
            .map_err(|e| format!("QEMU live migration {} of {runs} ({memory_mib} MiB guest) failed: {e}", i + 1))?;
        tracing::debug!(run = i + 1, ?m, "QEMU live migration");
        out.push(m);
    }
    Ok(out)
}

/// Memory of the Linux guest, MiB: the least Debian's cloud kernel boots in.
pub const LINUX_MEMORY_MIB: u64 = 128;
const LINUX_READY_MARKER: &str = "VMI-LINUX-READY";
const LINUX_TICK_MARKER: &str = "vmi-linux-tick";
/// TCG boots the kernel in about 2.5 s; the guest then writes its 16 MiB.
const LINUX_BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// The guest's init: mounts, 16 MiB of random data in its tmpfs (memory in use that no zero-page check skips), a
/// marker, then a tick line 5 times a second.
const LINUX_INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs -o size=48m tmpfs /tmp
/bin/busybox dd if=/dev/urandom of=/tmp/fill bs=1048576 count=16 2>/dev/null
echo VMI-LINUX-READY
while true; do echo vmi-linux-tick; /bin/busybox sleep 0.2; done
";

/// Which guest a run migrates.
enum Guest {
    /// The tiny multiboot kernel, under KVM.
    Tiny,
    /// Debian's kernel with a busybox initramfs, under TCG.
    Linux { kernel: PathBuf, initrd: Vec<u8> },
}

impl Guest {
    fn markers(&self) -> (&'static str, &'static str) {
        match self {
            Guest::Tiny => (READY_MARKER, TICK_MARKER),
            Guest::Linux { .. } => (LINUX_READY_MARKER, LINUX_TICK_MARKER),
        }
    }
}

/// Where `scripts/setup-qemu` leaves the Linux guest's kernel and busybox.
fn linux_guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMI_LINUX_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("vmi/linux-guest")
}

/// Runs `runs` live migrations of the Linux guest ([`LINUX_MEMORY_MIB`], TCG) over loopback, or Err(why not).
pub fn measure_linux(runs: usize) -> Result<LinuxRuns, String> {
    let qemu = find_qemu_binary()?;
    let dir = linux_guest_dir();
    let (kernel, busybox) = (dir.join("vmlinuz"), dir.join("busybox"));
    if !kernel.is_file() || !busybox.is_file() {
        return Err(format!("no Linux guest kernel and busybox in {}; {FIX}", dir.display()));
    }
    let busybox = fs::read(&busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    let guest = Guest::Linux { kernel, initrd: initramfs(&busybox, LINUX_INIT) };
    let mut out = LinuxRuns::default();
    // Under TCG a migrated kernel now and then dies on arrival (seen: "Attempted to kill the idle task!" on the
    // destination): such a run counts as failed, with its reason, and another is tried, up to twice as many.
    for attempt in 0..runs * 2 {
        if out.migrations.len() == runs {
            break;
        }
        match migrate_guest(&qemu, LINUX_MEMORY_MIB, &guest) {
            Ok(m) => out.migrations.push(m),
            Err(e) => {
                tracing::warn!(attempt, "a Linux guest live migration failed: {e}");
                out.failed.push(e);
            }
        }
    }
    if out.migrations.is_empty() {
        return Err(format!("every Linux guest live migration failed; the last: {}", out.failed.join(" / ")));
    }
    Ok(out)
}

/// The Linux guest's migrations, and the runs that failed (why each).
#[derive(Debug, Default)]
pub struct LinuxRuns {
    /// The ones that completed with the guest running at the destination.
    pub migrations: Vec<QemuMigration>,
    /// Why each other run failed.
    pub failed: Vec<String>,
}

/// A `newc` cpio archive (what the kernel unpacks as its initramfs): `/init` (the script), `/bin/busybox`, the
/// mount points, and `/dev/console` (the kernel opens it for init's output).
pub fn initramfs(busybox: &[u8], init: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 0u32;
    let mut entry = |out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        ino += 1;
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    for dir in ["bin", "dev", "proc", "tmp"] {
        entry(&mut out, dir, 0o040755, (0, 0), &[]);
    }
    entry(&mut out, "dev/console", 0o020600, (5, 1), &[]);
    entry(&mut out, "bin/busybox", 0o100755, (0, 0), busybox);
    entry(&mut out, "init", 0o100755, (0, 0), init.as_bytes());
    entry(&mut out, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// Checks the machine in the order a fix would go: KVM, then QEMU.
fn find_qemu() -> Result<PathBuf, String> {
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        return Err(format!(
            "no /dev/kvm: this machine has no KVM (a VM without nested virtualisation, or the kvm module \
             is not loaded), so there is no QEMU/KVM guest to compare with; on a machine with KVM, {FIX}"
        ));
    }
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(kvm) {
        return Err(format!(
            "/dev/kvm cannot be opened for read and write ({e}); add this user to group kvm \
             (sudo adduser $USER kvm, then log in again) or run as root"
        ));
    }
    find_qemu_binary()
}

/// `qemu-system-x86_64` on PATH.
fn find_qemu_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {QEMU} on PATH (Debian package qemu-system-x86); {FIX}"))
}

/// Owns a run's QEMU processes and scratch dir: kills and reaps them on drop, whatever the path out.
struct Run {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Run {
    fn new(guest: &Guest) -> Result<Run, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmi-qemu-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let (name, bytes) = match guest {
            Guest::Tiny => ("guest.bin", GUEST),
            Guest::Linux { initrd, .. } => ("initrd.cpio", initrd.as_slice()),
        };
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(Run { dir, children: Vec::new() })
    }

    /// Starts one QEMU; `role` names its files ("src", "dst"). Returns its index in `children`.
    fn spawn(
        &mut self,
        qemu: &Path,
        (memory_mib, guest): (u64, &Guest),
        role: &str,
        incoming: Option<u16>,
    ) -> Result<usize, String> {
        let qmp = self.dir.join(format!("{role}.qmp"));
        let serial = self.dir.join(format!("{role}.serial"));
        let stderr = fs::File::create(self.dir.join(format!("{role}.stderr")))
            .map_err(|e| format!("creating {role}.stderr: {e}"))?;
        let mut cmd = Command::new(qemu);
        match guest {
            // The default CPU model: `-cpu host` aborts on some hosts ("failed to set MSR 0x10a").
            Guest::Tiny => cmd.arg("-enable-kvm").arg("-kernel").arg(self.dir.join("guest.bin")),
            Guest::Linux { kernel, .. } => cmd
                .args(["-accel", "tcg"])
                .arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(self.dir.join("initrd.cpio"))
                .args(["-append", "console=ttyS0 quiet panic=-1"]),
        };
        cmd.args(["-m", &memory_mib.to_string()])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Some(port) = incoming {
            cmd.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", qemu.display()))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Err with QEMU's stderr and the guest's last serial lines if child `i` has exited.
    fn check_alive(&mut self, i: usize, role: &str) -> Result<(), String> {
        if let Ok(Some(status)) = self.children[i].try_wait() {
            return Err(format!("{role} QEMU exited ({status}){}", self.diagnostics(role)));
        }
        Ok(())
    }

    fn diagnostics(&self, role: &str) -> String {
        let mut s = String::new();
        let err = self.file(&format!("{role}.stderr"));
        if !err.trim().is_empty() {
            s += &format!("; its stderr: {}", tail(&err, 5));
        }
        let serial = self.file(&format!("{role}.serial"));
        if !serial.trim().is_empty() {
            s += &format!("; guest serial: {}", tail(&serial, 3));
        }
        s
    }

    /// Waits until the `role` guest has printed `marker` on its serial port.
    fn wait_serial(&mut self, i: usize, role: &str, marker: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.file(&format!("{role}.serial")).contains(marker) {
                return Ok(());
            }
            self.check_alive(i, role)?;
            if Instant::now() > deadline {
                return Err(format!(
                    "the {role} guest printed no '{marker}' within {} s{}",
                    timeout.as_secs(),
                    self.diagnostics(role)
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Connects to `role`'s QMP socket (retrying while QEMU starts) and completes the handshake.
    fn qmp(&mut self, i: usize, role: &str, deadline: Instant) -> Result<Qmp, String> {
        let path = self.dir.join(format!("{role}.qmp"));
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => return Qmp::handshake(s).map_err(|e| format!("{role} QMP: {e}")),
                Err(e) => {
                    self.check_alive(i, role)?;
                    if Instant::now() > deadline {
                        return Err(format!("{role} QMP socket {} never accepted: {e}", path.display()));
                    }
                    sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// A free loopback port for the destination's `-incoming` (QEMU binds it a moment later).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free loopback port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free loopback port: {e}"))
}

fn migrate_once(qemu: &Path, memory_mib: u64) -> Result<QemuMigration, String> {
    migrate_guest(qemu, memory_mib, &Guest::Tiny)
}

fn migrate_guest(qemu: &Path, memory_mib: u64, guest: &Guest) -> Result<QemuMigration, String> {
    let mut run = Run::new(guest)?;
    let port = free_port()?;
    let src = run.spawn(qemu, (memory_mib, guest), "src", None)?;
    let dst = run.spawn(qemu, (memory_mib, guest), "dst", Some(port))?;
    let (ready_marker, tick_marker) = guest.markers();
    let boot = if matches!(guest, Guest::Tiny) { BOOT_TIMEOUT } else { LINUX_BOOT_TIMEOUT };
    let boot_deadline = Instant::now() + boot;

    let mut src_qmp = run.qmp(src, "src", boot_deadline)?;
    let mut dst_qmp = run.qmp(dst, "dst", boot_deadline)?;
    let status = dst_qmp.execute("query-status", None)?;
    if status.get("status").and_then(Value::as_str) != Some("inmigrate") {
        return Err(format!("the destination QEMU is not waiting for a migration: query-status {status}"));
    }
    // Booted: every page touched (the marker) and the timer running (a first tick).
    let left = boot_deadline.saturating_duration_since(Instant::now());
    run.wait_serial(src, "src", ready_marker, left)?;
    let left = boot_deadline.saturating_duration_since(Instant::now());
    run.wait_serial(src, "src", tick_marker, left)?;

    // No migrate-set-parameters / migrate-set-capabilities: QEMU's defaults (see `measure`).
    src_qmp.execute("migrate", Some(json!({ "uri": format!("tcp:127.0.0.1:{port}") })))?;
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    let done = loop {
        run.check_alive(src, "src")?;
        run.check_alive(dst, "dst")?;
        let r = src_qmp.execute("query-migrate", None)?;
        match parse_migrate_status(&r)? {
            MigrateStatus::Completed(d) => {
                tracing::trace!(%r, "query-migrate");
                break d;
            }
            MigrateStatus::InProgress(s) => {
                if Instant::now() > deadline {
                    let _ = src_qmp.execute("migrate_cancel", None);
                    return Err(format!("the migration is still '{s}' after {} s", MIGRATE_TIMEOUT.as_secs()));
                }
            }
        }
        sleep(Duration::from_millis(5));
    };

    // The destination must run the guest: `running`, and the guest ticks there.
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        let s = dst_qmp.execute("query-status", None)?;
        match s.get("status").and_then(Value::as_str) {
            Some("running") => break,
            other => {
                run.check_alive(dst, "dst")?;
                if Instant::now() > deadline {
                    return Err(format!(
                        "the destination is still '{}' {} s after the migration completed",
                        other.unwrap_or("?"),
                        RESUME_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        sleep(Duration::from_millis(10));
    }
    run.wait_serial(dst, "dst", tick_marker, RESUME_TIMEOUT)?;

    Ok(QemuMigration {
        memory_mib,
        downtime_ms: done.downtime_ms,
        total_ms: done.total_ms,
        transferred_bytes: done.transferred_bytes,
        qemu_version: src_qmp.version.clone(),
    })
    // `run` drops here: both QEMUs killed and reaped, scratch dir removed.
}

/// A QMP connection after `qmp_capabilities`.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// From the greeting.
    version: String,
}

impl Qmp {
    fn handshake(stream: UnixStream) -> Result<Qmp, String> {
        stream.set_read_timeout(Some(QMP_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(QMP_TIMEOUT)).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer, version: String::new() };
        let greeting = qmp.read_message()?;
        qmp.version = parse_greeting_version(&greeting)?;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| format!("reading QMP: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent something that is not JSON ({e}): {line}"))
    }

    /// Runs one command and returns its `return` value; events met on the way are skipped.
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let reply = self.read_message().map_err(|e| format!("QMP {command}: {e}"))?;
            match parse_reply(&reply) {
                Reply::Event => continue,
                Reply::Return(v) => return Ok(v),
                Reply::Error(e) => return Err(format!("QMP {command}: {e}")),
            }
        }
    }
}

/// One QMP message, sorted.
#[derive(Debug, PartialEq)]
enum Reply {
    Return(Value),
    Error(String),
    Event,
}

fn parse_reply(v: &Value) -> Reply {
    if let Some(r) = v.get("return") {
        return Reply::Return(r.clone());
    }
    if let Some(e) = v.get("error") {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("Error");
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("(no description)");
        return Reply::Error(format!("{class}: {desc}"));
    }
    if v.get("event").is_some() {
        return Reply::Event;
    }
    Reply::Error(format!("unexpected QMP message: {v}"))
}

/// "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" from `{"QMP": {"version": {"qemu": {...}, "package": ...}}}`.
fn parse_greeting_version(greeting: &Value) -> Result<String, String> {
    let v = greeting.pointer("/QMP/version").ok_or_else(|| format!("QMP greeting without a version: {greeting}"))?;
    let part = |k: &str| v.pointer(&format!("/qemu/{k}")).and_then(Value::as_u64);
    let (Some(major), Some(minor), Some(micro)) = (part("major"), part("minor"), part("micro")) else {
        return Err(format!("QMP greeting with an odd version: {greeting}"));
    };
    let package = v.get("package").and_then(Value::as_str).map(str::trim).unwrap_or("");
    Ok(if package.is_empty() {
        format!("{major}.{minor}.{micro}")
    } else {
        format!("{major}.{minor}.{micro} ({package})")
    })
}

/// What a completed migration reports.
#[derive(Debug, PartialEq)]
struct Completed {
    downtime_ms: f64,
    total_ms: f64,
    transferred_bytes: u64,
}

#[derive(Debug, PartialEq)]
enum MigrateStatus {
    /// setup, active, pre-switchover, device, …: the status string.
    InProgress(String),
    Completed(Completed),
}

/// Reads a `query-migrate` return value; `failed` and `cancelled` are errors.
fn parse_migrate_status(r: &Value) -> Result<MigrateStatus, String> {
    // `{}` (no status) right after `migrate` is possible before QEMU registers it: keep polling.
    let status = r.get("status").and_then(Value::as_str).unwrap_or("none");
    match status {
        "completed" => {
            let num = |p: &str| {
                r.pointer(p)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("query-migrate 'completed' without {p}: {r}"))
            };
            let transferred = r
                .pointer("/ram/transferred")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("query-migrate 'completed' without /ram/transferred: {r}"))?;
            Ok(MigrateStatus::Completed(Completed {
                downtime_ms: num("/downtime")?,
                total_ms: num("/total-time")?,
                transferred_bytes: transferred,
            }))
        }
        "failed" | "cancelled" => {
            let why = r.get("error-desc").and_then(Value::as_str).unwrap_or("QEMU gave no error-desc");
            Err(format!("the migration {status}: {why}"))
        }
        s => Ok(MigrateStatus::InProgress(s.to_string())),
    }
}

/// The guest: a flat multiboot (v1, a.out kludge) image loaded at 1 MiB, assembled from
/// [`GUEST_ASM`] (`as --64` then `ld -m elf_x86_64 -Ttext=0x100000 --oformat binary`; the test
/// `guest_matches_its_source` checks the two agree wherever binutils is installed).
#[rustfmt::skip]
const GUEST: &[u8] = &[
    0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x30, 0x02, 0x10, 0x00, 0x00, 0x84, 0x10, 0x00, 0x20, 0x00, 0x10, 0x00,
    0xfa, 0x89, 0xdd, 0x0f, 0x01, 0x15, 0x18, 0x02, 0x10, 0x00, 0xea, 0x31, 0x00, 0x10, 0x00, 0x08,
    0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x84, 0x10, 0x00,
    0xbf, 0x00, 0x30, 0x10, 0x00, 0xb8, 0x83, 0x00, 0x00, 0x00, 0xb9, 0x00, 0x08, 0x00, 0x00, 0x89,
    0x07, 0xc7, 0x47, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x20, 0x00, 0x83, 0xc7, 0x08,
    0xe2, 0xed, 0xbf, 0x00, 0x20, 0x10, 0x00, 0xb8, 0x03, 0x30, 0x10, 0x00, 0xb9, 0x04, 0x00, 0x00,
    0x00, 0x89, 0x07, 0xc7, 0x47, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x10, 0x00, 0x00, 0x83,
    0xc7, 0x08, 0xe2, 0xed, 0xc7, 0x05, 0x00, 0x10, 0x10, 0x00, 0x03, 0x20, 0x10, 0x00, 0xc7, 0x05,
    0x04, 0x10, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22,
    0xe0, 0xb8, 0x00, 0x10, 0x10, 0x00, 0x0f, 0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32,
    0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f,
    0x22, 0xc0, 0xea, 0xc9, 0x00, 0x10, 0x00, 0x18, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e,
    0xc0, 0x8e, 0xd0, 0x48, 0xc7, 0xc4, 0x00, 0x84, 0x10, 0x00, 0xbb, 0x00, 0x00, 0x00, 0x01, 0xf7,
    0x45, 0x00, 0x01, 0x00, 0x00, 0x00, 0x74, 0x0c, 0x8b, 0x5d, 0x08, 0xc1, 0xe3, 0x0a, 0x81, 0xc3,
    0x00, 0x00, 0x10, 0x00, 0xbf, 0x00, 0x00, 0x20, 0x00, 0x89, 0x3f, 0x81, 0xc7, 0x00, 0x10, 0x00,
    0x00, 0x39, 0xdf, 0x72, 0xf4, 0xbf, 0x00, 0x70, 0x10, 0x00, 0xb9, 0x00, 0x01, 0x00, 0x00, 0xb8,
    0x87, 0x01, 0x10, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47, 0x02, 0x18, 0x00, 0x66, 0xc7, 0x47,
    0x04, 0x00, 0x8e, 0xc7, 0x47, 0x08, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x47, 0x0c, 0x00, 0x00, 0x00,
    0x00, 0x89, 0xc2, 0xc1, 0xea, 0x10, 0x66, 0x89, 0x57, 0x06, 0x83, 0xc7, 0x10, 0xe2, 0xd5, 0x0f,
    0x01, 0x1c, 0x25, 0x26, 0x02, 0x10, 0x00, 0xb0, 0x11, 0xe6, 0x20, 0xe6, 0xa0, 0xb0, 0x20, 0xe6,
    0x21, 0xb0, 0x28, 0xe6, 0xa1, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x02, 0xe6, 0xa1, 0xb0, 0x01, 0xe6,
    0x21, 0xe6, 0xa1, 0xb0, 0xfe, 0xe6, 0x21, 0xb0, 0xff, 0xe6, 0xa1, 0xb0, 0x34, 0xe6, 0x43, 0xb0,
    0x9c, 0xe6, 0x40, 0xb0, 0x2e, 0xe6, 0x40, 0xbe, 0xd0, 0x01, 0x10, 0x00, 0xe8, 0x42, 0x00, 0x00,
    0x00, 0x31, 0xdb, 0xfb, 0xf4, 0xeb, 0xfc, 0x48, 0xc7, 0xc4, 0x00, 0x84, 0x10, 0x00, 0xb0, 0x20,
    0xe6, 0x20, 0xbf, 0x00, 0x00, 0x20, 0x00, 0xb9, 0x40, 0x00, 0x00, 0x00, 0xff, 0x07, 0x81, 0xc7,
    0x00, 0x10, 0x00, 0x00, 0xe2, 0xf6, 0xff, 0xc3, 0x89, 0xd8, 0x31, 0xd2, 0xb9, 0x14, 0x00, 0x00,
    0x00, 0xf7, 0xf1, 0x85, 0xd2, 0x75, 0xcc, 0xbe, 0xe1, 0x01, 0x10, 0x00, 0xe8, 0x02, 0x00, 0x00,
    0x00, 0xeb, 0xc0, 0x66, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xc3,
    0x56, 0x4d, 0x49, 0x2d, 0x47, 0x55, 0x45, 0x53, 0x54, 0x2d, 0x52, 0x45, 0x41, 0x44, 0x59, 0x0a,
    0x00, 0x76, 0x6d, 0x69, 0x2d, 0x67, 0x75, 0x65, 0x73, 0x74, 0x2d, 0x74, 0x69, 0x63, 0x6b, 0x0a,
    0x00, 0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0x1f, 0x00, 0xf8, 0x01, 0x10, 0x00, 0x66, 0x90,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x0f, 0x00, 0x70, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// The source of [`GUEST`] (read by the test that re-assembles it).
#[cfg_attr(not(test), allow(dead_code))]
const GUEST_ASM: &str = r##"# A tiny multiboot (v1, a.out kludge) guest for `qemu-system-x86_64 -kernel`. It switches to long
# mode (identity-mapped 4 GiB, 2 MiB pages), writes its address into the first word of every 4 KiB
# page of RAM above 2 MiB (so no page is a zero page QEMU could skip), prints VMI-GUEST-READY on
# COM1, then sleeps in `hlt`; on each 100 Hz PIT tick it increments one word in each of 64 pages
# (256 KiB at 2 MiB) and every 20 ticks prints "vmi-guest-tick".
# Build: as --64 -o g.o guest.S && ld -m elf_x86_64 -Ttext=0x100000 --oformat binary -o guest.bin g.o
        .text
        .globl _start
        .code32
_start:
mb_header:
        .long 0x1BADB002                      # magic
        .long 0x00010000                      # flags: a.out kludge (the addresses below)
        .long -(0x1BADB002 + 0x00010000)      # checksum
        .long mb_header                       # header_addr
        .long _start                          # load_addr
        .long image_end                       # load_end_addr
        .long bss_end                         # bss_end_addr
        .long entry                           # entry_addr
entry:
        cli
        mov     %ebx, %ebp                    # multiboot info
        lgdt    gdt_desc
        ljmp    $0x08, $1f
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $stack_top, %esp

        # page tables: pml4[0] -> pdpt; pdpt[0..3] -> pd0..3; pd: 2048 x 2 MiB pages
        mov     $pd, %edi
        mov     $0x83, %eax                   # present, writable, 2 MiB page
        mov     $2048, %ecx
2:      mov     %eax, (%edi)
        movl    $0, 4(%edi)
        add     $0x200000, %eax
        add     $8, %edi
        loop    2b
        mov     $pdpt, %edi
        mov     $pd + 3, %eax                 # present, writable
        mov     $4, %ecx
3:      mov     %eax, (%edi)
        movl    $0, 4(%edi)
        add     $4096, %eax
        add     $8, %edi
        loop    3b
        movl    $pdpt + 3, pml4
        movl    $0, pml4 + 4

        mov     %cr4, %eax
        or      $0x20, %eax                   # PAE
        mov     %eax, %cr4
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     $0xC0000080, %ecx             # EFER
        rdmsr
        or      $0x100, %eax                  # LME
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax             # PG
        mov     %eax, %cr0
        ljmp    $0x18, $long_mode

        .code64
long_mode:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $stack_top, %rsp

        # touch every page: RAM top is 1 MiB + mem_upper KiB (multiboot info, flags bit 0), else 16 MiB
        mov     $0x1000000, %ebx
        testl   $1, (%rbp)
        jz      4f
        mov     8(%rbp), %ebx
        shl     $10, %ebx
        add     $0x100000, %ebx
4:      mov     $0x200000, %edi
9:      mov     %edi, (%rdi)
        add     $4096, %edi
        cmp     %ebx, %edi
        jb      9b

        # IDT: all 256 vectors -> isr
        mov     $idt, %edi
        mov     $256, %ecx
        mov     $isr, %eax
5:      mov     %ax, (%rdi)
        movw    $0x18, 2(%rdi)
        movw    $0x8E00, 4(%rdi)
        movl    $0, 8(%rdi)
        movl    $0, 12(%rdi)
        mov     %eax, %edx
        shr     $16, %edx
        mov     %dx, 6(%rdi)
        add     $16, %edi
        loop    5b
        lidt    idt_desc

        # PICs: vectors 0x20/0x28, only IRQ0 unmasked
        mov     $0x11, %al
        out     %al, $0x20
        out     %al, $0xA0
        mov     $0x20, %al
        out     %al, $0x21
        mov     $0x28, %al
        out     %al, $0xA1
        mov     $0x04, %al
        out     %al, $0x21
        mov     $0x02, %al
        out     %al, $0xA1
        mov     $0x01, %al
        out     %al, $0x21
        out     %al, $0xA1
        mov     $0xFE, %al
        out     %al, $0x21
        mov     $0xFF, %al
        out     %al, $0xA1
        # PIT channel 0, mode 2, 100 Hz (1193182 / 11932)
        mov     $0x34, %al
        out     %al, $0x43
        mov     $11932 & 0xFF, %al
        out     %al, $0x40
        mov     $11932 >> 8, %al
        out     %al, $0x40

        mov     $msg_ready, %esi
        call    puts
        xor     %ebx, %ebx                    # tick counter
idle:   sti
        hlt
        jmp     idle

# Every interrupt lands here and never returns: the frame is dropped (no iretq), the PIC gets its
# EOI, one round of work is done, and the CPU goes idle again.
isr:    mov     $stack_top, %rsp
        mov     $0x20, %al
        out     %al, $0x20
        mov     $0x200000, %edi
        mov     $64, %ecx
6:      incl    (%rdi)
        add     $4096, %edi
        loop    6b
        inc     %ebx
        mov     %ebx, %eax
        xor     %edx, %edx
        mov     $20, %ecx
        div     %ecx
        test    %edx, %edx
        jnz     idle
        mov     $msg_tick, %esi
        call    puts
        jmp     idle

puts:   mov     $0x3F8, %dx
7:      lodsb
        test    %al, %al
        jz      8f
        out     %al, %dx
        jmp     7b
8:      ret

msg_ready: .asciz "VMI-GUEST-READY\n"
msg_tick:  .asciz "vmi-guest-tick\n"
        .align 8
gdt:    .quad 0
        .quad 0x00CF9A000000FFFF              # 0x08: 32-bit code
        .quad 0x00CF92000000FFFF              # 0x10: data
        .quad 0x00AF9A000000FFFF              # 0x18: 64-bit code
gdt_desc:
        .word 31
        .long gdt
        .align 8
        .word 0, 0, 0
idt_desc:
        .word 256*16-1
        .quad idt
image_end:

        .bss
        .align 4096
pml4:   .fill 4096, 1, 0
pdpt:   .fill 4096, 1, 0
pd:     .fill 4*4096, 1, 0
idt:    .fill 256*16, 1, 0
stack:  .fill 1024, 1, 0
stack_top:
bss_end:
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_version() {
        // A real QEMU 7.2 greeting.
        let g: Value = serde_json::from_str(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert_eq!(parse_greeting_version(&g).unwrap(), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)");
        let g = json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": ""}}});
        assert_eq!(parse_greeting_version(&g).unwrap(), "10.0.0");
        assert!(parse_greeting_version(&json!({"return": {}})).is_err());
        assert!(parse_greeting_version(&json!({"QMP": {"version": {"qemu": {"major": 7}}}})).is_err());
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(&json!({"return": {}})), Reply::Return(json!({})));
        assert_eq!(
            parse_reply(&json!({"error": {"class": "GenericError", "desc": "Migration is disabled"}})),
            Reply::Error("GenericError: Migration is disabled".into())
        );
        let ev = json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"});
        assert_eq!(parse_reply(&ev), Reply::Event);
        assert!(matches!(parse_reply(&json!({"weird": 1})), Reply::Error(_)));
    }

    #[test]
    fn migrate_status() {
        let done: Value = serde_json::from_str(COMPLETED).unwrap();
        assert_eq!(
            parse_migrate_status(&done).unwrap(),
            MigrateStatus::Completed(Completed { downtime_ms: 99.0, total_ms: 300.0, transferred_bytes: 65657033 })
        );
        let active =
            json!({"status": "active", "total-time": 20, "expected-downtime": 300, "ram": {"transferred": 1000}});
        assert_eq!(parse_migrate_status(&active).unwrap(), MigrateStatus::InProgress("active".into()));
        assert_eq!(parse_migrate_status(&json!({})).unwrap(), MigrateStatus::InProgress("none".into()));
        let failed = json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"});
        let e = parse_migrate_status(&failed).unwrap_err();
        assert!(e.contains("failed") && e.contains("Broken pipe"), "{e}");
        assert!(parse_migrate_status(&json!({"status": "cancelled"})).is_err());
        assert!(parse_migrate_status(&json!({"status": "completed", "downtime": 1})).is_err());
    }

    /// A real `query-migrate` return from QEMU 7.2 after a 64 MiB migration of [`GUEST`].
    const COMPLETED: &str = r#"{"downtime":99,"ram":{"dirty-pages-rate":0,"dirty-sync-count":3,"dirty-sync-missed-zero-copy":0,"downtime-bytes":38808498,"duplicate":582,"mbps":1759.7270903010033,"multifd-bytes":0,"normal":15997,"normal-bytes":65523712,"page-size":4096,"pages-per-second":32710,"postcopy-bytes":0,"postcopy-requests":0,"precopy-bytes":26848535,"remaining":0,"skipped":0,"total":67641344,"transferred":65657033},"setup-time":1,"status":"completed","total-time":300}"#;

    #[test]
    fn guest_is_a_multiboot_image() {
        let word = |at: usize| u32::from_le_bytes(GUEST[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), 0x1BAD_B002, "multiboot magic at the start");
        assert_eq!(word(0).wrapping_add(word(4)).wrapping_add(word(8)), 0, "checksum");
        assert_eq!(word(4) & 0x0001_0000, 0x0001_0000, "a.out kludge: load addresses given");
        let (header, load, load_end, bss_end, entry) = (word(12), word(16), word(20), word(24), word(28));
        assert_eq!((header, load), (0x10_0000, 0x10_0000));
        assert_eq!(load_end - load, u32::try_from(GUEST.len()).unwrap());
        assert!(bss_end >= load_end && bss_end < 0x20_0000, "bss below the 2 MiB the guest dirties");
        assert!(entry > header && entry < load_end);
        assert!(GUEST.windows(READY_MARKER.len()).any(|w| w == READY_MARKER.as_bytes()));
        assert!(GUEST.windows(TICK_MARKER.len()).any(|w| w == TICK_MARKER.as_bytes()));
    }

    /// Re-assembles [`GUEST_ASM`] when binutils is here and compares it with [`GUEST`].
    #[test]
    fn guest_matches_its_source() {
        let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        if !have("as") || !have("ld") {
            eprintln!("skipped: no binutils (as, ld) to assemble the guest with");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vmi-qemu-guest-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("guest.S"), GUEST_ASM).unwrap();
        let ok = |c: &mut Command| c.current_dir(&dir).status().unwrap().success();
        assert!(ok(Command::new("as").args(["--64", "-o", "guest.o", "guest.S"])));
        assert!(ok(Command::new("ld").args([
            "-m",
            "elf_x86_64",
            "-Ttext=0x100000",
            "--oformat",
            "binary",
            "-o",
            "guest.bin",
            "guest.o"
        ])));
        let built = fs::read(dir.join("guest.bin")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(built == GUEST, "GUEST is stale: rebuild it from GUEST_ASM");
    }

    #[test]
    fn the_linux_initramfs_is_a_newc_archive_the_kernel_reads() {
        let archive = initramfs(b"BUSYBOX", "#!/bin/busybox sh\necho hi\n");
        // Walk it as the kernel does: header, name, padding, data, padding; to the trailer.
        let mut at = 0;
        let mut names = Vec::new();
        loop {
            let header = &archive[at..at + 110];
            assert_eq!(&header[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).expect("hex"), 16).expect("hex")
            };
            let (mode, size, rdev, namesize) = (field(1), field(6) as usize, (field(9), field(10)), field(11) as usize);
            let name = std::str::from_utf8(&archive[at + 110..at + 110 + namesize - 1]).expect("name").to_string();
            at = (at + 110 + namesize).div_ceil(4) * 4;
            let data = &archive[at..at + size];
            at = (at + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            match name.as_str() {
                "init" => assert!(data.starts_with(b"#!/bin/busybox sh") && mode == 0o100755),
                "bin/busybox" => assert_eq!(data, b"BUSYBOX"),
                "dev/console" => assert_eq!((mode, rdev), (0o020600, (5, 1))),
                _ => assert_eq!(mode, 0o040755, "{name} is a directory"),
            }
            names.push(name);
        }
        assert_eq!(at, archive.len());
        assert_eq!(names, ["bin", "dev", "proc", "tmp", "dev/console", "bin/busybox", "init"]);
    }
}
