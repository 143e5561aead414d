//! The kinds of client the load harness runs, each a thread that stops
//! when `stop` is set and counts what it saw in a shared [`Tally`].
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weave_common::proto::{
    encode_request, ErrorCode, GenerateRequest, Request, Response, PROTOCOL_VERSION,
};
use weave_tests::fault::small_request;
use weave_tests::Client;

/// Counters shared by the client threads.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) counts: Mutex<BTreeMap<String, u64>>,
    /// Jobs that did not get exactly one terminal answer.
    pub(crate) bad_streams: AtomicU64,
    /// Silent connections that ended other than at the Hello deadline.
    pub(crate) bad_holders: AtomicU64,
}

impl Tally {
    pub(crate) fn add(&self, key: &str) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += 1;
    }
}

/// A valid client: generate after generate on one connection; `Busy` is
/// counted and honoured (its retry hint, at most 200 ms).
pub(crate) fn valid_client(socket: PathBuf, stop: Arc<AtomicBool>, tally: Arc<Tally>, index: u32) {
    let mut client = Client::hello(&socket);
    while !stop.load(Ordering::SeqCst) {
        client.send(&Request::Generate(small_request(
            &(index % 10).to_string(),
            4,
        )));
        let mut terminals = 0;
        let mut accepted = false;
        let terminal = loop {
            let event = match client.recv() {
                Ok(event) => event,
                Err(e) => {
                    tally.add(&format!("valid: stream broke ({e:?})"));
                    tally.bad_streams.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            if matches!(event, Response::Queued { .. }) {
                accepted = true;
            }
            if event.ends_generate_stream() {
                terminals += 1;
                break event;
            }
        };
        // Exactly one terminal answer: the next frame answers a Status.
        match client.call(&Request::Status) {
            Response::Status(_) => {}
            _ => terminals += 1,
        }
        if terminals != 1 {
            tally.bad_streams.fetch_add(1, Ordering::SeqCst);
        }
        match terminal {
            Response::Finished { .. } => tally.add("generate: Finished"),
            Response::Error(code) => {
                let kind = if accepted {
                    "failed after Queued"
                } else {
                    "refused"
                };
                tally.add(&format!("generate {kind}: {}", code.name()));
                if let ErrorCode::Busy { retry_after_ms } = code {
                    std::thread::sleep(Duration::from_millis(u64::from(retry_after_ms.min(200))));
                }
            }
            _ => {}
        }
    }
}

/// Invalid requests: each must be refused with a typed error and nothing
/// queued; the connection stays usable.
pub(crate) fn invalid_client(socket: PathBuf, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut client = Client::hello(&socket);
    let requests = [
        GenerateRequest {
            width: Some(33),
            ..small_request("1", 4)
        },
        GenerateRequest {
            steps: Some(0),
            ..small_request("1", 4)
        },
        GenerateRequest {
            model_id: "no-such-model".into(),
            ..small_request("1", 4)
        },
        GenerateRequest {
            batch: 0,
            ..small_request("1", 4)
        },
    ];
    let mut index = 0;
    while !stop.load(Ordering::SeqCst) {
        let request = requests[index % requests.len()].clone();
        index += 1;
        match client.call(&Request::Generate(request)) {
            Response::Error(code) => tally.add(&format!("invalid: {}", code.name())),
            other => {
                tally.add(&format!("invalid: accepted?! {other:?}"));
                tally.bad_streams.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Malformed frames on fresh connections: each must end in a
/// `ProtocolError` (or a plain close) without hurting anyone else.
pub(crate) fn malformed_client(
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    seed: u64,
) {
    let mut rng = weave_tests::fault::Rng::from_env(&format!("malformed-{seed}"));
    let hello = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
        client_name: "weave-load".into(),
    })
    .unwrap();
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut stream) = UnixStream::connect(&socket) else {
            tally.add("malformed: connect failed");
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut frame = Vec::new();
        match rng.below(4) {
            // Oversized length prefix.
            0 => frame.extend_from_slice(&u32::MAX.to_le_bytes()),
            // A well-sized frame of garbage.
            1 => {
                let mut body = vec![0u8; 1 + rng.below(200) as usize];
                rng.fill(&mut body);
                frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
                frame.extend_from_slice(&body);
            }
            // A good Hello, then garbage.
            2 => {
                frame.extend_from_slice(&hello);
                let mut body = vec![0u8; 64];
                rng.fill(&mut body);
                frame.extend_from_slice(&64u32.to_le_bytes());
                frame.extend_from_slice(&body);
            }
            // A Hello with trailing bytes inside the frame.
            _ => {
                let mut body = hello[4..].to_vec();
                body.extend_from_slice(b"trailing");
                frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
                frame.extend_from_slice(&body);
            }
        }
        let _ = stream.write_all(&frame);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        if text.contains("ProtocolError") || !answer.is_empty() {
            tally.add("malformed: answered and closed");
        } else {
            tally.add("malformed: closed without an answer");
        }
    }
}

/// Slow readers: pipeline `Status` requests and never read the answers.
/// The broker must stop writing to them (and drop them after its 30 s
/// write deadline) without slowing anyone else.
pub(crate) fn slow_reader(socket: PathBuf, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut client = Client::hello(&socket);
    let _ = client
        .stream
        .set_write_timeout(Some(Duration::from_millis(200)));
    let status = encode_request(&Request::Status).unwrap();
    let mut sent = 0u64;
    let mut dropped = false;
    while !stop.load(Ordering::SeqCst) {
        match client.stream.write(&status) {
            Ok(_) => sent += 1,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                dropped = true;
                break;
            }
        }
    }
    tally.add(if dropped {
        "slow reader: dropped by the broker"
    } else {
        "slow reader: still connected at the end"
    });
    let _ = sent;
}

/// A silent holder: connects and never sends Hello. The broker must close
/// it at its Hello deadline with a `ProtocolError` (or refuse it with
/// `Busy` when the shares are full); then it connects again.
pub(crate) fn silent_holder(socket: PathBuf, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut stream) = UnixStream::connect(&socket) else {
            tally.add("holder: connect failed");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let opened = Instant::now();
        let outcome = loop {
            if stop.load(Ordering::SeqCst) {
                break None;
            }
            match weave_common::proto::read_response(
                &mut stream,
                weave_common::proto::DEFAULT_MAX_RESPONSE_FRAME,
            ) {
                Err(e) if e.is_timeout() => continue,
                Ok(Response::Error(ErrorCode::ProtocolError { reason }))
                    if reason.contains("no Hello") =>
                {
                    break Some(format!(
                        "holder: closed at the Hello deadline ({} s)",
                        opened.elapsed().as_secs()
                    ))
                }
                Ok(Response::Error(ErrorCode::Busy { .. })) => {
                    break Some("holder: refused with Busy".to_owned())
                }
                other => break Some(format!("holder: unexpected {other:?}")),
            }
        };
        if let Some(outcome) = outcome {
            if outcome.contains("unexpected") {
                tally.bad_holders.fetch_add(1, Ordering::SeqCst);
            }
            tally.add(&outcome);
        }
    }
}

/// Stops the worker for 200 ms and continues it, every 1.5 s.
pub(crate) fn stopper(broker: u32, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1500));
        let Some(worker) = weave_tests::fault::worker_pid(broker) else {
            continue;
        };
        let signal = |sig| {
            // SAFETY: kill(2) on the broker's child, read right before.
            unsafe { libc::kill(worker as libc::pid_t, sig) == 0 }
        };
        if signal(libc::SIGSTOP) {
            std::thread::sleep(Duration::from_millis(200));
            signal(libc::SIGCONT);
            tally.add("worker stopped and continued");
        }
    }
}
