//! What Seed VMI's tests share, so each test states what it waits for instead of how long it sleeps:
//!
//! - [`eventually`]: poll a condition until a deadline; a timeout names what was awaited.
//! - [`ChildGuard`]: a spawned process (and every process it starts) that never outlives its test, panic or not.
//! - [`scratch_dir`]: a fresh, empty directory per test and process.
//! - [`etcd::EtcdCluster`]: a real etcd cluster of several members, each on its own loopback address, or each in
//!   a network namespace of its own ([`netns::Net`]) where partitions are real.
//! - [`otlp`]: exported traces (OTLP JSON) read back as spans.
//!
//! A dev-dependency only: nothing here is linked into a shipped binary.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub mod etcd;
pub mod netns;
pub mod otlp;

/// Polls `check` until it returns true; panics after `within` with a message naming `what`.
///
/// For positive outcomes only ("the order arrived", "the phone resumed"): a test that must show that something did
/// *not* happen needs a step that provably ran (a placer round, an acknowledged input), not a wait.
pub async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(2);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        // Quick for fast conditions, gentle for slow ones.
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `future`, panicking with `what` if it does not finish within `within`.
pub async fn within<T>(within: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// A child process started in a process group of its own, killed with its whole group when dropped.
///
/// `vmi up` starts the control service, sites and proxies as its own children; killing only `vmi up` on a
/// panicking test would leave them running (and holding ports and data directories). Dropping the guard sends
/// SIGKILL to the group and reaps the leader, so nothing outlives the test.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> io::Result<ChildGuard> {
        use std::os::unix::process::CommandExt;
        let child = command.process_group(0).spawn()?;
        Ok(ChildGuard { child })
    }

    /// The process, for its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT to the leader (what Ctrl-C does) and waits up to `within` for it to exit; returns how it
    /// exited. Panics if it does not exit in time (the guard then kills the group when dropped).
    pub fn interrupt(&mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGINT);
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                Err(e) => panic!("waiting for process {}: {e}", self.id()),
            }
            assert!(Instant::now() < deadline, "process {} did not exit within {within:?} of SIGINT", self.id());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else { return };
        // SAFETY: kill(2) takes no pointers; the pid is our own child's.
        unsafe { libc::kill(pid, signal) };
    }
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard").field("pid", &self.id()).finish()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // The whole group, even after the leader exited: its children may still run. A group with no
            // member left answers ESRCH, which is fine.
            // SAFETY: kill(2) takes no pointers; a negative pid names our child's process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory for one test: `vmi-test-PID-NAME` under the system's temporary directory (whatever was
/// there from an earlier run with the same pid is removed).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmi-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating scratch directory {}: {e}", dir.display());
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let mut calls = 0;
        eventually(Duration::from_secs(5), "the third call", async || {
            calls += 1;
            calls == 3
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a condition that never holds")]
    async fn eventually_names_what_it_waited_for() {
        eventually(Duration::from_millis(30), "a condition that never holds", async || false).await;
    }

    #[test]
    fn a_dropped_guard_kills_the_children_of_its_process() {
        // A shell that starts a grandchild and waits for it: killing only the shell would leave the sleep.
        let mut guard = ChildGuard::spawn(
            Command::new("sh").args(["-c", "sleep 600 & echo $!; wait"]).stdout(std::process::Stdio::piped()),
        )
        .expect("sh starts");
        let mut line = String::new();
        let stdout = guard.child().stdout.take().expect("stdout");
        io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line).expect("grandchild pid");
        let grandchild: libc::pid_t = line.trim().parse().expect("a pid");
        drop(guard);
        // Dead is gone or a zombie (whether the reaper it was handed to reaps is not ours to know).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        };
        // SIGKILL is delivered asynchronously: give it a moment, then the grandchild must be dead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(), "the grandchild {grandchild} outlived the guard");
    }

    #[test]
    fn interrupt_returns_the_exit_status() {
        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("600")).expect("sleep starts");
        let status = guard.interrupt(Duration::from_secs(10));
        assert!(!status.success(), "killed by SIGINT: {status}");
    }

    #[test]
    fn scratch_dirs_start_empty() {
        let dir = scratch_dir("testkit-self");
        std::fs::write(dir.join("left-over"), b"x").expect("write");
        let again = scratch_dir("testkit-self");
        assert_eq!(dir, again);
        assert_eq!(std::fs::read_dir(&again).expect("read").count(), 0);
        let _ = std::fs::remove_dir_all(&again);
    }
}
