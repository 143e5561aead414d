//! The `[worker]` keys reach the real sandboxed worker and take effect
//! there, observed from outside: `device = "auto"` resolved by the worker
//! and reported in `status`; `torch_threads` in the worker's thread count
//! (`/proc/<pid>/task`); `seccomp_exec_mappings` in the worker's memory map
//! (oneDNN's JIT leaves executable anonymous memory only when the key lets
//! it). A real user-mode broker and worker, the digits model.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weave_common::config::Device;
use weave_common::proto::{Request, Response, StatusReport};
use weave_tests::{
    digits_request, require_digits, require_root, workers_of, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

struct Setup {
    broker: BrokerProcess,
    _sink: AuditSink,
    _scratch: Scratch,
}

fn start(name: &str, worker: &str) -> Option<Setup> {
    if !require_root(name) || !require_digits(name) {
        return None;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.worker = worker.to_owned();
    config.limits = "rate_burst = 20".into();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    Some(Setup {
        broker,
        _sink: sink,
        _scratch: scratch,
    })
}

fn status(setup: &Setup) -> StatusReport {
    match Client::hello(&setup.broker.socket).call(&Request::Status) {
        Response::Status(report) => report,
        other => panic!("status answered {other:?}"),
    }
}

/// One digits generation, to the end; returns the worker's pid.
fn generate(setup: &Setup) -> u32 {
    let events = Client::hello(&setup.broker.socket).generate(digits_request("3"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Response::Finished { .. })),
        "{events:?}\n{}",
        setup.broker.log_text()
    );
    let workers = workers_of(setup.broker.pid());
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    workers[0]
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Anonymous executable mappings (not a file, not the vDSO): code written
/// at run time.
fn jit_mappings(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let perms = fields.nth(1).unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            perms.contains('x') && !path.starts_with('/') && !path.starts_with("[v")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn device_auto_is_resolved_by_the_worker_and_reported_in_status() {
    let Some(setup) = start("device-auto", "device = \"auto\"\n") else {
        return;
    };
    assert_eq!(status(&setup).device, None, "no worker has started yet");
    generate(&setup);
    // This machine has no GPU (and the test build is the CPU flavor): the
    // worker's libtorch sees no CUDA device, so auto is the CPU.
    assert_eq!(status(&setup).device, Some(Device::Cpu));
    assert!(
        setup
            .broker
            .log_text()
            .contains("device cpu (configured auto)"),
        "{}",
        setup.broker.log_text()
    );
}

#[test]
fn device_cuda_without_a_gpu_fails_with_what_to_do() {
    let Some(setup) = start("device-cuda", "device = \"cuda\"\n") else {
        return;
    };
    let events = Client::hello(&setup.broker.socket).generate(digits_request("3"));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Response::Finished { .. })),
        "{events:?}"
    );
    let log = setup.broker.log_text();
    assert!(
        log.contains("device = \"cuda:0\" is configured but libtorch sees no CUDA device"),
        "{log}"
    );
    assert_eq!(status(&setup).device, None);
}

#[test]
fn torch_threads_sizes_the_workers_thread_pool() {
    let mut counts = Vec::new();
    for threads in [1, 4] {
        let Some(setup) = start(
            &format!("threads-{threads}"),
            &format!("device = \"cpu\"\ntorch_threads = {threads}\n"),
        ) else {
            return;
        };
        let pid = generate(&setup);
        counts.push(thread_count(pid));
    }
    // One libtorch thread: the worker is its main thread alone (no pool is
    // ever started). Four: a parallel region runs on a team of four, the
    // caller plus at least three pool threads (measured: 1 and 7 here).
    assert_eq!(
        counts[0], 1,
        "worker threads with torch_threads 1 and 4: {counts:?}"
    );
    assert!(
        counts[1] >= 4,
        "worker threads with torch_threads 1 and 4: {counts:?}"
    );
}

#[test]
fn seccomp_exec_mappings_lets_onednn_write_code_and_the_default_does_not() {
    let mut seen = Vec::new();
    for exec in [false, true] {
        let Some(setup) = start(
            &format!("exec-{exec}"),
            &format!("device = \"cpu\"\nseccomp_exec_mappings = {exec}\n"),
        ) else {
            return;
        };
        let pid = generate(&setup);
        // The worker is alive (it would have died of SIGSYS otherwise).
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(workers_of(setup.broker.pid()), vec![pid]);
        seen.push(jit_mappings(pid));
    }
    assert!(
        seen[0].is_empty(),
        "strict default: no executable memory appeared: {:?}",
        seen[0]
    );
    assert!(
        !seen[1].is_empty(),
        "with seccomp_exec_mappings oneDNN's JIT mapped code"
    );
}
