//! A model whose path does not exist does not take the others down: the
//! worker leaves it out of its sandbox's view (instead of failing to
//! confine itself, which failed every job with `WorkerCrashed`), the other
//! model generates, and the missing one is refused at load with a reason
//! (named by id in the broker's log; the caller gets a typed error).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use weave_common::proto::{ErrorCode, GenerateRequest, Response};
use weave_tests::{
    digits_request, require_digits, stream_error, AuditSink, BrokerProcess, Client, Scratch,
    TestConfig,
};

#[test]
fn a_missing_model_path_leaves_the_other_models_working() {
    let name = "model_missing";
    if !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let ghost = scratch.join("no-such-model");
    let text = format!(
        "{}\n[[model]]\nid = \"ghost\"\nkind = \"sd1\"\npath = \"{}\"\n",
        TestConfig::digits(&sink.path).toml(),
        ghost.display()
    );
    let config = etc.join("weave.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);

    let events = client.generate(digits_request("7"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Response::Image { png, .. } if png.starts_with(b"\x89PNG"))),
        "digits with a missing sibling: {events:?}\n{}",
        broker.log_text()
    );
    let ghost_events = client.generate(GenerateRequest {
        model_id: "ghost".into(),
        ..digits_request("7")
    });
    assert_eq!(
        stream_error(&ghost_events),
        Some(ErrorCode::Internal),
        "{ghost_events:?}"
    );
    let log = broker.log_text();
    assert!(
        log.contains("model \"ghost\" is unavailable: its path does not exist"),
        "{log}"
    );
    // The refusal did not cost the worker: digits still generates on it.
    let again = client.generate(digits_request("8"));
    assert!(stream_error(&again).is_none(), "{again:?}");
}
