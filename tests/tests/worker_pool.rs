//! A pool of two real sandboxed workers behind one real broker (`[worker]
//! count = 2`, one torch thread each, the digits demo model): two jobs run
//! at the same time, `kill -9` of one worker fails only its job, two models
//! on two workers do not thrash, and two tags are still served in turn.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weave_common::config::Device;
use weave_common::proto::{ErrorCode, GenerateRequest, Request, Response, StatusReport};
use weave_tests::{
    digits_request, require_digits, require_root, workers_of, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

struct Setup {
    broker: BrokerProcess,
    sink: AuditSink,
    _scratch: Scratch,
}

/// A broker with two CPU workers; `extra`: tables after the digits model.
fn start(name: &str, limits: &str, extra: &str) -> Option<Setup> {
    start_with(
        name,
        "device = \"cpu\"\ncount = 2\ntorch_threads = 1\n",
        limits,
        extra,
    )
}

/// A broker whose `[worker]` table is `worker`.
fn start_with(name: &str, worker: &str, limits: &str, extra: &str) -> Option<Setup> {
    if !require_root(name) || !require_digits(name) {
        return None;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.worker = worker.to_owned();
    config.limits = format!(
        "queue_depth = 64\nper_client_queue_depth = 64\nrate_burst = 100\n\
         rate_per_minute = 1000\n{limits}"
    );
    config.steps = 4;
    config.extra = extra.to_owned();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    Some(Setup {
        broker,
        sink,
        _scratch: scratch,
    })
}

/// Many cheap steps: long enough to overlap and to be killed mid-way on any
/// machine, with cancellation between steps.
fn slow_request(model: &str) -> GenerateRequest {
    GenerateRequest {
        model_id: model.into(),
        steps: Some(120),
        width: Some(64),
        height: Some(64),
        ..digits_request("3")
    }
}

/// One job's stream, with when it started and ended.
struct Ran {
    job_id: u64,
    started: Option<Instant>,
    ended: Instant,
    last: Response,
}

/// Runs `request` on its own connection in a thread.
fn spawn_job(socket: &Path, request: GenerateRequest) -> std::thread::JoinHandle<Ran> {
    let socket: PathBuf = socket.to_owned();
    std::thread::spawn(move || {
        let mut client = Client::hello(&socket);
        client.send(&Request::Generate(request));
        let mut job_id = 0;
        let mut started = None;
        loop {
            let event = client.recv().unwrap();
            match &event {
                Response::Queued { job_id: id, .. } => job_id = *id,
                Response::Started { .. } => started = Some(Instant::now()),
                _ => {}
            }
            if event.ends_generate_stream() {
                return Ran {
                    job_id,
                    started,
                    ended: Instant::now(),
                    last: event,
                };
            }
        }
    })
}

fn status(socket: &Path) -> StatusReport {
    match Client::hello(socket).call(&Request::Status) {
        Response::Status(report) => report,
        other => panic!("{other:?}"),
    }
}

/// Waits until every worker of the pool runs a job with its model loaded.
fn wait_both_running(socket: &Path) -> StatusReport {
    let end = Instant::now() + Duration::from_secs(240);
    loop {
        let report = status(socket);
        // A job is placed before its worker starts; memory_bytes is the
        // worker's own report of the model it loaded.
        let running = |w: &weave_common::proto::WorkerReport| {
            w.job_id.is_some() && w.loaded.as_ref().is_some_and(|l| l.memory_bytes > 0)
        };
        if report.workers.len() == 2 && report.workers.iter().all(running) {
            return report;
        }
        assert!(Instant::now() < end, "both workers never ran: {report:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_jobs_run_at_the_same_time_on_two_workers() {
    let Some(setup) = start("pool_overlap", "", "") else {
        return;
    };
    let socket = &setup.broker.socket;
    let first = spawn_job(socket, slow_request("digits"));
    let second = spawn_job(socket, slow_request("digits"));
    let running = wait_both_running(socket);
    assert_ne!(running.workers[0].job_id, running.workers[1].job_id);
    assert_eq!(
        workers_of(setup.broker.pid()).len(),
        2,
        "two sandboxed worker processes"
    );
    let (a, b) = (first.join().unwrap(), second.join().unwrap());
    for ran in [&a, &b] {
        assert!(
            matches!(ran.last, Response::Finished { .. }),
            "{:?}",
            ran.last
        );
    }
    let (a_start, b_start) = (a.started.unwrap(), b.started.unwrap());
    assert!(
        a_start < b.ended && b_start < a.ended,
        "Started→Finished intervals overlap"
    );
    let jobs = match Client::hello(socket).call(&Request::AllJobs) {
        Response::Jobs(jobs) => jobs,
        other => panic!("{other:?}"),
    };
    let mut workers: Vec<_> = jobs
        .iter()
        .filter(|j| j.job_id == a.job_id || j.job_id == b.job_id)
        .map(|j| j.worker)
        .collect();
    workers.sort();
    assert_eq!(workers, vec![Some(0), Some(1)], "{jobs:?}");
    // The audit trail names the worker of each job.
    for ran in [&a, &b] {
        let needle = format!("job={} ", ran.job_id);
        let record = setup
            .sink
            .wait_for(&["event=job ", &needle], Duration::from_secs(10))
            .unwrap();
        assert!(record.contains("worker="), "{record}");
    }
}

#[test]
fn kill_9_of_one_worker_fails_only_its_job() {
    let Some(setup) = start("pool_kill", "", "") else {
        return;
    };
    let socket = &setup.broker.socket;
    let first = spawn_job(socket, slow_request("digits"));
    let second = spawn_job(socket, slow_request("digits"));
    wait_both_running(socket);
    let workers = workers_of(setup.broker.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &workers[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let results = [first.join().unwrap(), second.join().unwrap()];
    let crashed = results
        .iter()
        .filter(|r| r.last == Response::Error(ErrorCode::WorkerCrashed))
        .count();
    let finished = results
        .iter()
        .filter(|r| matches!(r.last, Response::Finished { .. }))
        .count();
    assert_eq!(
        (crashed, finished),
        (1, 1),
        "{:?}",
        results.iter().map(|r| &r.last).collect::<Vec<_>>()
    );
    // The killed worker is replaced; the pool serves two jobs again.
    let again = [
        spawn_job(socket, digits_request("5")),
        spawn_job(socket, digits_request("6")),
    ];
    for job in again {
        let ran = job.join().unwrap();
        assert!(
            matches!(ran.last, Response::Finished { .. }),
            "{:?}",
            ran.last
        );
    }
    let report = status(socket);
    assert_eq!(
        report.workers.iter().map(|w| w.restarts).sum::<u32>(),
        1,
        "only the killed worker restarted: {report:?}"
    );
}

#[test]
fn two_models_on_two_workers_load_once_each() {
    let second_model = format!(
        "\n[[model]]\nid = \"digits-b\"\nkind = \"sd1\"\npath = \"{}\"\n\
         [model.defaults]\nwidth = 32\nheight = 32\nsteps = 4\nscheduler = \"ddim\"\n",
        weave_tests::digits_model().unwrap().display()
    );
    let Some(setup) = start("pool_models", "", &second_model) else {
        return;
    };
    let socket = &setup.broker.socket;
    // Two callers, one per model, each sending jobs back to back.
    let callers: Vec<_> = ["digits", "digits-b"]
        .into_iter()
        .map(|model| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = Client::hello(&socket);
                for prompt in ["1", "2", "3", "4", "5", "6"] {
                    let events = client.generate(GenerateRequest {
                        model_id: model.into(),
                        ..digits_request(prompt)
                    });
                    assert!(
                        matches!(events.last(), Some(Response::Finished { .. })),
                        "{model}: {events:?}"
                    );
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    let report = status(socket);
    let loads: u64 = report.workers.iter().map(|w| w.loads).sum();
    assert_eq!(loads, 2, "one load per model, no thrash: {report:?}");
    let mut held: Vec<_> = report
        .workers
        .iter()
        .filter_map(|w| w.loaded.as_ref().map(|l| l.model_id.clone()))
        .collect();
    held.sort();
    assert_eq!(held, vec!["digits".to_owned(), "digits-b".to_owned()]);
}

#[test]
fn two_tags_are_served_in_turn_with_the_pool() {
    let Some(setup) = start("pool_fair", "", "") else {
        return;
    };
    let socket = &setup.broker.socket;
    // Both workers busy with blockers while the two tags fill the queue.
    let mut blockers: Vec<Client> = (0..2).map(|_| Client::hello(socket)).collect();
    let mut blocker_ids = Vec::new();
    for blocker in &mut blockers {
        blocker.send(&Request::Generate(GenerateRequest {
            tag: Some("z".into()),
            ..slow_request("digits")
        }));
        match blocker.recv().unwrap() {
            Response::Queued { job_id, .. } => blocker_ids.push(job_id),
            other => panic!("{other:?}"),
        }
    }
    wait_both_running(socket);
    let mut clients: Vec<Client> = (0..12).map(|_| Client::hello(socket)).collect();
    let mut tags = HashMap::new();
    for (index, client) in clients.iter_mut().enumerate() {
        let tag = if index < 6 { "a" } else { "b" };
        client.send(&Request::Generate(GenerateRequest {
            tag: Some(tag.into()),
            ..digits_request("4")
        }));
        match client.recv().unwrap() {
            Response::Queued { job_id, .. } => tags.insert(job_id, tag),
            other => panic!("{other:?}"),
        };
    }
    let mut admin = Client::hello(socket);
    for job_id in &blocker_ids {
        assert_eq!(
            admin.call(&Request::Cancel { job_id: *job_id }),
            Response::Ok
        );
    }
    for client in &mut clients {
        let events = client.collect_stream();
        assert!(
            matches!(events.last(), Some(Response::Finished { .. })),
            "{events:?}"
        );
    }
    // Start order from the history (`Jobs` lists ended jobs newest first,
    // by when they ended; with two workers neighbours may swap, so check
    // that every window of four has both tags).
    let jobs = match admin.call(&Request::AllJobs) {
        Response::Jobs(jobs) => jobs,
        other => panic!("{other:?}"),
    };
    let order: Vec<&str> = jobs
        .iter()
        .rev()
        .filter_map(|j| tags.get(&j.job_id).copied())
        .collect();
    assert_eq!(order.len(), 12, "{jobs:?}");
    for window in order.windows(4) {
        assert!(
            window.contains(&"a") && window.contains(&"b"),
            "not served in turn: {order:?}"
        );
    }
}

#[test]
fn a_device_list_gives_one_worker_per_entry_and_auto_one_cpu_worker_here() {
    let Some(listed) = start_with(
        "pool_devices",
        "devices = [\"cpu\", \"cpu\"]\ntorch_threads = 1\n",
        "",
        "",
    ) else {
        return;
    };
    let report = status(&listed.broker.socket);
    let devices: Vec<_> = report.workers.iter().map(|w| (w.index, w.device)).collect();
    assert_eq!(devices, vec![(0, Device::Cpu), (1, Device::Cpu)]);
    drop(listed);
    // No /dev/nvidiaN on a CI machine: `auto` is one CPU worker.
    let has_gpu_nodes = std::fs::read_dir("/dev").unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.strip_prefix("nvidia")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    let Some(auto) = start_with("pool_auto", "devices = [\"auto\"]\n", "", "") else {
        return;
    };
    let report = status(&auto.broker.socket);
    if has_gpu_nodes {
        assert!(report
            .workers
            .iter()
            .all(|w| matches!(w.device, Device::Cuda(_))));
    } else {
        assert_eq!(report.workers.len(), 1, "{report:?}");
        assert_eq!(report.workers[0].device, Device::Cpu);
    }
    let events = Client::hello(&auto.broker.socket).generate(digits_request("2"));
    assert!(
        matches!(events.last(), Some(Response::Finished { .. })),
        "{events:?}"
    );
}

/// Threads of process `pid` (`/proc/PID/status`).
fn thread_count(pid: u32) -> usize {
    weave_tests::proc_status_field(pid, "Threads")
        .parse()
        .unwrap()
}

#[test]
fn unset_torch_threads_share_the_cpus_among_the_workers() {
    let Some(setup) = start_with("pool_threads", "device = \"cpu\"\ncount = 2\n", "", "") else {
        return;
    };
    let socket = &setup.broker.socket;
    let jobs = [
        spawn_job(socket, slow_request("digits")),
        spawn_job(socket, slow_request("digits")),
    ];
    wait_both_running(socket);
    let counts: Vec<usize> = workers_of(setup.broker.pid())
        .into_iter()
        .map(thread_count)
        .collect();
    for job in jobs {
        assert!(matches!(
            job.join().unwrap().last,
            Response::Finished { .. }
        ));
    }
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(counts.len(), 2);
    // Each worker gets N = cpus / 2 libtorch threads. A worker of N > 1
    // threads runs 2N (measured: its main thread, N - 1 OpenMP threads,
    // N - 1 in NNPACK's pool for the large convolutions, one more), so
    // `cpus` here at most; libtorch's default (N = cpus in each) would be
    // 2 × cpus in each, and one thread per worker is 1.
    for count in &counts {
        assert!(
            *count <= cpus.max(2),
            "worker threads {counts:?} with {cpus} CPUs"
        );
    }
}
