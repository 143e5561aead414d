//! The `sha256` pin through the real broker and sandboxed worker: a pin
//! that does not match the digits folder is refused at load with an error
//! that names the model id (not its path), audited as
//! `event=model_refused model=digits reason=sha256_mismatch`; the pin
//! `sshmctl hash` prints loads and generates.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use weave_common::proto::{ErrorCode, Response};
use weave_tests::{
    digits_model, digits_request, require_digits, stream_error, target_bin, AuditSink,
    BrokerProcess, Client, Scratch, TestConfig,
};

fn pinned_config(dir: &Path, sink: &Path, sha256: &str) -> std::path::PathBuf {
    let config = TestConfig::digits(sink);
    let path_line = format!("path = \"{}\"\n", config.model_path.display());
    let text = config
        .toml()
        .replace(&path_line, &format!("{path_line}sha256 = \"{sha256}\"\n"));
    assert!(text.contains("sha256"), "{text}");
    let file = dir.join("weave.toml");
    std::fs::write(&file, text).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

#[test]
fn a_wrong_pin_is_refused_by_model_id_and_the_printed_pin_loads() {
    let name = "model_pin";
    if !require_digits(name) {
        return;
    }
    let model = digits_model().unwrap();
    let out = std::process::Command::new(target_bin("sshmctl"))
        .arg("hash")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let pin = printed.split_whitespace().next().unwrap().to_owned();
    assert_eq!(pin, weave_common::pin::pin_of(&model).unwrap());
    assert_eq!(printed.trim_end(), format!("{pin}  {}", model.display()));

    // A wrong pin.
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = pinned_config(&etc, &sink.path, &"0".repeat(64));
    let mut broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    let events = client.generate(digits_request("7"));
    assert_eq!(
        stream_error(&events),
        Some(ErrorCode::ModelUnavailable),
        "{events:?}"
    );
    let refused = sink
        .wait_for(
            &[
                "event=model_refused",
                "model=digits",
                "reason=sha256_mismatch",
            ],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no audit record: {:?}", sink.records()));
    let log = broker.log_text();
    assert!(
        log.contains("model \"digits\" does not match its sha256 pin"),
        "{log}"
    );
    let path = model.display().to_string();
    assert!(!refused.contains(&path), "{refused}");
    assert!(!format!("{events:?}").contains(&path));
    broker.stop();

    // The pin sshmctl printed.
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = pinned_config(&etc, &sink.path, &pin);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    let events = client.generate(digits_request("7"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Response::Image { png, .. } if png.starts_with(b"\x89PNG"))),
        "{events:?}\n{}",
        broker.log_text()
    );
}
