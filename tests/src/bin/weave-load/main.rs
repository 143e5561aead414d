//! weave-load: a bounded, self-stopping load harness for a user-mode
//! broker serving the digits model, over its Unix socket only.
//!
//! ```text
//! weave-load [--seconds N] [--valid N] [--invalid N] [--unauthorized N]
//!            [--malformed N] [--slow N] [--holders N] [--stops N]
//!            [--broker PATH] [--assert]
//! ```
//!
//! It starts its own broker (`--user`, a scratch config, queue depth 8) and
//! runs two phases: a baseline (the first third: valid generate clients and
//! a `Status` prober) and a flood (the rest: the same plus clients sending
//! invalid requests, clients of another uid — a system user created with
//! `useradd`, the harness re-executes itself with `setuid` in a child —,
//! malformed frames, slow readers that never read, silent connection
//! holders that connect and never say Hello, and `--stops` threads that
//! SIGSTOP the worker for 200 ms and SIGCONT it, over and over — what
//! `strace -p`, a debugger or the cgroup freezer do). It prints requests
//! served, rejections by type, `Status` p50/p99 per phase, `Busy` counts and
//! the broker's RSS and fd count sampled every second. With `--assert` it
//! exits 1 when the broker died, a job got other than one terminal answer,
//! or `Status` p99 under the flood exceeded 2× the baseline p99 (plus 1 ms
//! for scheduler noise on a shared machine), a silent holder's connection
//! ended other than at the Hello deadline, or the worker restarted although
//! nothing but stops touched it. Needs root (for the other uid).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weave_common::proto::{encode_request, Request, Response, PROTOCOL_VERSION};
use weave_tests::fault::{footprint, small_request, Footprint, Rig};
use weave_tests::Client;

mod clients;

use clients::{
    invalid_client, malformed_client, silent_holder, slow_reader, stopper, valid_client, Tally,
};

const OTHER_USER: &str = "weave-load-other";
const LIMITS: &str = "queue_depth = 8\nper_client_queue_depth = 8\n\
     rate_burst = 100000\nrate_per_minute = 1000000\n";

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    valid: u32,
    invalid: u32,
    unauthorized: u32,
    malformed: u32,
    slow: u32,
    holders: u32,
    stops: u32,
    broker: PathBuf,
    assert: bool,
}

fn parse() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut options = Options {
        seconds: 60,
        valid: 12,
        invalid: 2,
        unauthorized: 2,
        malformed: 2,
        slow: 8,
        holders: 64,
        stops: 1,
        broker: exe.with_file_name("weave-broker"),
        assert: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{arg}: not a number"));
        match arg.as_str() {
            "--seconds" => options.seconds = number(value()?)?.clamp(3, 3600),
            "--valid" => options.valid = number(value()?)? as u32,
            "--invalid" => options.invalid = number(value()?)? as u32,
            "--unauthorized" => options.unauthorized = number(value()?)? as u32,
            "--malformed" => options.malformed = number(value()?)? as u32,
            "--slow" => options.slow = number(value()?)? as u32,
            "--holders" => options.holders = number(value()?)? as u32,
            "--stops" => options.stops = number(value()?)? as u32,
            "--broker" => options.broker = PathBuf::from(value()?),
            "--assert" => options.assert = true,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(options)
}

/// Unauthorized flood: the harness itself, re-executed as another uid,
/// connecting in a loop; every connection must close with zero bytes.
fn unauthorized_flood(socket: &Path, seconds: u64) -> ExitCode {
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut closed_silently, mut answered, mut refused) = (0u64, 0u64, 0u64);
    let hello = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
        client_name: "intruder".into(),
    })
    .unwrap();
    while Instant::now() < end {
        match UnixStream::connect(socket) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.write_all(&hello);
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                if answer.is_empty() {
                    closed_silently += 1;
                } else {
                    answered += 1;
                }
            }
            Err(_) => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    println!("closed_silently={closed_silently} answered={answered} connect_failed={refused}");
    if answered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    // The unauthorized child: `weave-load --intruder SOCKET SECONDS`.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--intruder") {
        let (Some(socket), Some(seconds)) = (args.get(2), args.get(3)) else {
            return ExitCode::FAILURE;
        };
        return unauthorized_flood(Path::new(socket), seconds.parse().unwrap_or(1));
    }
    let options = match parse() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("weave-load: {e}");
            eprintln!(
                "usage: weave-load [--seconds N] [--valid N] [--invalid N] [--unauthorized N] \
                 [--malformed N] [--slow N] [--broker PATH] [--assert]"
            );
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("weave-load: run it as root (it creates the user {OTHER_USER} for the unauthorized clients)");
        return ExitCode::from(2);
    }
    if weave_tests::digits_model().is_none() {
        eprintln!("weave-load: models/digits is missing; build or fetch the demo model first");
        return ExitCode::from(2);
    }
    run(&options)
}

