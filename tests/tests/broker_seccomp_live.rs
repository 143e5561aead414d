//! The real broker under its seccomp allowlist, in both modes, with real
//! users: `/proc/PID/status` shows `Seccomp: 2` (filter mode), and the
//! broker still answers `Status`, generates on the digits demo model,
//! respawns the worker after `kill -9` (through the spawner it forked
//! before the boundary) and shuts down cleanly on SIGTERM. A syscall the
//! allowlist lacks on any of these paths kills the broker with SIGSYS,
//! which fails the test.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weave_tests::{
    children_named, ensure_group, ensure_user, probe_as_user, proc_status_field, require_digits,
    require_root, target_bin, workers_of, AuditSink, BrokerProcess, Scratch, TestConfig,
};

const SERVICE: &str = "weave-t-svc";
const CLIENTS: &str = "weave-t-clients";
const ADMINS: &str = "weave-t-admins";
const MEMBER: &str = "weave-t-member";
const DESKTOP: &str = "weave-t-desktop";

/// The worker of `broker` once it runs, waiting up to 60 s.
fn wait_worker(broker: &BrokerProcess, other_than: Option<u32>) -> u32 {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(&pid) = workers_of(broker.pid())
            .iter()
            .find(|&&pid| Some(pid) != other_than)
        {
            return pid;
        }
        assert!(Instant::now() < end, "no worker: {}", broker.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status, a generate, kill -9 of the worker and a generate by the next
/// one, then SIGTERM: all by `user` over `socket`, with the broker under
/// seccomp throughout.
fn exercise(mut broker: BrokerProcess, user: &str, socket: &Path, out_dir: &Path) {
    let pid = broker.pid();
    // The socket answers (connections queue in its backlog) from the bind
    // on, a moment before the boundary: wait for the filter.
    let end = Instant::now() + Duration::from_secs(20);
    while proc_status_field(pid, "Seccomp") != "2" && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proc_status_field(pid, "Seccomp"),
        "2",
        "the broker runs in seccomp filter mode: {}",
        broker.log_text()
    );
    // The errno filter (clone3 → ENOSYS) and the allowlist.
    assert_eq!(proc_status_field(pid, "Seccomp_filters"), "2");
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");
    // The spawner was forked before the boundary: no filter of the
    // broker's, or it could not exec the worker.
    let spawner = children_named(pid, "weave-spawner");
    assert_eq!(spawner.len(), 1, "one spawner: {}", broker.log_text());
    assert_eq!(proc_status_field(spawner[0], "Seccomp"), "0");

    let status = probe_as_user(user, socket, &["status"]);
    assert!(status.contains("role="), "{status}\n{}", broker.log_text());

    let generate = |name: &str, side: &str| {
        let out = out_dir.join(name);
        let text = probe_as_user(
            user,
            socket,
            &[
                "generate",
                "--prompt",
                "a digit 7",
                "--out",
                out.to_str().unwrap(),
                "--steps",
                "4",
                "--seed",
                "7",
                "--width",
                side,
                "--height",
                side,
            ],
        );
        let png = std::fs::read(&out).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG"),
            "{name}: {text}\n{}",
            broker.log_text()
        );
    };
    // 128²: the decoder's top layers are large enough for NNPACK
    // (engine/conv3x3.rs), which then runs under the worker's seccomp
    // filter; the worker says it started NNPACK before the boundary.
    generate("first.png", "128");
    assert!(
        broker
            .log_text()
            .contains("large 3x3 convolutions without oneDNN: NNPACK"),
        "{}",
        broker.log_text()
    );
    let worker = wait_worker(&broker, None);
    // SAFETY: kill with the pid of the broker's worker.
    let killed = unsafe { libc::kill(worker as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0);
    let next = wait_worker(&broker, Some(worker));
    assert_ne!(next, worker);
    generate("after-respawn.png", "32");
    assert_eq!(
        proc_status_field(pid, "Seccomp"),
        "2",
        "still the same filtered broker"
    );

    let ended = broker.stop();
    assert!(
        ended.success(),
        "SIGTERM: {ended} (signal {:?}): {}",
        ended.signal(),
        broker.log_text()
    );
    assert!(!socket.exists(), "socket removed at shutdown");
}

#[test]
fn system_mode_broker_is_under_seccomp_and_still_serves_respawns_and_stops() {
    let name = "system_mode_broker_is_under_seccomp_and_still_serves_respawns_and_stops";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    ensure_user(SERVICE, &[]);
    ensure_group(CLIENTS);
    ensure_group(ADMINS);
    ensure_user(MEMBER, &[CLIENTS]);
    let scratch = Scratch::new("seccomp-system");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.daemon =
        format!("user = \"{SERVICE}\"\nclient_group = \"{CLIENTS}\"\nadmin_group = \"{ADMINS}\"\n");
    let config = config.write(&etc);
    let socket = scratch.join("run/weave.sock");
    let out_dir = scratch.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
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
    exercise(broker, MEMBER, &socket, &out_dir);
}

#[test]
fn user_mode_broker_is_under_seccomp_and_still_serves_respawns_and_stops() {
    let name = "user_mode_broker_is_under_seccomp_and_still_serves_respawns_and_stops";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let user = ensure_user(DESKTOP, &[]);
    let scratch = Scratch::new("seccomp-user");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let home = scratch.join("home");
    let config_dir = home.join("config");
    let run = home.join("run");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let config = TestConfig::digits(&sink.path).write(&config_dir);
    for path in [&home, &config_dir, &run, &config] {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = run.join("weave.sock");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={DESKTOP}"))
        .arg(format!("--regid={DESKTOP}"))
        .arg("--init-groups")
        .arg("--")
        .arg(target_bin("weave-broker"))
        .arg("--user")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket);
    let broker = BrokerProcess::start_command(command, &socket, &scratch.join("broker.log"));
    exercise(broker, DESKTOP, &socket, &run);
}
