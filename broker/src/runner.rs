//! The seam between the scheduler and whatever runs generation jobs: the
//! worker supervisor in production, a scripted runner in scheduler tests.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use weave_common::proto::{ChannelStatsReport, Scheduler, WorkerState};

/// A fully resolved job as the worker receives it (defaults applied, seed
/// chosen, bounds checked).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerJob {
    pub job_id: u64,
    pub model_id: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    pub seed: u64,
    pub scheduler: Scheduler,
    pub batch: u32,
}

/// Pixels as the worker returned them: untrusted until checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    pub width: u32,
    pub height: u32,
    /// RGB8, row-major.
    pub rgb: Vec<u8>,
}

/// How running something on the worker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    #[error("the worker died or violated the protocol")]
    WorkerCrashed,
    #[error("the job exceeded its wall-clock limit")]
    TimedOut,
    #[error("the job was cancelled")]
    Cancelled,
    #[error("the model is quarantined")]
    Quarantined,
    #[error("the worker could not load the model")]
    LoadFailed,
    #[error("the worker is not available")]
    Unavailable,
    #[error("the engine refused or failed the job")]
    Engine,
}

/// A non-blocking view of the worker, answered even mid-restart.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerStatus {
    pub state: WorkerState,
    pub restarts: u32,
    pub loaded_model: Option<String>,
    pub memory_bytes: u64,
    pub sandbox: String,
    pub channel: ChannelStatsReport,
    pub quarantined: Vec<String>,
}

impl Default for RunnerStatus {
    fn default() -> Self {
        Self {
            state: WorkerState::Down,
            restarts: 0,
            loaded_model: None,
            memory_bytes: 0,
            sandbox: String::new(),
            channel: ChannelStatsReport {
                key_generation: 0,
                segments: Vec::new(),
            },
            quarantined: Vec::new(),
        }
    }
}

/// Source of [`RunnerStatus`] snapshots that never waits for a job.
pub trait StatusSource: Send + Sync {
    fn snapshot(&self) -> RunnerStatus;
}

/// What the scheduler thread drives. Only that thread calls these methods,
/// one at a time.
pub trait JobRunner: Send {
    /// Makes `model_id` the resident model (unloading another one).
    fn load(&mut self, model_id: &str) -> Result<(), RunnerError>;
    fn unload(&mut self) -> Result<(), RunnerError>;
    /// Runs one job. `on_progress(step, total)` after every step;
    /// `cancel` is polled while waiting; the worker stops between steps.
    fn run_job(
        &mut self,
        job: &WorkerJob,
        deadline: Instant,
        on_progress: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<Vec<RawImage>, RunnerError>;
    /// Re-keys the channel.
    fn rotate_keys(&mut self) -> Result<(), RunnerError>;
    /// Whether a job for `model_id` must be refused.
    fn is_quarantined(&self, model_id: &str) -> bool;
    fn clear_quarantine(&mut self, model_id: &str);
    /// A handle the server threads use for status.
    fn status_source(&self) -> Arc<dyn StatusSource>;
    /// Stops the worker for good.
    fn shutdown(&mut self);
}
