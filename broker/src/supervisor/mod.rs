//! `WorkerSupervisor`: starts `weave-worker`, talks to it over the encrypted
//! shm channel, and survives it (DESIGN.md invariant 9).
//!
//! - Every start: fresh segments and OS-random keys, the spawn contract of
//!   `docs/WORKER.md`, and a `Ready` handshake within a timeout.
//! - A blocking API for the broker's scheduler thread: [`WorkerSupervisor::load`],
//!   [`WorkerSupervisor::unload`], [`WorkerSupervisor::run_job`],
//!   [`WorkerSupervisor::rotate_keys`].
//! - Worker death (exit or signal, e.g. SIGSYS from seccomp), a protocol
//!   violation, or output that does not match the request: SIGKILL, reap, a
//!   typed error, respawn with exponential backoff on the next call. A model
//!   that crashes the worker `quarantine_after` times in a row is refused
//!   until an admin calls [`SupervisorHandle::clear_quarantine`].
//! - [`SupervisorHandle`] reads a snapshot that never waits on the worker,
//!   so status keeps answering while a job runs or the worker restarts.
//!
//! Everything the worker sends is untrusted: each message is checked against
//! what was asked (job id, dimensions, pixel count, image count, order).

mod config;
mod error;
mod idle;
mod job_check;
mod lifecycle;
mod operations;
mod spawn;
mod spawn_syscalls;
mod spawner;
mod status;
mod worker_process;
mod worker_stderr;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weave_common::proto::WorkerState;
use weave_common::worker_proto::channel::BrokerEndpoint;
use weave_common::worker_proto::{ModelEntry, WorkerGenerateParams};

use crate::job_runner::JobRunner;
pub use config::SupervisorConfig;
pub use error::{describe_exit, CrashCause, SupervisorError};
pub use job_check::{Image, JobEvent, Preview};
pub use spawner::{SpawnFds, Spawner, SpawnerError};
use status::lock;
pub use status::{LoadInfo, SupervisorHandle, SupervisorStatus, Unavailable};
pub use worker_process::WorkerProcess;

/// How often a wait for the worker also checks whether it is still alive.
const LIVENESS_TICK: Duration = Duration::from_millis(20);

struct RunningWorker {
    child: worker_process::WorkerProcess,
    channel: BrokerEndpoint,
}

/// Owns the worker process. Lives on one thread (the scheduler's): the
/// worker is set to die with that thread (PR_SET_PDEATHSIG).
pub struct WorkerSupervisor {
    config: SupervisorConfig,
    /// Forked when the supervisor was made (before the broker's seccomp
    /// boundary); every worker starts through it. An error here is
    /// reported by every start.
    spawner: Result<Spawner, String>,
    models: HashMap<String, ModelEntry>,
    status: Arc<Mutex<SupervisorStatus>>,
    worker: Option<RunningWorker>,
    /// Model the live worker has loaded.
    loaded: Option<String>,
    starts: u64,
    /// Key generation in use; rises at every start and every rotation, so
    /// no two keys the supervisor ever hands out share a generation.
    key_generation: u64,
    backoff: Duration,
    not_before: Instant,
    shut_down: bool,
    /// A worker died between jobs; [`WorkerSupervisor::check_idle`] starts
    /// the next one once the backoff allows.
    respawn_pending: bool,
    /// Models whose path did not exist when the live worker started: its
    /// Landlock ruleset cannot grant them, so loading one that is there now
    /// needs a fresh worker.
    missing_at_start: HashSet<String>,
}

/// How one exchange with the worker ended badly; turned into a
/// `SupervisorError` after the worker is dealt with.
enum WaitFailure {
    Deadline,
    Crash(CrashCause),
}

impl WorkerSupervisor {
    /// A supervisor with no worker yet; the first operation (or
    /// [`WorkerSupervisor::ensure_running`]) starts it. Forks the spawner
    /// (for `config.worker_exe` and `config.worker_env`), so the broker
    /// makes it before its seccomp boundary.
    pub fn new(config: SupervisorConfig) -> Self {
        let spawner =
            Spawner::start(&config.worker_exe, &config.worker_env).map_err(|e| e.to_string());
        let models = config
            .models
            .iter()
            .map(|m| (m.id.clone(), m.clone()))
            .collect();
        let backoff = config.backoff_initial;
        // Start-up check of every model's files (no weight is read): one
        // that cannot be used is listed unavailable, the others are served.
        let mut status = SupervisorStatus::new();
        status.unavailable = config
            .models
            .iter()
            .filter_map(|model| {
                files_problem(model).map(|reason| {
                    eprintln!(
                        "weave-broker: model {:?} is unavailable: {reason}; the other models \
                         are served",
                        model.id
                    );
                    let unavailable = Unavailable {
                        reason,
                        refuse_jobs: true,
                    };
                    (model.id.clone(), unavailable)
                })
            })
            .collect::<BTreeMap<_, _>>();
        Self {
            config,
            spawner,
            models,
            status: Arc::new(Mutex::new(status)),
            worker: None,
            loaded: None,
            starts: 0,
            key_generation: 0,
            backoff,
            not_before: Instant::now(),
            shut_down: false,
            respawn_pending: false,
            missing_at_start: HashSet::new(),
        }
    }

    pub fn handle(&self) -> SupervisorHandle {
        SupervisorHandle {
            status: Arc::clone(&self.status),
        }
    }

