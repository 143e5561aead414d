//! The production [`JobRunner`]: the worker supervisor
//! (`crate::supervisor`), configured from the broker's config.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use weave_common::config::{Config, Device};
use weave_common::proto::{ChannelDirection, ChannelStatsReport, SegmentStats};
use weave_common::worker_proto::{ModelEntry, WorkerGenerateParams};

use crate::runner::{JobRunner, RawImage, RunnerError, RunnerStatus, StatusSource, WorkerJob};
use crate::supervisor::{
    JobEvent, SupervisorConfig, SupervisorError, SupervisorHandle, SupervisorStatus,
    WorkerSupervisor,
};

/// libtorch's library folder as known when the broker was built (the worker
/// is linked against the same one); packages put it in `<prefix>/lib/weave`.
const BUILD_LIBTORCH_LIB: Option<&str> = option_env!("WEAVE_BUILD_LIBTORCH_LIB");

/// Why the worker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerSetupError {
    #[error(
        "the worker executable {0} is missing (nor in <prefix>/libexec/weave/); install \
         weave-worker next to weave-broker (cargo build --bins builds both)"
    )]
    MissingWorker(PathBuf),
    #[error("cannot locate the broker executable: {0}")]
    CurrentExe(std::io::Error),
}

/// `weave-worker` next to the running `weave-broker` (the build tree), or in
/// `<prefix>/libexec/weave/` (the packages: `/usr/bin/weave-broker` and
/// `/usr/libexec/weave/weave-worker`, so the worker is not on `$PATH`).
pub fn worker_executable() -> Result<PathBuf, WorkerSetupError> {
    let exe = std::env::current_exe().map_err(WorkerSetupError::CurrentExe)?;
    let sibling = exe.with_file_name("weave-worker");
    let libexec = exe
        .parent()
        .and_then(|bin| bin.parent())
        .map(|prefix| prefix.join("libexec/weave/weave-worker"));
    std::iter::once(sibling.clone())
        .chain(libexec)
        .find(|candidate| candidate.is_file())
        .ok_or(WorkerSetupError::MissingWorker(sibling))
}

fn library_dirs(worker: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = BUILD_LIBTORCH_LIB.map(PathBuf::from) {
        dirs.push(dir);
    }
    if let Some(prefix) = worker.parent().and_then(|bin| bin.parent()) {
        dirs.push(prefix.join("lib/weave"));
    }
    dirs.into_iter()
        .filter(|dir| dir.is_dir())
        .filter_map(|dir| dir.canonicalize().ok())
        .collect()
}

/// The supervisor configuration for `config`.
pub fn supervisor_config(config: &Config, worker: PathBuf) -> SupervisorConfig {
    let models = config
        .models
        .iter()
        .map(|model| ModelEntry {
            id: model.id.clone(),
            kind: model.kind,
            path: model.path.clone(),
        })
        .collect();
    let library_dirs = library_dirs(&worker);
    let mut supervisor = SupervisorConfig::new(worker, models);
    supervisor.library_dirs = library_dirs;
    supervisor.device = match config.worker.device {
        // The worker decides `auto` itself only where it can; CPU is the
        // safe reading until CUDA detection lives in the worker.
        Device::Auto => Device::Cpu,
        device @ (Device::Cpu | Device::Cuda(_)) => device,
    };
    supervisor.allow_degraded_sandbox = config.worker.allow_degraded_sandbox;
    supervisor.seccomp_debug = config.worker.seccomp_debug;
    supervisor.max_image_pixels =
        config.bounds.max_width as usize * config.bounds.max_height as usize;
    supervisor
}

/// Starts the supervisor; the worker itself starts on first use.
pub fn start(config: &Config) -> Result<Box<dyn JobRunner>, WorkerSetupError> {
    let worker = worker_executable()?;
    Ok(Box::new(SupervisedWorker::new(WorkerSupervisor::new(
        supervisor_config(config, worker),
    ))))
}

/// [`WorkerSupervisor`] behind the scheduler's [`JobRunner`] seam.
pub struct SupervisedWorker {
    supervisor: WorkerSupervisor,
}

impl SupervisedWorker {
    pub fn new(supervisor: WorkerSupervisor) -> Self {
        Self { supervisor }
    }
}

fn runner_error(error: &SupervisorError) -> RunnerError {
    match error {
        SupervisorError::Quarantined { .. } => RunnerError::Quarantined,
        SupervisorError::WorkerCrashed(_) => RunnerError::WorkerCrashed,
        SupervisorError::TimedOut => RunnerError::TimedOut,
        SupervisorError::Cancelled => RunnerError::Cancelled,
        SupervisorError::UnknownModel { .. } | SupervisorError::LoadFailed { .. } => {
            RunnerError::LoadFailed
        }
        SupervisorError::EngineError { .. } | SupervisorError::Unsupported { .. } => {
            RunnerError::Engine
        }
        SupervisorError::Spawn(_) | SupervisorError::Handshake(_) | SupervisorError::ShutDown => {
            RunnerError::Unavailable
        }
    }
}

