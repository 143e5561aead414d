//! The broker's job state, the dispatcher thread and one lane thread per
//! worker of the pool.
//!
//! Connection threads call [`Broker`] methods (submit, cancel, list, admin
//! commands); the dispatcher ([`run_loop`]) places queued jobs on workers in
//! fair order by the pure policy of [`crate::placement`], and each worker's
//! lane thread ([`lane`]) loads the model, runs the job and streams its
//! events back to the caller's connection through a channel. A lane's worker
//! is its own: a crash, hang or lie there fails only that lane's job.

#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weave_common::config::Device;
use weave_common::proto::{ErrorCode, Mode, Response, JOB_HISTORY};
use weave_common::worker_proto::WorkerGenerateParams;

use crate::admission::{AdmissionQueue, Owner, RateLimiter};
use crate::audit::{AuditLog, AuditRecord, Severity};
use crate::settings::Config;

mod commands;
mod job;
mod lane;
mod pool;
pub mod previews;
mod reports;
mod run_loop;
mod submit;
#[cfg(test)]
mod tests;

use commands::Command;
use job::failure_code;
pub use pool::PoolWorker;
use pool::{Lane, PoolHandles};

/// A queued job's payload.
#[derive(Debug)]
struct PendingJob {
    job_id: u64,
    params: WorkerGenerateParams,
    events: Sender<Response>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    /// Bounds the previews waiting for the caller's connection.
    previews: Arc<previews::PreviewGate>,
    /// How many jobs behind it were dispatched before it (a bounded
    /// number: see [`crate::placement`]).
    passed: usize,
}

#[derive(Debug, Clone)]
struct RunningJob {
    job_id: u64,
    owner: Owner,
    model_id: String,
    submitted: Instant,
    cancel: Arc<AtomicBool>,
    /// When the worker began it (`Started` was sent); `None` while its
    /// model loads.
    started: Option<Instant>,
    /// Denoising steps done and in all, from the worker's progress.
    step: u32,
    total: u32,
}

impl RunningJob {
    fn of(entry: &crate::admission::Queued<PendingJob>) -> Self {
        Self {
            job_id: entry.id,
            owner: entry.owner.clone(),
            model_id: entry.item.params.model_id.clone(),
            submitted: entry.item.submitted,
            cancel: entry.item.cancel.clone(),
            started: None,
            step: 0,
            total: 0,
        }
    }
}

/// A job that ended, for the history `Jobs` lists after the live ones.
#[derive(Debug, Clone)]
struct EndedJob {
    job_id: u64,
    owner: Owner,
    model_id: String,
    submitted: Instant,
    /// How long it ran; `None` if it never started.
    run_ms: Option<u64>,
    device: Option<Device>,
    step: u32,
    total: u32,
    /// `None`: finished with its images delivered.
    error: Option<ErrorCode>,
    /// The worker it ran on; `None` if it never reached one.
    worker: Option<u32>,
}

#[derive(Debug, Clone)]
struct LoadedState {
    model_id: String,
    since: Instant,
    last_use: Instant,
    /// How long its load took (placement keeps a model used more recently
    /// than this: see `crate::placement`).
    load_time: Duration,
}

struct State {
    queue: AdmissionQueue<PendingJob>,
    rate: RateLimiter,
    /// One per worker of the pool, in index order.
    lanes: Vec<Lane>,
    pinned: HashSet<String>,
    draining: bool,
    shutting_down: bool,
    next_job_id: u64,
    /// Rough duration of a job, for `Busy` retry hints.
    recent_job_ms: u32,
    /// The last [`JOB_HISTORY`] jobs that ended, newest last.
    history: VecDeque<EndedJob>,
}

impl State {
    /// Adds an ended job to the history, forgetting the oldest past
    /// [`JOB_HISTORY`].
    fn remember(&mut self, ended: EndedJob) {
        if self.history.len() >= JOB_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ended);
    }

    /// The uids of the running jobs, one entry per job.
    fn running_uids(&self) -> Vec<u32> {
        self.lanes
            .iter()
            .filter_map(|lane| lane.running.as_ref().map(|r| r.owner.uid))
            .collect()
    }
}

