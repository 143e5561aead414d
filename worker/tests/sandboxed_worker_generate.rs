//! The real `weave-worker` binary under its full sandbox, driven by the real
//! `WorkerSupervisor` over the encrypted channel, on a tiny random-weight
//! model in the diffusers layout: load + generate succeeds, gives exactly the
//! pixels of the same engine run in-process without a sandbox, reports one
//! progress event per step, cancels between steps, and survives `kill -9`
//! mid-generation (typed crash, next job succeeds after the respawn).
//!
//! These fail, never skip, when Landlock or seccomp is not fully enforced.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{write_tiny_model, TinyOptions};
use weave_broker::supervisor::{JobEvent, SupervisorConfig, SupervisorError, WorkerSupervisor};
use weave_common::config::ModelKind;
use weave_common::proto::{ErrorCode, Scheduler, WorkerState};
use weave_common::worker_proto::{ModelEntry, WorkerGenerateParams};
use weave_worker::engine::{
    DeviceChoice, GenerateParams, ModelSpec, Pipeline, Precision, SchedulerKind,
};

fn libtorch_lib() -> PathBuf {
    let root = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join(".cache/libtorch/cpu"));
    let root = if root.is_relative() {
        common::repo_root().join(root)
    } else {
        root
    };
    root.join("lib").canonicalize().unwrap()
}

fn supervisor(model_dir: &Path) -> WorkerSupervisor {
    supervisor_for(model_dir, ModelKind::Sd1)
}

fn supervisor_for(model_dir: &Path, kind: ModelKind) -> WorkerSupervisor {
    let models = vec![ModelEntry {
        id: "tiny".into(),
        kind,
        path: model_dir.to_path_buf(),
        sha256: None,
    }];
    let mut c = SupervisorConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_weave-worker")), models);
    c.library_dirs = vec![libtorch_lib()];
    c.max_image_pixels = 64 * 64;
    c.handshake_timeout = Duration::from_secs(60);
    c.backoff_initial = Duration::from_millis(10);
    WorkerSupervisor::new(c)
}

