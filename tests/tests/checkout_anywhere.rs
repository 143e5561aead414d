//! The cross-user tests do not depend on where the checkout lives: the build
//! is copied into a folder that no other uid can enter (what a checkout in
//! a home folder or under `mktemp -d` looks like to `weave`), staged from
//! there (tests/src/staged.rs), and a system-mode broker run from the staged
//! tree drops to the service account, spawns its worker as that account,
//! serves a client uid, and generates a digits image.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use weave_common::proto::Response;
use weave_tests::staged::{self, Sources};
use weave_tests::{
    ensure_group, ensure_user, libtorch_lib, profile_dir, repo_root, require_digits, require_root,
    AuditSink, BrokerProcess, Client, Scratch, TestConfig,
};

const SERVICE: &str = "weave-t-svc";
const CLIENTS: &str = "weave-t-clients";
const ADMINS: &str = "weave-t-admins";
const MEMBER: &str = "weave-t-member";

/// Hard-links (or copies) `src` into `dst`, recursively.
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Whether `user` can run `exe --help`-free: `test -x` as that uid.
fn reachable_as(user: &str, path: &Path) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--init-groups")
        .args(["--", "test", "-r"])
        .arg(path)
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_build_behind_a_private_folder_still_serves_other_uids() {
    let name = "checkout_anywhere";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    ensure_user(SERVICE, &[]);
    ensure_group(CLIENTS);
    ensure_group(ADMINS);
    ensure_user(MEMBER, &[CLIENTS]);

    let scratch = Scratch::new(name);
    // The "checkout": binaries, libtorch and the model behind a 0700 folder.
    let private = scratch.join("home");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let build = private.join("checkout/target/release");
    std::fs::create_dir_all(&build).unwrap();
    for exe in ["weave-broker", "weave-worker", "weave-probe-client"] {
        let src = profile_dir().join(exe);
        assert!(
            src.is_file(),
            "{} missing: cargo build --release --bins",
            src.display()
        );
        std::fs::hard_link(&src, build.join(exe))
            .or_else(|_| std::fs::copy(&src, build.join(exe)).map(|_| ()))
            .unwrap();
    }
    let lib = private.join("checkout/libtorch/lib");
    copy_tree(&libtorch_lib(), &lib);
    let model = private.join("checkout/models/digits");
    copy_tree(&repo_root().join("models/digits"), &model);
    assert!(
        !reachable_as(SERVICE, &model.join("model_index.json")),
        "the private folder is reachable by {SERVICE}: the test proves nothing"
    );

    let sources = Sources {
        profile_dir: build,
        libtorch_lib: Some(lib),
        digits: Some(model),
    };
    let tree = staged::stage(&sources, &scratch.join("staged")).unwrap();
    // Staging twice keeps what is already there (and must not fail).
    let tree = staged::stage(&sources, &tree.root).unwrap();
    for path in [
        tree.bin("weave-broker"),
        tree.bin("weave-worker"),
        tree.bin("weave-probe-client"),
        tree.digits().join("model_index.json"),
        tree.libs().join("libtorch_cpu.so"),
    ] {
        assert!(
            reachable_as(SERVICE, &path),
            "{} unreachable",
            path.display()
        );
    }

    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::new(&sink.path);
    config.daemon =
        format!("user = \"{SERVICE}\"\nclient_group = \"{CLIENTS}\"\nadmin_group = \"{ADMINS}\"\n");
    config.model_path = tree.digits().canonicalize().unwrap();
    config.steps = 4;
    let config = config.write(&etc);
    let socket = scratch.join("run/weave.sock");
    let mut command = Command::new(tree.bin("weave-broker"));
    command
        .arg("--system")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket);
    let broker = BrokerProcess::start_command(command, &socket, &scratch.join("broker.log"));

    // A client uid runs the staged client.
    let out = Command::new("setpriv")
        .arg(format!("--reuid={MEMBER}"))
        .arg(format!("--regid={MEMBER}"))
        .arg("--init-groups")
        .arg("--")
        .arg(tree.bin("weave-probe-client"))
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("role=Client"), "{out}\n{}", broker.log_text());

    // The worker, spawned as the service account from the staged tree,
    // loads libtorch and the model and generates.
    let mut client = Client::hello(&socket);
    let events = client.generate(weave_tests::digits_request("7"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Response::Image { png, .. } if png.starts_with(b"\x89PNG"))),
        "{events:?}\n{}",
        broker.log_text()
    );
}
