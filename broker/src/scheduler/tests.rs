//! The scheduler against a scripted runner: fairness, limits, cancel,
//! crash, idle unload, shutdown.
#![allow(clippy::unwrap_used)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, GenerateRequest, Mode, Response};
use weave_common::worker_proto::WorkerGenerateParams;

use super::{Admission, Broker};
mod pool_tests;
use crate::audit::AuditLog;
use crate::job_runner::JobRunner;
use crate::settings::Config;
use crate::supervisor::{Image, JobEvent, LoadInfo, SupervisorError, SupervisorHandle};

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
    /// (worker, job, start, end) of every job that ran to its end.
    spans: Mutex<Vec<(usize, u64, Instant, Instant)>>,
    /// (worker, model) of every load.
    loaded: Mutex<Vec<(usize, String)>>,
}

struct ScriptedRunner {
    worker: usize,
    log: Arc<ScriptLog>,
    tags: Arc<Mutex<HashMap<u64, Option<String>>>>,
    step_ms: u64,
    handle: SupervisorHandle,
}

impl JobRunner for ScriptedRunner {
    fn load(&mut self, model_id: &str) -> Result<LoadInfo, SupervisorError> {
        self.log.loads.fetch_add(1, Ordering::SeqCst);
        self.log
            .loaded
            .lock()
            .unwrap()
            .push((self.worker, model_id.to_owned()));
        let info = LoadInfo {
            model_id: model_id.to_owned(),
            memory_bytes: 1,
            load_ms: 1,
            since: std::time::SystemTime::now(),
        };
        self.handle.set_loaded_for_test(Some(info.clone()));
        Ok(info)
    }
    fn unload(&mut self) -> Result<(), SupervisorError> {
        self.log.unloads.fetch_add(1, Ordering::SeqCst);
        self.handle.set_loaded_for_test(None);
        Ok(())
    }
    fn run_job(
        &mut self,
        job_id: u64,
        job: &WorkerGenerateParams,
        _deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError> {
        let mut open = self.log.gate.lock().unwrap();
        while !*open {
            open = self.log.gate_open.wait(open).unwrap();
        }
        drop(open);
        let start = Instant::now();
        let tag = self.tags.lock().unwrap().get(&job_id).cloned().flatten();
        self.log.ran.lock().unwrap().push((job_id, tag));
        if self.log.crash_next.swap(false, Ordering::SeqCst) {
            self.handle.set_loaded_for_test(None);
            return Err(SupervisorError::WorkerCrashed(
                crate::supervisor::CrashCause::Died("scripted".into()),
            ));
        }
        for step in 1..=job.steps {
            if cancel.load(Ordering::SeqCst) {
                self.log.saw_cancel.store(true, Ordering::SeqCst);
                return Err(SupervisorError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            on_event(JobEvent::Progress {
                step,
                total: job.steps,
            });
        }
        let image = Image {
            width: job.width,
            height: job.height,
            rgb: vec![128; (job.width * job.height * 3) as usize],
        };
        self.log
            .spans
            .lock()
            .unwrap()
            .push((self.worker, job_id, start, Instant::now()));
        Ok(vec![image; job.batch as usize])
    }
    fn rotate_keys(&mut self) -> Result<u64, SupervisorError> {
        Ok(1)
    }
    fn clear_quarantine(&mut self, _model_id: &str) -> bool {
        false
    }
    fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
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
        Self::pool(limits, step_ms, 1, "")
    }

    /// `workers` scripted workers; `models`: more `[[model]]` tables.
    fn pool(limits: &str, step_ms: u64, workers: usize, models: &str) -> Self {
        let toml = format!(
            "[limits]\n{limits}\n[audit]\nsink = \"/nonexistent/weave-test-sink\"\n\
             [[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"/m\"\n\
             [model.defaults]\nwidth = 32\nheight = 32\nsteps = 3\nguidance = 1.0\n\
             scheduler = \"ddim\"\n{models}"
        );
        let settings = Config::from_toml_str(&toml, Path::new("/test.toml"), Mode::User).unwrap();
        let audit = Arc::new(AuditLog::new(
            "/nonexistent/weave-test-sink".into(),
            syslog::Facility::LOG_DAEMON,
            false,
        ));
        let log = Arc::new(ScriptLog::default());
        *log.gate.lock().unwrap() = true;
        let tags = Arc::new(Mutex::new(HashMap::new()));
        let runners: Vec<ScriptedRunner> = (0..workers)
            .map(|worker| ScriptedRunner {
                worker,
                log: Arc::clone(&log),
                tags: Arc::clone(&tags),
                step_ms,
                handle: SupervisorHandle::detached(),
            })
            .collect();
        let pool = runners
            .iter()
            .map(|runner| super::PoolWorker {
                device: weave_common::config::Device::Cpu,
                handle: runner.handle.clone(),
            })
            .collect();
        let broker = Broker::new(settings, Mode::User, audit, pool);
        let runners: Vec<Box<dyn JobRunner>> = runners
            .into_iter()
            .map(|runner| Box::new(runner) as Box<dyn JobRunner>)
            .collect();
        let thread = {
            let broker = Arc::clone(&broker);
            std::thread::spawn(move || broker.run_scheduler(runners))
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
        self.submit_on("digits", uid, tag)
    }

    fn submit_on(&self, model: &str, uid: u32, tag: Option<&str>) -> Result<Admission, ErrorCode> {
        let request = GenerateRequest {
            model_id: model.into(),
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
            use_model_negative: true,
            init_image: None,
            mask: None,
            strength: None,
            loras: Vec::new(),
            preview_every: 0,
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
    let again = harness.submit(1, None).unwrap();
    assert!(matches!(last_event(&again), Response::Finished { .. }));
    assert_eq!(harness.log.loads.load(Ordering::SeqCst), 2, "warm");
}

#[test]
fn idle_model_is_unloaded_unless_pinned() {
    let harness = Harness::new("idle_unload_s = 1\nrate_burst = 30", 0);
    let job = harness.submit(1, None).unwrap();
    assert!(matches!(last_event(&job), Response::Finished { .. }));
    assert!(harness.broker.status(true).loaded.is_some());
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(harness.log.unloads.load(Ordering::SeqCst), 1);
    assert!(harness.broker.status(true).loaded.is_none());

    harness.broker.pin("digits", true).unwrap();
    std::thread::sleep(Duration::from_millis(1600));
    assert!(harness.broker.status(true).loaded.is_some(), "pinned stays");
    harness.broker.pin("digits", false).unwrap();
    std::thread::sleep(Duration::from_millis(1600));
    assert!(harness.broker.status(true).loaded.is_none());
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
