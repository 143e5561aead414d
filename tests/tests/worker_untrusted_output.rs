//! Everything the worker sends is untrusted: a worker process that speaks
//! the real channel (real memfds, real keys, real crypto) but lies about its
//! output, breaks the protocol, hangs or crashes must be killed, reported
//! with a typed error, and replaced; a model that keeps crashing it is
//! quarantined until an admin clears it.
//!
//! This file has its own `main` (`harness = false`): started through a
//! symlink named `fake-weave-worker`, the same executable becomes the
//! misbehaving worker. The misbehaviour is chosen by the model's `path` in
//! the bootstrap (the fake opens no file), which the supervisor sends like
//! any model table.

#![allow(clippy::unwrap_used)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weave_broker::supervisor::{CrashCause, SupervisorConfig, SupervisorError, WorkerSupervisor};
use weave_common::config::{Device, ModelKind};
use weave_common::proto::{ErrorCode, Scheduler, WorkerState};
use weave_common::worker_proto::channel::WorkerEndpoint;
use weave_common::worker_proto::{
    self, fds, FromWorker, ModelEntry, SandboxReport, ToWorker, WorkerGenerateParams,
};

const FAKE_NAME: &str = "fake-weave-worker";

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == FAKE_NAME)
    {
        fake_worker();
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "wrong_pixel_count_kills_the_worker",
            wrong_pixel_count_kills_the_worker,
        ),
        (
            "wrong_dimensions_kill_the_worker",
            wrong_dimensions_kill_the_worker,
        ),
        ("extra_images_kill_the_worker", extra_images_kill_the_worker),
        (
            "progress_for_another_job_is_a_protocol_violation",
            progress_for_another_job_is_a_protocol_violation,
        ),
        (
            "a_hung_job_times_out_and_the_worker_is_replaced",
            a_hung_job_times_out_and_the_worker_is_replaced,
        ),
        (
            "a_model_that_keeps_crashing_is_quarantined",
            a_model_that_keeps_crashing_is_quarantined,
        ),
        (
            "a_worker_that_skips_the_handshake_is_refused",
            a_worker_that_skips_the_handshake_is_refused,
        ),
        (
            "a_degraded_sandbox_report_is_refused",
            a_degraded_sandbox_report_is_refused,
        ),
        (
            "a_device_other_than_the_configured_one_is_refused",
            a_device_other_than_the_configured_one_is_refused,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let outcome = std::panic::catch_unwind(test);
        println!(
            "test {name} ... {}",
            if outcome.is_ok() { "ok" } else { "FAILED" }
        );
        if outcome.is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("{failed} test(s) failed");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- the fake

fn fake_worker() {
    let take = |fd| {
        // SAFETY: the supervisor's spawn contract places exactly these
        // descriptors in this process; each is wrapped once.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let pipe = std::fs::File::from(take(fds::BOOTSTRAP_PIPE));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &pipe, &mut bytes).unwrap();
    let bootstrap = worker_proto::decode_bootstrap(&bytes).unwrap();
    let path = &bootstrap.models[0].path;
    let mode = path
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let mut ch = WorkerEndpoint::from_inherited(
        &bootstrap,
        take(fds::TO_WORKER_SEGMENT),
        take(fds::TO_BROKER_SEGMENT),
        take(fds::TO_WORKER_DOORBELL),
        take(fds::TO_BROKER_DOORBELL),
    )
    .unwrap();
    if mode == "no-ready" {
        ch.send(&FromWorker::Unloaded).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    ch.send(&FromWorker::Ready {
        sandbox: SandboxReport {
            landlock: "FullyEnforced".into(),
            landlock_abi: 7,
            seccomp_mode: 2,
            seccomp_debug: false,
            no_new_privs: true,
            capabilities_empty: true,
            fully_enforced: mode != "degraded",
        },
        // The supervisor is configured for the CPU; this one claims a GPU.
        device: if mode == "wrong-device" {
            Device::Cuda(7)
        } else {
            Device::Cpu
        },
    })
    .unwrap();
    loop {
        let Some(msg) = ch.recv(Duration::from_secs(1)).unwrap() else {
            continue;
        };
        match msg {
            ToWorker::Load { model_id } => {
                if mode == "crash-on-load" {
                    std::process::abort();
                }
                ch.send(&FromWorker::Loaded {
                    model_id,
                    memory_bytes: 1,
                    load_ms: 1,
                })
                .unwrap();
            }
            ToWorker::Unload => ch.send(&FromWorker::Unloaded).unwrap(),
            ToWorker::Generate { job_id, params } => lie(&mut ch, &mode, job_id, &params),
            ToWorker::Cancel { .. } => {}
            ToWorker::Rekey {
                to_worker,
                to_broker,
            } => {
                ch.rekey(&to_worker, &to_broker).unwrap();
                ch.send(&FromWorker::RekeyAck).unwrap();
            }
            ToWorker::Shutdown => return,
        }
    }
}

fn lie(ch: &mut WorkerEndpoint, mode: &str, job_id: u64, p: &WorkerGenerateParams) {
    let len = (p.width * p.height * 3) as usize;
    let image = |index, width, height, rgb| FromWorker::Image {
        job_id,
        index,
        width,
        height,
        rgb,
    };
    match mode {
        "wrong-pixels" => {
            ch.send(&FromWorker::Progress {
                job_id,
                step: 1,
                total: p.steps,
            })
            .unwrap();
            ch.send(&image(0, p.width, p.height, vec![0; len - 1]))
                .unwrap();
        }
        "wrong-dims" => ch
            .send(&image(0, p.width + 1, p.height, vec![0; len]))
            .unwrap(),
        "extra-images" => {
            for i in 0..=p.batch {
                ch.send(&image(i, p.width, p.height, vec![0; len])).unwrap();
            }
        }
        "other-job" => ch
            .send(&FromWorker::Progress {
                job_id: job_id + 1,
                step: 1,
                total: p.steps,
            })
            .unwrap(),
        "hang" => std::thread::sleep(Duration::from_secs(60)),
        _ => {}
    }
    ch.send(&FromWorker::Finished { job_id }).unwrap();
}

// ---------------------------------------------------------------- the tests

fn fake_exe() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("weave-fake-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join(FAKE_NAME);
    if !link.exists() {
        std::os::unix::fs::symlink(me, &link).unwrap();
    }
    link
}

fn supervisor(mode: &str) -> WorkerSupervisor {
    let models = vec![ModelEntry {
        id: "m".into(),
        kind: ModelKind::Sd1,
        path: placeholder(mode),
        sha256: None,
    }];
    let mut c = SupervisorConfig::new(fake_exe(), models);
    c.backoff_initial = Duration::from_millis(5);
    c.handshake_timeout = Duration::from_secs(5);
    c.reply_timeout = Duration::from_secs(5);
    c.quarantine_after = 2;
    c.max_image_pixels = 64 * 64;
    WorkerSupervisor::new(c)
}

fn params() -> WorkerGenerateParams {
    WorkerGenerateParams {
        model_id: "m".into(),
        prompt: "p".into(),
        negative_prompt: String::new(),
        width: 16,
        height: 8,
        steps: 3,
        guidance: 1.0,
        seed: 1,
        scheduler: Scheduler::Euler,
        batch: 1,
        max_prompt_chunks: 8,
        image: None,
        preview_every: 0,
        preview_max_size: 0,
        loras: Vec::new(),
    }
}

fn run(
    sup: &mut WorkerSupervisor,
    deadline: Duration,
) -> Result<Vec<weave_broker::supervisor::Image>, SupervisorError> {
    sup.run_job(
        5,
        &params(),
        Instant::now() + deadline,
        &AtomicBool::new(false),
        &mut |_| {},
    )
}

/// A folder named after the misbehaviour that passes the broker's model
/// file check (the fake worker never reads it).
fn placeholder(mode: &str) -> PathBuf {
    let path = std::env::temp_dir()
        .join(format!("weave-untrusted-{}", std::process::id()))
        .join(mode);
    weave_tests::write_placeholder_model(&path);
    path
}

fn assert_killed_for_bad_output(mode: &str, bad_output: bool) {
    let mut sup = supervisor(mode);
    sup.load("m").unwrap();
    let pid = sup.worker_pid().unwrap();
    let err = run(&mut sup, Duration::from_secs(10)).unwrap_err();
    match (&err, bad_output) {
        (SupervisorError::WorkerCrashed(CrashCause::BadOutput(_)), true) => {}
        (SupervisorError::WorkerCrashed(CrashCause::ProtocolViolation(_)), false) => {}
        other => panic!("{mode}: unexpected {other:?}"),
    }
    assert_eq!(err.error_code(), ErrorCode::WorkerCrashed);
    // Killed and reaped: the pid no longer exists as our child.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || is_zombie_free(pid),
        "worker {pid} still alive"
    );
    let state = sup.state();
    assert_eq!(state.state, WorkerState::Restarting);
    assert!(state.last_exit.unwrap().contains("signal 9"));
}

fn is_zombie_free(pid: u32) -> bool {
    // A reused pid belongs to someone else; ours was reaped if it is not our
    // child any more.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(&format!(" {} ", std::process::id())))
        .unwrap_or(true)
}

fn wrong_pixel_count_kills_the_worker() {
    assert_killed_for_bad_output("wrong-pixels", true);
}

fn wrong_dimensions_kill_the_worker() {
    assert_killed_for_bad_output("wrong-dims", true);
}

fn extra_images_kill_the_worker() {
    assert_killed_for_bad_output("extra-images", true);
}

fn progress_for_another_job_is_a_protocol_violation() {
    assert_killed_for_bad_output("other-job", false);
}

fn a_hung_job_times_out_and_the_worker_is_replaced() {
    let mut sup = supervisor("hang");
    sup.load("m").unwrap();
    let first = sup.worker_pid().unwrap();
    let started = Instant::now();
    let err = run(&mut sup, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(err, SupervisorError::TimedOut), "{err:?}");
    assert_eq!(err.error_code(), ErrorCode::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));
    sup.ensure_running().unwrap();
    assert_ne!(sup.worker_pid().unwrap(), first);
    assert_eq!(sup.state().restarts, 1);
}

fn a_model_that_keeps_crashing_is_quarantined() {
    let mut sup = supervisor("crash-on-load");
    for _ in 0..2 {
        match sup.load("m") {
            Err(SupervisorError::WorkerCrashed(CrashCause::Died(how))) => {
                assert!(how.contains("SIGABRT"), "{how}")
            }
            other => panic!("expected a crash, got {other:?}"),
        }
    }
    let err = sup.load("m").unwrap_err();
    assert!(
        matches!(err, SupervisorError::Quarantined { .. }),
        "{err:?}"
    );
    assert_eq!(err.error_code(), ErrorCode::ModelQuarantined);
    let handle = sup.handle();
    assert!(handle.is_quarantined("m"));
    // Jobs for it are refused too, without touching a worker.
    assert!(matches!(
        run(&mut sup, Duration::from_secs(1)),
        Err(SupervisorError::Quarantined { .. })
    ));
    assert!(handle.clear_quarantine("m"));
    assert!(matches!(
        sup.load("m"),
        Err(SupervisorError::WorkerCrashed(_))
    ));
    assert_eq!(sup.state().restarts, 2);
}

fn a_worker_that_skips_the_handshake_is_refused() {
    let mut sup = supervisor("no-ready");
    let err = sup.ensure_running().unwrap_err();
    assert!(matches!(err, SupervisorError::Handshake(_)), "{err:?}");
    assert_eq!(sup.state().state, WorkerState::Restarting);
}

fn a_device_other_than_the_configured_one_is_refused() {
    let mut sup = supervisor("wrong-device");
    let err = sup.ensure_running().unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Handshake(m) if m.contains("reported device cuda:7, configured cpu")),
        "{err:?}"
    );
    assert_eq!(sup.state().device, None);
}

fn a_degraded_sandbox_report_is_refused() {
    let mut sup = supervisor("degraded");
    let err = sup.ensure_running().unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Handshake(m) if m.contains("degraded")),
        "{err:?}"
    );
}
