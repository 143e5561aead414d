//! Fault injection through the broker's socket: a worker that speaks the
//! real channel (real memfds, keys and crypto) but returns wrong dimensions,
//! a short or oversized pixel buffer or extra images. The broker (a real
//! `weave-broker` process, copied next to this fake so it spawns it as its
//! `weave-worker`) must kill it, answer the job with `WorkerCrashed`,
//! respawn it and serve the next job; nothing leaks.
//!
//! This file has its own `main` (`harness = false`): started as
//! `weave-worker` (through a symlink), the same executable is the lying
//! worker. The prompt chooses the lie; prompt `ok` gets a correct image.
//! While a file named [`FORGET_MODELS`] lies next to it, the worker answers
//! every `Load` with `UnknownModel`, which the caller must see as that.
#![allow(clippy::unwrap_used)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use weave_common::proto::{ErrorCode, Request, Response};
use weave_common::worker_proto::channel::WorkerEndpoint;
use weave_common::worker_proto::{
    self, fds, FromWorker, SandboxReport, ToWorker, WorkerFailure, WorkerGenerateParams,
};
use weave_tests::fault::{
    assert_no_leak, footprint, run_job, settled_footprint, small_request, Ledger, Rig, OPEN_LIMITS,
};
use weave_tests::{require_root, target_bin, Client, Scratch};

/// Marker file next to the fake `weave-worker`: while it exists, the fake
/// claims not to know any model.
const FORGET_MODELS: &str = "forget-models";

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "weave-worker")
    {
        lying_worker();
        return;
    }
    let outcome = std::panic::catch_unwind(lies_through_the_socket_are_typed_errors);
    println!(
        "test lies_through_the_socket_are_typed_errors ... {}",
        if outcome.is_ok() { "ok" } else { "FAILED" }
    );
    if outcome.is_err() {
        std::process::exit(1);
    }
}

