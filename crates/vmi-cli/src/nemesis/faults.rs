//! The faults `vmi nemesis` injects into a `vmi up --cluster`, and how each is healed.
//!
//! Every fault is real at the level it claims: a partition is a link taken down or blackhole routes in the
//! namespaces (traffic dropped, sockets left open), a pause is SIGSTOP, a kill is SIGKILL (`vmi up`'s supervisor
//! starts the process again), a full disk is the site's own filesystem (a tmpfs) filled to the last block, a
//! corrupt chunk is bytes flipped in a file of the site's checkpoint store.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// The kinds of fault, each injected in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a site running a phone (the supervisor starts it again).
    KillSite,
    /// SIGSTOP a site past its lease, then SIGCONT.
    PauseSite,
    /// A site's link down: cut off from everyone.
    IsolateSite,
    /// A site cut off from the control replicas only.
    SiteFromControl,
    /// A site cut off from the other sites only (its standby copies, migrations).
    SiteFromSites,
    /// A site cut off from the terminals (the host) only.
    SiteFromTerminals,
    /// One etcd member cut off: the others keep the quorum.
    EtcdMinority,
    /// Two etcd members cut off: no quorum.
    EtcdNoQuorum,
    /// SIGKILL the leading control replica.
    KillLeader,
    /// A site's disk filled.
    DiskFull,
    /// A chunk of a site's checkpoint store corrupted.
    CorruptChunk,
}

impl FaultKind {
    /// Every kind, in the order a run cycles through them.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::KillSite,
        FaultKind::EtcdMinority,
        FaultKind::PauseSite,
        FaultKind::SiteFromSites,
        FaultKind::KillLeader,
        FaultKind::IsolateSite,
        FaultKind::CorruptChunk,
        FaultKind::SiteFromControl,
        FaultKind::EtcdNoQuorum,
        FaultKind::DiskFull,
        FaultKind::SiteFromTerminals,
    ];

    /// Its name in histories and reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillSite => "kill-site",
            FaultKind::PauseSite => "pause-site",
            FaultKind::IsolateSite => "isolate-site",
            FaultKind::SiteFromControl => "site-from-control",
            FaultKind::SiteFromSites => "site-from-sites",
            FaultKind::SiteFromTerminals => "site-from-terminals",
            FaultKind::EtcdMinority => "etcd-minority",
            FaultKind::EtcdNoQuorum => "etcd-no-quorum",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::DiskFull => "disk-full",
            FaultKind::CorruptChunk => "corrupt-chunk",
        }
    }

    /// How long it holds before it is healed: (shortest, longest). A pause outlasts the lease
    /// (`vmi_control_api::model::LEASE_MS`), so the site's phones fail over while it sleeps.
    pub fn hold(self) -> (Duration, Duration) {
        let ms = Duration::from_millis;
        match self {
            FaultKind::KillSite | FaultKind::KillLeader | FaultKind::CorruptChunk => (ms(0), ms(0)),
            FaultKind::PauseSite => (ms(3_500), ms(4_500)),
            FaultKind::EtcdNoQuorum => (ms(1_500), ms(4_000)),
            _ => (ms(1_000), ms(4_000)),
        }
    }
}

/// One simulated machine of the cluster (from `up.json`).
#[derive(Debug, Clone)]
pub struct Machine {
    /// `etcd-0`, `control`, `site-a`, …
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The host end of its link.
    pub link: String,
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Something undone when healed: what a fault changed.
#[derive(Debug)]
pub enum Change {
    /// A link taken down.
    LinkDown(String),
    /// A blackhole route to `ip` in namespace `netns` (`None`: the host's).
    Blackhole { netns: Option<String>, ip: Ipv4Addr },
    /// A stopped process.
    Stopped(u32),
    /// A file filling a disk.
    Filler(PathBuf),
}

impl Change {
    /// Undoes it (best effort: a process that died meanwhile needs no SIGCONT).
    pub fn heal(&self) -> Result<()> {
        match self {
            Change::LinkDown(link) => ip(&["link", "set", link, "up"]),
            Change::Blackhole { netns, ip: to } => {
                let route = format!("{to}/32");
                match netns {
                    Some(ns) => ip(&["-n", ns, "route", "del", "blackhole", &route]),
                    None => ip(&["route", "del", "blackhole", &route]),
                }
            }
            Change::Stopped(pid) => {
                signal(*pid, libc::SIGCONT);
                Ok(())
            }
            Change::Filler(path) => std::fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        }
    }
}

/// Takes `link` down.
pub fn link_down(link: &str) -> Result<Change> {
    ip(&["link", "set", link, "down"])?;
    Ok(Change::LinkDown(link.to_owned()))
}

/// Blackhole routes between `a` and each of `others`, both ways.
pub fn partition(a: &Machine, others: &[&Machine]) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for b in others {
        for (from, to) in [(a, *b), (*b, a)] {
            ip(&["-n", &from.netns, "route", "add", "blackhole", &format!("{}/32", to.ip)])?;
            changes.push(Change::Blackhole { netns: Some(from.netns.clone()), ip: to.ip });
        }
    }
    Ok(changes)
}

