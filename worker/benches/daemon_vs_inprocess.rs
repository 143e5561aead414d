//! Issue 5: a digits generation through the daemon (a real user-mode broker
//! with its supervised, sandboxed worker, over the Unix socket) against the
//! engine in-process, same parameters, in one run.
//!
//! Rounds alternate: one request through the socket (timed from sending
//! `Generate` to `Finished`, PNG included), one in-process
//! `Pipeline::generate` with oneDNN off (the sandboxed worker's setting, the
//! fair comparison) and one with oneDNN on (libtorch's default). The
//! worker keeps libtorch's default thread count (the bench's config leaves
//! `torch_threads` unset), which is one per CPU it may run on; so the bench pins
//! itself, and with it the broker and worker it starts, to one CPU and runs
//! the in-process side with one thread too. Both sides then do the same
//! arithmetic on the same core, and the ratio is the daemon's own cost. (On
//! a shared, loaded 2-core machine two OpenMP threads per side made the
//! timings swing by 2× between rounds.) `WEAVE_BENCH_PIN=0` leaves the
//! affinity alone and both sides at libtorch's default.
//!
//! Needs root (the broker's user mode here runs as the caller and the
//! sandbox needs it) and `cargo build --release --bins` first.
//! `WEAVE_BENCH_ROUNDS` (default 9).
#![allow(clippy::unwrap_used)]

mod support;

use std::ops::ControlFlow;
use std::time::Instant;

use support::{env_count, median, set_onednn};
use weave_common::proto::{GenerateRequest, Request, Response, Scheduler};
use weave_tests::{
    digits_model, digits_request, proc_status_field, AuditSink, BrokerProcess, Client, Scratch,
    TestConfig,
};
use weave_worker::engine::{
    DeviceChoice, GenerateParams, ModelSpec, Pipeline, Precision, SchedulerKind,
};

const STEPS: u32 = 20;
const GUIDANCE: f32 = 5.0;
const SIZE: u32 = 32;
const PROMPT: &str = "a handwritten digit seven";

fn through_daemon(client: &mut Client, seed: u64) -> f64 {
    let request = GenerateRequest {
        width: Some(SIZE),
        height: Some(SIZE),
        steps: Some(STEPS),
        guidance: Some(GUIDANCE),
        seed: Some(seed),
        scheduler: Some(Scheduler::Ddim),
        batch: 1,
        ..digits_request(PROMPT)
    };
    let start = Instant::now();
    client.send(&Request::Generate(request));
    let events = client.collect_stream();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        matches!(events.last(), Some(Response::Finished { .. })),
        "generation through the daemon failed: {events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, Response::Image { .. })),
        "no image: {events:?}"
    );
    elapsed
}

fn in_process(pipe: &Pipeline, seed: u64, onednn: bool) -> f64 {
    assert!(set_onednn(onednn), "could not switch oneDNN");
    let params = GenerateParams {
        prompt: PROMPT.into(),
        width: SIZE,
        height: SIZE,
        steps: STEPS,
        guidance: f64::from(GUIDANCE),
        seed,
        scheduler: SchedulerKind::Ddim,
        batch: 1,
        ..Default::default()
    };
    let start = Instant::now();
    let images = pipe
        .generate(&params, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(images.len(), 1);
    elapsed
}

/// Restricts this thread (and every thread and process it starts later) to
/// the last CPU it may run on; returns that CPU.
fn pin_to_one_cpu() -> Option<usize> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set; the affinity
    // calls read or write only the set passed with its exact size, and
    // `CPU_ISSET`/`CPU_SET` index below `CPU_SETSIZE`.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return None;
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&cpu| libc::CPU_ISSET(cpu, &allowed))?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        (libc::sched_setaffinity(0, size, &one) == 0).then_some(cpu)
    }
}

fn main() {
    // First, while this is the only thread: everything started later
    // inherits the mask.
    let pinned = if std::env::var("WEAVE_BENCH_PIN").as_deref() == Ok("0") {
        None
    } else {
        pin_to_one_cpu()
    };
    if pinned.is_some() {
        // libgomp sized its pool when it loaded, before the pin.
        tch::set_num_threads(1);
    }
    let Some(model) = digits_model() else {
        eprintln!("daemon bench: no models/digits; nothing to measure");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("daemon bench: skipped, run as root (the sandboxed worker needs it)");
        return;
    }
    let rounds = env_count("WEAVE_BENCH_ROUNDS", 9);
    let scratch = Scratch::new("bench-daemon");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.steps = STEPS;
    config.limits =
        "queue_depth = 8\nper_client_queue_depth = 8\nrate_burst = 100\nrate_per_minute = 600"
            .into();
    let config = config.write(&etc);
    let mut broker = BrokerProcess::start_user(&scratch, &config);
    let socket = broker.socket.clone();
    let mut client = Client::hello(&socket);
    // The first request starts the worker and loads the model.
    through_daemon(&mut client, 0);
    let worker_threads = weave_tests::workers_of(broker.pid())
        .first()
        .map(|&pid| proc_status_field(pid, "Threads"))
        .unwrap_or_else(|| "?".into());

    let pipe = Pipeline::load(&ModelSpec::new(&model), DeviceChoice::Cpu, Precision::Auto).unwrap();
    println!(
        "daemon vs in-process: {SIZE}x{SIZE}, DDIM {STEPS} steps, guidance {GUIDANCE}, batch 1, \
         cpu {}; in-process torch threads {} (worker: libtorch default, {worker_threads} OS threads)",
        pinned.map_or_else(|| "affinity as inherited".into(), |cpu| format!("pinned to CPU {cpu}")),
        tch::get_num_threads()
    );
    in_process(&pipe, 0, false);
    in_process(&pipe, 0, true);

    let (mut daemon, mut off, mut on) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ratio_off, mut ratio_on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let seed = 1 + round as u64;
        let (d, f, n) = if round % 2 == 0 {
            let d = through_daemon(&mut client, seed);
            let f = in_process(&pipe, seed, false);
            let n = in_process(&pipe, seed, true);
            (d, f, n)
        } else {
            let n = in_process(&pipe, seed, true);
            let f = in_process(&pipe, seed, false);
            let d = through_daemon(&mut client, seed);
            (d, f, n)
        };
        daemon.push(d);
        off.push(f);
        on.push(n);
        ratio_off.push(d / f);
        ratio_on.push(d / n);
    }
    let (d, f, n) = (median(&daemon), median(&off), median(&on));
    println!("seconds per image, median of {rounds} interleaved rounds:");
    println!("  through the daemon (socket, broker, sandboxed worker, PNG): {d:.4} s");
    println!("  in-process, oneDNN off (the worker's setting):              {f:.4} s");
    println!("  in-process, oneDNN on (libtorch default):                   {n:.4} s");
    println!(
        "  ratio daemon / in-process oneDNN off: {:.3}x (median of per-round ratios {:.3}x; target <= 1.02x)",
        d / f,
        median(&ratio_off)
    );
    println!(
        "  ratio daemon / in-process oneDNN on:  {:.3}x (median of per-round ratios {:.3}x)",
        d / n,
        median(&ratio_on)
    );
    drop(client);
    broker.stop();
}
