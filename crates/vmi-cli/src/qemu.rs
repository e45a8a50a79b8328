//! The QEMU/KVM side of `vmi bench migrate`: live-migrates a real KVM guest of the same memory size
//! as the phone, over loopback, so the two migrations can be compared side by side.
//!
//! The guest is Debian's cloud kernel (`linux-image-cloud-amd64`, from /boot) and an initramfs that
//! holds only a static busybox and an `/init` that mounts proc/sys/dev, prints a marker and then
//! loops rewriting 256 KiB of a tmpfs file from /dev/urandom with short sleeps: alive and dirtying a
//! little memory, like an idle phone. The initramfs (newc cpio) is written by this module once and
//! cached in the temp dir.
//!
//! One run: start the source (`qemu-system-x86_64 -enable-kvm -m N …`) and a destination with the
//! same command line plus `-incoming tcp:127.0.0.1:PORT`; wait for the guest's marker on the
//! source's serial port; QMP `migrate`; poll `query-migrate` until `completed`; read `downtime`,
//! `total-time` and `ram.transferred`; check that the destination runs and its guest goes on
//! printing; kill both. Migration parameters are QEMU's defaults, untouched (see [`measure`]).
//!
//! Only std and serde_json: `std::process` for QEMU, `UnixStream` for QMP.

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
    /// `query-migrate` `downtime`: how long the guest was stopped, ms.
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
/// Printed by the guest's /init on the serial port once it runs.
const READY_MARKER: &str = "VMI-GUEST-READY";
/// Printed by the guest every 20 rounds of its dirtying loop (a few times a second).
const TICK_MARKER: &str = "vmi-guest-tick";
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);
/// After `completed`: how long the destination's guest may take to print again.
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The guest's /init. Bump `INIT_VERSION` when it changes (it names the cached initramfs).
const INIT_VERSION: u32 = 1;
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo VMI-GUEST-READY
i=0
while true; do
  dd if=/dev/urandom of=/tmp/dirty bs=4k count=64 conv=notrunc 2>/dev/null
  i=$((i + 1))
  if [ $((i % 20)) -eq 0 ]; then echo "vmi-guest-tick $i"; fi
  usleep 10000
done
"#;

/// Runs `runs` live migrations of a `memory_mib` guest over loopback and returns each, or Err(reason) saying plainly why it was skipped
/// (no /dev/kvm, no qemu-system-x86_64, no guest kernel in /boot, no busybox — each with the fix: "run scripts/setup-qemu").
///
/// Migration parameters are left at QEMU's defaults (nothing is sent with `migrate-set-parameters`);
/// for QEMU 7.2 those are `downtime-limit` 300 ms, `max-bandwidth` 128 MiB/s (134217728 B/s), no
/// capabilities (no xbzrle, no compression, no multifd, no postcopy, no auto-converge).
pub fn measure(memory_mib: u64, runs: usize) -> Result<Vec<QemuMigration>, String> {
    let kit = Kit::find()?;
    let initrd = initramfs(&kit.busybox)?;
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs {
        let m = migrate_once(&kit, &initrd, memory_mib)
            .map_err(|e| format!("QEMU live migration {} of {runs} ({memory_mib} MiB guest) failed: {e}", i + 1))?;
        out.push(m);
    }
    Ok(out)
}

/// What a run needs from the machine.
struct Kit {
    qemu: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
}

impl Kit {
    /// Checks the machine in the order a fix would go: KVM, QEMU, kernel, busybox.
    fn find() -> Result<Kit, String> {
        let kvm = Path::new("/dev/kvm");
        if !kvm.exists() {
            return Err(format!(
                "no /dev/kvm: this machine has no KVM (a VM without nested virtualisation, or the kvm module \
                 is not loaded), so there is no QEMU/KVM guest to compare with; on a KVM host, {FIX}"
            ));
        }
        if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(kvm) {
            return Err(format!(
                "/dev/kvm cannot be opened for read/write ({e}); add this user to group kvm \
                 (sudo adduser $USER kvm, then log in again) or run as root"
            ));
        }
        let qemu =
            find_in_path(QEMU).ok_or_else(|| format!("no {QEMU} on PATH (Debian package qemu-system-x86); {FIX}"))?;
        let kernel = find_kernel()?;
        let busybox = find_busybox()?;
        Ok(Kit { qemu, kernel, busybox })
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The newest /boot/vmlinuz-*cloud* (Debian's `linux-image-cloud-amd64`).
fn find_kernel() -> Result<PathBuf, String> {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-") && n.contains("cloud"))
                })
                .collect()
        })
        .unwrap_or_default();
    kernels.sort_by(|a, b| version_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    let Some(kernel) = kernels.pop() else {
        return Err(format!(
            "no guest kernel: no /boot/vmlinuz-*cloud* (Debian package linux-image-cloud-amd64); {FIX}"
        ));
    };
    if let Err(e) = fs::File::open(&kernel) {
        return Err(format!(
            "guest kernel {} is not readable ({e}); Debian installs kernels mode 0600: run as root or \
             sudo chmod a+r {}",
            kernel.display(),
            kernel.display()
        ));
    }
    Ok(kernel)
}

