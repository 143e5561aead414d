//! Fault injection: the real sandboxed worker is SIGKILLed at a random
//! point of each of 100 generations (while it starts, loads the digits
//! model, runs a step or hands back the image), through a real user-mode
//! broker. Every accepted job must get exactly one terminal answer (on its
//! stream and in the audit trail), the killed job a typed error, the next
//! job a PNG, and the broker must keep its fd count and memory flat.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, Response};
use weave_tests::fault::{
    assert_no_leak, footprint, run_job, settled_footprint, sigkill, small_request, status,
    worker_pid, Ledger, Rig, Rng, OPEN_LIMITS,
};
use weave_tests::{require_digits, require_root, target_bin, Client};

/// `WEAVE_FAULT_KILLS` overrides the count (default 100).
fn kills() -> u32 {
    std::env::var("WEAVE_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn one_hundred_worker_kills_at_random_points_are_all_recovered() {
    let name = "fault_kill";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let mut rng = Rng::from_env(name);
    let mut rig = Rig::start(name, &target_bin("weave-broker"), OPEN_LIMITS, 4);
    let socket = rig.socket().to_owned();
    let mut ledger = Ledger::default();

    // Warm-up: the first job pays the worker start and the model load, the
    // way every job right after a kill does; its duration bounds the
    // window the kill point is drawn from.
    let mut client = Client::hello(&socket);
    let warm = run_job(&mut client, small_request("0", 4));
    assert!(warm.finished() && warm.has_one_png(), "{warm:?}");
    ledger.record(&warm);
    let window_ms = (warm.elapsed.as_millis() as u64).clamp(50, 5_000);
    let before = footprint(rig.pid());

    let total = kills();
    let started = Instant::now();
    let (mut crashed, mut finished_anyway, mut recovered, mut retried) = (0, 0, 0, 0);
    let mut kills_delivered = 0;
    for round in 0..total {
        // The victim runs on its own connection and thread; this thread
        // picks the moment.
        let (done_tx, done_rx) = mpsc::channel();
        let victim_socket = socket.clone();
        let prompt = (round % 10).to_string();
        let victim = std::thread::spawn(move || {
            let mut victim = Client::hello(&victim_socket);
            let run = run_job(&mut victim, small_request(&prompt, 4));
            let _ = done_tx.send(());
            run
        });
        let delay = Duration::from_millis(rng.below(window_ms));
        let landed = match done_rx.recv_timeout(delay) {
            Ok(()) => false,
            Err(_) => {
                // The worker may not exist yet (backoff) or be starting:
                // wait for it briefly, the kill point stays inside the job.
                let end = Instant::now() + Duration::from_secs(2);
                let mut pid = worker_pid(rig.pid());
                while pid.is_none() && Instant::now() < end && done_rx.try_recv().is_err() {
                    std::thread::sleep(Duration::from_millis(2));
                    pid = worker_pid(rig.pid());
                }
                pid.is_some_and(sigkill)
            }
        };
        if landed {
            kills_delivered += 1;
        }
        let run = victim.join().unwrap();
        ledger.record(&run);
        match (&run.terminal, landed) {
            (Response::Error(ErrorCode::WorkerCrashed), true) => crashed += 1,
            // The kill raced the last message: the job was already done.
            (Response::Finished { .. }, _) => {
                assert!(run.has_one_png(), "round {round}: {run:?}");
                finished_anyway += 1;
            }
            (other, _) => panic!(
                "round {round} (kill landed: {landed}): {other:?}\n{}",
                rig.broker.log_text()
            ),
        }
        // Recovery: the next job gets a PNG. A kill that landed just after
        // the victim's last message is noticed by this job, which then
        // fails typed; one retry is allowed for that case only.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let next = run_job(&mut client, small_request("8", 4));
            ledger.record(&next);
            if next.finished() {
                assert!(next.has_one_png(), "{next:?}");
                recovered += 1;
                break;
            }
            assert!(
                attempts == 1
                    && landed
                    && run.finished()
                    && next.error() == Some(&ErrorCode::WorkerCrashed),
                "round {round}: recovery job failed: {next:?}\n{}",
                rig.broker.log_text()
            );
            retried += 1;
        }
    }
    let elapsed = started.elapsed();
    rig.assert_alive("after the kills");
    let report = status(&mut client);
    drop(client);
    let after = settled_footprint(rig.pid(), before);
    eprintln!(
        "fault_kill: rounds={total} kills_delivered={kills_delivered} worker_crashed={crashed} \
         finished_before_kill={finished_anyway} recovered={recovered} recovery_retries={retried} \
         worker_restarts={} accepted={} elapsed_s={:.1} fds {}->{} rss_kib {}->{}",
        report.worker_restarts,
        ledger.accepted(),
        elapsed.as_secs_f64(),
        before.fds,
        after.fds,
        before.rss_kib,
        after.rss_kib
    );
    assert_eq!(recovered, total, "every kill was followed by a good job");
    assert!(
        kills_delivered >= total * 9 / 10,
        "too few kills landed inside a job ({kills_delivered}/{total}); the window is off"
    );
    assert!(report.worker_restarts >= kills_delivered.min(crashed));
    ledger.assert_exactly_once(&rig.sink);
    assert_no_leak(before, after, "100 worker kills");
}
