//! Fault injection: bytes of the worker channel's shared-memory slots are
//! corrupted on the fly while jobs run. The test opens the broker's own
//! memfds read-write through `/proc/<broker>/fd/N` (root; no hook in the
//! broker), then forges publishes of garbage and flips bytes in the slots.
//! The broker must reject what it reads (CRC/AEAD), kill and respawn the
//! worker, fail the job with `WorkerCrashed`, and serve the next job.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weave_common::proto::{ErrorCode, Response};
use weave_tests::fault::{
    assert_no_leak, footprint, run_job, settled_footprint, small_request, status, Ledger, Rig, Rng,
    SegmentDirection, SharedSegment, OPEN_LIMITS,
};
use weave_tests::{require_digits, require_root, target_bin, Client};

const ROUNDS: u32 = 10;

/// Corrupts segments of `direction` until `stop`: every 200 µs it either
/// forges the next message (garbage + head bump) or flips bytes inside a
/// random slot. Segments are re-opened as the worker is respawned.
fn corrupter(
    broker: u32,
    direction: SegmentDirection,
    seed: u64,
    stop: Arc<AtomicBool>,
    injected: Arc<AtomicU32>,
) {
    let mut rng = Rng::from_env("corrupter");
    for _ in 0..(seed % 7) {
        rng.next_u64();
    }
    let mut garbage = vec![0u8; 96];
    while !stop.load(Ordering::SeqCst) {
        for segment in SharedSegment::open_all(broker)
            .iter()
            .filter(|s| s.direction == direction)
        {
            rng.fill(&mut garbage);
            if rng.below(2) == 0 {
                segment.forge_next_message(&garbage);
            } else {
                let slot = rng.below(u64::from(segment.slot_count)) as u32;
                let offset = rng.below(256) as u32;
                segment.scribble(slot, offset, &garbage[..16]);
            }
            injected.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn corrupt_during_jobs(direction: SegmentDirection, name: &str) {
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let mut rig = Rig::start(name, &target_bin("weave-broker"), OPEN_LIMITS, 4);
    let socket = rig.socket().to_owned();
    let mut ledger = Ledger::default();
    let mut client = Client::hello(&socket);
    let warm = run_job(&mut client, small_request("1", 4));
    assert!(warm.finished(), "{warm:?}");
    ledger.record(&warm);
    // The footprint baseline is taken after the third round: the first
    // worker kills and respawns grow the heap once (about 3 MiB, flat
    // afterwards).
    let mut before = footprint(rig.pid());
    let (mut rejected, mut finished, mut next_rejected) = (0, 0, 0);
    let mut injected_total = 0;
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let injected = Arc::new(AtomicU32::new(0));
        let corrupting = {
            let (stop, injected, pid) = (Arc::clone(&stop), Arc::clone(&injected), rig.pid());
            std::thread::spawn(move || corrupter(pid, direction, u64::from(round), stop, injected))
        };
        // Long enough (20 steps) that the corrupter meets messages in flight.
        let run = run_job(&mut client, small_request("7", 20));
        stop.store(true, Ordering::SeqCst);
        corrupting.join().unwrap();
        injected_total += injected.load(Ordering::SeqCst);
        ledger.record(&run);
        match &run.terminal {
            Response::Error(ErrorCode::WorkerCrashed) => rejected += 1,
            // Corruption that only hit slots the writer later overwrote
            // changes nothing; the image must still be whole.
            Response::Finished { .. } => {
                assert!(run.has_one_png(), "{run:?}");
                finished += 1;
            }
            other => panic!("round {round}: {other:?}\n{}", rig.broker.log_text()),
        }
        // Recovery. A forged broker→worker message the worker read only
        // after the job (between jobs) fails the next job instead: typed,
        // and the one after that must succeed.
        let mut next = run_job(&mut client, small_request("2", 4));
        ledger.record(&next);
        if next.error() == Some(&ErrorCode::WorkerCrashed) {
            next_rejected += 1;
            next = run_job(&mut client, small_request("2", 4));
            ledger.record(&next);
        }
        assert!(
            next.finished() && next.has_one_png(),
            "round {round}: no recovery: {next:?}\n{}",
            rig.broker.log_text()
        );
        // The baseline is taken once the broker has run a few respawns, so
        // what follows measures growth per round, not warm-up.
        if round == ROUNDS / 2 {
            before = footprint(rig.pid());
        }
    }
    rig.assert_alive("after the corruption");
    let report = status(&mut client);
    drop(client);
    let after = settled_footprint(rig.pid(), before);
    eprintln!(
        "{name}: rounds={ROUNDS} corruptions_injected={injected_total} rejected_worker_crashed={rejected} \
         finished_unharmed={finished} next_job_rejected={next_rejected} worker_restarts={} \
         fds {}->{} rss_kib {}->{}",
        report.worker_restarts, before.fds, after.fds, before.rss_kib, after.rss_kib
    );
    assert!(
        rejected + next_rejected >= ROUNDS / 2,
        "corruption was rarely detected ({rejected} + {next_rejected} of {ROUNDS}): \
         the corrupter missed the slots or the reader accepts garbage"
    );
    assert!(report.worker_restarts >= rejected + next_rejected);
    ledger.assert_exactly_once(&rig.sink);
    assert_no_leak(before, after, name);
    let log = rig.broker.log_text();
    assert!(
        log.contains("weave-broker: worker (pid"),
        "the broker logged no worker kill: {log}"
    );
}

#[test]
fn corrupted_worker_to_broker_slots_are_rejected_and_the_job_fails_typed() {
    corrupt_during_jobs(SegmentDirection::ToBroker, "fault_shm_to_broker");
}

#[test]
fn corrupted_broker_to_worker_slots_kill_the_worker_and_the_job_fails_typed() {
    corrupt_during_jobs(SegmentDirection::ToWorker, "fault_shm_to_worker");
}
