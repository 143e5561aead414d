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

mod spawn;
mod sys;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use weave_common::config::Device;
use weave_common::proto::ErrorCode;
use weave_common::worker_proto::channel::{BrokerEndpoint, ChannelError, EndpointStats};
use weave_common::worker_proto::{
    FromWorker, ModelEntry, SandboxReport, ToWorker, WorkerFailure, WorkerGenerateParams,
};

/// How often a wait for the worker also checks whether it is still alive.
const LIVENESS_TICK: Duration = Duration::from_millis(20);
/// Slots per direction. Broker → worker messages are small; worker → broker
/// carries one image per message.
const SLOTS_TO_WORKER: u32 = 8;
const SLOTS_TO_BROKER: u32 = 4;
/// Largest broker → worker message (prompts are bounded far below this).
const MAX_TO_WORKER_MESSAGE: usize = 64 * 1024;
/// Room for the non-pixel fields of `FromWorker::Image`.
const IMAGE_MESSAGE_OVERHEAD: usize = 256;

/// How the supervisor starts and treats the worker; built by the broker
/// from its configuration.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Path of the `weave-worker` executable.
    pub worker_exe: PathBuf,
    /// The model table (id, kind, path), from the broker's config only.
    pub models: Vec<ModelEntry>,
    /// Never `Auto`: the broker resolves it (see `worker_runner`).
    pub device: Device,
    pub torch_threads: Option<u32>,
    pub allow_degraded_sandbox: bool,
    pub seccomp_debug: bool,
    pub seccomp_exec_mappings: bool,
    /// libtorch/CUDA library folders the worker may read.
    pub library_dirs: Vec<PathBuf>,
    /// Environment of the worker (it starts from an empty one), e.g.
    /// `OMP_NUM_THREADS`. Never keys.
    pub worker_env: Vec<(OsString, OsString)>,
    /// Largest image the broker admits (`max_width × max_height`); sizes the
    /// worker → broker slots.
    pub max_image_pixels: usize,
    /// Time for a fresh worker to confine itself and say `Ready`.
    pub handshake_timeout: Duration,
    /// Time for a model load.
    pub load_timeout: Duration,
    /// Time for an acknowledgement (`Unloaded`, `RekeyAck`) or for a job to
    /// stop after a cancel.
    pub reply_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive crashes with a model loaded before it is quarantined.
    pub quarantine_after: u32,
}

impl SupervisorConfig {
    /// Sensible timings for a worker executable and model table.
    pub fn new(worker_exe: PathBuf, models: Vec<ModelEntry>) -> Self {
        Self {
            worker_exe,
            models,
            device: Device::Cpu,
            torch_threads: None,
            allow_degraded_sandbox: false,
            seccomp_debug: false,
            seccomp_exec_mappings: false,
            library_dirs: Vec::new(),
            worker_env: Vec::new(),
            max_image_pixels: 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
            load_timeout: Duration::from_secs(300),
            reply_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            quarantine_after: 3,
        }
    }
}

/// Why the worker was killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashCause {
    /// It exited or was killed by a signal (the text says which).
    Died(String),
    /// It broke the channel or message protocol.
    ProtocolViolation(String),
    /// Its output did not match the request.
    BadOutput(String),
    /// It did not answer in time outside a job (handshake, unload, rekey).
    Unresponsive(String),
}

impl std::fmt::Display for CrashCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashCause::Died(s) => write!(f, "worker died: {s}"),
            CrashCause::ProtocolViolation(s) => write!(f, "protocol violation: {s}"),
            CrashCause::BadOutput(s) => write!(f, "output does not match the request: {s}"),
            CrashCause::Unresponsive(s) => write!(f, "worker unresponsive: {s}"),
        }
    }
}

