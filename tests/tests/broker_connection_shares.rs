//! One client cannot lock out the others (DESIGN.md invariant 13), in
//! system mode with real users: one client uid holds 600 silent
//! connections (no Hello, so no rate limit applies); an admin and a second
//! client uid each still get `Status` within a second, the holder's
//! connections past its share get a typed `Busy`, and the ones it got are
//! closed at the Hello deadline with a `ProtocolError` saying why.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weave_common::proto::{Request, Response};
use weave_tests::{
    ensure_group, ensure_user, probe_as_user, require_root, target_bin, AuditSink, BrokerProcess,
    Client, Scratch, TestConfig,
};

const SERVICE: &str = "weave-t-svc";
const CLIENTS: &str = "weave-t-clients";
const ADMINS: &str = "weave-t-admins";
const HOLDER: &str = "weave-t-holder";
const OTHER: &str = "weave-t-member";
/// The defaults of `max_connections_per_uid` and `hello_timeout_s`.
const PER_UID: usize = 64;
const HELD: usize = 600;

#[test]
fn a_client_holding_600_silent_connections_locks_out_no_one() {
    let name = "connection_shares";
    if !require_root(name) {
        return;
    }
    ensure_user(SERVICE, &[]);
    ensure_group(ADMINS);
    ensure_user(HOLDER, &[CLIENTS]);
    ensure_user(OTHER, &[CLIENTS]);

    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::new(&sink.path);
    config.daemon =
        format!("user = \"{SERVICE}\"\nclient_group = \"{CLIENTS}\"\nadmin_group = \"{ADMINS}\"\n");
    let config = config.write(&etc);
    let socket = scratch.join("run/weave.sock");
    let broker = BrokerProcess::start(
        &[
            "--system",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
        &socket,
        &scratch.join("broker.log"),
    );

    let mut holder = Command::new("setpriv")
        .arg(format!("--reuid={HOLDER}"))
        .arg(format!("--regid={HOLDER}"))
        .arg("--init-groups")
        .arg("--")
        .arg(target_bin("weave-probe-client"))
        .arg("--socket")
        .arg(&socket)
        .args(["hold", "--count", &HELD.to_string(), "--seconds", "8"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, format!("holding {HELD}"), "{}", broker.log_text());

    // The admin (root) and another client uid are served at once.
    let started = Instant::now();
    let mut admin = Client::hello(&socket);
    let status = admin.call(&Request::Status);
    let admin_took = started.elapsed();
    assert!(matches!(status, Response::Status(_)), "{status:?}");
    assert!(
        admin_took < Duration::from_secs(1),
        "admin Status took {admin_took:?}"
    );
    let started = Instant::now();
    let other = probe_as_user(OTHER, &socket, &["status"]);
    let other_took = started.elapsed();
    assert!(
        other.contains("role=Client") && other.contains("worker="),
        "second client: {other}\n{}",
        broker.log_text()
    );
    assert!(
        other_took < Duration::from_secs(1),
        "second client Status took {other_took:?}"
    );

    // What the holder's connections got: Busy past its share, and the
    // Hello-deadline close (with its reason) for the ones it was given.
    let report = lines.next().unwrap().unwrap();
    assert!(holder.wait().unwrap().success());
    assert_eq!(
        report,
        format!(
            "busy={} hello_timeout={PER_UID} eof=0 other=0 open=0",
            HELD - PER_UID
        ),
        "{}",
        broker.log_text()
    );
    assert!(sink
        .wait_for(
            &["event=connection_limit", "reason=uid_share"],
            Duration::from_secs(5)
        )
        .is_some());
    assert!(sink
        .wait_for(&["event=hello_timeout"], Duration::from_secs(5))
        .is_some());
    // The admin's connection outlived the Hello deadline: it said Hello.
    assert!(matches!(admin.call(&Request::Status), Response::Status(_)));
}
