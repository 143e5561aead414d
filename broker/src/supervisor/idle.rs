//! A worker that dies between jobs (an operator's kill, the OOM killer, a
//! seccomp kill in an idle thread): noticed while the scheduler is idle and
//! before every load and job, reaped, replaced; never charged to a job or
//! to the model it had loaded.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::error::describe_exit;
use super::{CrashCause, WorkerState, WorkerSupervisor};

impl WorkerSupervisor {
    /// Reaps a worker that exited while no job ran and records how it
    /// ended. No job is failed for it and it is not counted against the
    /// model it had loaded: it happened before any job started. Returns
    /// whether a worker was reaped.
    pub(super) fn reap_exited_worker(&mut self) -> bool {
        let exit = match self.worker.as_mut().map(|w| w.child.try_wait()) {
            Some(Ok(Some(status))) => describe_exit(status),
            Some(Err(e)) => format!("waitpid failed: {e}"),
            Some(Ok(None)) | None => return false,
        };
        let Some(mut worker) = self.worker.take() else {
            return false;
        };
        // Harmless on an exited child; a child waitpid could not judge must
        // not outlive this call.
        let _ = worker.child.kill();
        let _ = worker.child.wait();
        self.loaded = None;
        eprintln!(
            "weave-broker: worker (pid {}) exited between jobs: {exit}; starting another",
            worker.child.id()
        );
        self.schedule_restart();
        self.respawn_pending = true;
        let stats = worker.channel.stats();
        self.update(|s| {
            s.state = WorkerState::Restarting;
            s.worker_pid = None;
            s.loaded = None;
            s.last_exit = Some(exit.clone());
            s.last_crash = Some(CrashCause::Died(format!("{exit}, between jobs")));
            s.channel = Some(stats);
        });
        true
    }

    /// Between jobs (the scheduler calls it while idle): notices a worker
    /// that died, and starts the next one once the restart backoff has
    /// passed, so `status` tells the truth and the next job meets a live
    /// worker. Returns whether a worker was found dead (its model is gone).
    pub fn check_idle(&mut self) -> bool {
        let died = self.reap_exited_worker();
        if self.respawn_pending
            && !self.shut_down
            && Instant::now() >= self.not_before
            && self.ensure_running().is_ok()
        {
            self.respawn_pending = false;
        }
        died
    }
}
