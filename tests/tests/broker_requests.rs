//! Validation before queuing, framing errors, rate limiting and shutdown,
//! against a real user-mode broker process.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weave_common::proto::{
    encode_request, ErrorCode, GenerateRequest, Request, Response, Scheduler, PROTOCOL_VERSION,
};
use weave_tests::{
    digits_request, require_root, stream_error, AuditSink, BrokerProcess, Client, Scratch,
    TestConfig,
};

struct Setup {
    broker: BrokerProcess,
    sink: AuditSink,
    _scratch: Scratch,
}

fn start(name: &str, limits: &str) -> Option<Setup> {
    if !require_root(name) {
        return None;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::new(&sink.path);
    config.limits = limits.to_owned();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    Some(Setup {
        broker,
        sink,
        _scratch: scratch,
    })
}

fn invalid_field(events: &[Response]) -> String {
    assert_eq!(events.len(), 1, "refused before Queued: {events:?}");
    match stream_error(events) {
        Some(ErrorCode::InvalidParameter { field, allowed }) => {
            assert!(!allowed.is_empty());
            field
        }
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn every_invalid_parameter_gets_its_typed_error_and_nothing_is_queued() {
    let Some(setup) = start("invalid-params", "") else {
        return;
    };
    let mut client = Client::hello(&setup.broker.socket);
    let base = || GenerateRequest {
        prompt: "SECRET-PROMPT-MARKER".into(),
        ..digits_request("x")
    };
    let cases: Vec<(&str, GenerateRequest)> = vec![
        (
            "width",
            GenerateRequest {
                width: Some(33),
                ..base()
            },
        ),
        (
            "width",
            GenerateRequest {
                width: Some(4096),
                ..base()
            },
        ),
        (
            "height",
            GenerateRequest {
                height: Some(8),
                ..base()
            },
        ),
        (
            "steps",
            GenerateRequest {
                steps: Some(0),
                ..base()
            },
        ),
        (
            "steps",
            GenerateRequest {
                steps: Some(10_000),
                ..base()
            },
        ),
        (
            "guidance",
            GenerateRequest {
                guidance: Some(f32::NAN),
                ..base()
            },
        ),
        (
            "guidance",
            GenerateRequest {
                guidance: Some(1000.0),
                ..base()
            },
        ),
        ("batch", GenerateRequest { batch: 0, ..base() }),
        (
            "batch",
            GenerateRequest {
                batch: 99,
                ..base()
            },
        ),
        (
            "prompt",
            GenerateRequest {
                prompt: "p".repeat(10_000),
                ..base()
            },
        ),
        (
            "negative_prompt",
            GenerateRequest {
                negative_prompt: "\u{1b}[31m".into(),
                ..base()
            },
        ),
        (
            "prompt",
            GenerateRequest {
                prompt: "a (cat:1.2.3)".into(),
                ..base()
            },
        ),
        (
            "negative_prompt",
            GenerateRequest {
                negative_prompt: "(blurry:500)".into(),
                ..base()
            },
        ),
        (
            "tag",
            GenerateRequest {
                tag: Some("has space".into()),
                ..base()
            },
        ),
        (
            "model_id",
            GenerateRequest {
                model_id: "../etc/passwd".into(),
                ..base()
            },
        ),
    ];
    for (field, request) in cases {
        eprintln!("case {field}");
        let events = client.generate(request.clone());
        assert_eq!(invalid_field(&events), field, "{request:?}");
    }
    // An unknown (well-formed) model id has its own code.
    let events = client.generate(GenerateRequest {
        model_id: "nope".into(),
        ..base()
    });
    assert_eq!(
        stream_error(&events),
        Some(ErrorCode::UnknownModel {
            model_id: "nope".into()
        })
    );
    // Every scheduler name is accepted by validation (no error on that field).
    let _ = Scheduler::ALL;

    // Nothing was queued.
    assert_eq!(client.call(&Request::AllJobs), Response::Jobs(Vec::new()));
    match client.call(&Request::Status) {
        Response::Status(status) => assert_eq!(status.queue_depth, 0),
        other => panic!("{other:?}"),
    }
    // The audit names the field, never the value.
    let record = setup
        .sink
        .wait_for(
            &["event=generate_refused", "field=width"],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("{:?}", setup.sink.records()));
    assert!(record.contains("error=invalid_parameter"), "{record}");
    std::thread::sleep(Duration::from_millis(200));
    for record in setup.sink.records() {
        assert!(!record.contains("SECRET-PROMPT-MARKER"), "{record}");
        assert!(!record.contains("/etc/passwd"), "{record}");
    }
}

#[test]
fn malformed_and_oversized_frames_are_answered_and_others_keep_being_served() {
    let Some(setup) = start("frames", "") else {
        return;
    };
    let socket = &setup.broker.socket;
    let mut bystander = Client::hello(socket);

    let expect_protocol_error_then_eof = |client: &mut Client, what: &str| {
        match client.recv() {
            Ok(Response::Error(ErrorCode::ProtocolError { .. })) => {}
            other => panic!("{what}: expected ProtocolError, got {other:?}"),
        }
        assert!(
            client.read_to_end().is_empty(),
            "{what}: closed after the error"
        );
    };

    // Announced length above the 64 KiB request limit.
    let mut oversized = Client::connect(socket);
    oversized.send_raw(&(1u32 << 20).to_le_bytes());
    expect_protocol_error_then_eof(&mut oversized, "oversized");

    // Garbage body: unknown message type.
    let mut garbage = Client::connect(socket);
    garbage.send_raw(&[3, 0, 0, 0, 0x7f, 0xff, 0xff]);
    expect_protocol_error_then_eof(&mut garbage, "garbage");

    // A valid request followed by trailing bytes inside the frame.
    let mut trailing = Client::connect(socket);
    let mut frame = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
        client_name: "t".into(),
    })
    .unwrap();
    frame.push(0);
    let body_len = u32::try_from(frame.len() - 4).unwrap();
    frame[..4].copy_from_slice(&body_len.to_le_bytes());
    trailing.send_raw(&frame);
    expect_protocol_error_then_eof(&mut trailing, "trailing");

    // Anything but Hello first.
    let mut rude = Client::connect(socket);
    rude.send(&Request::Status);
    expect_protocol_error_then_eof(&mut rude, "no hello");

    // Wrong protocol version.
    let mut old = Client::connect(socket);
    old.send(&Request::Hello {
        version: PROTOCOL_VERSION + 1,
        client_name: "t".into(),
    });
    expect_protocol_error_then_eof(&mut old, "version");

    // The earlier connection and new ones are still served.
    assert!(matches!(
        bystander.call(&Request::Status),
        Response::Status(_)
    ));
    let mut fresh = Client::hello(socket);
    assert!(matches!(fresh.call(&Request::ListModels), Response::Models(m) if m.len() == 1));
    assert!(setup
        .sink
        .wait_for(
            &["event=invalid_request", "field=frame"],
            Duration::from_secs(5)
        )
        .is_some());
}

#[test]
fn rate_limit_gives_its_typed_error() {
    let Some(setup) = start("ratelimit", "rate_per_minute = 1\nrate_burst = 1") else {
        return;
    };
    let mut first = Client::hello(&setup.broker.socket);
    let events = first.generate(digits_request("1"));
    assert!(
        matches!(events.first(), Some(Response::Queued { .. })),
        "first request admitted: {events:?}"
    );
    let mut second = Client::hello(&setup.broker.socket);
    let events = second.generate(digits_request("2"));
    match stream_error(&events) {
        Some(ErrorCode::RateLimited { retry_after_ms }) => {
            assert!(
                retry_after_ms > 1000 && retry_after_ms <= 60_000,
                "{retry_after_ms}"
            )
        }
        other => panic!("expected RateLimited, got {other:?} ({events:?})"),
    }
    assert_eq!(events.len(), 1, "nothing queued");
}

#[test]
fn sigterm_stops_the_broker_and_removes_its_socket() {
    let Some(mut setup) = start("sigterm", "") else {
        return;
    };
    let mut idle = Client::hello(&setup.broker.socket);
    let socket = setup.broker.socket.clone();
    let status = setup.broker.stop();
    assert!(status.success(), "{status}: {}", setup.broker.log_text());
    assert!(!socket.exists());
    // New connections are refused; the idle one is not left hanging forever.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
    let _ = weave_common::proto::write_request(&mut idle.stream, &Request::Status);
    assert!(idle.recv().is_err(), "the broker is gone");
    assert!(setup
        .sink
        .wait_for(&["event=stop"], Duration::from_secs(5))
        .is_some());
}

/// A slow reader (requests pipelined, answers never read) is dropped once
/// the broker's write has waited the documented 30 s, and the drop is
/// audited (`event=client_dropped reason=write_timeout`).
#[test]
fn a_slow_reader_is_dropped_after_30_s_and_the_drop_is_logged() {
    use std::io::Write;
    let scratch = Scratch::new("slow-reader");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    client
        .stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let status = weave_common::proto::encode_request(&Request::Status).unwrap();
    // Pipeline until our writes block: the broker is then stuck writing
    // answers we never read, and its 30 s write deadline runs.
    let blocked_at = loop {
        match client.stream.write(&status) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break std::time::Instant::now();
            }
            Err(e) => panic!("dropped before our writes blocked: {e}"),
        }
    };
    let record = sink
        .wait_for(
            &["event=client_dropped", "reason=write_timeout", "after_s=30"],
            Duration::from_secs(45),
        )
        .unwrap_or_else(|| panic!("no drop record: {:?}", sink.records()));
    let waited = blocked_at.elapsed();
    assert!(
        waited >= Duration::from_secs(25) && waited <= Duration::from_secs(45),
        "dropped after {waited:?}: {record}"
    );
    // The broker serves others meanwhile and after.
    let mut other = Client::hello(&broker.socket);
    assert!(matches!(other.call(&Request::Status), Response::Status(_)));
}