    pub fn state(&self) -> SupervisorStatus {
        lock(&self.status).clone()
    }

    pub fn clear_quarantine(&self, model_id: &str) -> bool {
        self.handle().clear_quarantine(model_id)
    }

    /// Pid of the live worker (for tests and diagnostics).
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(|w| w.child.id())
    }

    /// Pid of the spawner process (for tests and diagnostics).
    pub fn spawner_pid(&self) -> Option<u32> {
        self.spawner.as_ref().ok().map(Spawner::pid)
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut SupervisorStatus)) {
        f(&mut lock(&self.status));
    }

    pub(super) fn refresh_channel_stats(&self) {
        let stats = self.worker.as_ref().map(|w| w.channel.stats());
        self.update(|s| s.channel = stats);
    }
}

impl JobRunner for WorkerSupervisor {
    fn load(&mut self, model_id: &str) -> Result<LoadInfo, SupervisorError> {
        WorkerSupervisor::load(self, model_id)
    }

    fn unload(&mut self) -> Result<(), SupervisorError> {
        WorkerSupervisor::unload(self)
    }

    fn run_job(
        &mut self,
        job_id: u64,
        params: &WorkerGenerateParams,
        deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError> {
        WorkerSupervisor::run_job(self, job_id, params, deadline, cancel, on_event)
    }

    fn rotate_keys(&mut self) -> Result<u64, SupervisorError> {
        WorkerSupervisor::rotate_keys(self)
    }

    fn clear_quarantine(&mut self, model_id: &str) -> bool {
        WorkerSupervisor::clear_quarantine(self, model_id)
    }

    fn handle(&self) -> SupervisorHandle {
        WorkerSupervisor::handle(self)
    }

    fn check_idle(&mut self) -> bool {
        WorkerSupervisor::check_idle(self)
    }

    fn shutdown(&mut self) {
        WorkerSupervisor::shutdown(self)
    }
}

impl Drop for WorkerSupervisor {
    fn drop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// What is wrong with `model`'s files for an admin (path included), or
/// `None` when they pass [`weave_common::model_files::check`].
fn files_problem(model: &ModelEntry) -> Option<String> {
    weave_common::model_files::check(&model.path)
        .err()
        .map(|problem| format!("path {} {problem}", model.path.display()))
}

/// The broker creates the supervisor at start-up and moves it into its
/// scheduler thread; the handle goes to the connection threads.
#[allow(dead_code)]
fn _supervisor_is_send_and_the_handle_is_shareable() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync + Clone>() {}
    send::<WorkerSupervisor>();
    shared::<SupervisorHandle>();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_is_cleared_through_the_handle() {
        let sup = WorkerSupervisor::new(SupervisorConfig::new("/nonexistent".into(), Vec::new()));
        sup.update(|s| {
            s.quarantined.insert("m".into());
            s.crash_streaks.insert("m".into(), 3);
        });
        let h = sup.handle();
        assert!(h.is_quarantined("m"));
        assert!(h.clear_quarantine("m"));
        assert!(!h.is_quarantined("m"));
        assert!(!h.clear_quarantine("m"));
        assert!(sup.state().crash_streaks.is_empty());
    }

    #[test]
    fn a_model_whose_files_fail_the_check_is_unavailable_and_refused_without_a_worker() {
        let models = vec![
            ModelEntry {
                id: "gone".into(),
                kind: weave_common::config::ModelKind::Sd1,
                path: "/nonexistent/weave/model".into(),
                sha256: None,
            },
            ModelEntry {
                id: "good".into(),
                kind: weave_common::config::ModelKind::Sd1,
                path: concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits").into(),
                sha256: None,
            },
        ];
        let mut sup = WorkerSupervisor::new(SupervisorConfig::new(
            "/nonexistent/weave-worker".into(),
            models,
        ));
        let reason = sup.handle().unavailable_reason("gone").unwrap();
        assert!(
            reason.contains("/nonexistent/weave/model does not exist"),
            "{reason}"
        );
        assert_eq!(sup.handle().unavailable_reason("good"), None);
        let refused = sup.load("gone").unwrap_err();
        assert!(
            matches!(refused, SupervisorError::Unavailable { .. }),
            "{refused}"
        );
        assert_eq!(
            refused.error_code(),
            weave_common::proto::ErrorCode::ModelUnavailable
        );
        // Refused before any worker was asked.
        assert_eq!(sup.state().state, WorkerState::Down);
    }

    #[test]
    fn unknown_models_are_refused_before_any_spawn() {
        let mut sup =
            WorkerSupervisor::new(SupervisorConfig::new("/nonexistent".into(), Vec::new()));
        assert!(matches!(
            sup.load("nope"),
            Err(SupervisorError::UnknownModel { .. })
        ));
        assert_eq!(sup.state().state, WorkerState::Down);
    }

    #[test]
    fn a_missing_worker_executable_is_a_spawn_error_and_backs_off() {
        let models = vec![ModelEntry {
            id: "m".into(),
            kind: weave_common::config::ModelKind::Sd1,
            path: concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits").into(),
            sha256: None,
        }];
        let mut config = SupervisorConfig::new("/nonexistent/weave-worker".into(), models);
        config.backoff_initial = Duration::from_millis(1);
        let mut sup = WorkerSupervisor::new(config);
        assert!(matches!(sup.load("m"), Err(SupervisorError::Spawn(_))));
        assert_eq!(sup.state().state, WorkerState::Restarting);
    }
}
