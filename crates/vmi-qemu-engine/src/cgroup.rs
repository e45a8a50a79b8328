//! A Linux phone's control group: its QEMU's memory cap and CPU cap (no more cores than its virtual CPUs). The unified hierarchy (cgroup v2) where the
//! host has it, else the v1 `memory` and `cpu` hierarchies; a host where neither can be written runs phones
//! without (said once in the log).

use std::path::{Path, PathBuf};
use std::sync::Once;

/// The scheduler's period the CPU cap is counted in, µs.
const PERIOD_US: u64 = 100_000;

/// A QEMU's cgroup, removed when dropped (after its process is gone).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Makes cgroup `name` under `vmi-qemu` with `memory_max` bytes and at most `cpus` cores, or says why not.
    /// (Its weight stays the default: a guest starved of CPU under TCG falls behind its own input.)
    pub fn create(name: &str, memory_max: u64, cpus: u32) -> Result<Cgroup, String> {
        let quota = u64::from(cpus.max(1)) * PERIOD_US;
        let root = Path::new("/sys/fs/cgroup");
        let unified = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let made = if unified.contains("memory") && unified.contains("cpu") {
            let parent = root.join("vmi-qemu");
            mkdir(&parent)?;
            // Controllers reach a group only when every ancestor hands them down.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu");
            write(&parent.join("cgroup.subtree_control"), "+memory +cpu")?;
            let dir = parent.join(name);
            mkdir(&dir)?;
            let group = Cgroup { dirs: vec![dir.clone()] };
            write(&dir.join("memory.max"), &memory_max.to_string())?;
            write(&dir.join("memory.swap.max"), "0").ok();
            write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            group
        } else {
            let memory = root.join("memory/vmi-qemu").join(name);
            let cpu = root.join("cpu/vmi-qemu").join(name);
            for dir in [&memory, &cpu] {
                if let Some(parent) = dir.parent() {
                    mkdir(parent)?;
                }
                mkdir(dir)?;
            }
            let group = Cgroup { dirs: vec![memory.clone(), cpu.clone()] };
            write(&memory.join("memory.limit_in_bytes"), &memory_max.to_string())?;
            write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            group
        };
        Ok(made)
    }

    /// Fences the group's network off the site (see `network`): in the unified hierarchy (cgroup v2), the group
    /// itself or, on a host that mounts v2 beside v1, a group `name` made there too.
    pub fn fence_network(&mut self, name: &str) -> Result<(), String> {
        let unified = Path::new("/sys/fs/cgroup");
        let v2 = if unified.join("cgroup.controllers").exists() {
            self.dirs.first().filter(|d| d.starts_with(unified)).cloned().ok_or("no group in cgroup v2")?
        } else {
            let beside = unified.join("unified");
            if !beside.join("cgroup.procs").exists() {
                return Err("the host mounts no cgroup v2 hierarchy".into());
            }
            let parent = beside.join("vmi-qemu");
            mkdir(&parent)?;
            let dir = parent.join(name);
            mkdir(&dir)?;
            self.dirs.push(dir.clone());
            dir
        };
        crate::network::fence(&v2, &crate::network::blocked_networks()?)
    }

    /// Moves process `pid` (and its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Where the memory cap is written (for operators and tests).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Makes a cgroup for a QEMU, or logs once why phones run without one.
pub fn for_phone(name: &str, memory_max: u64, cpus: u32) -> Option<Cgroup> {
    static SAID: Once = Once::new();
    match Cgroup::create(name, memory_max, cpus) {
        Ok(group) => Some(group),
        Err(why) => {
            SAID.call_once(|| tracing::warn!("Linux phones run without a memory cap or CPU cap: {why}"));
            None
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot write {} to {}: {e}", value, path.display()))
}
