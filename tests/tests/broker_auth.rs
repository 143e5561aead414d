//! SO_PEERCRED before any read: a uid the broker does not serve is closed
//! without a byte, and exactly that rejection is audited.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use weave_common::proto::{Request, Response};
use weave_tests::{
    ensure_user, require_root, target_bin, AuditSink, BrokerProcess, Client, Scratch, TestConfig,
};

fn probe_as(uid: u32, gid: u32, socket: &std::path::Path, mode: &str) -> String {
    let out = Command::new(target_bin("weave-probe-client"))
        .uid(uid)
        .gid(gid)
        .arg("--socket")
        .arg(socket)
        .arg(mode)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn another_uid_is_closed_without_a_byte_and_audited() {
    if !require_root("another_uid_is_closed_without_a_byte_and_audited") {
        return;
    }
    let other = ensure_user("weave-t-other", &[]);
    let scratch = Scratch::new("auth");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let socket = broker.socket.clone();
    // User mode: dir 0700, socket 0600, owner = the broker's uid (root).
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&scratch.join("run")), 0o700);
    assert_eq!(mode(&socket), 0o600);

    // Open the file permissions up: SO_PEERCRED alone must still refuse.
    std::fs::set_permissions(scratch.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    assert_eq!(
        probe_as(other.uid, other.gid, &socket, "silent-read"),
        "bytes=0"
    );
    assert_eq!(
        probe_as(other.uid, other.gid, &socket, "hello-read"),
        "bytes=0"
    );

    let uid_field = format!("uid={}", other.uid);
    let gid_field = format!("gid={}", other.gid);
    let record = sink
        .wait_for(
            &["event=connection_rejected", &uid_field, &gid_field, "pid="],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no audit record; got {:?}", sink.records()));
    assert!(record.starts_with('<'), "RFC 3164 priority: {record}");
    assert!(record.contains("weave-broker["), "{record}");
    // One record per rejected connection (two connections above).
    std::thread::sleep(Duration::from_millis(300));
    let rejections = sink
        .records()
        .iter()
        .filter(|r| r.contains("event=connection_rejected") && r.contains(&uid_field))
        .count();
    assert_eq!(rejections, 2, "{:?}", sink.records());

    // The broker's own uid is still served.
    let mut client = Client::hello(&socket);
    assert!(matches!(client.call(&Request::Status), Response::Status(_)));
    drop(broker);
}
