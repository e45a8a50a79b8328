//! [`Process`]: a child that never outlives its owner.

use std::process::{Child, Command, ExitStatus};

use crate::ClusterError;

/// A child process leading a process group of its own; the whole group is killed (SIGKILL) when this is dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> Result<Process, ClusterError> {
        use std::os::unix::process::CommandExt;
        let child = command
            .process_group(0)
            .spawn()
            .map_err(|e| ClusterError::io(format!("starting {:?}", command.get_program()), e))?;
        Ok(Process { child })
    }

    /// Its standard output, if it was piped (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The process id (also the group's).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes no pointers; a negative pid names our child's process group.
            unsafe { libc::kill(-pgid, signal) };
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}
