//! The broker's job state and the one thread that feeds the worker.
//!
//! Connection threads call [`Broker`] methods (submit, cancel, list, admin
//! commands); the scheduler thread pops jobs in fair order, loads models on
//! demand, unloads them when idle, and streams each job's events back to its
//! connection through a channel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weave_common::proto::{
    ErrorCode, GenerateRequest, JobInfo, JobState, LoadedModel, Mode, ModelInfo, Response,
    StatusReport,
};

use crate::admission::{AdmissionError, AdmissionQueue, Owner, RateLimiter};
use crate::audit::{AuditLog, AuditRecord, Severity};
use crate::output;
use crate::runner::{JobRunner, RunnerError, RunnerStatus, StatusSource, WorkerJob};
use crate::settings::Config;
use crate::validation;

/// A queued job's payload.
#[derive(Debug)]
struct PendingJob {
    job: WorkerJob,
    events: Sender<Response>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

#[derive(Debug, Clone)]
struct RunningJob {
    job_id: u64,
    owner: Owner,
    model_id: String,
    submitted: Instant,
    cancel: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
struct LoadedState {
    model_id: String,
    since: Instant,
    last_use: Instant,
}

/// Admin operations the scheduler thread performs between jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Load(String),
    Unload,
    RotateKeys,
    ClearQuarantine(String),
}

struct State {
    queue: AdmissionQueue<PendingJob>,
    rate: RateLimiter,
    running: Option<RunningJob>,
    loaded: Option<LoadedState>,
    pinned: HashSet<String>,
    commands: Vec<(Command, Sender<Result<(), ErrorCode>>)>,
    draining: bool,
    shutting_down: bool,
    next_job_id: u64,
    /// Rough duration of a job, for `Busy` retry hints.
    recent_job_ms: u32,
}

/// Shared broker state. Cheap to clone through `Arc`.
pub struct Broker {
    settings: Config,
    mode: Mode,
    started: Instant,
    audit: Arc<AuditLog>,
    state: Mutex<State>,
    wake: Condvar,
    status: Arc<dyn StatusSource>,
    /// Connections currently streaming a job's events; shutdown waits (a
    /// little) for them to deliver their final event.
    streams: std::sync::atomic::AtomicUsize,
}

/// A job accepted by [`Broker::submit`].
pub struct Admission {
    pub job_id: u64,
    pub position: u32,
    pub events: Receiver<Response>,
}

impl Broker {
    pub fn new(
        settings: Config,
        mode: Mode,
        audit: Arc<AuditLog>,
        status: Arc<dyn StatusSource>,
    ) -> Arc<Self> {
        let limits = &settings.limits;
        let state = State {
            queue: AdmissionQueue::new(limits.queue_depth, limits.per_client_queue_depth),
            rate: RateLimiter::new(limits.rate_per_minute, limits.rate_burst),
            running: None,
            loaded: None,
            pinned: HashSet::new(),
            commands: Vec::new(),
            draining: false,
            shutting_down: false,
            next_job_id: 1,
            recent_job_ms: 1000,
        };
        Arc::new(Self {
            settings,
            mode,
            started: Instant::now(),
            audit,
            state: Mutex::new(state),
            wake: Condvar::new(),
            status,
            streams: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep
        // serving rather than take the broker down.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn settings(&self) -> &Config {
        &self.settings
    }

    /// Validates and admits a job. Nothing is queued on error.
    pub fn submit(&self, uid: u32, request: &GenerateRequest) -> Result<Admission, ErrorCode> {
        weave_common::validate::validate_generate(request, &self.settings.bounds)?;
        let model =
            self.settings
                .model(&request.model_id)
                .ok_or_else(|| ErrorCode::UnknownModel {
                    model_id: request.model_id.clone(),
                })?;
        let mut state = self.lock();
        let job_id = state.next_job_id;
        let job =
            validation::resolve(request, model, &self.settings.bounds, job_id, random_seed())?;
        if state.shutting_down || state.draining {
            return Err(ErrorCode::ShuttingDown);
        }
        let owner = Owner {
            uid,
            tag: request.tag.clone(),
        };
        if self.status.snapshot().quarantined.contains(&model.id) {
            return Err(ErrorCode::ModelQuarantined);
        }
        let running_uid = state.running.as_ref().map(|running| running.owner.uid);
        if let Err(error) = state.queue.check_room(uid, running_uid) {
            let queued = u32::try_from(state.queue.len()).unwrap_or(u32::MAX);
            let per_job = state.recent_job_ms.max(100);
            let retry_after_ms = match error {
                AdmissionError::QueueFull => per_job,
                AdmissionError::OwnerQueueFull => per_job.saturating_mul(queued.clamp(1, 8)),
            };
            return Err(ErrorCode::Busy { retry_after_ms });
        }
        let now = Instant::now();
        state
            .rate
            .try_take(uid, now)
            .map_err(|retry_after_ms| ErrorCode::RateLimited { retry_after_ms })?;
        let (sender, receiver) = mpsc::channel();
        let pending = PendingJob {
            job,
            events: sender,
            cancel: Arc::new(AtomicBool::new(false)),
            submitted: now,
        };
        let position = state.queue.push(job_id, owner, now, pending);
        state.next_job_id += 1;
        drop(state);
        self.wake.notify_all();
        Ok(Admission {
            job_id,
            position,
            events: receiver,
        })
    }

    /// Cancels a queued or running job the caller may see. `Ok(false)`: no
    /// such job (or not the caller's): the answer does not reveal which.
    pub fn cancel(&self, uid: u32, is_admin: bool, job_id: u64) -> bool {
        let mut state = self.lock();
        let may = |owner: &Owner| is_admin || owner.uid == uid;
        if let Some(running) = state.running.as_ref().filter(|r| r.job_id == job_id) {
            if !may(&running.owner) {
                return false;
            }
            running.cancel.store(true, Ordering::SeqCst);
            return true;
        }
        let owned = state
            .queue
            .iter()
            .any(|entry| entry.id == job_id && may(&entry.owner));
        if !owned {
            return false;
        }
        if let Some(entry) = state.queue.remove(job_id) {
            let _ = entry
                .item
                .events
                .send(Response::Error(ErrorCode::Cancelled));
            self.record_outcome(&entry.item.job, &entry.owner, "cancelled", None);
            send_position_changes(&mut state);
        }
        true
    }

    /// Jobs the caller may see: its own, or all for `all`.
    pub fn jobs(&self, uid: u32, all: bool) -> Vec<JobInfo> {
        let state = self.lock();
        let now = Instant::now();
        let order = state.queue.service_order();
        let mut list = Vec::new();
        if let Some(running) = state.running.as_ref().filter(|r| all || r.owner.uid == uid) {
            list.push(JobInfo {
                job_id: running.job_id,
                owner_uid: running.owner.uid,
                tag: running.owner.tag.clone(),
                model_id: running.model_id.clone(),
                state: if running.cancel.load(Ordering::SeqCst) {
                    JobState::Cancelling
                } else {
                    JobState::Running
                },
                position: None,
                submitted_s_ago: now.saturating_duration_since(running.submitted).as_secs(),
            });
        }
        let by_id: HashMap<u64, _> = state.queue.iter().map(|e| (e.id, e)).collect();
        for (position, id) in order.iter().enumerate() {
            let Some(entry) = by_id.get(id) else { continue };
            if !all && entry.owner.uid != uid {
                continue;
            }
            list.push(JobInfo {
                job_id: entry.id,
                owner_uid: entry.owner.uid,
                tag: entry.owner.tag.clone(),
                model_id: entry.item.job.model_id.clone(),
                state: JobState::Queued,
                position: Some(u32::try_from(position).unwrap_or(u32::MAX)),
                submitted_s_ago: now
                    .saturating_duration_since(entry.item.submitted)
                    .as_secs(),
            });
        }
        list
    }

    /// The configured models with their current state.
    pub fn models(&self) -> Vec<ModelInfo> {
        let state = self.lock();
        let snapshot = self.status.snapshot();
        self.settings
            .models
            .iter()
            .map(|model| ModelInfo {
                id: model.id.clone(),
                kind: model.kind.to_string(),
                loaded: state
                    .loaded
                    .as_ref()
                    .is_some_and(|l| l.model_id == model.id),
                pinned: state.pinned.contains(&model.id),
                quarantined: snapshot.quarantined.contains(&model.id),
                defaults: model.defaults(),
                bounds: self.settings.bounds.clone(),
            })
            .collect()
    }

    pub fn status(&self) -> StatusReport {
        let snapshot = self.status.snapshot();
        let state = self.lock();
        let now = Instant::now();
        StatusReport {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: self.mode,
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            loaded: state.loaded.as_ref().map(|loaded| LoadedModel {
                model_id: loaded.model_id.clone(),
                loaded_for_s: now.saturating_duration_since(loaded.since).as_secs(),
                idle_for_s: if state.running.is_some() {
                    0
                } else {
                    now.saturating_duration_since(loaded.last_use).as_secs()
                },
                memory_bytes: snapshot.memory_bytes,
            }),
            queue_depth: u32::try_from(state.queue.len()).unwrap_or(u32::MAX),
            draining: state.draining,
            worker: snapshot.state,
            worker_restarts: snapshot.restarts,
            sandbox: snapshot.sandbox,
        }
    }

    pub fn runner_status(&self) -> RunnerStatus {
        self.status.snapshot()
    }

    pub fn set_draining(&self, draining: bool) {
        self.lock().draining = draining;
        self.wake.notify_all();
    }

    pub fn pin(&self, model_id: &str, pinned: bool) -> Result<(), ErrorCode> {
        self.known_model(model_id)?;
        if pinned {
            self.lock().pinned.insert(model_id.to_owned());
            self.command(Command::Load(model_id.to_owned()))
        } else {
            self.lock().pinned.remove(model_id);
            self.wake.notify_all();
            Ok(())
        }
    }

    pub fn load(&self, model_id: &str) -> Result<(), ErrorCode> {
        self.known_model(model_id)?;
        self.command(Command::Load(model_id.to_owned()))
    }

    pub fn unload(&self) -> Result<(), ErrorCode> {
        self.command(Command::Unload)
    }

    pub fn rotate_keys(&self) -> Result<(), ErrorCode> {
        self.command(Command::RotateKeys)
    }

    pub fn clear_quarantine(&self, model_id: &str) -> Result<(), ErrorCode> {
        self.known_model(model_id)?;
        self.command(Command::ClearQuarantine(model_id.to_owned()))
    }

    fn known_model(&self, model_id: &str) -> Result<(), ErrorCode> {
        match self.settings.model(model_id) {
            Some(_) => Ok(()),
            None => Err(ErrorCode::UnknownModel {
                model_id: model_id.to_owned(),
            }),
        }
    }

    /// Hands an admin command to the scheduler thread and waits for it.
    fn command(&self, command: Command) -> Result<(), ErrorCode> {
        let (sender, receiver) = mpsc::channel();
        {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(ErrorCode::ShuttingDown);
            }
            state.commands.push((command, sender));
        }
        self.wake.notify_all();
        // A model load can take a while; a running job finishes first.
        let limit = self.settings.limits.job_timeout() + Duration::from_secs(120);
        receiver
            .recv_timeout(limit)
            .unwrap_or(Err(ErrorCode::Internal))
    }

    /// Stops accepting, fails every queued job with `ShuttingDown` and asks
    /// the running job to stop.
    pub fn begin_shutdown(&self) {
        let mut state = self.lock();
        state.shutting_down = true;
        for entry in state.queue.drain_all() {
            let _ = entry
                .item
                .events
                .send(Response::Error(ErrorCode::ShuttingDown));
            self.record_outcome(&entry.item.job, &entry.owner, "shutting_down", None);
        }
        if let Some(running) = &state.running {
            running.cancel.store(true, Ordering::SeqCst);
        }
        for (_, reply) in state.commands.drain(..) {
            let _ = reply.send(Err(ErrorCode::ShuttingDown));
        }
        drop(state);
        self.wake.notify_all();
    }

    /// Marks one connection as streaming until the guard drops.
    pub fn stream_guard(&self) -> StreamGuard<'_> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard { broker: self }
    }