fn run(options: &Options) -> ExitCode {
    // The audit sink: a datagram socket drained by a thread that counts
    // records per event (storing millions of them would make the harness
    // itself the slow syslog).
    let audit_dir = weave_tests::Scratch::new("load-audit");
    let audit_path = audit_dir.join("syslog.sock");
    let audit_counts = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    {
        let socket = std::os::unix::net::UnixDatagram::bind(&audit_path).unwrap();
        std::fs::set_permissions(&audit_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let counts = Arc::clone(&audit_counts);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                let Some(rest) = text.split("event=").nth(1) else {
                    continue;
                };
                let event = rest.split(' ').next().unwrap_or("").to_owned();
                let weight = if event == "audit_dropped" {
                    rest.split("count=")
                        .nth(1)
                        .and_then(|c| c.trim().parse().ok())
                        .unwrap_or(1)
                } else {
                    1
                };
                *counts.lock().unwrap().entry(event).or_default() += weight;
            }
        });
    }
    let mut rig = Rig::start_with_audit("load", &options.broker, LIMITS, 4, Some(&audit_path));
    let socket = rig.socket().to_owned();
    let pid = rig.pid();
    // Open the socket to every uid, so the other uid's connections reach
    // accept() and SO_PEERCRED (not just the directory's permissions).
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A copy of this executable any uid can run, for the intruders.
    let intruder_exe = rig.scratch.join("weave-load-intruder");
    std::fs::copy(std::env::current_exe().unwrap(), &intruder_exe).unwrap();
    std::fs::set_permissions(&intruder_exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let other = weave_tests::ensure_user(OTHER_USER, &[]);

    // Warm the model so the baseline does not include the first load.
    let mut warm = Client::hello(&socket);
    let _ = weave_tests::fault::run_job(&mut warm, small_request("0", 4));
    drop(warm);

    let initial = footprint(pid);
    let total = Duration::from_secs(options.seconds);
    let baseline_len = total / 3;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    // Footprint sampler (1 s).
    let samples = Arc::new(Mutex::new(Vec::<(f64, Footprint)>::new()));
    let sampler = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if !status.is_empty() {
                        let sample = footprint(pid);
                        samples
                            .lock()
                            .unwrap()
                            .push((start.elapsed().as_secs_f64(), sample));
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Status prober: one connection, a Status every 10 ms.
    let latencies = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let prober = {
        let (stop, latencies, socket) = (Arc::clone(&stop), Arc::clone(&latencies), socket.clone());
        std::thread::spawn(move || {
            let mut client = Client::hello(&socket);
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let answer = client.call(&Request::Status);
                let took = sent.elapsed();
                assert!(matches!(answer, Response::Status(_)), "{answer:?}");
                let mut l = latencies.lock().unwrap();
                if sent.duration_since(start) < baseline_len {
                    l.0.push(took);
                } else {
                    l.1.push(took);
                }
                drop(l);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut threads = Vec::new();
    for index in 0..options.valid {
        let (socket, stop, tally) = (socket.clone(), Arc::clone(&stop), Arc::clone(&tally));
        threads.push(std::thread::spawn(move || {
            valid_client(socket, stop, tally, index)
        }));
    }
    // Baseline phase.
    std::thread::sleep(baseline_len);
    eprintln!("weave-load: baseline done, flooding");
    let mut flood = Vec::new();
    for _ in 0..options.invalid {
        let (socket, stop, tally) = (socket.clone(), Arc::clone(&flood_stop), Arc::clone(&tally));
        flood.push(std::thread::spawn(move || {
            invalid_client(socket, stop, tally)
        }));
    }
    for seed in 0..options.malformed {
        let (socket, stop, tally) = (socket.clone(), Arc::clone(&flood_stop), Arc::clone(&tally));
        flood.push(std::thread::spawn(move || {
            malformed_client(socket, stop, tally, u64::from(seed))
        }));
    }
    for _ in 0..options.slow {
        let (socket, stop, tally) = (socket.clone(), Arc::clone(&flood_stop), Arc::clone(&tally));
        flood.push(std::thread::spawn(move || slow_reader(socket, stop, tally)));
    }
    for _ in 0..options.holders {
        let (socket, stop, tally) = (socket.clone(), Arc::clone(&flood_stop), Arc::clone(&tally));
        flood.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || silent_holder(socket, stop, tally))
                .unwrap(),
        );
    }
    for _ in 0..options.stops {
        let (stop, tally) = (Arc::clone(&flood_stop), Arc::clone(&tally));
        flood.push(std::thread::spawn(move || stopper(pid, stop, tally)));
    }
    let flood_seconds = (total - baseline_len).as_secs().max(1);
    let intruders: Vec<_> = (0..options.unauthorized)
        .map(|_| {
            Command::new(&intruder_exe)
                .arg("--intruder")
                .arg(&socket)
                .arg(flood_seconds.to_string())
                .uid(other.uid)
                .gid(other.gid)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(total - baseline_len);
    flood_stop.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let mut intruder_lines = Vec::new();
    let mut intruders_ok = true;
    for intruder in intruders {
        let out = intruder.wait_with_output().unwrap();
        intruders_ok &= out.status.success();
        intruder_lines.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    for thread in flood.into_iter().chain(threads) {
        let _ = thread.join();
    }
    let _ = prober.join();
    let _ = sampler.join();
    let elapsed = start.elapsed();

    let alive = rig.broker.child.try_wait().ok().flatten().is_none();
    let final_status = alive.then(|| {
        let mut client = Client::hello(&socket);
        weave_tests::fault::status(&mut client)
    });
    let (mut base, mut flooded) = latencies.lock().unwrap().clone();
    base.sort();
    flooded.sort();
    let samples = samples.lock().unwrap().clone();
    let counts = tally.counts.lock().unwrap().clone();
    let bad_streams = tally.bad_streams.load(Ordering::SeqCst);
    let bad_holders = tally.bad_holders.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    let audit_counts = audit_counts.lock().unwrap().clone();

    let finished = counts.get("generate: Finished").copied().unwrap_or(0);
    let served: u64 = counts.values().sum::<u64>() + (base.len() + flooded.len()) as u64;
    println!(
        "## weave-load: {:.1} s against a user-mode broker (digits, 32x32, 4 steps, queue_depth 8)",
        elapsed.as_secs_f64()
    );
    println!();
    println!(
        "clients: {} valid, {} invalid, {} unauthorized (uid {}), {} malformed, {} slow readers, \
         {} silent holders, {} worker stoppers",
        options.valid,
        options.invalid,
        options.unauthorized,
        other.uid,
        options.malformed,
        options.slow,
        options.holders,
        options.stops
    );
    println!();
    println!(
        "requests answered: {served} ({:.0}/s), generations finished: {finished} ({:.1}/s)",
        served as f64 / elapsed.as_secs_f64(),
        finished as f64 / elapsed.as_secs_f64()
    );
    println!();
    println!("| outcome | count |\n|---|---|");
    for (key, count) in &counts {
        println!("| {key} | {count} |");
    }
    println!(
        "| unauthorized connections ({}) | {} |",
        OTHER_USER,
        intruder_lines.join("; ")
    );
    for (event, count) in &audit_counts {
        println!("| audit records `event={event}` | {count} |");
    }
    println!("| jobs without exactly one terminal answer | {bad_streams} |");
    println!("| silent connections not closed at the Hello deadline | {bad_holders} |");
    println!();
    let (p50b, p99b) = (percentile(&base, 0.5), percentile(&base, 0.99));
    let (p50f, p99f) = (percentile(&flooded, 0.5), percentile(&flooded, 0.99));
    println!("| `Status` latency | samples | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|");
    println!(
        "| baseline (valid load only) | {} | {:.3} | {:.3} | {:.3} |",
        base.len(),
        ms(p50b),
        ms(p99b),
        ms(base.last().copied().unwrap_or_default())
    );
    println!(
        "| flood (+ invalid, unauthorized, malformed, slow readers, silent holders, stops) | {} | {:.3} | {:.3} | {:.3} |",
        flooded.len(),
        ms(p50f),
        ms(p99f),
        ms(flooded.last().copied().unwrap_or_default())
    );
    println!();
    let stat = |samples: &[(f64, Footprint)], f: fn(&Footprint) -> u64| {
        let values: Vec<u64> = samples.iter().map(|(_, s)| f(s)).collect();
        (
            values.iter().copied().min().unwrap_or(0),
            values.iter().copied().max().unwrap_or(0),
            values.first().copied().unwrap_or(0),
            values.last().copied().unwrap_or(0),
        )
    };
    let rss = stat(&samples, |s| s.rss_kib);
    let fds = stat(&samples, |s| s.fds as u64);
    // Steady state: the flood phase once every client has connected.
    let steady_from = baseline_len.as_secs_f64() + 5.0;
    let steady: Vec<_> = samples
        .iter()
        .filter(|(t, _)| *t >= steady_from)
        .cloned()
        .collect();
    let steady_rss = stat(&steady, |s| s.rss_kib);
    let steady_fds = stat(&steady, |s| s.fds as u64);
    println!(
        "| broker, sampled every 1 s | samples | min | max | first | last | (max-min)/first |\n|---|---|---|---|---|---|---|"
    );
    let spread = |v: (u64, u64, u64, u64)| {
        if v.2 == 0 {
            0.0
        } else {
            (v.1 - v.0) as f64 * 100.0 / v.2 as f64
        }
    };
    println!(
        "| RSS KiB, whole run | {} | {} | {} | {} | {} | {:.1} % |",
        samples.len(),
        rss.0,
        rss.1,
        rss.2,
        rss.3,
        spread(rss)
    );
    println!(
        "| RSS KiB, flood steady state (t ≥ {steady_from:.0} s) | {} | {} | {} | {} | {} | {:.1} % |",
        steady.len(), steady_rss.0, steady_rss.1, steady_rss.2, steady_rss.3, spread(steady_rss)
    );
    println!(
        "| open fds, whole run | {} | {} | {} | {} | {} | {:.1} % |",
        samples.len(),
        fds.0,
        fds.1,
        fds.2,
        fds.3,
        spread(fds)
    );
    println!(
        "| open fds, flood steady state | {} | {} | {} | {} | {} | {:.1} % |",
        steady.len(),
        steady_fds.0,
        steady_fds.1,
        steady_fds.2,
        steady_fds.3,
        spread(steady_fds)
    );
    if alive {
        let settled = weave_tests::fault::settled_footprint(pid, initial);
        println!(
            "\nbroker before the run: {} KiB, {} fds; after every client left: {} KiB, {} fds",
            initial.rss_kib, initial.fds, settled.rss_kib, settled.fds
        );
    }
    if let Some(status) = &final_status {
        println!();
        println!(
            "broker alive at the end: yes (worker restarts {}, queue {})",
            status.worker_restarts, status.queue_depth
        );
    } else {
        println!("\nbroker alive at the end: NO\n{}", rig.broker.log_text());
    }
    if std::env::var_os("WEAVE_LOAD_SAMPLES").is_some() {
        for (t, s) in &samples {
            println!("sample t={t:.0}s rss_kib={} fds={}", s.rss_kib, s.fds);
        }
    }

    if options.assert {
        let mut failures = Vec::new();
        if !alive {
            failures.push("the broker died".to_owned());
        }
        if bad_streams != 0 {
            failures.push(format!(
                "{bad_streams} jobs without exactly one terminal answer"
            ));
        }
        if bad_holders != 0 {
            failures.push(format!(
                "{bad_holders} silent connections ended other than at the Hello deadline"
            ));
        }
        if let Some(status) = &final_status {
            if status.worker_restarts != 0 {
                failures.push(format!(
                    "the worker restarted {} times (stops must not kill it)",
                    status.worker_restarts
                ));
            }
        }
        if !intruders_ok {
            failures.push("an unauthorized client got bytes back".to_owned());
        }
        if finished == 0 {
            failures.push("no generation finished".to_owned());
        }
        let limit = p99b * 2 + Duration::from_millis(1);
        if p99f > limit {
            failures.push(format!(
                "Status p99 under flood {:.3} ms > 2x baseline {:.3} ms + 1 ms",
                ms(p99f),
                ms(p99b)
            ));
        }
        if !failures.is_empty() {
            eprintln!("weave-load: FAILED: {}", failures.join("; "));
            return ExitCode::FAILURE;
        }
    }
    let _ = rig.broker.stop();
    ExitCode::SUCCESS
}
