//! The seam between the scheduler and the worker supervisor. The scheduler
//! drives a [`JobRunner`]; production passes the
//! [`WorkerSupervisor`](crate::supervisor::WorkerSupervisor), the
//! scheduler's unit tests a scripted one. Both speak the supervisor's types,
//! so there is one vocabulary and no conversion at this seam.
#![forbid(unsafe_code)]

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use weave_common::worker_proto::WorkerGenerateParams;

use crate::supervisor::{Image, JobEvent, LoadInfo, SupervisorError, SupervisorHandle};

/// What the scheduler thread drives. Only that thread calls these methods,
/// one at a time.
pub trait JobRunner: Send {
    /// Makes `model_id` the resident model (unloading another one).
    fn load(&mut self, model_id: &str) -> Result<LoadInfo, SupervisorError>;
    fn unload(&mut self) -> Result<(), SupervisorError>;
    /// Runs one job; `on_event` sees each step and image, `cancel` is
    /// polled while waiting (the worker stops between steps). The images
    /// were checked against `params`.
    fn run_job(
        &mut self,
        job_id: u64,
        params: &WorkerGenerateParams,
        deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError>;
    /// Re-keys the channel; returns the new key generation.
    fn rotate_keys(&mut self) -> Result<u64, SupervisorError>;
    /// Lifts a quarantine; returns whether the model was quarantined.
    fn clear_quarantine(&mut self, model_id: &str) -> bool;
    /// The status view the connection threads read (never waits on a job).
    fn handle(&self) -> SupervisorHandle;
    /// Called while no job runs: notice a worker that died and start the
    /// next one. Returns whether the resident model was lost with it.
    fn check_idle(&mut self) -> bool {
        false
    }
    /// Stops the worker for good.
    fn shutdown(&mut self);
}