    /// Waits up to `limit` for every streaming connection to finish.
    pub fn wait_streams(&self, limit: Duration) {
        let end = Instant::now() + limit;
        while self.streams.load(Ordering::SeqCst) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    fn record_outcome(&self, job: &WorkerJob, owner: &Owner, outcome: &str, ms: Option<u128>) {
        let mut record = AuditRecord::new("job")
            .field("job", job.job_id)
            .field("uid", owner.uid)
            .field("tag", owner.tag.as_deref().unwrap_or("-"))
            .field("model", &job.model_id)
            .field("outcome", outcome)
            .field("size", format!("{}x{}", job.width, job.height))
            .field("steps", job.steps)
            .field("batch", job.batch);
        if let Some(ms) = ms {
            record = record.field("ms", ms);
        }
        if self.audit.log_prompts() {
            record = record.field("prompt", &job.prompt);
        }
        self.audit.record(Severity::Info, &record);
    }

    /// The scheduler thread's body; returns after `begin_shutdown`, with the
    /// worker stopped.
    pub fn run_scheduler(&self, runner: &mut dyn JobRunner) {
        let idle = self.settings.limits.idle_unload();
        let deadline = self.settings.limits.queue_deadline();
        let mut state = self.lock();
        loop {
            if state.shutting_down {
                break;
            }
            let now = Instant::now();
            for entry in state.queue.expire(now, deadline) {
                let _ = entry.item.events.send(Response::Error(ErrorCode::TimedOut));
                self.record_outcome(&entry.item.job, &entry.owner, "queue_deadline", None);
                send_position_changes(&mut state);
            }
            if !state.commands.is_empty() {
                let (command, reply) = state.commands.remove(0);
                drop(state);
                let result = self.execute(runner, &command);
                let _ = reply.send(result);
                state = self.lock();
                continue;
            }
            if let Some(entry) = state.queue.pop() {
                send_position_changes(&mut state);
                state.running = Some(RunningJob {
                    job_id: entry.id,
                    owner: entry.owner.clone(),
                    model_id: entry.item.job.model_id.clone(),
                    submitted: entry.item.submitted,
                    cancel: entry.item.cancel.clone(),
                });
                drop(state);
                let started = Instant::now();
                let outcome = self.run_one(runner, &entry.item);
                let elapsed = started.elapsed();
                self.record_outcome(
                    &entry.item.job,
                    &entry.owner,
                    outcome,
                    Some(elapsed.as_millis()),
                );
                state = self.lock();
                state.running = None;
                state.recent_job_ms = u32::try_from(elapsed.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(100);
                if let Some(loaded) = state.loaded.as_mut() {
                    loaded.last_use = Instant::now();
                }
                continue;
            }
            // Idle unload: never while a job runs (none does here) and never
            // a pinned model.
            let mut wait = Duration::from_secs(1);
            if let Some(loaded) = state.loaded.clone() {
                if !state.pinned.contains(&loaded.model_id) {
                    let idle_for = now.saturating_duration_since(loaded.last_use);
                    if idle_for >= idle {
                        drop(state);
                        let result = runner.unload();
                        self.audit.record(
                            Severity::Info,
                            &AuditRecord::new("idle_unload")
                                .field("model", &loaded.model_id)
                                .field("ok", result.is_ok()),
                        );
                        state = self.lock();
                        state.loaded = None;
                        continue;
                    }
                    wait = wait.min(idle - idle_for);
                }
            }
            if let Some(oldest) = state.queue.oldest() {
                let due = (oldest + deadline).saturating_duration_since(now);
                wait = wait.min(due.max(Duration::from_millis(1)));
            }
            state.rate.forget_full(now);
            state = match self.wake.wait_timeout(state, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(state);
        runner.shutdown();
    }

    fn execute(&self, runner: &mut dyn JobRunner, command: &Command) -> Result<(), ErrorCode> {
        let result = match command {
            Command::Load(model_id) => self.ensure_loaded(runner, model_id),
            Command::Unload => {
                let result = runner.unload().map_err(|_| ErrorCode::Internal);
                self.lock().loaded = None;
                result
            }
            Command::RotateKeys => runner.rotate_keys().map_err(|_| ErrorCode::Internal),
            Command::ClearQuarantine(model_id) => {
                runner.clear_quarantine(model_id);
                Ok(())
            }
        };
        if let Err(error) = &result {
            eprintln!("weave-broker: admin command {command:?} failed: {error}");
        }
        result
    }

    fn ensure_loaded(&self, runner: &mut dyn JobRunner, model_id: &str) -> Result<(), ErrorCode> {
        if runner.is_quarantined(model_id) {
            return Err(ErrorCode::ModelQuarantined);
        }
        let resident = self
            .lock()
            .loaded
            .as_ref()
            .is_some_and(|loaded| loaded.model_id == model_id)
            && self.status.snapshot().loaded_model.as_deref() == Some(model_id);
        if resident {
            return Ok(());
        }
        self.lock().loaded = None;
        match runner.load(model_id) {
            Ok(()) => {
                let now = Instant::now();
                self.lock().loaded = Some(LoadedState {
                    model_id: model_id.to_owned(),
                    since: now,
                    last_use: now,
                });
                Ok(())
            }
            Err(RunnerError::Quarantined) => Err(ErrorCode::ModelQuarantined),
            Err(RunnerError::WorkerCrashed) => Err(ErrorCode::WorkerCrashed),
            // A worker that dies while it starts (before or during the
            // bootstrap) is a worker crash like any other: the supervisor
            // has scheduled the restart, the caller may retry.
            Err(error @ RunnerError::Unavailable) => {
                eprintln!("weave-broker: loading model {model_id:?} failed: {error}");
                Err(ErrorCode::WorkerCrashed)
            }
            Err(error) => {
                eprintln!("weave-broker: loading model {model_id:?} failed: {error}");
                Err(ErrorCode::Internal)
            }
        }
    }

    /// Runs one job to its end; returns the outcome name for the audit.
    fn run_one(&self, runner: &mut dyn JobRunner, pending: &PendingJob) -> &'static str {
        let job = &pending.job;
        let send = |response: Response| {
            let _ = pending.events.send(response);
        };
        let fail = |code: ErrorCode| {
            let name = code.name();
            send(Response::Error(code));
            name
        };
        if pending.cancel.load(Ordering::SeqCst) {
            return fail(ErrorCode::Cancelled);
        }
        if let Err(code) = self.ensure_loaded(runner, &job.model_id) {
            return fail(code);
        }
        send(Response::Started {
            job_id: job.job_id,
            seed: job.seed,
        });
        let deadline = Instant::now() + self.settings.limits.job_timeout();
        let mut on_progress = |step: u32, total: u32| {
            send(Response::Progress {
                job_id: job.job_id,
                step,
                total,
            });
        };
        let images = match runner.run_job(job, deadline, &mut on_progress, &pending.cancel) {
            Ok(images) => images,
            Err(error) => {
                let code = match error {
                    RunnerError::Cancelled if self.is_shutting_down() => ErrorCode::ShuttingDown,
                    RunnerError::Cancelled => ErrorCode::Cancelled,
                    RunnerError::TimedOut => ErrorCode::TimedOut,
                    RunnerError::Quarantined => ErrorCode::ModelQuarantined,
                    RunnerError::WorkerCrashed | RunnerError::Unavailable => {
                        ErrorCode::WorkerCrashed
                    }
                    RunnerError::LoadFailed | RunnerError::Engine => ErrorCode::Internal,
                };
                if matches!(code, ErrorCode::WorkerCrashed) {
                    // The worker restarted without the model.
                    self.lock().loaded = None;
                }
                return fail(code);
            }
        };
        if let Err(error) = output::check_images(job, &images) {
            eprintln!(
                "weave-broker: job {} rejected worker output: {error}",
                job.job_id
            );
            self.lock().loaded = None;
            runner.unload().ok();
            return fail(ErrorCode::WorkerCrashed);
        }
        let with_parameters = self.settings.output.png_parameters;
        for (index, image) in images.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let seed = job.seed.wrapping_add(u64::from(index));
            match output::encode_png(job, image, seed, with_parameters) {
                Ok(png) => send(Response::Image {
                    job_id: job.job_id,
                    index,
                    seed,
                    width: image.width,
                    height: image.height,
                    png,
                }),
                Err(error) => {
                    eprintln!("weave-broker: job {}: {error}", job.job_id);
                    return fail(ErrorCode::Internal);
                }
            }
        }
        send(Response::Finished { job_id: job.job_id });
        "finished"
    }
}

/// See [`Broker::stream_guard`].
pub struct StreamGuard<'a> {
    broker: &'a Broker,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.broker.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn send_position_changes(state: &mut State) {
    for (job_id, position) in state.queue.take_position_changes() {
        if let Some(entry) = state.queue.find_mut(job_id) {
            let _ = entry
                .item
                .events
                .send(Response::Position { job_id, position });
        }
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS RNG failing leaves a fixed seed; generation still works and the
    // seed is reported back, so this is not a security property.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RawImage;
    use std::path::Path;
    use std::sync::atomic::AtomicU32;

    /// A scripted stand-in for the worker supervisor (unit tests only; the
    /// integration tests in `tests/` use the real worker).
    #[derive(Default)]
    struct ScriptLog {
        ran: Mutex<Vec<(u64, Option<String>)>>,
        unloads: AtomicU32,
        loads: AtomicU32,
        crash_next: AtomicBool,
        gate: Mutex<bool>,
        gate_open: Condvar,
        saw_cancel: AtomicBool,
    }

    struct ScriptedRunner {
        log: Arc<ScriptLog>,
        tags: Arc<Mutex<HashMap<u64, Option<String>>>>,
        step_ms: u64,
    }

    struct Idle;
    impl StatusSource for Idle {
        fn snapshot(&self) -> RunnerStatus {
            RunnerStatus::default()
        }
    }

    impl JobRunner for ScriptedRunner {
        fn load(&mut self, _model_id: &str) -> Result<(), RunnerError> {
            self.log.loads.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn unload(&mut self) -> Result<(), RunnerError> {
            self.log.unloads.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn run_job(
            &mut self,
            job: &WorkerJob,
            _deadline: Instant,
            on_progress: &mut dyn FnMut(u32, u32),
            cancel: &AtomicBool,
        ) -> Result<Vec<RawImage>, RunnerError> {
            let mut open = self.log.gate.lock().unwrap();
            while !*open {
                open = self.log.gate_open.wait(open).unwrap();
            }
            drop(open);
            let tag = self
                .tags
                .lock()
                .unwrap()
                .get(&job.job_id)
                .cloned()
                .flatten();
            self.log.ran.lock().unwrap().push((job.job_id, tag));
            if self.log.crash_next.swap(false, Ordering::SeqCst) {
                return Err(RunnerError::WorkerCrashed);
            }
            for step in 1..=job.steps {
                if cancel.load(Ordering::SeqCst) {
                    self.log.saw_cancel.store(true, Ordering::SeqCst);
                    return Err(RunnerError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(self.step_ms));
                on_progress(step, job.steps);
            }
            let image = RawImage {
                width: job.width,
                height: job.height,
                rgb: vec![128; (job.width * job.height * 3) as usize],
            };
            Ok(vec![image; job.batch as usize])
        }
        fn rotate_keys(&mut self) -> Result<(), RunnerError> {
            Ok(())
        }
        fn is_quarantined(&self, _model_id: &str) -> bool {
            false
        }
        fn clear_quarantine(&mut self, _model_id: &str) {}
        fn status_source(&self) -> Arc<dyn StatusSource> {
            Arc::new(Idle)
        }
        fn shutdown(&mut self) {}
    }

    struct Harness {
        broker: Arc<Broker>,
        log: Arc<ScriptLog>,
        tags: Arc<Mutex<HashMap<u64, Option<String>>>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Harness {
        fn new(limits: &str, step_ms: u64) -> Self {
            let toml = format!(
                "[limits]\n{limits}\n[audit]\nsink = \"/nonexistent/weave-test-sink\"\n\
                 [[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"/m\"\n\
                 [model.defaults]\nwidth = 32\nheight = 32\nsteps = 3\nguidance = 1.0\n\
                 scheduler = \"ddim\"\n"
            );
            let settings =
                Config::from_toml_str(&toml, Path::new("/test.toml"), Mode::User).unwrap();
            let audit = Arc::new(AuditLog::new(
                "/nonexistent/weave-test-sink".into(),
                syslog::Facility::LOG_DAEMON,
                false,
            ));
            let log = Arc::new(ScriptLog::default());
            *log.gate.lock().unwrap() = true;
            let tags = Arc::new(Mutex::new(HashMap::new()));
            let broker = Broker::new(settings, Mode::User, audit, Arc::new(Idle));
            let mut runner = ScriptedRunner {
                log: Arc::clone(&log),
                tags: Arc::clone(&tags),
                step_ms,
            };
            let thread = {
                let broker = Arc::clone(&broker);
                std::thread::spawn(move || broker.run_scheduler(&mut runner))
            };
            Self {
                broker,
                log,
                tags,
                thread: Some(thread),
            }
        }

        fn set_gate(&self, open: bool) {
            *self.log.gate.lock().unwrap() = open;
            self.log.gate_open.notify_all();
        }

        fn submit(&self, uid: u32, tag: Option<&str>) -> Result<Admission, ErrorCode> {
            let request = GenerateRequest {
                model_id: "digits".into(),
                prompt: "7".into(),
                negative_prompt: String::new(),
                width: None,
                height: None,
                steps: None,
                guidance: None,
                seed: Some(1),
                scheduler: None,
                batch: 1,
                tag: tag.map(str::to_owned),
            };
            let admission = self.broker.submit(uid, &request)?;
            self.tags
                .lock()
                .unwrap()
                .insert(admission.job_id, tag.map(str::to_owned));
            Ok(admission)
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.set_gate(true);
            self.broker.begin_shutdown();
            if let Some(thread) = self.thread.take() {
                thread.join().unwrap();
            }
        }
    }

    fn last_event(admission: &Admission) -> Response {
        loop {
            let event = admission
                .events
                .recv_timeout(Duration::from_secs(10))
                .unwrap();
            if event.ends_generate_stream() {
                return event;
            }
        }
    }

    #[test]
    fn two_tags_are_served_interleaved() {
        let harness = Harness::new(
            "per_client_queue_depth = 32\nqueue_depth = 32\nrate_burst = 30",
            0,
        );
        harness.set_gate(false);
        // One job may already be taken by the (blocked) runner.
        let first = harness.submit(1, Some("a")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut admissions = vec![first];
        for _ in 0..9 {
            admissions.push(harness.submit(1, Some("a")).unwrap());
        }
        for _ in 0..10 {
            admissions.push(harness.submit(1, Some("b")).unwrap());
        }
        harness.set_gate(true);
        for admission in &admissions {
            assert!(matches!(last_event(admission), Response::Finished { .. }));
        }
        let ran = harness.log.ran.lock().unwrap().clone();
        let tags: Vec<&str> = ran.iter().map(|(_, t)| t.as_deref().unwrap()).collect();
        // After the first (already running) job, a and b alternate.
        assert_eq!(tags.len(), 20);
        for pair in tags[1..19].chunks(2) {
            assert_ne!(pair[0], pair[1], "{tags:?}");
        }
    }

    #[test]
    fn full_queue_is_busy_and_rate_limit_applies() {
        let harness = Harness::new(
            "queue_depth = 3\nper_client_queue_depth = 2\nrate_burst = 30",
            0,
        );
        harness.set_gate(false);
        let _running = harness.submit(1, None).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let _a = harness.submit(1, None).unwrap();
        let _b = harness.submit(2, None).unwrap();
        assert!(matches!(
            harness.submit(3, None),
            Err(ErrorCode::Busy { .. })
        ));
        assert_eq!(harness.broker.jobs(0, true).len(), 3);

        let limited = Harness::new("rate_per_minute = 1\nrate_burst = 1", 0);
        limited.submit(5, None).unwrap();
        assert!(matches!(
            limited.submit(5, None),
            Err(ErrorCode::RateLimited { retry_after_ms }) if retry_after_ms > 50_000
        ));
    }

    #[test]
    fn cancel_queued_and_running_jobs() {
        let harness = Harness::new("rate_burst = 30", 200);
        let running = harness.submit(1, None).unwrap();
        let queued = harness.submit(1, None).unwrap();
        // Wait until the first job reports progress.
        loop {
            let event = running.events.recv_timeout(Duration::from_secs(5)).unwrap();
            if matches!(event, Response::Progress { .. }) {
                break;
            }
        }
        // Another uid may not cancel; the owner may.
        assert!(!harness.broker.cancel(2, false, queued.job_id));
        assert!(harness.broker.cancel(1, false, queued.job_id));
        assert_eq!(last_event(&queued), Response::Error(ErrorCode::Cancelled));
        assert!(harness.broker.cancel(1, false, running.job_id));
        assert_eq!(last_event(&running), Response::Error(ErrorCode::Cancelled));
        assert!(harness.log.saw_cancel.load(Ordering::SeqCst));
        let ran = harness.log.ran.lock().unwrap().clone();
        assert_eq!(ran.len(), 1, "the cancelled queued job never ran");
    }

    #[test]
    fn crash_fails_the_job_and_the_next_succeeds() {
        let harness = Harness::new("rate_burst = 30", 0);
        harness.log.crash_next.store(true, Ordering::SeqCst);
        let crashed = harness.submit(1, None).unwrap();
        assert_eq!(
            last_event(&crashed),
            Response::Error(ErrorCode::WorkerCrashed)
        );
        let next = harness.submit(1, None).unwrap();
        assert!(matches!(last_event(&next), Response::Finished { .. }));
        assert_eq!(
            harness.log.loads.load(Ordering::SeqCst),
            2,
            "reloaded after crash"
        );
    }

    #[test]
    fn idle_model_is_unloaded_unless_pinned() {
        let harness = Harness::new("idle_unload_s = 1\nrate_burst = 30", 0);
        let job = harness.submit(1, None).unwrap();
        assert!(matches!(last_event(&job), Response::Finished { .. }));
        assert!(harness.broker.status().loaded.is_some());
        std::thread::sleep(Duration::from_millis(1600));
        assert_eq!(harness.log.unloads.load(Ordering::SeqCst), 1);
        assert!(harness.broker.status().loaded.is_none());

        harness.broker.pin("digits", true).unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        assert!(harness.broker.status().loaded.is_some(), "pinned stays");
        harness.broker.pin("digits", false).unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        assert!(harness.broker.status().loaded.is_none());
    }

    #[test]
    fn shutdown_fails_queued_jobs_and_drain_refuses_new_ones() {
        let harness = Harness::new("rate_burst = 30", 0);
        harness.broker.set_draining(true);
        assert_eq!(harness.submit(1, None).err(), Some(ErrorCode::ShuttingDown));
        harness.broker.set_draining(false);
        harness.set_gate(false);
        let _running = harness.submit(1, None).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let queued = harness.submit(1, None).unwrap();
        harness.broker.begin_shutdown();
        assert_eq!(
            last_event(&queued),
            Response::Error(ErrorCode::ShuttingDown)
        );
    }
}
