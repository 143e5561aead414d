//! Jobs through the real broker, supervisor and sandboxed worker with the
//! digits demo model: busy, fairness, worker crash, idle unload, cancel and
//! disconnect.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, GenerateRequest, JobState, Request, Response};
use weave_tests::{
    digits_request, require_digits, require_root, stream_error, workers_of, AuditSink,
    BrokerProcess, Client, Scratch, TestConfig,
};

struct Setup {
    broker: BrokerProcess,
    sink: AuditSink,
    _scratch: Scratch,
}

fn start(name: &str, limits: &str, steps: u32) -> Option<Setup> {
    if !require_root(name) || !require_digits(name) {
        return None;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.limits = limits.to_owned();
    config.steps = steps;
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    Some(Setup {
        broker,
        sink,
        _scratch: scratch,
    })
}

/// A request slow enough to be caught mid-generation (and still queued
/// behind another one) however fast the digits model is.
fn slow_request(tag: Option<&str>) -> GenerateRequest {
    GenerateRequest {
        // Many cheap steps rather than few heavy ones: cancellation is
        // checked between steps, so each step must stay short even on a
        // loaded machine.
        steps: Some(150),
        width: Some(64),
        height: Some(64),
        batch: 1,
        tag: tag.map(str::to_owned),
        ..digits_request("3")
    }
}

/// Sends a generate and waits for `Queued`; returns the job id.
fn submit(client: &mut Client, request: GenerateRequest) -> u64 {
    client.send(&Request::Generate(request));
    match client.recv().unwrap() {
        Response::Queued { job_id, .. } => job_id,
        other => panic!("expected Queued, got {other:?}"),
    }
}

/// Reads events until the first `Progress`.
fn wait_progress(client: &mut Client) {
    loop {
        match client.recv().unwrap() {
            Response::Progress { .. } => return,
            event if event.ends_generate_stream() => panic!("ended early: {event:?}"),
            _ => {}
        }
    }
}

fn finished_png(events: &[Response]) -> Vec<u8> {
    assert!(
        matches!(events.last(), Some(Response::Finished { .. })),
        "{events:?}"
    );
    events
        .iter()
        .find_map(|e| match e {
            Response::Image {
                png,
                width: 32,
                height: 32,
                ..
            } => Some(png.clone()),
            _ => None,
        })
        .expect("one 32x32 image")
}

#[test]
fn generation_streams_progress_and_a_png_with_parameters() {
    let Some(setup) = start("gen", "", 4) else {
        return;
    };
    let mut client = Client::hello(&setup.broker.socket);
    let events = client.generate(digits_request("5"));
    let steps = events
        .iter()
        .filter(|e| matches!(e, Response::Progress { total: 4, .. }))
        .count();
    assert_eq!(steps, 4, "{events:?}");
    let png = finished_png(&events);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let text = String::from_utf8_lossy(&png);
    assert!(text.contains("parameters"), "A1111 chunk present");
    assert!(
        text.contains("Seed: 7, Size: 32x32, Model: digits"),
        "{text}"
    );
    assert!(setup
        .sink
        .wait_for(&["event=job", "outcome=finished"], Duration::from_secs(5))
        .is_some());
}

#[test]
fn full_queue_is_busy_with_a_retry_hint() {
    let Some(setup) = start(
        "busy",
        "queue_depth = 2\nper_client_queue_depth = 2\nrate_burst = 20",
        10,
    ) else {
        return;
    };
    let socket = &setup.broker.socket;
    let mut running = Client::hello(socket);
    submit(&mut running, slow_request(None));
    let mut queued = Client::hello(socket);
    submit(&mut queued, slow_request(None));
    let mut refused = Client::hello(socket);
    let events = refused.generate(digits_request("1"));
    match stream_error(&events) {
        Some(ErrorCode::Busy { retry_after_ms }) => assert!(retry_after_ms > 0),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(events.len(), 1);
}

#[test]
fn two_tags_submitting_ten_jobs_each_are_served_interleaved() {
    let Some(setup) = start(
        "fair",
        "queue_depth = 32\nper_client_queue_depth = 32\nrate_burst = 40\nrate_per_minute = 600",
        1,
    ) else {
        return;
    };
    let socket = &setup.broker.socket;
    // A deliberately huge blocker keeps the worker busy while both tags
    // fill the queue; it is cancelled once everything is queued.
    let mut blocker = Client::hello(socket);
    let blocker_id = submit(
        &mut blocker,
        GenerateRequest {
            width: Some(128),
            height: Some(128),
            ..slow_request(Some("z"))
        },
    );
    wait_progress(&mut blocker);
    let mut clients: Vec<Client> = (0..20).map(|_| Client::hello(socket)).collect();
    let mut ids = std::collections::HashMap::new();
    for (index, client) in clients.iter_mut().enumerate() {
        let tag = if index < 10 { "a" } else { "b" };
        let request = GenerateRequest {
            tag: Some(tag.into()),
            ..digits_request("4")
        };
        ids.insert(submit(client, request), tag);
    }
    // The queue order alternates already.
    let mut admin = Client::hello(socket);
    match admin.call(&Request::AllJobs) {
        Response::Jobs(jobs) => {
            let mut queued: Vec<_> = jobs.iter().filter(|j| j.position.is_some()).collect();
            queued.sort_by_key(|j| j.position);
            let tags: Vec<&str> = queued.iter().map(|j| j.tag.as_deref().unwrap()).collect();
            assert_eq!(tags.len(), 20, "{jobs:?}");
            for pair in tags.chunks(2) {
                assert_ne!(pair[0], pair[1], "queue not interleaved: {tags:?}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        admin.call(&Request::Cancel { job_id: blocker_id }),
        Response::Ok
    );
    assert_eq!(
        stream_error(&blocker.collect_stream()),
        Some(ErrorCode::Cancelled)
    );
    let mut started = Vec::new();
    for client in &mut clients {
        let events = client.collect_stream();
        finished_png(&events);
    }
    // Completion order from the audit trail (one record per job, in order).
    let end = Instant::now() + Duration::from_secs(30);
    while started.len() < 20 && Instant::now() < end {
        started = setup
            .sink
            .records()
            .iter()
            .filter(|r| r.contains("event=job ") && r.contains("outcome=finished"))
            .filter_map(|r| {
                let id: u64 = r.split("job=").nth(1)?.split(' ').next()?.parse().ok()?;
                ids.get(&id).copied()
            })
            .collect();
    }
    assert_eq!(started.len(), 20, "{started:?}");
    for pair in started.chunks(2) {
        assert_ne!(pair[0], pair[1], "not interleaved: {started:?}");
    }
}

#[test]
fn kill_9_of_the_worker_mid_generation_is_worker_crashed_and_the_next_succeeds() {
    let Some(setup) = start("kill9", "", 10) else {
        return;
    };
    let socket = &setup.broker.socket;
    let mut victim = Client::hello(socket);
    submit(&mut victim, slow_request(None));
    wait_progress(&mut victim);
    let worker = *workers_of(setup.broker.pid())
        .first()
        .expect("a worker child");
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(worker.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {worker}");
    let events = victim.collect_stream();
    assert_eq!(
        stream_error(&events),
        Some(ErrorCode::WorkerCrashed),
        "{events:?}"
    );

    let mut next = Client::hello(socket);
    finished_png(&next.generate(digits_request("8")));
    match next.call(&Request::Status) {
        Response::Status(status) => assert!(status.worker_restarts >= 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn idle_model_is_unloaded_after_the_timeout() {
    let Some(setup) = start("idle", "idle_unload_s = 1", 2) else {
        return;
    };
    let mut client = Client::hello(&setup.broker.socket);
    finished_png(&client.generate(digits_request("2")));
    let loaded = |client: &mut Client| match client.call(&Request::Status) {
        Response::Status(status) => status.loaded,
        other => panic!("{other:?}"),
    };
    assert!(loaded(&mut client).is_some());
    let end = Instant::now() + Duration::from_secs(30);
    while loaded(&mut client).is_some() {
        assert!(Instant::now() < end, "never unloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(setup
        .sink
        .wait_for(
            &["event=idle_unload", "model=digits"],
            Duration::from_secs(5)
        )
        .is_some());
    // ... and its memory goes back to the system (docs/CONFIG.md,
    // `idle_unload_s`): the worker trims its heap once nothing reloads
    // (whether the tiny model left whole free pages is the allocator's
    // business; tests/tests/worker_heap_release.rs measures the drop).
    let released = "no model loaded: ";
    let end = Instant::now() + Duration::from_secs(15);
    while !setup.broker.log_text().contains(released) {
        assert!(
            Instant::now() < end,
            "no heap release after the idle unload: {}",
            setup.broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cancel_of_a_queued_and_of_a_running_job() {
    let Some(setup) = start("cancel", "rate_burst = 20", 10) else {
        return;
    };
    let socket = &setup.broker.socket;
    let mut running = Client::hello(socket);
    let running_id = submit(&mut running, slow_request(None));
    wait_progress(&mut running);
    let mut queued = Client::hello(socket);
    let queued_id = submit(&mut queued, slow_request(None));

    let mut admin = Client::hello(socket);
    match admin.call(&Request::Jobs) {
        Response::Jobs(jobs) => {
            assert!(jobs
                .iter()
                .any(|j| j.job_id == queued_id && j.state == JobState::Queued));
            assert!(jobs
                .iter()
                .any(|j| j.job_id == running_id && j.state == JobState::Running));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        admin.call(&Request::Cancel { job_id: queued_id }),
        Response::Ok
    );
    assert_eq!(
        stream_error(&queued.collect_stream()),
        Some(ErrorCode::Cancelled)
    );
    assert_eq!(
        admin.call(&Request::Cancel { job_id: running_id }),
        Response::Ok
    );
    assert_eq!(
        stream_error(&running.collect_stream()),
        Some(ErrorCode::Cancelled)
    );
    // The worker survived the cancel.
    finished_png(&admin.generate(digits_request("6")));
}

#[test]
fn client_disconnect_cancels_its_job() {
    let Some(setup) = start("disconnect", "", 10) else {
        return;
    };
    let socket = &setup.broker.socket;
    let mut leaver = Client::hello(socket);
    let id = submit(&mut leaver, slow_request(None));
    wait_progress(&mut leaver);
    drop(leaver);
    let mut admin = Client::hello(socket);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.call(&Request::AllJobs) {
            // Ended: in the history, cancelled.
            Response::Jobs(jobs)
                if jobs.iter().any(|j| {
                    j.job_id == id
                        && j.state == JobState::Failed
                        && j.error == Some(ErrorCode::Cancelled)
                }) =>
            {
                break
            }
            Response::Jobs(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            Instant::now() < end,
            "job {id} kept running after its client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let job_field = format!("job={id}");
    assert!(
        setup
            .sink
            .wait_for(
                &["event=job", &job_field, "outcome=cancelled"],
                Duration::from_secs(5)
            )
            .is_some(),
        "{:?}",
        setup.sink.records()
    );
}

#[test]
fn sigterm_fails_running_and_queued_jobs_with_shutting_down() {
    let Some(mut setup) = start("shutdown", "rate_burst = 20", 10) else {
        return;
    };
    let socket = setup.broker.socket.clone();
    let mut running = Client::hello(&socket);
    submit(&mut running, slow_request(None));
    wait_progress(&mut running);
    let mut queued = Client::hello(&socket);
    submit(&mut queued, slow_request(None));
    let worker = *workers_of(setup.broker.pid())
        .first()
        .expect("a worker child");
    let status = setup.broker.stop();
    assert!(status.success(), "{status}: {}", setup.broker.log_text());
    assert_eq!(
        stream_error(&queued.collect_stream()),
        Some(ErrorCode::ShuttingDown)
    );
    assert_eq!(
        stream_error(&running.collect_stream()),
        Some(ErrorCode::ShuttingDown)
    );
    assert!(!socket.exists());
    let worker_status = format!("/proc/{worker}/status");
    let gone = !std::path::Path::new(&worker_status).exists()
        || std::fs::read_to_string(&worker_status).is_ok_and(|s| s.contains("State:\tZ"));
    assert!(
        gone,
        "worker {worker} still running after the broker stopped"
    );
}
