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

/// Nine tenths of `job`, in ms, at least 10.
fn window_ms(job: Duration) -> u64 {
    (job.as_millis() as u64 * 9 / 10).max(10)
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
    // way every job right after a kill does; the second is a warm job.
    let mut client = Client::hello(&socket);
    let cold = run_job(&mut client, small_request("0", 4));
    assert!(cold.finished() && cold.has_one_png(), "{cold:?}");
    ledger.record(&cold);
    let warm = run_job(&mut client, small_request("0", 4));
    assert!(warm.finished(), "{warm:?}");
    ledger.record(&warm);
    // Kill points are drawn uniformly over a whole job: a warm one (steps
    // and the image hand-back) in three rounds of four; in every fourth the
    // previous round's recovery job is skipped, so the victim starts the
    // worker and loads the model itself and the kill may land there.
    // The shortest job seen of each kind (updated as the rounds run: the
    // first start pays cold caches) bounds the window the point is drawn
    // from, so nearly every kill lands inside its job.
    let mut shortest_cold = cold.elapsed;
    let mut shortest_warm = warm.elapsed;
    eprintln!(
        "{name}: job durations: cold start {:?}, warm {:?}",
        cold.elapsed, warm.elapsed
    );
    let mut before = footprint(rig.pid());
    let total = kills();
    let started = Instant::now();
    let (mut crashed, mut finished_anyway, mut recovered, mut retried) = (0, 0, 0, 0);
    let mut recoveries_expected = 0;
    let mut kills_delivered = 0;
    let (mut round, mut unrecovered, mut kills_recovered) = (0u32, 0u32, 0u32);
    // Rounds run until `total` kills have landed inside a job.
    while kills_delivered < total && round < total * 2 {
        round += 1;
        let cold_start = round % 4 == 3;
        if round == 10 {
            // The footprint baseline, once every code path (kill, respawn,
            // reload) has run a few times.
            before = footprint(rig.pid());
        }
        // The victim runs on its own connection and thread; this thread
        // picks the moment.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let victim_socket = socket.clone();
        let prompt = (round % 10).to_string();
        let victim = std::thread::spawn(move || {
            let mut victim = Client::hello(&victim_socket);
            let run = run_job(&mut victim, small_request(&prompt, 4));
            let _ = done_tx.send(());
            run
        });
        let delay = Duration::from_millis(rng.below(window_ms(if cold_start {
            shortest_cold
        } else {
            shortest_warm
        })));
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
            unrecovered += 1;
        }
        let run = victim.join().unwrap();
        ledger.record(&run);
        match (&run.terminal, landed) {
            (Response::Error(ErrorCode::WorkerCrashed), true) => crashed += 1,
            // The kill raced the last message: the job was already done.
            (Response::Finished { .. }, _) => {
                assert!(run.has_one_png(), "round {round}: {run:?}");
                if !cold_start {
                    shortest_warm = shortest_warm.min(run.elapsed);
                }
                finished_anyway += 1;
            }
            (other, _) => panic!(
                "round {round} (kill landed: {landed}): {other:?}\n{}",
                rig.broker.log_text()
            ),
        }
        // Recovery: the next job gets a PNG (skipped before a cold-start
        // round, whose victim then follows the kill directly). A kill that
        // landed just after the victim's last message is noticed by this
        // job, which then fails typed; one retry is allowed for that only.
        if (round + 1) % 4 == 3 && kills_delivered < total {
            continue;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let next = run_job(&mut client, small_request("8", 4));
            ledger.record(&next);
            if next.finished() {
                assert!(next.has_one_png(), "{next:?}");
                if landed {
                    shortest_cold = shortest_cold.min(next.elapsed);
                }
                recovered += 1;
                kills_recovered += std::mem::take(&mut unrecovered);
                break;
            }
            assert!(
                attempts == 1 && landed && next.error() == Some(&ErrorCode::WorkerCrashed),
                "round {round}: recovery job failed: {next:?}\n{}",
                rig.broker.log_text()
            );
            retried += 1;
        }
        recoveries_expected += 1;
        if round % 10 == 9 {
            let now = footprint(rig.pid());
            eprintln!(
                "{name}: after round {round}: fds {} rss_kib {}",
                now.fds, now.rss_kib
            );
        }
    }
    assert_eq!(unrecovered, 0, "the last kill was followed by a good job");
    let elapsed = started.elapsed();
    rig.assert_alive("after the kills");
    let report = status(&mut client);
    drop(client);
    let after = settled_footprint(rig.pid(), before);
    eprintln!(
        "fault_kill: rounds={round} kills_delivered={kills_delivered} kills_recovered={kills_recovered} worker_crashed={crashed} \
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
    assert_eq!(
        recovered, recoveries_expected,
        "every recovery job got a PNG"
    );
    assert_eq!(
        kills_delivered, total,
        "too few kills landed inside a job in {round} rounds; the window is off"
    );
    assert_eq!(kills_recovered, total);
    // A kill that lands while a worker starts fails that start, and the
    // next start counts once: restarts can trail the crashes slightly.
    assert!(
        report.worker_restarts >= crashed * 3 / 4,
        "worker_restarts {} for {crashed} crashes",
        report.worker_restarts
    );
    ledger.assert_exactly_once(&rig.sink);
    assert_no_leak(before, after, "100 worker kills");
}