/// Errors of the supervisor's operations. [`SupervisorError::error_code`]
/// maps each to what the caller receives.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown model {model_id:?}")]
    UnknownModel { model_id: String },
    #[error("model {model_id:?} is quarantined after repeated worker crashes; clear it with `sshmctl quarantine-clear`")]
    Quarantined { model_id: String },
    #[error("loading model {model_id:?} failed: {reason}")]
    LoadFailed { model_id: String, reason: String },
    #[error("the worker was killed and will be restarted ({0})")]
    WorkerCrashed(CrashCause),
    #[error("the job ran past its deadline; the worker was killed and will be restarted")]
    TimedOut,
    #[error("the job was cancelled")]
    Cancelled,
    #[error("the engine failed: {reason}")]
    EngineError { reason: String },
    #[error("the engine does not support these parameters: {reason}")]
    Unsupported { reason: String },
    #[error("cannot start the worker ({0}); check worker_exe in the config and the broker log")]
    Spawn(String),
    #[error("the worker did not come up ({0}); see its stderr in the broker log")]
    Handshake(String),
    #[error("the supervisor is shut down")]
    ShutDown,
}

impl SupervisorError {
    /// What a client sees. Never carries paths, keys or internal ids.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            SupervisorError::UnknownModel { model_id } => ErrorCode::UnknownModel {
                model_id: model_id.clone(),
            },
            SupervisorError::Quarantined { .. } => ErrorCode::ModelQuarantined,
            SupervisorError::WorkerCrashed(_) => ErrorCode::WorkerCrashed,
            SupervisorError::TimedOut => ErrorCode::TimedOut,
            SupervisorError::Cancelled => ErrorCode::Cancelled,
            SupervisorError::ShutDown => ErrorCode::ShuttingDown,
            SupervisorError::LoadFailed { .. }
            | SupervisorError::EngineError { .. }
            | SupervisorError::Unsupported { .. }
            | SupervisorError::Spawn(_)
            | SupervisorError::Handshake(_) => ErrorCode::Internal,
        }
    }
}

/// Lifecycle of the worker process as status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerRunState {
    /// Spawned, waiting for `Ready`.
    Starting,
    Ready,
    /// Died or was killed; the next operation respawns it after the backoff.
    Restarting,
    /// Not started yet, or shut down.
    Down,
}

impl From<WorkerRunState> for weave_common::proto::WorkerState {
    fn from(s: WorkerRunState) -> Self {
        match s {
            WorkerRunState::Starting => Self::Starting,
            WorkerRunState::Ready => Self::Ready,
            WorkerRunState::Restarting => Self::Restarting,
            WorkerRunState::Down => Self::Down,
        }
    }
}

/// A loaded model as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadInfo {
    pub model_id: String,
    pub memory_bytes: u64,
    pub load_ms: u64,
    pub since: SystemTime,
}

/// A snapshot of the supervisor; cheap to clone, never waits on the worker.
#[derive(Debug, Clone)]
pub struct SupervisorStatus {
    pub state: WorkerRunState,
    /// Worker starts after the first.
    pub restarts: u32,
    pub worker_pid: Option<u32>,
    pub loaded: Option<LoadInfo>,
    pub sandbox: Option<SandboxReport>,
    /// How the last worker ended, e.g. `killed by signal 31 (SIGSYS)`.
    pub last_exit: Option<String>,
    pub last_crash: Option<CrashCause>,
    pub quarantined: BTreeSet<String>,
    /// Consecutive crashes per model since its last success.
    pub crash_streaks: BTreeMap<String, u32>,
    pub channel: Option<EndpointStats>,
    /// Job being run, if any.
    pub running_job: Option<u64>,
}

impl SupervisorStatus {
    fn new() -> Self {
        Self {
            state: WorkerRunState::Down,
            restarts: 0,
            worker_pid: None,
            loaded: None,
            sandbox: None,
            last_exit: None,
            last_crash: None,
            quarantined: BTreeSet::new(),
            crash_streaks: BTreeMap::new(),
            channel: None,
            running_job: None,
        }
    }
}