/// A `Generate` whose scheduler index is past the last scheduler (a client
/// built against a newer protocol, or a forged frame) is answered with
/// `InvalidParameter { field: "scheduler" }` and the allowed indexes, not a
/// bare "malformed message body"; the audit names the field.
#[test]
fn an_unknown_scheduler_index_names_the_field() {
    let Some(setup) = start("scheduler_index", "") else {
        return;
    };
    let mut client = Client::hello(&setup.broker.socket);
    let mut request = digits_request("a 7");
    request.scheduler = Some(Scheduler::DpmPp2mKarras);
    let good = encode_request(&Request::Generate(request.clone())).unwrap();
    request.scheduler = Some(Scheduler::Ddim);
    let other = encode_request(&Request::Generate(request)).unwrap();
    // The one byte that differs is the scheduler's index (4 vs 0).
    let at = good.iter().zip(&other).position(|(a, b)| a != b).unwrap();
    assert_eq!(good[at], 4);
    let mut forged = good.clone();
    forged[at] = 9;
    client.send_raw(&forged);
    match client.recv() {
        Ok(Response::Error(ErrorCode::InvalidParameter { field, allowed })) => {
            assert_eq!(field, "scheduler");
            assert!(allowed.contains("4 dpmpp_2m_karras"), "{allowed}");
        }
        other => panic!("expected InvalidParameter for scheduler, got {other:?}"),
    }
    assert!(client.read_to_end().is_empty(), "closed after the error");
    assert!(setup
        .sink
        .wait_for(
            &["event=invalid_request", "field=scheduler"],
            Duration::from_secs(5)
        )
        .is_some());
}
