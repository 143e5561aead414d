//! The scheduler with a pool of scripted workers: jobs in parallel, a crash
//! stays in its lane, models do not thrash, `max_workers` holds, fairness.
use super::*;

const TWO_MODELS: &str = "[[model]]\nid = \"other\"\nkind = \"sd1\"\npath = \"/o\"\n\
                          [model.defaults]\nwidth = 32\nheight = 32\nsteps = 3\n";
const OTHER_ON_ONE_WORKER: &str = "[[model]]\nid = \"other\"\nkind = \"sd1\"\npath = \"/o\"\n\
                                   max_workers = 1\n[model.defaults]\nsteps = 3\n";

fn overlap(a: (Instant, Instant), b: (Instant, Instant)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn two_workers_run_two_jobs_at_once() {
    let harness = Harness::pool("rate_burst = 30", 100, 2, "");
    let first = harness.submit(1, None).unwrap();
    let second = harness.submit(2, None).unwrap();
    assert!(matches!(last_event(&first), Response::Finished { .. }));
    assert!(matches!(last_event(&second), Response::Finished { .. }));
    let spans = harness.log.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2);
    assert_ne!(spans[0].0, spans[1].0, "on two workers: {spans:?}");
    assert!(
        overlap((spans[0].2, spans[0].3), (spans[1].2, spans[1].3)),
        "their runs overlap"
    );
    let jobs = harness.broker.jobs(0, true);
    let mut workers: Vec<_> = jobs.iter().map(|j| j.worker).collect();
    workers.sort();
    assert_eq!(workers, vec![Some(0), Some(1)]);
}

#[test]
fn a_crash_on_one_worker_fails_only_its_job() {
    let harness = Harness::pool("rate_burst = 30", 150, 2, "");
    let long = harness.submit(1, None).unwrap();
    // The first job is running (on worker 0); the next crashes worker 1.
    loop {
        if matches!(
            long.events.recv_timeout(Duration::from_secs(5)).unwrap(),
            Response::Progress { .. }
        ) {
            break;
        }
    }
    harness.log.crash_next.store(true, Ordering::SeqCst);
    let crashed = harness.submit(2, None).unwrap();
    assert_eq!(
        last_event(&crashed),
        Response::Error(ErrorCode::WorkerCrashed)
    );
    assert!(matches!(last_event(&long), Response::Finished { .. }));
}

#[test]
fn two_models_on_two_workers_do_not_thrash() {
    let harness = Harness::pool(
        "rate_burst = 60\nqueue_depth = 64\nper_client_queue_depth = 32",
        5,
        2,
        TWO_MODELS,
    );
    let mut admissions = Vec::new();
    for round in 0..10 {
        let model = if round % 2 == 0 { "digits" } else { "other" };
        admissions.push(harness.submit_on(model, 1 + round % 2, None).unwrap());
    }
    for admission in &admissions {
        assert!(matches!(last_event(admission), Response::Finished { .. }));
    }
    let loads = harness.log.loaded.lock().unwrap().clone();
    assert_eq!(loads.len(), 2, "one load per model: {loads:?}");
    let status = harness.broker.status(true);
    assert_eq!(status.workers.len(), 2);
    assert_eq!(status.workers.iter().map(|w| w.loads).sum::<u64>(), 2);
}

#[test]
fn max_workers_keeps_a_model_on_its_workers() {
    let harness = Harness::pool(
        "rate_burst = 60\nqueue_depth = 64\nper_client_queue_depth = 32",
        20,
        2,
        OTHER_ON_ONE_WORKER,
    );
    let admissions: Vec<_> = (0..4)
        .map(|i| harness.submit_on("other", 1 + i % 2, None).unwrap())
        .collect();
    for admission in &admissions {
        assert!(matches!(last_event(admission), Response::Finished { .. }));
    }
    let spans = harness.log.spans.lock().unwrap().clone();
    let workers: std::collections::BTreeSet<_> = spans.iter().map(|s| s.0).collect();
    assert_eq!(workers.len(), 1, "max_workers = 1: {spans:?}");
}

#[test]
fn owners_alternate_with_a_pool() {
    let harness = Harness::pool(
        "per_client_queue_depth = 32\nqueue_depth = 64\nrate_burst = 60",
        0,
        2,
        "",
    );
    harness.set_gate(false);
    let mut admissions = Vec::new();
    for _ in 0..8 {
        admissions.push(harness.submit(1, Some("a")).unwrap());
    }
    for _ in 0..8 {
        admissions.push(harness.submit(2, Some("b")).unwrap());
    }
    std::thread::sleep(Duration::from_millis(100));
    harness.set_gate(true);
    for admission in &admissions {
        assert!(matches!(last_event(admission), Response::Finished { .. }));
    }
    // The two jobs taken before the gate opened are a's; after them, in
    // any window of four starts, both owners appear.
    let ran = harness.log.ran.lock().unwrap().clone();
    let tags: Vec<&str> = ran.iter().map(|(_, t)| t.as_deref().unwrap()).collect();
    assert_eq!(tags.len(), 16);
    for window in tags[2..14].windows(4) {
        assert!(window.contains(&"a") && window.contains(&"b"), "{tags:?}");
    }
}

#[test]
fn an_unload_and_a_key_rotation_reach_every_worker() {
    let harness = Harness::pool("rate_burst = 30", 0, 2, "");
    let a = harness.submit(1, None).unwrap();
    let b = harness.submit(2, None).unwrap();
    assert!(matches!(last_event(&a), Response::Finished { .. }));
    assert!(matches!(last_event(&b), Response::Finished { .. }));
    harness.broker.rotate_keys().unwrap();
    harness.broker.unload().unwrap();
    assert_eq!(harness.log.unloads.load(Ordering::SeqCst), 2);
    assert!(harness
        .broker
        .status(true)
        .workers
        .iter()
        .all(|w| w.loaded.is_none()));
}