impl SupervisorStatus {
    /// The channel counters in the client protocol's shape (admin
    /// `segments` verb). The worker's side of each ring (what it consumed,
    /// what it published) is its own counter in shared memory: shown, not
    /// trusted.
    pub fn channel_report(&self) -> Option<weave_common::proto::ChannelStatsReport> {
        use weave_common::proto::{ChannelDirection, ChannelStatsReport, SegmentStats};
        let c = self.channel?;
        Some(ChannelStatsReport {
            key_generation: c.key_generation,
            segments: vec![
                SegmentStats {
                    direction: ChannelDirection::BrokerToWorker,
                    slots: c.slots_out,
                    slot_size: c.slot_size_out,
                    write_seq: c.next_send_seq,
                    read_seq: c.peer_consumed,
                    crc_failures: c.sent.crc_failures,
                    tag_failures: c.sent.tag_failures,
                    replays_rejected: c.sent.replays_rejected,
                },
                SegmentStats {
                    direction: ChannelDirection::WorkerToBroker,
                    slots: c.slots_in,
                    slot_size: c.slot_size_in,
                    write_seq: c.peer_published,
                    read_seq: c.next_recv_seq,
                    crc_failures: c.received.crc_failures,
                    tag_failures: c.received.tag_failures,
                    replays_rejected: c.received.replays_rejected,
                },
            ],
        })
    }
}

/// A thread-safe view of the supervisor for status and admin verbs.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    status: Arc<Mutex<SupervisorStatus>>,
}

fn lock(status: &Mutex<SupervisorStatus>) -> MutexGuard<'_, SupervisorStatus> {
    // A panic while holding the lock leaves a consistent snapshot (every
    // update is a plain field store), so poisoning is ignored.
    status.lock().unwrap_or_else(|p| p.into_inner())
}

impl SupervisorHandle {
    pub fn state(&self) -> SupervisorStatus {
        lock(&self.status).clone()
    }

    pub fn is_quarantined(&self, model_id: &str) -> bool {
        lock(&self.status).quarantined.contains(model_id)
    }

    /// Lifts a quarantine (admin verb); returns whether the model was
    /// quarantined. Its crash count starts again from zero.
    pub fn clear_quarantine(&self, model_id: &str) -> bool {
        let mut s = lock(&self.status);
        s.crash_streaks.remove(model_id);
        s.quarantined.remove(model_id)
    }
}

/// Events of a running job, in the order the worker produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The job's model had to be loaded first.
    ModelLoaded(LoadInfo),
    Progress {
        step: u32,
        total: u32,
    },
    /// Image `index` is done (the pixels are in the result).
    Image {
        index: u32,
    },
}

/// One output image: RGB8, row-major, checked against the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

struct RunningWorker {
    child: Child,
    channel: BrokerEndpoint,
}

/// Owns the worker process. Lives on one thread (the scheduler's): the
/// worker is set to die with that thread (PR_SET_PDEATHSIG).
pub struct WorkerSupervisor {
    config: SupervisorConfig,
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
}

/// How one exchange with the worker ended badly; turned into a
/// `SupervisorError` after the worker is dealt with.
enum WaitFailure {
    Deadline,
    Crash(CrashCause),
}