/// Shared broker state. Cheap to clone through `Arc`.
pub struct Broker {
    settings: Config,
    mode: Mode,
    started: Instant,
    audit: Arc<AuditLog>,
    state: Mutex<State>,
    wake: Condvar,
    /// Each worker's status snapshot, in index order.
    status: PoolHandles,
    /// Connections currently streaming a job's events; shutdown waits (a
    /// little) for them to deliver their final event.
    streams: std::sync::atomic::AtomicUsize,
    /// The LoRA hashes the PNG `parameters` text names.
    lora_hashes: crate::output::LoraHashes,
}

/// A job accepted by [`Broker::submit`].
pub struct Admission {
    pub job_id: u64,
    pub position: u32,
    pub events: Receiver<Response>,
    /// Call [`previews::PreviewGate::written`] after writing each
    /// `Response::Preview` from `events`.
    pub previews: Arc<previews::PreviewGate>,
}

impl Broker {
    /// A broker over the pool `workers` (at least one; their runners go to
    /// [`Broker::run_scheduler`] in the same order).
    pub fn new(
        settings: Config,
        mode: Mode,
        audit: Arc<AuditLog>,
        workers: Vec<PoolWorker>,
    ) -> Arc<Self> {
        let limits = &settings.limits;
        let (lanes, handles) = pool::lanes(workers);
        let state = State {
            queue: AdmissionQueue::new(limits.queue_depth, limits.per_client_queue_depth),
            rate: RateLimiter::new(limits.rate_per_minute, limits.rate_burst),
            lanes,
            pinned: HashSet::new(),
            draining: false,
            shutting_down: false,
            next_job_id: 1,
            recent_job_ms: 1000,
            history: VecDeque::new(),
        };
        Arc::new(Self {
            settings,
            mode,
            started: Instant::now(),
            audit,
            state: Mutex::new(state),
            wake: Condvar::new(),
            status: handles,
            streams: std::sync::atomic::AtomicUsize::new(0),
            lora_hashes: crate::output::LoraHashes::default(),
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

    pub fn set_draining(&self, draining: bool) {
        self.lock().draining = draining;
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

    /// The audit record of a job's end; `worker`: the worker it ran on.
    fn record_outcome(
        &self,
        job: &PendingJob,
        owner: &Owner,
        outcome: &str,
        ms: Option<u128>,
        worker: Option<usize>,
    ) {
        let params = &job.params;
        let mut record = AuditRecord::new("job")
            .field("job", job.job_id)
            .field("uid", owner.uid)
            .field("tag", owner.tag.as_deref().unwrap_or("-"))
            .field("model", &params.model_id)
            .field("outcome", outcome)
            .field("size", format!("{}x{}", params.width, params.height))
            .field("steps", params.steps)
            .field("batch", params.batch);
        // What kind of job, never the image bytes (docs/BROKER.md, audit).
        record = match &params.image {
            None => record.field("input", "text"),
            Some(image) => record
                .field(
                    "input",
                    if image.mask_png.is_some() {
                        "inpaint"
                    } else {
                        "img2img"
                    },
                )
                .field("strength", image.strength),
        };
        if let Some(ms) = ms {
            record = record.field("ms", ms);
        }
        if let Some(worker) = worker {
            record = record.field("worker", worker);
        }
        if params.preview_every != 0 {
            record = record
                .field("previews_sent", job.previews.sent())
                .field("previews_dropped", job.previews.dropped());
        }
        if self.audit.log_prompts() {
            record = record.field("prompt", &params.prompt);
        }
        self.audit.record(Severity::Info, &record);
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

impl EndedJob {
    /// A job that left the queue without running (cancelled, expired).
    fn never_ran(job_id: u64, owner: &Owner, pending: &PendingJob, error: ErrorCode) -> Self {
        Self {
            job_id,
            owner: owner.clone(),
            model_id: pending.params.model_id.clone(),
            submitted: pending.submitted,
            run_ms: None,
            device: None,
            step: 0,
            total: 0,
            error: Some(error),
            worker: None,
        }
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