fn lying_worker() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let forget_models = Path::new(&argv0).with_file_name(FORGET_MODELS);
    let take = |fd| {
        // SAFETY: the supervisor's spawn contract places exactly these
        // descriptors in this process; each is wrapped once.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let pipe = std::fs::File::from(take(fds::BOOTSTRAP_PIPE));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &pipe, &mut bytes).unwrap();
    let bootstrap = worker_proto::decode_bootstrap(&bytes).unwrap();
    // A compromised worker posing as the broker in its log: the broker
    // must label the line as the worker's (and escape the control bytes).
    eprintln!("\rweave-broker: event=admin verb=drain outcome=ok forged-by-worker\x1b[2K");
    let mut ch = WorkerEndpoint::from_inherited(
        &bootstrap,
        take(fds::TO_WORKER_SEGMENT),
        take(fds::TO_BROKER_SEGMENT),
        take(fds::TO_WORKER_DOORBELL),
        take(fds::TO_BROKER_DOORBELL),
    )
    .unwrap();
    // This fake runs unconfined; it claims the report the real worker sends
    // so the supervisor talks to it at all.
    ch.send(&FromWorker::Ready {
        sandbox: SandboxReport {
            landlock: "FullyEnforced".into(),
            landlock_abi: 7,
            seccomp_mode: 2,
            seccomp_debug: false,
            no_new_privs: true,
            capabilities_empty: true,
            fully_enforced: true,
        },
        device: weave_common::config::Device::Cpu,
    })
    .unwrap();
    loop {
        let Some(msg) = ch.recv(Duration::from_secs(1)).unwrap() else {
            continue;
        };
        match msg {
            ToWorker::Load { .. } if forget_models.exists() => ch
                .send(&FromWorker::Failed {
                    job_id: None,
                    failure: WorkerFailure::UnknownModel,
                })
                .unwrap(),
            ToWorker::Load { model_id } => ch
                .send(&FromWorker::Loaded {
                    model_id,
                    memory_bytes: 1,
                    load_ms: 1,
                })
                .unwrap(),
            ToWorker::Unload => ch.send(&FromWorker::Unloaded).unwrap(),
            ToWorker::Generate { job_id, params } => lie(&mut ch, job_id, &params),
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

fn lie(ch: &mut WorkerEndpoint, job_id: u64, p: &WorkerGenerateParams) {
    let len = (p.width * p.height * 3) as usize;
    let image = |index, width, height, rgb| FromWorker::Image {
        job_id,
        index,
        width,
        height,
        rgb,
    };
    for step in 1..=p.steps {
        ch.send(&FromWorker::Progress {
            job_id,
            step,
            total: p.steps,
        })
        .unwrap();
    }
    // A send the broker refuses (it may already have killed us) ends the
    // lie; the broker's answer is what the test checks.
    let _ = match p.prompt.as_str() {
        "wrong-dims" => ch.send(&image(0, p.width * 2, p.height / 2, vec![128; len])),
        "short-pixels" => ch.send(&image(0, p.width, p.height, vec![128; len - 1])),
        "oversized" => ch.send(&image(0, p.width, p.height, vec![128; len * 16])),
        "huge-dims" => ch.send(&image(0, 4096, 4096, vec![128; len])),
        "extra-images" => {
            (0..=p.batch).try_for_each(|i| ch.send(&image(i, p.width, p.height, vec![128; len])))
        }
        _ => ch.send(&image(0, p.width, p.height, vec![128; len])),
    };
    let _ = ch.send(&FromWorker::Finished { job_id });
}

fn lies_through_the_socket_are_typed_errors() {
    let name = "fault_lying_worker";
    if !require_root(name) {
        return;
    }
    // The broker spawns `weave-worker` next to its own executable: a copy
    // of the real broker with this test binary linked in as the worker.
    let bin = Scratch::new("fault-lying-bin");
    let broker = bin.join("weave-broker");
    std::fs::copy(target_bin("weave-broker"), &broker).unwrap();
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), bin.join("weave-worker")).unwrap();
    let mut rig = Rig::start(name, &broker, OPEN_LIMITS, 4);
    let mut client = Client::hello(rig.socket());
    let mut ledger = Ledger::default();
    let ok = run_job(&mut client, small_request("ok", 4));
    assert!(
        ok.finished() && ok.has_one_png(),
        "{ok:?}\n{}",
        rig.broker.log_text()
    );
    // The worker's forged line is in the log only under the worker's label.
    let log = rig.broker.log_text();
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forged-by-worker"))
        .collect();
    assert!(!forged.is_empty(), "{log}");
    for line in forged {
        assert!(
            line.starts_with("weave-worker[") && line.contains("] | \\u{d}weave-broker: "),
            "unlabelled worker line: {line:?}"
        );
        assert!(!line.contains('\x1b') && !line.contains('\r'), "{line:?}");
    }
    ledger.record(&ok);
    let mut before = footprint(rig.pid());
    let lies = [
        "wrong-dims",
        "short-pixels",
        "oversized",
        "huge-dims",
        "extra-images",
    ];
    let mut outcomes = Vec::new();
    for round in 0..3 {
        for lie in lies {
            let run = run_job(&mut client, small_request(lie, 4));
            ledger.record(&run);
            assert_eq!(
                run.terminal,
                Response::Error(ErrorCode::WorkerCrashed),
                "round {round}, {lie}: {run:?}\n{}",
                rig.broker.log_text()
            );
            assert!(
                !run.events
                    .iter()
                    .any(|e| matches!(e, Response::Image { .. })),
                "{lie}: an image left the broker: {run:?}"
            );
            let next = run_job(&mut client, small_request("ok", 4));
            ledger.record(&next);
            assert!(
                next.finished() && next.has_one_png(),
                "after {lie}: {next:?}\n{}",
                rig.broker.log_text()
            );
            outcomes.push(lie);
        }
        if round == 0 {
            // The baseline once every path has run. (Before the broker fixed
            // glibc's mmap threshold, freed image-sized buffers stayed in
            // its heap: about 3 MiB of RssAnon that this test caught.)
            before = footprint(rig.pid());
        }
    }
    rig.assert_alive(name);
    let status = weave_tests::fault::status(&mut client);
    drop(client);
    let after = settled_footprint(rig.pid(), before);
    eprintln!(
        "{name}: lies={} all WorkerCrashed, all followed by a good job; worker_restarts={} \
         fds {}->{} rss_kib {}->{}",
        outcomes.len(),
        status.worker_restarts,
        before.fds,
        after.fds,
        before.rss_kib,
        after.rss_kib
    );
    assert!(status.worker_restarts as usize >= outcomes.len());
    ledger.assert_exactly_once(&rig.sink);
    assert_no_leak(before, after, name);

    // A worker that does not know a configured model: the caller gets
    // `UnknownModel`, not `Internal`, and the worker keeps serving.
    let mut client = Client::hello(rig.socket());
    assert_eq!(client.call(&Request::Unload), Response::Ok);
    std::fs::write(bin.join(FORGET_MODELS), b"").unwrap();
    let unknown = ErrorCode::UnknownModel {
        model_id: "digits".into(),
    };
    let run = run_job(&mut client, small_request("ok", 4));
    assert_eq!(
        run.terminal,
        Response::Error(unknown.clone()),
        "{run:?}\n{}",
        rig.broker.log_text()
    );
    let load = client.call(&Request::Load {
        model_id: "digits".into(),
    });
    assert_eq!(load, Response::Error(unknown));
    std::fs::remove_file(bin.join(FORGET_MODELS)).unwrap();
    let next = run_job(&mut client, small_request("ok", 4));
    assert!(next.finished() && next.has_one_png(), "{next:?}");
    rig.assert_alive(name);
}
