//! Started like systemd does it: socket activation (`LISTEN_FDS`) through
//! `systemd-socket-activate` and readiness through `NOTIFY_SOCKET`.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weave_common::proto::{Request, Response};
use weave_tests::{require_root, target_bin, AuditSink, Client, Scratch, TestConfig};

#[test]
fn socket_activation_and_readiness_notification() {
    if !require_root("socket_activation_and_readiness_notification") {
        return;
    }
    let scratch = Scratch::new("activation");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let notify_path = scratch.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket = scratch.join("activated.sock");
    let log = std::fs::File::create(scratch.join("broker.log")).unwrap();
    let mut activator = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&socket)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(format!("--setenv={}=1", weave_tests::ROOT_USER_MODE_HATCH))
        .arg(target_bin("weave-broker"))
        .args(["--user", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < end,
            "systemd-socket-activate never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the broker, which inherits the listener.
    let mut client = Client::hello(&socket);
    assert!(matches!(client.call(&Request::Status), Response::Status(_)));
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.contains("READY=1"), "{message}");

    // SIGTERM (the activator exec'd the broker, same pid): a clean stop that
    // leaves systemd's socket in place.
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(activator.id() as libc::pid_t, libc::SIGTERM) };
    let status = activator.wait().unwrap();
    let text = std::fs::read_to_string(scratch.join("broker.log")).unwrap_or_default();
    assert!(status.success(), "{status}: {text}");
    assert!(socket.exists(), "an activated socket belongs to systemd");
}