/// Blackhole routes between `a` and the host (where terminals run), both ways.
pub fn partition_from_host(a: &Machine, host: Ipv4Addr) -> Result<Vec<Change>> {
    ip(&["-n", &a.netns, "route", "add", "blackhole", &format!("{host}/32")])?;
    let inner = Change::Blackhole { netns: Some(a.netns.clone()), ip: host };
    if let Err(e) = ip(&["route", "add", "blackhole", &format!("{}/32", a.ip)]) {
        let _ = inner.heal();
        return Err(e);
    }
    Ok(vec![inner, Change::Blackhole { netns: None, ip: a.ip }])
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes no pointers.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The pid of the process of this program (`vmi`, under whatever name it was installed or copied as) whose
/// arguments include every one of `args`, if one runs.
pub fn pid_with_args(args: &[&str]) -> Option<u32> {
    let exe = std::env::current_exe().ok()?;
    let program = exe.file_name()?.to_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // The program itself, not an `ip netns exec` about to become it.
        let ours = argv.first().is_some_and(|p| Path::new(p).file_name() == Some(program.as_os_str()));
        if ours && args.iter().all(|a| argv.iter().any(|v| v == a)) {
            return Some(pid);
        }
    }
    None
}

/// Fills the filesystem holding `dir` with one file, to the last block; the file is the change.
pub fn fill_disk(dir: &Path) -> Result<Change> {
    let path = dir.join("nemesis-filler");
    let free = free_bytes(dir)?;
    let file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    let change = Change::Filler(path.clone());
    // fallocate takes the blocks at once (tmpfs supports it); what it leaves is written over below.
    let len = libc::off_t::try_from(free).unwrap_or(libc::off_t::MAX);
    // SAFETY: fallocate(2) on a file descriptor this function owns.
    let _ = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, len) };
    let mut file = file;
    let block = vec![0u8; 64 << 10];
    while free_bytes(dir)? > 0 {
        if std::io::Write::write_all(&mut file, &block).is_err() {
            break;
        }
    }
    Ok(change)
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).context("a path without NUL")?;
    // SAFETY: statvfs fills the struct it is given; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Flips bytes in the middle of one chunk of the checkpoint store under `site_dir` (picked by `pick`); returns
/// the chunk's path, or `None` if the store has no chunk yet.
pub fn corrupt_chunk(site_dir: &Path, pick: u64) -> Result<Option<PathBuf>> {
    let mut chunks = Vec::new();
    // The checkpoint store's (which repairs a chunk from its copy on another site), not the state store's.
    collect_chunks(&site_dir.join("checkpoints"), &mut chunks, 0);
    chunks.sort();
    if chunks.is_empty() {
        return Ok(None);
    }
    let path = chunks[usize::try_from(pick % chunks.len() as u64).unwrap_or(0)].clone();
    let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.is_empty() {
        bytes.push(0xff);
    } else {
        let (mid, len) = (bytes.len() / 2, bytes.len());
        for b in &mut bytes[mid..(mid + 16).min(len)] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}

/// Files under any `chunks` directory below `dir`.
fn collect_chunks(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth < 8 {
            collect_chunks(&path, out, depth + 1);
        } else if path.parent().and_then(Path::file_name).is_some_and(|n| n == "chunks") {
            out.push(path);
        }
    }
}

/// Mounts a tmpfs of `size_mib` at `dir` (a site's own disk, which a fault can fill); unmounted when dropped.
#[derive(Debug)]
pub struct OwnDisk(PathBuf);

impl OwnDisk {
    /// Mounts it.
    pub fn mount(dir: &Path, size_mib: u64) -> Result<OwnDisk> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting a tmpfs at {} failed ({status})", dir.display());
        }
        Ok(OwnDisk(dir.to_owned()))
    }
}

impl Drop for OwnDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
