//! `make bench` (cargo bench -p weave-tests --bench broker_status): a
//! `Status` round trip through a real broker process against a raw
//! Unix-socket round trip (another process answering the same frames with no
//! work), measured in alternating batches in one run (medians, so the noise
//! of a shared machine hits both alike), and the broker's resident memory
//! with 100 idle connections.
#![allow(clippy::unwrap_used)]

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weave_common::proto::{encode_request, encode_response, Request, Response};
use weave_tests::{proc_status_field, AuditSink, BrokerProcess, Client, Scratch, TestConfig};

const BATCHES: usize = 15;
const PER_BATCH: u32 = 1000;

/// Child mode: answer each request frame with the stored response frame.
fn raw_server(socket: &Path, request_len: usize, response: &Path) {
    let reply = std::fs::read(response).unwrap();
    let listener = UnixListener::bind(socket).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut buf = vec![0u8; request_len];
    while reader.read_exact(&mut buf).is_ok() {
        writer.write_all(&reply).unwrap();
    }
}

/// Connects to the raw server, waiting for it to bind.
fn connect_raw(socket: &Path) -> Option<UnixStream> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(stream) = UnixStream::connect(socket) {
            return Some(stream);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--raw-echo-server") {
        raw_server(
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            Path::new(&args[4]),
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("broker_status bench: run as root (the broker runs in user mode as the caller)");
    }
    let scratch = Scratch::new("bench");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let socket = broker.socket.clone();
    let mut client = Client::hello(&socket);
    let status = client.call(&Request::Status);
    let request = encode_request(&Request::Status).unwrap();
    let response = encode_response(&status).unwrap();
    let raw_socket = scratch.join("raw.sock");
    let reply = scratch.join("reply.bin");
    std::fs::write(&reply, &response).unwrap();
    let mut raw_child = Command::new(std::env::current_exe().unwrap())
        .arg("--raw-echo-server")
        .arg(&raw_socket)
        .arg(request.len().to_string())
        .arg(&reply)
        .spawn()
        .unwrap();
    let Some(mut raw) = connect_raw(&raw_socket) else {
        let _ = raw_child.kill();
        let _ = raw_child.wait();
        panic!("raw server did not start");
    };
    let mut raw_reader = BufReader::new(raw.try_clone().unwrap());
    let mut raw_buf = vec![0u8; response.len()];

    let mut broker_us = Vec::new();
    let mut raw_us = Vec::new();
    for batch in 0..=BATCHES {
        let start = Instant::now();
        for _ in 0..PER_BATCH {
            assert!(matches!(client.call(&Request::Status), Response::Status(_)));
        }
        let broker_batch = start.elapsed();
        let start = Instant::now();
        for _ in 0..PER_BATCH {
            raw.write_all(&request).unwrap();
            raw_reader.read_exact(&mut raw_buf).unwrap();
        }
        let raw_batch = start.elapsed();
        if batch > 0 {
            // Batch 0 warms both paths.
            broker_us.push(broker_batch.as_secs_f64() * 1e6 / f64::from(PER_BATCH));
            raw_us.push(raw_batch.as_secs_f64() * 1e6 / f64::from(PER_BATCH));
        }
    }
    let (broker_median, raw_median) = (median(broker_us), median(raw_us));
    println!(
        "status round trip (median of {BATCHES} x {PER_BATCH}): broker {broker_median:.1} us, \
         raw unix socket {raw_median:.1} us, ratio {:.2}x (target <= 1.5x)",
        broker_median / raw_median
    );
    // Both handles on the connection must close for the server to see EOF.
    drop(raw_reader);
    drop(raw);
    let _ = raw_child.wait();

    let rss_before = proc_status_field(broker.pid(), "VmRSS");
    let idle: Vec<Client> = (0..100).map(|_| Client::hello(&socket)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = proc_status_field(broker.pid(), "VmRSS");
    println!(
        "broker resident memory: {rss_before} with 1 connection, {rss_after} with {} more idle connections",
        idle.len()
    );
}
