//! Fault injection around the broker, real processes throughout: key
//! rotation while four clients keep generating, the audit sink vanishing and
//! coming back, and clients hanging up in the middle of their streams.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, Request, Response};
use weave_tests::fault::{
    assert_no_leak, footprint, run_job, settled_footprint, small_request, status, ClosableSink,
    JobRun, Ledger, Rig, OPEN_LIMITS,
};
use weave_tests::{require_digits, require_root, target_bin, Client};

fn key_generation(admin: &mut Client) -> u64 {
    match admin.call(&Request::ChannelStats) {
        Response::ChannelStats(report) => report.key_generation,
        other => panic!("ChannelStats answered {other:?}"),
    }
}

#[test]
fn key_rotation_under_load_loses_no_job() {
    let name = "fault_rotate";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let mut rig = Rig::start(name, &target_bin("weave-broker"), OPEN_LIMITS, 4);
    let socket = rig.socket().to_owned();
    let mut admin = Client::hello(&socket);
    let warm = run_job(&mut admin, small_request("0", 4));
    assert!(warm.finished());
    let before = footprint(rig.pid());
    let generation_before = key_generation(&mut admin);

    let runs = Arc::new(Mutex::new(Vec::<JobRun>::new()));
    let loaders: Vec<_> = (0..4)
        .map(|index| {
            let (socket, runs) = (socket.clone(), Arc::clone(&runs));
            std::thread::spawn(move || {
                let mut client = Client::hello(&socket);
                for job in 0..10 {
                    let run = run_job(
                        &mut client,
                        small_request(&((index + job) % 10).to_string(), 4),
                    );
                    runs.lock().unwrap().push(run);
                }
            })
        })
        .collect();
    let mut rotations = 0;
    while !loaders.iter().all(|l| l.is_finished()) {
        assert_eq!(admin.call(&Request::RotateKeys), Response::Ok);
        rotations += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    for loader in loaders {
        loader.join().unwrap();
    }
    let generation_after = key_generation(&mut admin);
    let runs = runs.lock().unwrap();
    let mut ledger = Ledger::default();
    for run in runs.iter() {
        ledger.record(run);
        assert!(
            run.finished() && run.has_one_png(),
            "a job failed across a key rotation: {run:?}\n{}",
            rig.broker.log_text()
        );
    }
    eprintln!(
        "{name}: jobs={} rotations={rotations} key_generation {generation_before}->{generation_after}",
        runs.len()
    );
    assert_eq!(runs.len(), 40);
    assert!(generation_after >= generation_before + rotations);
    rig.assert_alive(name);
    ledger.assert_exactly_once(&rig.sink);
    drop(admin);
    assert_no_leak(before, settled_footprint(rig.pid(), before), name);
}

#[test]
fn audit_sink_disappearing_and_coming_back_resumes_the_records() {
    let name = "fault_audit";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let scratch_sink =
        std::env::temp_dir().join(format!("weave-fault-syslog-{}.sock", std::process::id()));
    let sink = ClosableSink::bind(&scratch_sink);
    let mut rig = Rig::start_with_audit(
        name,
        &target_bin("weave-broker"),
        OPEN_LIMITS,
        4,
        Some(&scratch_sink),
    );
    let mut client = Client::hello(rig.socket());
    let first = run_job(&mut client, small_request("1", 4));
    assert!(first.finished());
    let job = |run: &JobRun| format!("job={}", run.job_id.unwrap());
    let has = |records: &[String], needle: &str| {
        records
            .iter()
            .any(|r| r.contains(needle) && r.contains("event=job "))
    };
    let end = Instant::now() + Duration::from_secs(5);
    while !has(&sink.records(), &job(&first)) {
        assert!(Instant::now() < end, "no record before the outage");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = footprint(rig.pid());

    // Outage: the socket is closed and its path removed.
    let seen_before_outage = sink.close();
    let mut during = Vec::new();
    let outage = Instant::now();
    for _ in 0..5 {
        let run = run_job(&mut client, small_request("2", 4));
        assert!(
            run.finished(),
            "a job failed while the sink was away: {run:?}"
        );
        during.push(run);
    }
    let outage_s = outage.elapsed().as_secs_f64();
    rig.assert_alive("during the outage");
    assert!(
        rig.broker.log_text().contains("event=job"),
        "records during the outage go to stderr: {}",
        rig.broker.log_text()
    );

    // The sink comes back at the same path: records resume.
    let sink = ClosableSink::bind(&scratch_sink);
    let mut after_runs = Vec::new();
    for _ in 0..3 {
        let run = run_job(&mut client, small_request("3", 4));
        assert!(run.finished());
        after_runs.push(run);
    }
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let records = sink.records();
        let missing: Vec<_> = after_runs
            .iter()
            .filter(|r| !has(&records, &job(r)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "records did not resume after the sink came back: {records:?}\n{}",
            rig.broker.log_text()
        );
        // The broker reconnects on the next record it sends.
        status(&mut client);
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = sink.close();
    eprintln!(
        "{name}: records before={} jobs during outage={} ({outage_s:.1} s) records after return={}",
        seen_before_outage.len(),
        during.len(),
        resumed.len()
    );
    rig.assert_alive(name);
    drop(client);
    assert_no_leak(before, settled_footprint(rig.pid(), before), name);
}

#[test]
fn clients_hanging_up_mid_stream_cancel_their_jobs_and_leak_nothing() {
    let name = "fault_hangup";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let mut rig = Rig::start(name, &target_bin("weave-broker"), OPEN_LIMITS, 4);
    let socket = rig.socket().to_owned();
    let mut admin = Client::hello(&socket);
    assert!(run_job(&mut admin, small_request("0", 4)).finished());
    let before = footprint(rig.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hangups = 0;
    let mut ids = Vec::new();
    // 30 clients each read a random number of events (0..=6) of a 20-step
    // job and hang up; one in three hangs up right after sending.
    for index in 0..30u32 {
        let mut client = Client::hello(&socket);
        client.send(&Request::Generate(small_request("5", 20)));
        let read = index % 7;
        for _ in 0..read {
            match client.recv() {
                Ok(Response::Queued { job_id, .. }) => ids.push(job_id),
                Ok(event) if event.ends_generate_stream() => break,
                Ok(_) => {}
                Err(e) => panic!("stream broke: {e:?}"),
            }
        }
        drop(client);
        hangups += 1;
    }
    stop.store(true, Ordering::SeqCst);
    // Every job the broker accepted ends: nothing left queued or running.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match admin.call(&Request::AllJobs) {
            // What is left is the history of ended jobs.
            Response::Jobs(jobs)
                if jobs.iter().all(|j| {
                    matches!(
                        j.state,
                        weave_common::proto::JobState::Finished
                            | weave_common::proto::JobState::Failed
                    )
                }) =>
            {
                break
            }
            Response::Jobs(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < end, "jobs of departed clients never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each accepted job has exactly one audit record, cancelled or finished.
    let end = Instant::now() + Duration::from_secs(5);
    let audited = loop {
        let audited = weave_tests::fault::audited_jobs(&rig.sink);
        if ids.iter().all(|id| audited.contains_key(id)) || Instant::now() >= end {
            break audited;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for id in &ids {
        assert_eq!(audited.get(id), Some(&1), "job {id}: {audited:?}");
    }
    let cancelled = rig
        .sink
        .records()
        .iter()
        .filter(|r| r.contains("event=job ") && r.contains("outcome=cancelled"))
        .count();
    // The broker still serves, and nothing is left behind.
    let run = run_job(&mut admin, small_request("9", 4));
    assert!(run.finished() && run.has_one_png(), "{run:?}");
    assert_ne!(run.error(), Some(&ErrorCode::WorkerCrashed));
    rig.assert_alive(name);
    drop(admin);
    let after = settled_footprint(rig.pid(), before);
    eprintln!(
        "{name}: hangups={hangups} accepted_seen={} cancelled={cancelled} fds {}->{} rss_kib {}->{}",
        ids.len(),
        before.fds,
        after.fds,
        before.rss_kib,
        after.rss_kib
    );
    assert_no_leak(before, after, name);
}