fn params(steps: u32, batch: u32, seed: u64) -> WorkerGenerateParams {
    WorkerGenerateParams {
        model_id: "tiny".into(),
        prompt: "the cat".into(),
        negative_prompt: String::new(),
        width: 16,
        height: 16,
        steps,
        guidance: 5.0,
        seed,
        scheduler: Scheduler::EulerAncestral,
        batch,
        max_prompt_chunks: 8,
        image: None,
        preview_every: 0,
        preview_max_size: 0,
        loras: Vec::new(),
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

fn proc_status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn kill9(pid: u32) {
    assert!(std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

#[test]
fn sandboxed_generation_matches_the_engine_in_process() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let mut sup = supervisor(dir.path());
    let info = sup
        .load("tiny")
        .unwrap_or_else(|e| panic!("load under the full sandbox failed: {e}"));
    assert!(info.memory_bytes > 100_000, "{info:?}");
    let state = sup.state();
    assert_eq!(state.state, WorkerState::Ready);
    assert!(state.sandbox.unwrap().fully_enforced);
    let pid = sup.worker_pid().unwrap();
    assert_eq!(proc_status_field(pid, "Seccomp"), "2");
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");

    let mut events = Vec::new();
    let job = params(4, 2, 42);
    let images = sup
        .run_job(1, &job, soon(), &AtomicBool::new(false), &mut |e| {
            events.push(e)
        })
        .unwrap();
    assert_eq!(
        events,
        vec![
            JobEvent::Progress { step: 1, total: 4 },
            JobEvent::Progress { step: 2, total: 4 },
            JobEvent::Progress { step: 3, total: 4 },
            JobEvent::Progress { step: 4, total: 4 },
            JobEvent::Image { index: 0 },
            JobEvent::Image { index: 1 },
        ]
    );
    assert_eq!(images.len(), 2);

    // The same engine in this (unsandboxed) process, with the worker's
    // libtorch settings (oneDNN off: the sandbox refuses PROT_EXEC).
    assert!(weave_worker::onednn::set_enabled(false));
    let pipe = Pipeline::load(
        &ModelSpec::new(dir.path()),
        DeviceChoice::Cpu,
        Precision::Auto,
    )
    .unwrap();
    let reference = pipe
        .generate(
            &GenerateParams {
                prompt: job.prompt.clone(),
                negative_prompt: String::new(),
                width: 16,
                height: 16,
                steps: 4,
                guidance: 5.0,
                seed: 42,
                scheduler: SchedulerKind::EulerAncestral,
                batch: 2,
                clip_skip: 0,
                max_prompt_chunks: job.max_prompt_chunks,
                image: None,
            },
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(reference.len(), 2);
    for (sandboxed, local) in images.iter().zip(&reference) {
        assert_eq!(
            (sandboxed.width, sandboxed.height),
            (local.width, local.height)
        );
        assert!(
            sandboxed.rgb == local.pixels,
            "sandboxed pixels differ from the in-process engine"
        );
    }
    // And again through the worker: nothing carries over between jobs.
    let again = sup
        .run_job(2, &job, soon(), &AtomicBool::new(false), &mut |_| {})
        .unwrap();
    assert_eq!(again, images);
    sup.unload().unwrap();
    assert!(sup.state().loaded.is_none());
}

/// `kind = "sdxl"` end to end in the worker: the tiny SDXL fixture (two
/// text encoders, text-time UNet; built by diffusers) loads under the full
/// sandbox and generates exactly the in-process engine's pixels, whose
/// latents `tests/sdxl_reference.rs` checks against diffusers.
#[test]
fn sandboxed_sdxl_generation_matches_the_engine_in_process() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sdxl");
    if !dir.join("text_encoder_2/config.json").exists() {
        assert!(!common::ci(), "{} is missing", dir.display());
        eprintln!("skipping: no {}", dir.display());
        return;
    }
    let mut sup = supervisor_for(&dir, ModelKind::Sdxl);
    sup.load("tiny")
        .unwrap_or_else(|e| panic!("SDXL load under the full sandbox failed: {e}"));
    assert!(sup.state().sandbox.unwrap().fully_enforced);
    let job = WorkerGenerateParams {
        width: 48,
        height: 64,
        steps: 3,
        scheduler: Scheduler::Euler,
        ..params(3, 1, 11)
    };
    let mut events = Vec::new();
    let images = sup
        .run_job(1, &job, soon(), &AtomicBool::new(false), &mut |e| {
            events.push(e)
        })
        .unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(images.len(), 1);
    assert_eq!((images[0].width, images[0].height), (48, 64));

    assert!(weave_worker::onednn::set_enabled(false));
    let mut spec = ModelSpec::new(&dir);
    spec.kind = weave_worker::engine::ModelKind::Sdxl;
    let pipe = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::Auto).unwrap();
    assert!(pipe.is_sdxl());
    let reference = pipe
        .generate(
            &GenerateParams {
                prompt: job.prompt.clone(),
                negative_prompt: String::new(),
                width: 48,
                height: 64,
                steps: 3,
                guidance: 5.0,
                seed: 11,
                scheduler: SchedulerKind::Euler,
                batch: 1,
                clip_skip: 0,
                max_prompt_chunks: job.max_prompt_chunks,
                image: None,
            },
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(
        images[0].rgb == reference[0].pixels,
        "sandboxed SDXL pixels differ from the in-process engine"
    );
    sup.unload().unwrap();
}

#[test]
fn cancel_stops_the_sandboxed_job_between_steps() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let mut sup = supervisor(dir.path());
    let cancel = AtomicBool::new(false);
    let mut steps_seen = 0u32;
    let result = sup.run_job(7, &params(200, 1, 1), soon(), &cancel, &mut |e| {
        if let JobEvent::Progress { step, .. } = e {
            steps_seen = step;
            if step == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    });
    let err = result.unwrap_err();
    assert!(matches!(err, SupervisorError::Cancelled), "{err:?}");
    assert_eq!(err.error_code(), ErrorCode::Cancelled);
    assert!(
        (2..200).contains(&steps_seen),
        "stopped after {steps_seen} of 200 steps"
    );
    // The same worker serves the next job.
    let pid = sup.worker_pid();
    sup.run_job(
        8,
        &params(2, 1, 1),
        soon(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(sup.worker_pid(), pid);
    assert_eq!(sup.state().restarts, 0);
}

#[test]
fn kill_9_mid_generation_is_a_typed_crash_and_the_next_job_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let mut sup = supervisor(dir.path());
    sup.load("tiny").unwrap();
    let pid = sup.worker_pid().unwrap();
    let mut killed = false;
    let result = sup.run_job(
        11,
        &params(200, 1, 3),
        soon(),
        &AtomicBool::new(false),
        &mut |e| {
            if matches!(e, JobEvent::Progress { .. }) && !killed {
                kill9(pid);
                killed = true;
            }
        },
    );
    let err = result.unwrap_err();
    assert!(matches!(err, SupervisorError::WorkerCrashed(_)), "{err:?}");
    assert_eq!(err.error_code(), ErrorCode::WorkerCrashed);
    assert!(sup.state().last_exit.unwrap().contains("signal 9"));
    // The next job respawns the worker (fresh keys), reloads the model, runs.
    let mut reloaded = false;
    let images = sup
        .run_job(
            12,
            &params(2, 1, 3),
            soon(),
            &AtomicBool::new(false),
            &mut |e| {
                reloaded |= matches!(e, JobEvent::ModelLoaded(_));
            },
        )
        .unwrap();
    assert_eq!(images.len(), 1);
    assert!(reloaded);
    assert_ne!(sup.worker_pid(), Some(pid));
    assert_eq!(sup.state().restarts, 1);
}
