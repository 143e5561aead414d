//! `make bench` (cargo bench -p weave-tests --bench broker_status):
//! a `Status` round trip through a real broker against a raw Unix-socket
//! round trip of the same frame sizes, in one run, and the broker's resident
//! memory with 100 idle connections. Prints one line per figure.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use weave_common::proto::{encode_request, encode_response, Request, Response};
use weave_tests::{proc_status_field, AuditSink, BrokerProcess, Client, Scratch, TestConfig};

const ROUNDS: u32 = 5000;

/// Echo-style server answering each request frame with a fixed response
/// frame, like the broker but without any work: the floor for a round trip.
fn raw_round_trip(request: &[u8], response: &[u8]) -> Duration {
    let dir = Scratch::new("bench-raw");
    let path = dir.join("raw.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let reply = response.to_vec();
    let request_len = request.len();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; request_len];
        while stream.read_exact(&mut buf).is_ok() {
            stream.write_all(&reply).unwrap();
        }
    });
    let mut client = UnixStream::connect(&path).unwrap();
    let mut buf = vec![0u8; response.len()];
    let start = Instant::now();
    for _ in 0..ROUNDS {
        client.write_all(request).unwrap();
        client.read_exact(&mut buf).unwrap();
    }
    let elapsed = start.elapsed();
    drop(client);
    server.join().unwrap();
    elapsed
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("broker_status bench: run as root (the broker runs in user mode as the caller)");
    }
    let scratch = Scratch::new("bench");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let socket = scratch.join("run/weave.sock");
    let broker = BrokerProcess::start(
        &[
            "--user",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
        &socket,
        &scratch.join("broker.log"),
    );
    let mut client = Client::hello(&socket);
    let status = client.call(&Request::Status);
    let request_frame = encode_request(&Request::Status).unwrap();
    let response_frame = encode_response(&status).unwrap();

    // Warm both paths, then measure them back to back.
    for _ in 0..200 {
        assert!(matches!(client.call(&Request::Status), Response::Status(_)));
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        assert!(matches!(client.call(&Request::Status), Response::Status(_)));
    }
    let broker_time = start.elapsed();
    let raw_time = raw_round_trip(&request_frame, &response_frame);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(ROUNDS);
    println!(
        "status round trip: broker {:.1} us, raw unix socket {:.1} us, ratio {:.2}x (target <= 1.5x)",
        per(broker_time),
        per(raw_time),
        broker_time.as_secs_f64() / raw_time.as_secs_f64()
    );

    let rss_before = proc_status_field(broker.pid(), "VmRSS");
    let idle: Vec<Client> = (0..100).map(|_| Client::hello(&socket)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = proc_status_field(broker.pid(), "VmRSS");
    println!(
        "broker resident memory: {rss_before} idle, {rss_after} with {} idle connections",
        idle.len()
    );
}
