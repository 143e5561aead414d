//! Admin verbs against a real broker with the real supervisor and worker
//! (no generation needed): key rotation re-keys the channel, drain/resume,
//! pin of an unknown model, status while loads fail.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weave_common::proto::{ErrorCode, Request, Response, WorkerState};
use weave_tests::{
    digits_request, require_root, stream_error, AuditSink, BrokerProcess, Client, Scratch,
    TestConfig,
};

#[test]
fn admin_verbs_drive_the_real_worker_and_are_audited() {
    if !require_root("admin_verbs_drive_the_real_worker_and_are_audited") {
        return;
    }
    let scratch = Scratch::new("admin");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let socket = broker.socket.clone();
    let mut admin = Client::hello(&socket);

    // The placeholder model cannot load, but the worker starts and stays.
    let load = admin.call(&Request::Load {
        model_id: "digits".into(),
    });
    assert_eq!(
        load,
        Response::Error(ErrorCode::ModelUnavailable),
        "{}",
        broker.log_text()
    );
    let status = match admin.call(&Request::Status) {
        Response::Status(status) => status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status.worker, WorkerState::Ready, "{}", broker.log_text());
    assert!(status.loaded.is_none());
    assert!(status.sandbox.contains("seccomp"), "{}", status.sandbox);
    // The error to the caller never names the model's path.
    assert!(!format!("{load:?}").contains("placeholder-model"));

    let generation = |admin: &mut Client| match admin.call(&Request::ChannelStats) {
        Response::ChannelStats(stats) => stats.key_generation,
        other => panic!("{other:?}"),
    };
    let before = generation(&mut admin);
    assert_eq!(
        admin.call(&Request::RotateKeys),
        Response::Ok,
        "{}",
        broker.log_text()
    );
    let after = generation(&mut admin);
    assert!(after > before, "key generation {before} -> {after}");
    // `sshmctl segments`: both ends of each ring as the supervisor counts
    // them. Every message so far was answered, so each ring is consumed up
    // to what was written (the load and the rekey went each way at least).
    let segments = match admin.call(&Request::ChannelStats) {
        Response::ChannelStats(stats) => stats.segments,
        other => panic!("{other:?}"),
    };
    assert_eq!(segments.len(), 2, "{segments:?}");
    for segment in &segments {
        assert!(segment.write_seq >= 2, "{segment:?}");
        assert_eq!(segment.read_seq, segment.write_seq, "{segment:?}");
    }

    assert_eq!(
        admin.call(&Request::Pin {
            model_id: "nope".into()
        }),
        Response::Error(ErrorCode::UnknownModel {
            model_id: "nope".into()
        })
    );

    assert_eq!(admin.call(&Request::Drain), Response::Ok);
    let events = admin.generate(digits_request("1"));
    assert_eq!(stream_error(&events), Some(ErrorCode::ShuttingDown));
    match admin.call(&Request::Status) {
        Response::Status(status) => assert!(status.draining),
        other => panic!("{other:?}"),
    }
    assert_eq!(admin.call(&Request::Resume), Response::Ok);
    assert_eq!(
        admin.call(&Request::QuarantineClear {
            model_id: "digits".into()
        }),
        Response::Ok
    );

    for verb in ["rotate_keys", "drain", "resume", "load", "quarantine_clear"] {
        let needle = format!("verb={verb}");
        assert!(
            sink.wait_for(&["event=admin", &needle], Duration::from_secs(5))
                .is_some(),
            "no audit for {verb}: {:?}",
            sink.records()
        );
    }
    for record in sink.records() {
        assert!(!record.contains("placeholder-model"), "{record}");
    }
}

/// Admin verbs check model ids with Generate's rule before any lookup: a
/// path, an over-long id or one with a newline is `InvalidParameter` on
/// `model_id`, never an `UnknownModel` that echoes it back, and the audit
/// record names the field, not the value.
#[test]
fn admin_verbs_validate_model_ids_like_generate() {
    let scratch = Scratch::new("admin-ids");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut admin = Client::hello(&broker.socket);
    let long = "m".repeat(300);
    for bad in ["../x", long.as_str(), "a\nevent=forged", ""] {
        for request in [
            Request::Load {
                model_id: bad.into(),
            },
            Request::Pin {
                model_id: bad.into(),
            },
            Request::Unpin {
                model_id: bad.into(),
            },
            Request::QuarantineClear {
                model_id: bad.into(),
            },
        ] {
            match admin.call(&request) {
                Response::Error(ErrorCode::InvalidParameter { field, allowed }) => {
                    assert_eq!(field, "model_id", "{request:?}");
                    assert!(bad.is_empty() || !allowed.contains(bad), "{allowed}");
                }
                other => panic!("{request:?}: {other:?}"),
            }
        }
    }
    let record = sink
        .wait_for(
            &["event=invalid_request", "verb=load", "field=model_id"],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        !record.contains("../x") && !record.contains("forged"),
        "{record}"
    );
    assert!(sink.records().iter().all(|r| !r.contains("event=forged")));
    // A well-formed unknown id is still UnknownModel.
    assert!(matches!(
        admin.call(&Request::Load {
            model_id: "nope".into()
        }),
        Response::Error(ErrorCode::UnknownModel { .. })
    ));
}
