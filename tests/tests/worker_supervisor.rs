//! The real `weave-worker`, started by the real `WorkerSupervisor`: spawn
//! contract, sandbox as the kernel reports it, crash handling, re-keying,
//! and (with the digits model and the engine's pipeline) generation.
//!
//! Needs the worker binary built in the same profile
//! (`cargo build -p weave-worker [--release]`; `make test` does it).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weave_broker::supervisor::{
    CrashCause, JobEvent, SupervisorConfig, SupervisorError, WorkerSupervisor,
};
use weave_common::config::ModelKind;
use weave_common::proto::{ErrorCode, Scheduler, WorkerState};
use weave_common::worker_proto::{ModelEntry, WorkerGenerateParams};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>/weave-worker` next to this test's own profile dir.
fn worker_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/weave-worker
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let worker = profile_dir.join("weave-worker");
    assert!(
        worker.is_file(),
        "{} is missing: build it first with `cargo build -p weave-worker` (add --release for release tests)",
        worker.display()
    );
    worker
}

fn libtorch_lib() -> PathBuf {
    let root = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/libtorch/cpu"));
    let root = if root.is_relative() {
        repo_root().join(root)
    } else {
        root
    };
    root.join("lib").canonicalize().unwrap()
}

/// The digits demo model if present in the tree.
fn digits_model() -> Option<PathBuf> {
    let p = repo_root().join("models/digits");
    p.is_dir().then(|| p.canonicalize().unwrap())
}

fn scratch_model_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weave-worker-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(models: Vec<ModelEntry>) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(worker_exe(), models);
    c.library_dirs = vec![libtorch_lib()];
    c.torch_threads = Some(1);
    c.max_image_pixels = 256 * 256;
    c.handshake_timeout = Duration::from_secs(60);
    c.backoff_initial = Duration::from_millis(10);
    c
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
    let status = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn scratch_supervisor(name: &str) -> (WorkerSupervisor, PathBuf) {
    let dir = scratch_model_dir(name);
    let sup = WorkerSupervisor::new(config(vec![ModelEntry {
        id: "m".into(),
        kind: ModelKind::Sd1,
        path: dir.clone(),
        sha256: None,
    }]));
    (sup, dir)
}

#[test]
fn worker_started_by_hand_refuses_with_a_clear_message() {
    let out = Command::new(worker_exe()).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("weave-worker is started by weave-broker; run weave-broker instead"),
        "{stderr}"
    );

    // Descriptors 3..7 open but of the wrong kinds: still refused.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {} 3</dev/null 4</dev/null 5</dev/null 6</dev/null 7</dev/null",
            worker_exe().display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run weave-broker instead"));
}

#[test]
fn worker_runs_under_the_full_sandbox() {
    let (mut sup, dir) = scratch_supervisor("sandbox");
    sup.ensure_running().unwrap_or_else(|e| {
        panic!("the worker must start under the full sandbox (landlock + seccomp); CI requires it: {e}")
    });
    let state = sup.state();
    assert_eq!(state.state, WorkerState::Ready);
    let sandbox = state.sandbox.clone().unwrap();
    assert!(sandbox.fully_enforced, "{sandbox:?}");
    assert_eq!(sandbox.landlock, "FullyEnforced");
    let pid = sup.worker_pid().unwrap();
    // What the kernel says, not what the worker reported.
    assert_eq!(proc_status_field(pid, "Seccomp"), "2");
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");
    // The report agrees with the kernel about the held capability sets.
    let held_empty = ["CapInh", "CapPrm", "CapEff", "CapAmb"]
        .iter()
        .all(|set| proc_status_field(pid, set) == "0000000000000000");
    assert!(held_empty, "the worker holds capabilities");
    assert!(sandbox.capabilities_empty, "{sandbox:?}");
    // Only 0-2 and the channel's 3-6 (the bootstrap pipe is closed after
    // reading): nothing of the broker's leaked in.
    let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert!(fds.iter().all(|fd| *fd <= 7), "worker holds fds {fds:?}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.is_empty(),
        "worker environment: {}",
        String::from_utf8_lossy(&environ)
    );
    sup.shutdown();
    assert_eq!(sup.state().state, WorkerState::Down);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn kill_9_is_a_typed_crash_and_the_worker_is_respawned() {
    let (mut sup, dir) = scratch_supervisor("kill");
    sup.ensure_running().unwrap();
    let pid = sup.worker_pid().unwrap();
    kill9(pid);
    let err = sup.unload().expect_err("a dead worker must be noticed");
    match &err {
        SupervisorError::WorkerCrashed(CrashCause::Died(how)) => {
            assert!(how.contains("signal 9"), "{how}")
        }
        other => panic!("expected WorkerCrashed(Died), got {other:?}"),
    }
    assert_eq!(err.error_code(), ErrorCode::WorkerCrashed);
    let state = sup.state();
    assert_eq!(state.state, WorkerState::Restarting);
    assert!(state.last_exit.unwrap().contains("signal 9"));
    // The next operation respawns with fresh keys and works.
    let generation_before = sup.state().channel.unwrap().key_generation;
    sup.ensure_running().unwrap();
    assert_ne!(sup.worker_pid(), Some(pid));
    sup.unload().unwrap();
    assert_eq!(sup.state().restarts, 1);
    // Fresh keys: a new, higher generation.
    assert!(sup.state().channel.unwrap().key_generation > generation_before);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn keys_rotate_without_restarting_the_worker() {
    let (mut sup, dir) = scratch_supervisor("rekey");
    sup.ensure_running().unwrap();
    let pid = sup.worker_pid();
    let before = sup.state().channel.unwrap().key_generation;
    assert_eq!(sup.rotate_keys().unwrap(), before + 1);
    // Traffic under the new keys works both ways.
    sup.unload().unwrap();
    assert_eq!(sup.rotate_keys().unwrap(), before + 2);
    sup.unload().unwrap();
    assert_eq!(sup.worker_pid(), pid);
    let state = sup.state();
    assert_eq!(state.restarts, 0);
    assert_eq!(state.channel.unwrap().received.tag_failures, 0);
    let report = state.channel_report();
    assert_eq!(report.key_generation, before + 2);
    // Every message was answered, so both rings are fully consumed.
    for seg in &report.segments {
        assert_eq!(seg.write_seq, seg.read_seq, "{seg:?}");
        assert!(seg.write_seq >= 2, "{seg:?}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unknown_and_unloadable_models_fail_typed() {
    // Passes the broker's file check; the worker cannot load it.
    let dir = scratch_model_dir("unloadable");
    weave_tests::write_placeholder_model(&dir);
    let mut sup = WorkerSupervisor::new(config(vec![ModelEntry {
        id: "m".into(),
        kind: ModelKind::Sd1,
        path: dir.clone(),
        sha256: None,
    }]));
    assert!(matches!(
        sup.load("nope"),
        Err(SupervisorError::UnknownModel { .. })
    ));
    match sup.load("m") {
        Err(SupervisorError::LoadFailed { reason, .. }) => {
            assert!(
                !reason.contains(dir.to_str().unwrap()),
                "reason leaks the path: {reason}"
            );
        }
        other => panic!("expected LoadFailed, got {other:?}"),
    }
    // The worker survives a failed load.
    assert_eq!(sup.state().state, WorkerState::Ready);
    assert_eq!(sup.state().restarts, 0);
    std::fs::remove_dir_all(dir).ok();
}

fn digits_params(steps: u32, batch: u32, seed: u64) -> WorkerGenerateParams {
    WorkerGenerateParams {
        model_id: "digits".into(),
        prompt: "a handwritten digit seven".into(),
        negative_prompt: String::new(),
        width: 32,
        height: 32,
        steps,
        guidance: 3.0,
        seed,
        scheduler: Scheduler::Ddim,
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

/// The demo model through the sandboxed worker. Cancel and `kill -9`
/// mid-generation are covered on a tiny model by
/// `worker/tests/sandboxed_worker_generate.rs`.
#[test]
fn digits_generate_under_the_sandbox_with_progress_per_step() {
    let Some(path) = digits_model() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "models/digits is missing; it is part of the repository"
        );
        eprintln!("skipping: models/digits is not in this tree yet");
        return;
    };
    let mut sup = WorkerSupervisor::new(config(vec![ModelEntry {
        id: "digits".into(),
        kind: ModelKind::Sd1,
        path,
        sha256: None,
    }]));
    let info = sup.load("digits").unwrap();
    assert_eq!(info.model_id, "digits");
    let pid = sup.worker_pid().unwrap();
    assert_eq!(proc_status_field(pid, "Seccomp"), "2");
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");
    let mut events = Vec::new();
    let params = digits_params(4, 2, 42);
    let images = sup
        .run_job(1, &params, soon(), &AtomicBool::new(false), &mut |e| {
            events.push(e)
        })
        .unwrap();
    assert_eq!(images.len(), 2);
    for img in &images {
        assert_eq!(
            (img.width, img.height, img.rgb.len()),
            (32, 32, 32 * 32 * 3)
        );
    }
    let steps: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Progress { step, total: 4 } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        vec![1, 2, 3, 4],
        "one progress event per step: {events:?}"
    );
    // Same seed, same pixels: nothing carries over between jobs.
    let again = sup
        .run_job(2, &params, soon(), &AtomicBool::new(false), &mut |_| {})
        .unwrap();
    assert_eq!(again, images);
}
