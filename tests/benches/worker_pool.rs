//! `make bench` (cargo bench -p weave-tests --bench worker_pool): digits
//! jobs per second through a real broker with one CPU worker against one
//! with two (`[worker] count = 2`), one torch thread per worker, in
//! alternating batches in one run (medians of per-batch throughput, so the
//! noise of a shared machine hits both alike). Issue 17's target: ≥ 1.8×.
//! `WEAVE_BENCH_POOL_ROUNDS` (default 5) and `WEAVE_BENCH_POOL_JOBS` (jobs
//! per batch, default 8) size it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use weave_common::proto::{GenerateRequest, Response};
use weave_tests::{
    digits_model, digits_request, AuditSink, BrokerProcess, Client, Scratch, TestConfig,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon {
    broker: BrokerProcess,
    _sink: AuditSink,
    _scratch: Scratch,
}

fn start(name: &str, workers: u32) -> Daemon {
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.worker = format!("device = \"cpu\"\ncount = {workers}\ntorch_threads = 1\n");
    config.limits = "queue_depth = 256\nper_client_queue_depth = 256\nrate_burst = 10000\n\
                     rate_per_minute = 100000\n"
        .into();
    config.steps = 20;
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    Daemon {
        broker,
        _sink: sink,
        _scratch: scratch,
    }
}

fn request(index: usize) -> GenerateRequest {
    GenerateRequest {
        seed: Some(index as u64),
        ..digits_request(&(index % 10).to_string())
    }
}

/// Runs `jobs` jobs at once (one connection each); seconds for all.
fn batch(socket: &Path, jobs: usize) -> f64 {
    let started = Instant::now();
    let threads: Vec<_> = (0..jobs)
        .map(|index| {
            let socket: PathBuf = socket.to_owned();
            std::thread::spawn(move || {
                let events = Client::hello(&socket).generate(request(index));
                assert!(
                    matches!(events.last(), Some(Response::Finished { .. })),
                    "{events:?}"
                );
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if digits_model().is_none() {
        eprintln!("worker_pool bench: models/digits is missing; nothing measured");
        return;
    }
    let rounds = env_or("WEAVE_BENCH_POOL_ROUNDS", 5).max(1);
    let jobs = env_or("WEAVE_BENCH_POOL_JOBS", 8).max(2);
    let one = start("bench-pool-1", 1);
    let two = start("bench-pool-2", 2);
    // Warm-up: every worker started and holding the model.
    batch(&one.broker.socket, 2);
    batch(&two.broker.socket, 2);
    let (mut rate_one, mut rate_two, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first so a drift in machine load hits both.
        let (a, b) = if round % 2 == 0 {
            let a = batch(&one.broker.socket, jobs);
            (a, batch(&two.broker.socket, jobs))
        } else {
            let b = batch(&two.broker.socket, jobs);
            (batch(&one.broker.socket, jobs), b)
        };
        let (r1, r2) = (jobs as f64 / a, jobs as f64 / b);
        eprintln!("round {round}: 1 worker {r1:.2} jobs/s, 2 workers {r2:.2} jobs/s");
        rate_one.push(r1);
        rate_two.push(r2);
        ratios.push(r2 / r1);
    }
    let (m1, m2) = (median(rate_one), median(rate_two));
    println!(
        "worker_pool: digits 32x32, 20 steps, {jobs} jobs per batch, {rounds} rounds, one torch \
         thread per worker: 1 worker {m1:.2} jobs/s, 2 workers {m2:.2} jobs/s (median); \
         ratio of medians {:.2}x, median of per-round ratios {:.2}x (target >= 1.8x)",
        m2 / m1,
        median(ratios)
    );
}
