//! User mode as an ordinary user: default config and socket paths from the
//! XDG variables, a private socket, and only that uid gets in (root too is
//! closed without a byte).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use weave_tests::{
    ensure_user, probe_as_user, require_root, target_bin, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

const USER: &str = "weave-t-desktop";

#[test]
fn user_mode_uses_xdg_paths_and_serves_only_its_own_uid() {
    if !require_root("user_mode_uses_xdg_paths_and_serves_only_its_own_uid") {
        return;
    }
    let user = ensure_user(USER, &[]);
    let scratch = Scratch::new("usermode");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let run = scratch.join("xdg-run");
    let config_home = scratch.join("xdg-config");
    let config_dir = config_home.join("weave");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = TestConfig::new(&sink.path).write(&config_dir);
    for path in [&run, &config_home, &config_dir, &config] {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The scratch root is root's and 0755: safe above the user's config.

    let socket = run.join("weave/weave.sock");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={USER}"))
        .arg(format!("--regid={USER}"))
        .arg("--init-groups")
        .arg("--")
        .arg(target_bin("weave-broker"))
        .env("XDG_RUNTIME_DIR", &run)
        .env("XDG_CONFIG_HOME", &config_home);
    let mut broker = BrokerProcess::start_command(command, &socket, &scratch.join("broker.log"));

    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o700);
    assert_eq!(dir.uid(), user.uid);
    let sock = std::fs::metadata(&socket).unwrap();
    assert_eq!(sock.mode() & 0o7777, 0o600);
    assert_eq!(sock.uid(), user.uid);

    let own = probe_as_user(USER, &socket, &["status"]);
    assert!(own.contains("role=Admin"), "{own}\n{}", broker.log_text());

    // Root can open the file but is not the user: no byte, one record.
    let mut root = Client::connect(&socket);
    assert!(root.read_to_end().is_empty());
    assert!(sink
        .wait_for(
            &["event=connection_rejected", "uid=0 "],
            Duration::from_secs(5)
        )
        .is_some());

    let status = broker.stop();
    assert!(status.success(), "{status}: {}", broker.log_text());
    assert!(!socket.exists());
}

/// A descriptor the broker's parent left open (without close-on-exec) does
/// not reach the broker: it closes everything from 3 up at start, except
/// systemd's `LISTEN_FDS` (broker_activation covers those).
#[test]
fn inherited_descriptors_are_closed_at_start() {
    use std::os::unix::process::CommandExt;
    let scratch = Scratch::new("inherited-fds");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let leaked = std::fs::File::open("/etc/hostname")
        .or_else(|_| std::fs::File::open("/etc/passwd"))
        .unwrap();
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    const TARGET: i32 = 42;
    let socket = scratch.join("run/weave.sock");
    let mut command = Command::new(target_bin("weave-broker"));
    command
        .arg("--user")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket);
    // SAFETY: dup2 in the forked child only edits its descriptor table
    // (dup2 never sets close-on-exec: the copy is inherited by exec).
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(leaked_fd, TARGET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let broker = BrokerProcess::start_command(command, &socket, &scratch.join("broker.log"));
    let fd_path = format!("/proc/{}/fd/{TARGET}", broker.pid());
    assert!(
        std::fs::read_link(&fd_path).is_err(),
        "the broker kept inherited fd {TARGET}: {:?}",
        std::fs::read_link(&fd_path)
    );
    let mut client = Client::hello(&broker.socket);
    assert!(matches!(
        client.call(&weave_common::proto::Request::Status),
        weave_common::proto::Response::Status(_)
    ));
    drop(leaked);
}

/// `weave-broker --user` started as root (euid 0) is refused with the fix:
/// it would keep uid 0, which owns the system's files. Nothing is bound.
/// (The other tests' brokers run as root with the documented escape hatch
/// `WEAVE_ALLOW_ROOT_USER_MODE=1`; here it is absent, and set to another
/// value.)
#[test]
fn user_mode_started_as_root_is_refused_with_the_fix() {
    if !require_root("user_mode_started_as_root_is_refused_with_the_fix") {
        return;
    }
    let scratch = Scratch::new("usermode-root");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let socket = scratch.join("run/weave.sock");
    for hatch in [None, Some("yes")] {
        let mut command = Command::new(target_bin("weave-broker"));
        command
            .args(["--user", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env_remove(weave_tests::ROOT_USER_MODE_HATCH);
        if let Some(value) = hatch {
            command.env(weave_tests::ROOT_USER_MODE_HATCH, value);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{hatch:?}: {stderr}");
        assert!(
            stderr.contains("--user refuses to run as root") && stderr.contains("use --system"),
            "{hatch:?}: {stderr}"
        );
        assert!(!socket.exists(), "nothing bound");
    }
    // The hatch set to exactly 1 lets it start (what the other tests use).
    let mut broker = BrokerProcess::start_user(&scratch, &config);
    assert!(broker.stop().success(), "{}", broker.log_text());
}

/// A broker stopped the moment its socket file appears (a client or
/// systemd may do exactly that) exits cleanly and removes the socket: the
/// signal handlers are in place before the socket is bound, so SIGTERM
/// never meets the default action, which would kill it and leave the
/// socket behind. The window it closes is wide (the worker pool starts
/// between the two), so a few rounds find it if it reopens.
#[test]
fn sigterm_as_soon_as_the_socket_exists_is_a_clean_stop() {
    if !require_root("sigterm_as_soon_as_the_socket_exists_is_a_clean_stop") {
        return;
    }
    let scratch = Scratch::new("usermode-early-term");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    for round in 0..5 {
        let log = scratch.join(&format!("broker-{round}.log"));
        let (mut child, socket) = BrokerProcess::spawn_user(&scratch, &config, &log);
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < end,
                "round {round}: no socket: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "round {round}: exited before binding ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::yield_now();
        }
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "round {round}: {status}: {text}");
        assert!(
            !socket.exists(),
            "round {round}: socket left behind: {text}"
        );
    }
}
