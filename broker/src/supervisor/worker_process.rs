//! The running worker as the broker sees it: a pid it may wait for and
//! kill. The worker is the broker's own child (the spawner starts it with
//! `CLONE_PARENT`), so `waitpid` reports how it ended — a seccomp kill
//! reads as SIGSYS — and its pid cannot be reused before the broker reaps
//! it, which makes a SIGKILL by pid safe.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::spawn_syscalls;

/// A worker process that has not been reaped yet (or has, and remembers
/// how it ended).
#[derive(Debug)]
pub struct WorkerProcess {
    pid: libc::pid_t,
    ended: Option<ExitStatus>,
}

impl WorkerProcess {
    pub(super) fn new(pid: libc::pid_t) -> Self {
        Self { pid, ended: None }
    }

    pub fn id(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// How it ended, if it has; reaps it then.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(false)
    }

    /// Waits until it has ended.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.reap(true)? {
            Some(status) => Ok(status),
            None => Err(io::Error::other("waitpid returned without a status")),
        }
    }

    /// SIGKILL, unless it was reaped already (its pid may belong to another
    /// process by then).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        spawn_syscalls::kill_pid(self.pid)
    }

    fn reap(&mut self, block: bool) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.ended {
            return Ok(Some(status));
        }
        let ended = spawn_syscalls::wait_pid(self.pid, block)?.map(ExitStatus::from_raw);
        self.ended = ended;
        Ok(ended)
    }
}