impl WorkerSupervisor {
    /// A supervisor with no worker yet; the first operation (or
    /// [`WorkerSupervisor::ensure_running`]) starts it.
    pub fn new(config: SupervisorConfig) -> Self {
        let models = config
            .models
            .iter()
            .map(|m| (m.id.clone(), m.clone()))
            .collect();
        let backoff = config.backoff_initial;
        Self {
            config,
            models,
            status: Arc::new(Mutex::new(SupervisorStatus::new())),
            worker: None,
            loaded: None,
            starts: 0,
            key_generation: 0,
            backoff,
            not_before: Instant::now(),
            shut_down: false,
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

    fn update(&self, f: impl FnOnce(&mut SupervisorStatus)) {
        f(&mut lock(&self.status));
    }

    fn refresh_channel_stats(&self) {
        let stats = self.worker.as_ref().map(|w| w.channel.stats());
        self.update(|s| s.channel = stats);
    }

    /// Starts the worker if none runs, waiting out the restart backoff.
    pub fn ensure_running(&mut self) -> Result<(), SupervisorError> {
        if self.shut_down {
            return Err(SupervisorError::ShutDown);
        }
        if self.worker.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if self.not_before > now {
            std::thread::sleep(self.not_before - now);
        }
        self.update(|s| s.state = WorkerRunState::Starting);
        let started = self.start_worker();
        if let Err(e) = &started {
            eprintln!("weave-broker: worker start failed: {e}");
            self.schedule_restart();
            self.update(|s| s.state = WorkerRunState::Restarting);
        }
        started
    }

    fn schedule_restart(&mut self) {
        self.not_before = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
    }

    fn slot_size_for(max_message: usize) -> Result<u32, SupervisorError> {
        weave_common::shm::RingGeometry::for_max_message(2, max_message)
            .map(|g| g.slot_size)
            .map_err(|e| SupervisorError::Spawn(format!("channel geometry: {e}")))
    }

    fn start_worker(&mut self) -> Result<(), SupervisorError> {
        let image_bytes = self.config.max_image_pixels.saturating_mul(3);
        let to_worker = weave_common::worker_proto::SegmentGeometry {
            segment_id: self.starts * 2 + 1,
            slot_count: SLOTS_TO_WORKER,
            slot_size: Self::slot_size_for(MAX_TO_WORKER_MESSAGE)?,
        };
        let to_broker = weave_common::worker_proto::SegmentGeometry {
            segment_id: self.starts * 2 + 2,
            slot_count: SLOTS_TO_BROKER,
            slot_size: Self::slot_size_for(image_bytes.saturating_add(IMAGE_MESSAGE_OVERHEAD))?,
        };
        self.key_generation += 1;
        let generation = self.key_generation;
        let first_start = self.starts == 0;
        self.starts += 1;
        let channel = BrokerEndpoint::create(to_worker, to_broker, generation)
            .map_err(|e| SupervisorError::Spawn(format!("channel setup: {e}")))?;
        let child = spawn::spawn_worker(&self.config, &channel)?;
        let pid = child.id();
        self.worker = Some(RunningWorker { child, channel });
        self.loaded = None;
        self.update(|s| {
            s.worker_pid = Some(pid);
            s.loaded = None;
            s.sandbox = None;
            if !first_start {
                s.restarts += 1;
            }
        });
        let deadline = Instant::now() + self.config.handshake_timeout;
        let sandbox = match self.wait_message(deadline) {
            Ok(FromWorker::Ready { sandbox }) => sandbox,
            Ok(other) => {
                let cause = CrashCause::ProtocolViolation(format!(
                    "expected Ready, got message kind {}",
                    other.kind()
                ));
                return Err(SupervisorError::Handshake(
                    self.kill_worker(cause).to_string(),
                ));
            }
            Err(WaitFailure::Deadline) => {
                let cause =
                    CrashCause::Unresponsive("no Ready within the handshake timeout".into());
                return Err(SupervisorError::Handshake(
                    self.kill_worker(cause).to_string(),
                ));
            }
            Err(WaitFailure::Crash(cause)) => {
                return Err(SupervisorError::Handshake(
                    self.kill_worker(cause).to_string(),
                ));
            }
        };
        if !sandbox.fully_enforced && !self.config.allow_degraded_sandbox {
            let cause = CrashCause::ProtocolViolation(format!(
                "worker reported a degraded sandbox: {sandbox:?}"
            ));
            return Err(SupervisorError::Handshake(
                self.kill_worker(cause).to_string(),
            ));
        }
        self.update(|s| {
            s.state = WorkerRunState::Ready;
            s.sandbox = Some(sandbox);
        });
        self.refresh_channel_stats();
        Ok(())
    }

    /// Waits for the next worker message until `deadline`, watching the
    /// process. Channel and decode errors are protocol violations.
    fn wait_message(&mut self, deadline: Instant) -> Result<FromWorker, WaitFailure> {
        let Some(worker) = self.worker.as_mut() else {
            return Err(WaitFailure::Crash(CrashCause::Died("no worker".into())));
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitFailure::Deadline);
            }
            match worker.channel.recv(LIVENESS_TICK.min(deadline - now)) {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => return Err(WaitFailure::Crash(classify_channel_error(e))),
            }
            match worker.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(WaitFailure::Crash(CrashCause::Died(describe_exit(status))))
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(WaitFailure::Crash(CrashCause::Died(format!(
                        "waitpid failed: {e}"
                    ))))
                }
            }
        }
    }

    /// SIGKILL + reap, record the crash, count it against the loaded model,
    /// schedule the restart. Returns the cause for the error.
    fn kill_worker(&mut self, cause: CrashCause) -> CrashCause {
        let Some(mut worker) = self.worker.take() else {
            return cause;
        };
        // Kill first even if it already exited: kill on a reaped-but-unwaited
        // child is harmless, and a live one must not outlive this call.
        let _ = worker.child.kill();
        let exit = match worker.child.wait() {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be reaped: {e}"),
        };
        let crashed_model = self.loaded.take();
        eprintln!(
            "weave-broker: worker (pid {}) stopped: {cause}; {exit}",
            worker.child.id()
        );
        self.schedule_restart();
        let quarantine_after = self.config.quarantine_after;
        let stats = worker.channel.stats();
        self.update(|s| {
            s.state = WorkerRunState::Restarting;
            s.worker_pid = None;
            s.loaded = None;
            s.last_exit = Some(exit);
            s.last_crash = Some(cause.clone());
            s.channel = Some(stats);
            s.running_job = None;
            if let Some(model) = crashed_model {
                let streak = s.crash_streaks.entry(model.clone()).or_insert(0);
                *streak += 1;
                if *streak >= quarantine_after {
                    eprintln!("weave-broker: model {model:?} quarantined after {streak} consecutive worker crashes");
                    s.quarantined.insert(model);
                }
            }
        });
        cause
    }

    fn crash(&mut self, cause: CrashCause) -> SupervisorError {
        SupervisorError::WorkerCrashed(self.kill_worker(cause))
    }

    fn wait_failure(
        &mut self,
        failure: WaitFailure,
        on_deadline: SupervisorError,
    ) -> SupervisorError {
        match failure {
            WaitFailure::Deadline => {
                self.kill_worker(CrashCause::Unresponsive("deadline passed".into()));
                on_deadline
            }
            WaitFailure::Crash(cause) => self.crash(cause),
        }
    }

    fn send(&mut self, msg: &ToWorker) -> Result<(), SupervisorError> {
        let result = match self.worker.as_mut() {
            Some(w) => w.channel.send(msg),
            None => return Err(self.crash(CrashCause::Died("no worker".into()))),
        };
        result.map_err(|e| {
            self.crash(CrashCause::ProtocolViolation(format!(
                "sending to the worker: {e}"
            )))
        })
    }

    fn note_success(&mut self, model_id: &str) {
        self.backoff = self.config.backoff_initial;
        self.update(|s| {
            s.crash_streaks.remove(model_id);
        });
    }

    fn check_model(&self, model_id: &str) -> Result<(), SupervisorError> {
        if !self.models.contains_key(model_id) {
            return Err(SupervisorError::UnknownModel {
                model_id: model_id.to_owned(),
            });
        }
        if lock(&self.status).quarantined.contains(model_id) {
            return Err(SupervisorError::Quarantined {
                model_id: model_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Loads `model_id` (unloading any other model first).
    pub fn load(&mut self, model_id: &str) -> Result<LoadInfo, SupervisorError> {
        self.check_model(model_id)?;
        self.ensure_running()?;
        self.send(&ToWorker::Load {
            model_id: model_id.to_owned(),
        })?;
        // Counted against the model from now on: a crash while loading is
        // the model's doing as much as one while generating.
        self.loaded = Some(model_id.to_owned());
        self.update(|s| s.loaded = None);
        let deadline = Instant::now() + self.config.load_timeout;
        let reply = match self.wait_message(deadline) {
            Ok(m) => m,
            Err(f) => return Err(self.wait_failure(f, SupervisorError::TimedOut)),
        };
        match reply {
            FromWorker::Loaded {
                model_id: id,
                memory_bytes,
                load_ms,
            } if id == model_id => {
                let info = LoadInfo {
                    model_id: id,
                    memory_bytes,
                    load_ms,
                    since: SystemTime::now(),
                };
                self.update(|s| s.loaded = Some(info.clone()));
                self.refresh_channel_stats();
                Ok(info)
            }
            FromWorker::Failed {
                job_id: None,
                failure,
            } => {
                self.loaded = None;
                self.refresh_channel_stats();
                match failure {
                    WorkerFailure::UnknownModel => Err(SupervisorError::UnknownModel {
                        model_id: model_id.to_owned(),
                    }),
                    WorkerFailure::LoadFailed { reason } => Err(SupervisorError::LoadFailed {
                        model_id: model_id.to_owned(),
                        reason: bounded(reason),
                    }),
                    other => Err(self.crash(CrashCause::ProtocolViolation(format!(
                        "unexpected failure {other:?} for a load"
                    )))),
                }
            }
            other => Err(self.crash(CrashCause::ProtocolViolation(format!(
                "expected Loaded for the requested model, got message kind {}",
                other.kind()
            )))),
        }
    }

    /// Unloads the model. Without a running worker there is nothing to do.
    pub fn unload(&mut self) -> Result<(), SupervisorError> {
        if self.worker.is_none() {
            self.loaded = None;
            self.update(|s| s.loaded = None);
            return Ok(());
        }
        self.send(&ToWorker::Unload)?;
        let deadline = Instant::now() + self.config.reply_timeout;
        match self.wait_message(deadline) {
            Ok(FromWorker::Unloaded) => {
                self.loaded = None;
                self.update(|s| s.loaded = None);
                self.refresh_channel_stats();
                Ok(())
            }
            Ok(other) => Err(self.crash(CrashCause::ProtocolViolation(format!(
                "expected Unloaded, got message kind {}",
                other.kind()
            )))),
            Err(f) => Err(self.wait_failure(f, SupervisorError::TimedOut)),
        }
    }

    /// Runs one job to completion, loading its model first if needed.
    /// `on_event` sees progress per step and each finished image; `cancel`
    /// is polled while waiting (the worker stops at the next step). Any
    /// mismatch between the output and `params` kills the worker.
    pub fn run_job(
        &mut self,
        job_id: u64,
        params: &WorkerGenerateParams,
        deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError> {
        self.check_model(&params.model_id)?;
        let image_len = params
            .image_len()
            .filter(|len| *len <= self.config.max_image_pixels.saturating_mul(3))
            .ok_or_else(|| SupervisorError::Unsupported {
                reason: "image larger than the configured maximum".into(),
            })?;
        if cancel.load(Ordering::Relaxed) {
            return Err(SupervisorError::Cancelled);
        }
        self.ensure_running()?;
        if self.loaded.as_deref() != Some(params.model_id.as_str()) {
            let info = self.load(&params.model_id)?;
            on_event(JobEvent::ModelLoaded(info));
        }
        self.send(&ToWorker::Generate {
            job_id,
            params: params.clone(),
        })?;
        self.update(|s| s.running_job = Some(job_id));
        let result = self.collect_job(job_id, params, image_len, deadline, cancel, on_event);
        self.update(|s| s.running_job = None);
        self.refresh_channel_stats();
        if result.is_ok() {
            self.note_success(&params.model_id);
        }
        result
    }

    fn collect_job(
        &mut self,
        job_id: u64,
        params: &WorkerGenerateParams,
        image_len: usize,
        deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError> {
        let mut images: Vec<Image> = Vec::new();
        let mut last_step = 0u32;
        let mut cancel_deadline: Option<Instant> = None;
        loop {
            if cancel_deadline.is_none() && cancel.load(Ordering::Relaxed) {
                self.send(&ToWorker::Cancel { job_id })?;
                cancel_deadline = Some(Instant::now() + self.config.reply_timeout);
            }
            // Poll in short slices so a cancel is forwarded promptly.
            let slice_end = (Instant::now() + LIVENESS_TICK * 5).min(deadline);
            let until = cancel_deadline.map_or(slice_end, |c| c.min(slice_end));
            let msg = match self.wait_message(until) {
                Ok(m) => m,
                Err(WaitFailure::Deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(
                            self.wait_failure(WaitFailure::Deadline, SupervisorError::TimedOut)
                        );
                    }
                    if cancel_deadline.is_some_and(|c| now >= c) {
                        return Err(
                            self.wait_failure(WaitFailure::Deadline, SupervisorError::Cancelled)
                        );
                    }
                    continue;
                }
                Err(f) => return Err(self.wait_failure(f, SupervisorError::TimedOut)),
            };
            let violation = |what: String| CrashCause::ProtocolViolation(what);
            match msg {
                FromWorker::Progress {
                    job_id: id,
                    step,
                    total,
                } => {
                    if id != job_id {
                        return Err(self.crash(violation(format!(
                            "progress for job {id} during job {job_id}"
                        ))));
                    }
                    if total != params.steps
                        || step == 0
                        || step > total
                        || step < last_step
                        || !images.is_empty()
                    {
                        return Err(self.crash(CrashCause::BadOutput(format!(
                            "progress {step}/{total} out of order for {} steps",
                            params.steps
                        ))));
                    }
                    last_step = step;
                    on_event(JobEvent::Progress { step, total });
                }
                FromWorker::Image {
                    job_id: id,
                    index,
                    width,
                    height,
                    rgb,
                } => {
                    if id != job_id {
                        return Err(self
                            .crash(violation(format!("image for job {id} during job {job_id}"))));
                    }
                    let expected_index = u32::try_from(images.len()).unwrap_or(u32::MAX);
                    let problem = if index != expected_index {
                        Some(format!("image index {index}, expected {expected_index}"))
                    } else if index >= params.batch {
                        Some(format!("more than the {} images requested", params.batch))
                    } else if width != params.width || height != params.height {
                        Some(format!(
                            "image {width}x{height}, requested {}x{}",
                            params.width, params.height
                        ))
                    } else if rgb.len() != image_len {
                        Some(format!(
                            "{} bytes of pixels, expected {image_len}",
                            rgb.len()
                        ))
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        return Err(self.crash(CrashCause::BadOutput(problem)));
                    }
                    images.push(Image { width, height, rgb });
                    on_event(JobEvent::Image { index });
                }
                FromWorker::Finished { job_id: id } => {
                    if id != job_id {
                        return Err(self.crash(violation(format!(
                            "finish for job {id} during job {job_id}"
                        ))));
                    }
                    if images.len() != usize::try_from(params.batch).unwrap_or(usize::MAX) {
                        return Err(self.crash(CrashCause::BadOutput(format!(
                            "{} images for a batch of {}",
                            images.len(),
                            params.batch
                        ))));
                    }
                    return Ok(images);
                }
                FromWorker::Failed {
                    job_id: Some(id),
                    failure,
                } if id == job_id => {
                    return Err(match failure {
                        WorkerFailure::Cancelled => SupervisorError::Cancelled,
                        WorkerFailure::EngineError { reason } => SupervisorError::EngineError {
                            reason: bounded(reason),
                        },
                        WorkerFailure::Unsupported { reason } => SupervisorError::Unsupported {
                            reason: bounded(reason),
                        },
                        WorkerFailure::NotLoaded | WorkerFailure::UnknownModel => {
                            // We loaded it ourselves: the worker lost track.
                            self.crash(violation(format!(
                                "worker claims {failure:?} for a loaded model"
                            )))
                        }
                        WorkerFailure::LoadFailed { .. } => {
                            self.crash(violation("load failure during a generation".into()))
                        }
                    });
                }
                other => {
                    return Err(self.crash(violation(format!(
                        "unexpected message kind {} during job {job_id}",
                        other.kind()
                    ))))
                }
            }
        }
    }

    /// Re-keys the channel (fresh OS-random keys, generation + 1) without
    /// restarting the worker; call between jobs. Without a running worker
    /// the next start uses fresh keys anyway.
    pub fn rotate_keys(&mut self) -> Result<u64, SupervisorError> {
        let rotated = match self.worker.as_mut() {
            None => return Ok(self.key_generation),
            Some(w) => w.channel.rotate_keys(),
        };
        let generation = match rotated {
            Ok(g) => {
                self.key_generation = g;
                g
            }
            Err(e) => {
                return Err(self.crash(CrashCause::ProtocolViolation(format!("sending Rekey: {e}"))))
            }
        };
        let deadline = Instant::now() + self.config.reply_timeout;
        match self.wait_message(deadline) {
            Ok(FromWorker::RekeyAck) => {
                self.refresh_channel_stats();
                Ok(generation)
            }
            Ok(other) => Err(self.crash(CrashCause::ProtocolViolation(format!(
                "expected RekeyAck, got message kind {}",
                other.kind()
            )))),
            Err(f) => Err(self.wait_failure(f, SupervisorError::TimedOut)),
        }
    }

    /// Asks the worker to exit, kills it if it does not within the reply
    /// timeout, and refuses further work.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.channel.send(&ToWorker::Shutdown);
            let deadline = Instant::now() + self.config.reply_timeout.min(Duration::from_secs(5));
            loop {
                match worker.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(LIVENESS_TICK),
                    _ => {
                        let _ = worker.child.kill();
                        let _ = worker.child.wait();
                        break;
                    }
                }
            }
        }
        self.loaded = None;
        self.update(|s| {
            s.state = WorkerRunState::Down;
            s.worker_pid = None;
            s.loaded = None;
        });
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

/// Worker-supplied text is capped before it reaches logs.
fn bounded(mut reason: String) -> String {
    const MAX: usize = 512;
    if reason.len() > MAX {
        let mut cut = MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

fn classify_channel_error(e: ChannelError) -> CrashCause {
    CrashCause::ProtocolViolation(format!("channel: {e}"))
}

/// `exited with status 3` / `killed by signal 31 (SIGSYS)`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => format!("ended with {status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSYS => "SIGSYS, a seccomp violation",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "other signal",
    }
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
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_described_with_the_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        let sigsys = describe_exit(ExitStatus::from_raw(libc::SIGSYS));
        assert!(
            sigsys.contains("signal 31") && sigsys.contains("seccomp"),
            "{sigsys}"
        );
    }

    #[test]
    fn errors_map_to_client_codes_without_details() {
        let crash = SupervisorError::WorkerCrashed(CrashCause::BadOutput("12 bytes".into()));
        assert_eq!(crash.error_code(), ErrorCode::WorkerCrashed);
        assert_eq!(SupervisorError::TimedOut.error_code(), ErrorCode::TimedOut);
        assert_eq!(
            SupervisorError::Cancelled.error_code(),
            ErrorCode::Cancelled
        );
        assert_eq!(
            SupervisorError::Quarantined {
                model_id: "m".into()
            }
            .error_code(),
            ErrorCode::ModelQuarantined
        );
        let load = SupervisorError::LoadFailed {
            model_id: "m".into(),
            reason: "/secret/path".into(),
        };
        assert_eq!(load.error_code(), ErrorCode::Internal);
    }

    #[test]
    fn worker_text_is_bounded() {
        let long = "é".repeat(1000);
        let b = bounded(long);
        assert!(b.len() <= 512 + '…'.len_utf8());
    }

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
    fn unknown_models_are_refused_before_any_spawn() {
        let mut sup =
            WorkerSupervisor::new(SupervisorConfig::new("/nonexistent".into(), Vec::new()));
        assert!(matches!(
            sup.load("nope"),
            Err(SupervisorError::UnknownModel { .. })
        ));
        assert_eq!(sup.state().state, WorkerRunState::Down);
    }

    #[test]
    fn a_missing_worker_executable_is_a_spawn_error_and_backs_off() {
        let models = vec![ModelEntry {
            id: "m".into(),
            kind: weave_common::config::ModelKind::Sd1,
            path: "/tmp".into(),
        }];
        let mut config = SupervisorConfig::new("/nonexistent/weave-worker".into(), models);
        config.backoff_initial = Duration::from_millis(1);
        let mut sup = WorkerSupervisor::new(config);
        assert!(matches!(sup.load("m"), Err(SupervisorError::Spawn(_))));
        assert_eq!(sup.state().state, WorkerRunState::Restarting);
    }
}