/// Compares strings with runs of digits taken as numbers ("6.1.10" > "6.1.9").
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, String)> {
        let mut v: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match v.last_mut() {
                Some((ld, chunk)) if *ld == d => chunk.push(c),
                _ => v.push((d, c.to_string())),
            }
        }
        v
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let o = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if o.is_ne() {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

/// A statically linked busybox (Debian's `busybox-static` installs /bin/busybox); a dynamic one
/// would not run in an initramfs without its libraries.
fn find_busybox() -> Result<PathBuf, String> {
    let mut dynamic = None;
    for p in ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox", "/usr/sbin/busybox"] {
        let p = Path::new(p);
        if let Ok(bytes) = fs::read(p) {
            match elf_is_static(&bytes) {
                Some(true) => return Ok(p.to_path_buf()),
                _ => dynamic = Some(p),
            }
        }
    }
    Err(match dynamic {
        Some(p) => format!(
            "{} is not a statically linked x86-64 busybox (the guest initramfs needs one: Debian package \
             busybox-static); {FIX}",
            p.display()
        ),
        None => format!("no busybox (the guest's userland: Debian package busybox-static); {FIX}"),
    })
}

/// Some(true) for an x86-64 ELF without a program interpreter (PT_INTERP), Some(false) for one with
/// it, None for anything else.
fn elf_is_static(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    // ELF magic, 64-bit, little-endian, EM_X86_64 (62)
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 || u16_at(b, 18)? != 62 {
        return None;
    }
    let phoff = usize::try_from(u64::from_le_bytes(b.get(32..40)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Writes (once) and returns the guest initramfs, cached in the temp dir under a name that changes
/// with the busybox binary and the init script.
fn initramfs(busybox: &Path) -> Result<PathBuf, String> {
    let meta = fs::metadata(busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    let mtime =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let dir = std::env::temp_dir().join("vmi-qemu-guest");
    let path = dir.join(format!("initramfs-v{INIT_VERSION}-{}-{mtime}.cpio", meta.len()));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let bb = fs::read(busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    let archive = newc_archive(&[
        Entry::Dir("bin"),
        Entry::Dir("sbin"),
        Entry::Dir("usr"),
        Entry::Dir("usr/bin"),
        Entry::Dir("usr/sbin"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("tmp"),
        Entry::Dir("dev"),
        // Before devtmpfs is mounted the kernel opens /dev/console for init's stdio.
        Entry::CharDev("dev/console", 5, 1),
        Entry::CharDev("dev/null", 1, 3),
        Entry::CharDev("dev/urandom", 1, 9),
        Entry::File("bin/busybox", 0o755, &bb),
        Entry::File("init", 0o755, INIT_SCRIPT.as_bytes()),
    ]);
    // Written aside and renamed, so concurrent runs never read half an archive.
    let tmp = dir.join(format!(".initramfs-{}.tmp", std::process::id()));
    fs::write(&tmp, &archive).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(path)
}

/// One member of the initramfs.
enum Entry<'a> {
    Dir(&'a str),
    /// name, permission bits, contents
    File(&'a str, u32, &'a [u8]),
    /// name, major, minor
    CharDev(&'a str, u32, u32),
}

/// A cpio archive in the "new ASCII" format (`cpio -H newc`), which is what the kernel unpacks as an
/// initramfs. Written here rather than by cpio(1) so device nodes need no root.
fn newc_archive(entries: &[Entry<'_>]) -> Vec<u8> {
    fn member(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,                                               // uid
            0,                                               // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 }, // nlink
            0,                                               // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),   // filesize
            0,                                               // devmajor
            0,                                               // devminor
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    }
    fn pad4(out: &mut Vec<u8>) {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let mut ino = 1;
    for e in entries {
        match e {
            Entry::Dir(name) => member(&mut out, ino, name, 0o040755, (0, 0), &[]),
            Entry::File(name, perm, data) => member(&mut out, ino, name, 0o100000 | perm, (0, 0), data),
            Entry::CharDev(name, major, minor) => member(&mut out, ino, name, 0o020600, (*major, *minor), &[]),
        }
        ino += 1;
    }
    member(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// Owns a run's QEMU processes and scratch dir: kills and reaps them on drop, whatever the path out.
struct Run {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Run {
    fn new() -> Result<Run, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmi-qemu-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Run { dir, children: Vec::new() })
    }

    /// Starts one QEMU; `role` names its files ("src", "dst"). Returns its index in `children`.
    fn spawn(
        &mut self,
        kit: &Kit,
        initrd: &Path,
        memory_mib: u64,
        role: &str,
        incoming: Option<u16>,
    ) -> Result<usize, String> {
        let qmp = self.dir.join(format!("{role}.qmp"));
        let serial = self.dir.join(format!("{role}.serial"));
        let stderr = fs::File::create(self.dir.join(format!("{role}.stderr")))
            .map_err(|e| format!("creating {role}.stderr: {e}"))?;
        let mut cmd = Command::new(&kit.qemu);
        cmd.arg("-enable-kvm")
            // The default CPU model: `-cpu host` aborts on some hosts ("failed to set MSR 0x10a").
            .args(["-m", &memory_mib.to_string()])
            .arg("-kernel")
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
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
            .map_err(|e| format!("starting {}: {e}", kit.qemu.display()))?;
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
            s += &format!("; stderr: {}", tail(&err, 5));
        }
        let serial = self.file(&format!("{role}.serial"));
        if !serial.trim().is_empty() {
            s += &format!("; guest serial: {}", tail(&serial, 5));
        }
        s
    }

    /// Waits until the `role` guest's serial output contains `marker` `count` times.
    fn wait_serial(
        &mut self,
        i: usize,
        role: &str,
        marker: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.file(&format!("{role}.serial")).matches(marker).count() >= count {
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

fn migrate_once(kit: &Kit, initrd: &Path, memory_mib: u64) -> Result<QemuMigration, String> {
    let mut run = Run::new()?;
    let port = free_port()?;
    let src = run.spawn(kit, initrd, memory_mib, "src", None)?;
    let dst = run.spawn(kit, initrd, memory_mib, "dst", Some(port))?;
    let boot_deadline = Instant::now() + BOOT_TIMEOUT;

    let mut src_qmp = run.qmp(src, "src", boot_deadline)?;
    let mut dst_qmp = run.qmp(dst, "dst", boot_deadline)?;
    let status = dst_qmp.execute("query-status", None)?;
    if status.get("status").and_then(Value::as_str) != Some("inmigrate") {
        return Err(format!("destination QEMU is not waiting for a migration: query-status {status}"));
    }
    // The guest has booted when its /init has printed the marker and a first tick (it is dirtying).
    let left = boot_deadline.saturating_duration_since(Instant::now());
    run.wait_serial(src, "src", READY_MARKER, 1, left)?;
    let left = boot_deadline.saturating_duration_since(Instant::now());
    run.wait_serial(src, "src", TICK_MARKER, 1, left)?;

    // No migrate-set-parameters / migrate-set-capabilities: QEMU's defaults (see `measure`).
    src_qmp.execute("migrate", Some(json!({ "uri": format!("tcp:127.0.0.1:{port}") })))?;
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    let done = loop {
        run.check_alive(src, "src")?;
        run.check_alive(dst, "dst")?;
        match parse_migrate_status(&src_qmp.execute("query-migrate", None)?)? {
            MigrateStatus::Completed(d) => break d,
            MigrateStatus::InProgress(s) => {
                if Instant::now() > deadline {
                    let _ = src_qmp.execute("migrate_cancel", None);
                    return Err(format!(
                        "migration still '{s}' after {} s (migration timeout)",
                        MIGRATE_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        sleep(Duration::from_millis(5));
    };

    // The destination must run the guest: `running`, and the guest prints a new tick there.
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        let s = dst_qmp.execute("query-status", None)?;
        match s.get("status").and_then(Value::as_str) {
            Some("running") => break,
            other => {
                run.check_alive(dst, "dst")?;
                if Instant::now() > deadline {
                    return Err(format!("destination still '{}' after the migration completed", other.unwrap_or("?")));
                }
            }
        }
        sleep(Duration::from_millis(10));
    }
    run.wait_serial(dst, "dst", TICK_MARKER, 1, RESUME_TIMEOUT)?;

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
            Err(format!("migration {status}: {why}"))
        }
        // "none" right after `migrate` is possible only before QEMU registers it; keep polling.
        s => Ok(MigrateStatus::InProgress(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_version() {
        let g: Value = serde_json::from_str(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert_eq!(parse_greeting_version(&g).unwrap(), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)");
        let g = json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": ""}}});
        assert_eq!(parse_greeting_version(&g).unwrap(), "10.0.0");
        assert!(parse_greeting_version(&json!({"return": {}})).is_err());
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(&json!({"return": {}})), Reply::Return(json!({})));
        assert_eq!(
            parse_reply(&json!({"error": {"class": "GenericError", "desc": "Migration is disabled"}})),
            Reply::Error("GenericError: Migration is disabled".into())
        );
        let ev =
            json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "active"}});
        assert_eq!(parse_reply(&ev), Reply::Event);
        assert!(matches!(parse_reply(&json!({"weird": 1})), Reply::Error(_)));
    }

    #[test]
    fn migrate_status() {
        // Trimmed from a real QEMU 7.2 `query-migrate` after completion.
        let done: Value = serde_json::from_str(
            r#"{"blocked": false, "status": "completed", "setup-time": 2, "downtime": 3, "total-time": 112,
                "ram": {"total": 67805184, "postcopy-requests": 0, "dirty-sync-count": 4, "multifd-bytes": 0,
                        "pages-per-second": 98304, "downtime-bytes": 0, "page-size": 4096, "remaining": 0,
                        "postcopy-bytes": 0, "mbps": 1251.6, "transferred": 17314529, "dirty-sync-missed-zero-copy": 0,
                        "precopy-bytes": 17314529, "duplicate": 12461, "dirty-pages-rate": 0, "skipped": 0,
                        "normal-bytes": 17141760, "normal": 4185}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_migrate_status(&done).unwrap(),
            MigrateStatus::Completed(Completed { downtime_ms: 3.0, total_ms: 112.0, transferred_bytes: 17314529 })
        );
        let active =
            json!({"status": "active", "total-time": 20, "expected-downtime": 300, "ram": {"transferred": 1000}});
        assert_eq!(parse_migrate_status(&active).unwrap(), MigrateStatus::InProgress("active".into()));
        assert_eq!(parse_migrate_status(&json!({})).unwrap(), MigrateStatus::InProgress("none".into()));
        let failed = json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"});
        let e = parse_migrate_status(&failed).unwrap_err();
        assert!(e.contains("failed") && e.contains("Broken pipe"), "{e}");
        assert!(parse_migrate_status(&json!({"status": "completed", "downtime": 1})).is_err());
    }

    #[test]
    fn newc() {
        let a =
            newc_archive(&[Entry::Dir("dev"), Entry::CharDev("dev/console", 5, 1), Entry::File("init", 0o755, b"hi")]);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // header (110) + "dev\0" (4) -> 114, padded to 116: the second header starts there
        assert_eq!(&a[116..122], b"070701");
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("TRAILER!!!"));
        assert!(s.contains("init\0"));
        // console: mode 020600, rdev 5:1
        assert!(s.contains("00002180"), "char device mode");
    }

    #[test]
    fn static_elf() {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        elf[32] = 64; // e_phoff
        elf[54] = 56; // e_phentsize
        elf[56] = 1; // e_phnum
        elf[64] = 1; // PT_LOAD
        assert_eq!(elf_is_static(&elf), Some(true));
        elf[64] = 3; // PT_INTERP
        assert_eq!(elf_is_static(&elf), Some(false));
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn kernel_versions() {
        let mut v = vec![
            "/boot/vmlinuz-6.1.0-9-cloud-amd64",
            "/boot/vmlinuz-6.1.0-56-cloud-amd64",
            "/boot/vmlinuz-6.1.0-10-cloud-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v.last(), Some(&"/boot/vmlinuz-6.1.0-56-cloud-amd64"));
    }
}
