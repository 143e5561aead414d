//! Builds the [`JobRunner`] the daemon drives.
//!
//! TODO(integration): wire `crate::supervisor::WorkerSupervisor` here once
//! wip/workerproc lands. Until then the daemon starts without a worker and
//! every job fails with `WorkerCrashed` (typed, never a hang).

use std::sync::Arc;
use std::time::Instant;

use weave_common::proto::WorkerState;

use crate::runner::{JobRunner, RawImage, RunnerError, RunnerStatus, StatusSource, WorkerJob};
use crate::settings::Settings;

/// Starts the worker for `settings`.
pub fn start(_settings: &Settings) -> Result<Box<dyn JobRunner>, String> {
    Ok(Box::new(NoWorker))
}

struct NoWorker;

struct DownStatus;

impl StatusSource for DownStatus {
    fn snapshot(&self) -> RunnerStatus {
        RunnerStatus {
            state: WorkerState::Down,
            sandbox: "no worker".to_owned(),
            ..RunnerStatus::default()
        }
    }
}

impl JobRunner for NoWorker {
    fn load(&mut self, _model_id: &str) -> Result<(), RunnerError> {
        Err(RunnerError::Unavailable)
    }
    fn unload(&mut self) -> Result<(), RunnerError> {
        Ok(())
    }
    fn run_job(
        &mut self,
        _job: &WorkerJob,
        _deadline: Instant,
        _on_progress: &mut dyn FnMut(u32, u32),
        _cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<RawImage>, RunnerError> {
        Err(RunnerError::Unavailable)
    }
    fn rotate_keys(&mut self) -> Result<(), RunnerError> {
        Err(RunnerError::Unavailable)
    }
    fn is_quarantined(&self, _model_id: &str) -> bool {
        false
    }
    fn clear_quarantine(&mut self, _model_id: &str) {}
    fn status_source(&self) -> Arc<dyn StatusSource> {
        Arc::new(DownStatus)
    }
    fn shutdown(&mut self) {}
}