fn log_failure(what: &str, error: &SupervisorError) -> RunnerError {
    // The broker's log (stderr / journal) gets the detail; callers get only
    // the typed code.
    eprintln!("weave-broker: worker {what} failed: {error}");
    runner_error(error)
}

impl JobRunner for SupervisedWorker {
    fn load(&mut self, model_id: &str) -> Result<(), RunnerError> {
        self.supervisor
            .load(model_id)
            .map(|_| ())
            .map_err(|error| log_failure("load", &error))
    }

    fn unload(&mut self) -> Result<(), RunnerError> {
        self.supervisor
            .unload()
            .map_err(|error| log_failure("unload", &error))
    }

    fn run_job(
        &mut self,
        job: &WorkerJob,
        deadline: Instant,
        on_progress: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<Vec<RawImage>, RunnerError> {
        let params = WorkerGenerateParams {
            model_id: job.model_id.clone(),
            prompt: job.prompt.clone(),
            negative_prompt: job.negative_prompt.clone(),
            width: job.width,
            height: job.height,
            steps: job.steps,
            guidance: job.guidance,
            seed: job.seed,
            scheduler: job.scheduler,
            batch: job.batch,
        };
        let mut on_event = |event: JobEvent| {
            if let JobEvent::Progress { step, total } = event {
                on_progress(step, total);
            }
        };
        let images = self
            .supervisor
            .run_job(job.job_id, &params, deadline, cancel, &mut on_event)
            .map_err(|error| match error {
                SupervisorError::Cancelled => RunnerError::Cancelled,
                other => log_failure("job", &other),
            })?;
        Ok(images
            .into_iter()
            .map(|image| RawImage {
                width: image.width,
                height: image.height,
                rgb: image.rgb,
            })
            .collect())
    }

    fn rotate_keys(&mut self) -> Result<(), RunnerError> {
        self.supervisor
            .rotate_keys()
            .map(|_| ())
            .map_err(|error| log_failure("key rotation", &error))
    }

    fn is_quarantined(&self, model_id: &str) -> bool {
        self.supervisor.handle().is_quarantined(model_id)
    }

    fn clear_quarantine(&mut self, model_id: &str) {
        self.supervisor.clear_quarantine(model_id);
    }

    fn status_source(&self) -> Arc<dyn StatusSource> {
        Arc::new(HandleStatus(self.supervisor.handle()))
    }

    fn shutdown(&mut self) {
        self.supervisor.shutdown();
    }
}

struct HandleStatus(SupervisorHandle);

impl StatusSource for HandleStatus {
    fn snapshot(&self) -> RunnerStatus {
        runner_status(&self.0.state())
    }
}

fn runner_status(status: &SupervisorStatus) -> RunnerStatus {
    let sandbox = match &status.sandbox {
        Some(report) => format!(
            "landlock {} (abi {}) + seccomp mode {}{}{}",
            report.landlock,
            report.landlock_abi,
            report.seccomp_mode,
            if report.seccomp_debug { " (debug)" } else { "" },
            if report.fully_enforced {
                ", enforced"
            } else {
                ", DEGRADED"
            }
        ),
        None => "not started".to_owned(),
    };
    let channel = match &status.channel {
        Some(stats) => ChannelStatsReport {
            key_generation: stats.key_generation,
            segments: vec![
                SegmentStats {
                    direction: ChannelDirection::BrokerToWorker,
                    slots: stats.slots_out,
                    slot_size: stats.slot_size_out,
                    write_seq: stats.next_send_seq,
                    read_seq: 0,
                    crc_failures: stats.sent.crc_failures,
                    tag_failures: stats.sent.tag_failures,
                    replays_rejected: stats.sent.replays_rejected,
                },
                SegmentStats {
                    direction: ChannelDirection::WorkerToBroker,
                    slots: stats.slots_in,
                    slot_size: stats.slot_size_in,
                    write_seq: 0,
                    read_seq: stats.next_recv_seq,
                    crc_failures: stats.received.crc_failures,
                    tag_failures: stats.received.tag_failures,
                    replays_rejected: stats.received.replays_rejected,
                },
            ],
        },
        None => ChannelStatsReport {
            key_generation: 0,
            segments: Vec::new(),
        },
    };
    RunnerStatus {
        state: status.state.into(),
        restarts: status.restarts,
        loaded_model: status.loaded.as_ref().map(|info| info.model_id.clone()),
        memory_bytes: status.loaded.as_ref().map_or(0, |info| info.memory_bytes),
        sandbox,
        channel,
        quarantined: status.quarantined.iter().cloned().collect(),
    }
}
