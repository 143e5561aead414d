//! System mode: the broker drops to the service account with every
//! capability set empty; socket and directory modes and owners; a config
//! with unsafe permissions is refused with a clear message.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use weave_common::proto::Request;
use weave_tests::{
    ensure_group, ensure_user, probe_as_user, proc_status_field, require_root, workers_of,
    AuditSink, BrokerProcess, Client, Scratch, TestConfig,
};

const SERVICE: &str = "weave-t-svc";
const CLIENTS: &str = "weave-t-clients";
const ADMINS: &str = "weave-t-admins";

fn system_config(sink: &std::path::Path) -> TestConfig {
    let mut config = TestConfig::new(sink);
    config.daemon =
        format!("user = \"{SERVICE}\"\nclient_group = \"{CLIENTS}\"\nadmin_group = \"{ADMINS}\"\n");
    config
}

fn assert_unprivileged(pid: u32, uid: u32, gid: u32, what: &str) {
    let ids = |field: &str| proc_status_field(pid, field);
    let expect_uid = format!("{uid}\t{uid}\t{uid}\t{uid}");
    let expect_gid = format!("{gid}\t{gid}\t{gid}\t{gid}");
    assert_eq!(ids("Uid"), expect_uid, "{what} uids");
    assert_eq!(ids("Gid"), expect_gid, "{what} gids");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(ids(set), "0000000000000000", "{what} {set}");
    }
    assert_eq!(ids("NoNewPrivs"), "1", "{what} no_new_privs");
}

#[test]
fn system_mode_runs_as_the_service_user_with_no_capabilities() {
    if !require_root("system_mode_runs_as_the_service_user_with_no_capabilities") {
        return;
    }
    let service = ensure_user(SERVICE, &[]);
    let clients_gid = ensure_group(CLIENTS);
    ensure_group(ADMINS);
    let member = ensure_user("weave-t-member", &[CLIENTS]);
    let outsider = ensure_user("weave-t-outsider", &[]);

    let scratch = Scratch::new("system");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = system_config(&sink.path).write(&etc);
    let socket = scratch.join("run/weave.sock");
    let mut broker = BrokerProcess::start(
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
    assert_unprivileged(broker.pid(), service.uid, service.gid, "broker");
    // Supplementary groups: at most the service account's own.
    let groups = proc_status_field(broker.pid(), "Groups");
    assert!(
        groups
            .split_whitespace()
            .all(|g| g == service.gid.to_string()),
        "groups {groups}"
    );

    let run_dir = std::fs::metadata(scratch.join("run")).unwrap();
    assert_eq!(run_dir.mode() & 0o7777, 0o750);
    assert_eq!((run_dir.uid(), run_dir.gid()), (service.uid, clients_gid));
    let sock = std::fs::metadata(&socket).unwrap();
    assert_eq!(sock.mode() & 0o7777, 0o660);
    assert_eq!((sock.uid(), sock.gid()), (service.uid, clients_gid));

    // A member of client_group (a supplementary group) is a client; root
    // is admin; anyone else is closed without a byte.
    let member_out = probe_as_user("weave-t-member", &socket, &["status"]);
    assert!(member_out.contains("role=Client"), "{member_out}");
    // A client may not use admin verbs.
    let drain = probe_as_user("weave-t-member", &socket, &["drain"]);
    assert_eq!(drain, "error=not_permitted");
    assert!(sink
        .wait_for(
            &["event=not_permitted", "verb=drain"],
            Duration::from_secs(5)
        )
        .is_some());
    let outsider_out = probe_as_user("weave-t-outsider", &socket, &["silent-read"]);
    // The socket mode already keeps it out (EACCES); SO_PEERCRED is the
    // second wall (tested in broker_auth).
    assert!(!outsider_out.contains("role="), "{outsider_out}");
    let _ = (member, outsider);
    let mut admin = Client::hello(&socket);

    // Start the worker (a load of the placeholder model fails, the worker
    // stays) and check it too.
    let _ = admin.call(&Request::Load {
        model_id: "digits".into(),
    });
    let end = Instant::now() + Duration::from_secs(30);
    let worker = loop {
        if let Some(&pid) = workers_of(broker.pid()).first() {
            break pid;
        }
        assert!(
            Instant::now() < end,
            "worker never started: {}",
            broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The worker may still be confining itself: wait for seccomp.
    let end = Instant::now() + Duration::from_secs(30);
    while proc_status_field(worker, "Seccomp") != "2" && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_unprivileged(worker, service.uid, service.gid, "worker");

    drop(admin);
    let status = broker.stop();
    assert!(status.success(), "{status}: {}", broker.log_text());
    assert!(!socket.exists(), "socket removed at shutdown");
}

#[test]
fn config_with_unsafe_permissions_is_refused_with_a_clear_message() {
    if !require_root("config_with_unsafe_permissions_is_refused_with_a_clear_message") {
        return;
    }
    ensure_user(SERVICE, &[]);
    ensure_group(CLIENTS);
    ensure_group(ADMINS);
    let scratch = Scratch::new("badperm");
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = system_config(&scratch.join("audit.sock")).write(&etc);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = scratch.join("run/weave.sock");
    let log = scratch.join("broker.log");
    let mut child = BrokerProcess::spawn(
        &[
            "--system",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
        &log,
    );
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(config.to_str().unwrap()),
        "names the file: {text}"
    );
    assert!(text.contains("fix:"), "says what to do: {text}");
    assert!(!socket.exists(), "nothing was bound");

    // Group-writable directory above it: refused as well.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o775)).unwrap();
    let mut child = BrokerProcess::spawn(
        &[
            "--system",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
        &log,
    );
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(etc.to_str().unwrap()),
        "names the directory: {text}"
    );
}
