//! An unloaded model's memory goes back to the system: after a large
//! digits generation and `Unload`, the real sandboxed worker's resident
//! memory falls within seconds (glibc keeps freed heap pages resident
//! until `malloc_trim`), and the worker says so in its log. A `Load` right
//! after an `Unload` (a reload) is not slowed by it: see docs/WORKER.md.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use weave_common::proto::{GenerateRequest, Request, Response};
use weave_tests::fault::{run_job, worker_pid, Rig, OPEN_LIMITS};
use weave_tests::{
    proc_status_field, require_digits, target_bin, AuditSink, BrokerProcess, Client, Scratch,
    TestConfig,
};

fn resident_kib(pid: u32) -> u64 {
    let value = proc_status_field(pid, "VmRSS");
    value.trim_end_matches(" kB").trim().parse().unwrap()
}

#[test]
fn unloading_returns_the_freed_heap_to_the_system() {
    let name = "unloading_returns_the_freed_heap_to_the_system";
    if !require_digits(name) {
        return;
    }
    let mut rig = Rig::start(name, &target_bin("weave-broker"), OPEN_LIMITS, 2);
    let mut client = Client::hello(rig.socket());
    // 512² on the digits model: a latent of 128², whose activations leave
    // well over 100 MiB of freed heap behind.
    let job = run_job(
        &mut client,
        GenerateRequest {
            steps: Some(2),
            width: Some(512),
            height: Some(512),
            ..weave_tests::digits_request("3")
        },
    );
    assert!(job.finished() && job.has_one_png(), "{job:?}");
    let pid = worker_pid(rig.pid()).expect("the worker runs after a job");
    let after_job = resident_kib(pid);
    assert_eq!(client.call(&Request::Unload), Response::Ok);
    let end = Instant::now() + Duration::from_secs(15);
    let mut now = resident_kib(pid);
    while now + 100 * 1024 > after_job {
        assert!(
            Instant::now() < end,
            "worker {pid}: resident {after_job} kB after the job, still {now} kB 15 s after \
             the unload\n{}",
            rig.broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
        now = resident_kib(pid);
    }
    eprintln!("worker {pid}: resident {after_job} kB after the job, {now} kB after the unload");
    // The broker relays the worker's stderr line by line.
    while !rig
        .broker
        .log_text()
        .contains("no model loaded: freed heap memory returned to the system")
    {
        assert!(Instant::now() < end, "{}", rig.broker.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(worker_pid(rig.pid()), Some(pid), "same worker, no restart");
    rig.assert_alive("after the unload");
}

/// A model that passes the broker's file check but that the worker cannot
/// load: what the failed load had allocated is handed back at once, since
/// no `Unload` will ever follow it.
#[test]
fn a_failed_load_returns_its_heap_at_once() {
    let name = "a_failed_load_returns_its_heap_at_once";
    if !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let placeholder = scratch.join("placeholder-model");
    weave_tests::write_placeholder_model(&placeholder);
    let mut config = TestConfig::digits(&sink.path);
    config.extra = format!(
        "\n[[model]]\nid = \"placeholder\"\nkind = \"sd1\"\npath = \"{}\"\n",
        placeholder.display()
    );
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    let answer = client.call(&Request::Load {
        model_id: "placeholder".into(),
    });
    assert!(
        matches!(answer, Response::Error(_)),
        "{answer:?}\n{}",
        broker.log_text()
    );
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let log = broker.log_text();
        if log.contains("no model loaded: ") {
            assert!(
                log.contains("loading model \"placeholder\" failed"),
                "{log}"
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "no heap release after the failed load: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
