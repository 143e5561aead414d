//! Daily use (issue 13), against a real user-mode (and one system-mode)
//! broker, the sandboxed worker and the digits model: outputs checked
//! before the job, errors in the command line's words, queue expiry, admin
//! verbs that wait, admins in system mode, a worker that cannot start, the
//! model's default negative prompt.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{decode_png, json, png_parameters, text, Daemon};
use weave_tests::{
    ensure_group, ensure_user, require_digits, require_root, target_bin, AuditSink, BrokerProcess,
    Scratch, TestConfig,
};

#[test]
fn outputs_are_checked_before_the_job_and_never_overwritten_silently() {
    let Some(daemon) = Daemon::start("first-run-outputs", "") else {
        return;
    };
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate", "--model", "digits", "--prompt", "digit 4", "--seed", "4",
        ];
        args.extend_from_slice(extra);
        daemon.sshmctl(&args)
    };
    let missing = daemon.scratch.join("no-such-dir/four.png");
    let started = Instant::now();
    let out = gen(&["-o", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing was sent"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("no-such-dir"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("queued"),
        "the job was sent: {}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let existing = daemon.scratch.join("four.png");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = gen(&["-o", existing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let out = daemon.sshmctl(&[
        "--json",
        "generate",
        "-m",
        "digits",
        "-p",
        "4",
        "-o",
        existing.to_str().unwrap(),
    ]);
    assert_eq!(json(&out)["error"], "output_exists");

    let out = gen(&["--force", "-o", existing.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The first job loads the model, and says so between queued and started.
    let stderr = text(&out.stderr);
    let at = |needle: &str| {
        stderr
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {stderr}"))
    };
    assert!(at("queued") < at("loading model digits") && at("loading model") < at("started"));
    let written = std::fs::read(&existing).unwrap();
    assert_eq!(decode_png(&written).0, 32);

    // `-o -`: the PNG itself on stdout, the notes on stderr.
    let out = gen(&["-o", "-"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, written, "same seed, same PNG on stdout");
    assert!(
        text(&out.stderr).contains("wrote the PNG to stdout"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("loading model"),
        "loaded already: {}",
        text(&out.stderr)
    );
    let out = gen(&["--batch", "2", "-o", "-"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn errors_speak_the_command_line() {
    let Some(daemon) = Daemon::start("first-run-errors", "") else {
        return;
    };
    let out = daemon.sshmctl(&["generate", "-m", "digits", "-p", "x", "--cfg", "100"]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid --cfg: must be"), "{stderr}");
    assert!(!stderr.contains("guidance"), "{stderr}");
    let out = daemon.sshmctl(&[
        "--json", "generate", "-m", "digits", "-p", "x", "--cfg", "100",
    ]);
    let error = json(&out);
    assert_eq!(error["error"], "invalid_parameter");
    assert_eq!(error["flag"], "--cfg");
    assert_eq!(error["field"], "guidance");

    let out = daemon.sshmctl(&["generate", "-m", "digit", "-p", "x"]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("did you mean \"digits\""), "{stderr}");
    assert!(stderr.contains("the daemon's models: digits"), "{stderr}");
    let error = json(&daemon.sshmctl(&["--json", "load", "digit"]));
    assert_eq!(error["error"], "unknown_model");
    assert_eq!(error["suggestion"], "digits");

    // --json spells enums as the CLI and configs do.
    let status = json(&daemon.sshmctl(&["--json", "status"]));
    assert_eq!(status["mode"], "user");
    let worker = status["worker"].as_str().unwrap();
    assert!(
        ["starting", "ready", "restarting", "down"].contains(&worker),
        "{worker}"
    );
    let models = json(&daemon.sshmctl(&["--json", "models"]));
    assert_eq!(models[0]["defaults"]["scheduler"], "ddim");
    assert_eq!(models[0]["available"], true);
    assert!(models[0]["reason"].is_null(), "{models}");

    // A socket the caller may not open: said so, not "is it running?".
    let outsider = "weave-test-firstrun-outsider";
    ensure_user(outsider, &[]);
    std::fs::set_permissions(
        daemon.broker.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .arg(format!("--reuid={outsider}"))
        .arg(format!("--regid={outsider}"))
        .arg("--init-groups")
        .arg("--")
        .arg(target_bin("sshmctl"))
        .arg("--socket")
        .arg(&daemon.broker.socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("group root"), "{stderr}");
    assert!(!stderr.contains("is it running"), "{stderr}");

    // No --socket: the socket from the user's own config, named when absent.
    let xdg = daemon.scratch.join("xdg");
    std::fs::create_dir_all(xdg.join("weave")).unwrap();
    let user_config = xdg.join("weave/weave.toml");
    let write_config = |socket: &Path| {
        std::fs::write(
            &user_config,
            format!(
                "[daemon]\nsocket = \"{}\"\n\n[[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"/nonexistent\"\n",
                socket.display()
            ),
        )
        .unwrap();
    };
    let bare = || {
        Command::new(target_bin("sshmctl"))
            .arg("status")
            .env_remove("WEAVE_SOCKET")
            .env("XDG_CONFIG_HOME", &xdg)
            .env("XDG_RUNTIME_DIR", daemon.scratch.join("no-runtime"))
            .output()
            .unwrap()
    };
    write_config(&daemon.broker.socket);
    let out = bare();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&daemon.broker.socket.display().to_string()),
        "{}",
        text(&out.stdout)
    );
    let gone = daemon.scratch.join("gone.sock");
    write_config(&gone);
    let out = bare();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains(&format!(
            "no weave daemon is listening at {}",
            gone.display()
        )),
        "{}",
        text(&out.stderr)
    );
    // Without a config: the user-mode socket that was looked for is named.
    std::fs::remove_file(&user_config).unwrap();
    let out = bare();
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/run/weave/weave.sock"), "{stderr}");
    assert!(stderr.contains("no-runtime/weave/weave.sock"), "{stderr}");
}

#[test]
fn queue_expiry_is_not_blamed_on_the_job_and_admin_verbs_say_they_wait() {
    let Some(daemon) = Daemon::start("first-run-queue", "queue_deadline_s = 2\n") else {
        return;
    };
    let spawn = |args: &[&str]| {
        let mut command = daemon.sshmctl_command();
        command
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().unwrap()
    };
    let long_png = daemon.scratch.join("long.png");
    let long = spawn(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "1",
        // Long enough to outlast the 2 s queue deadline on a fast, idle
        // machine (40 steps at 64x64 took under 2 s there, 150 at 96x96 about 3 s).
        "--steps",
        "150",
        "--width",
        "192",
        "--height",
        "192",
        "-o",
        long_png.to_str().unwrap(),
    ]);
    let end = Instant::now() + Duration::from_secs(60);
    while !daemon.has_running_job() {
        assert!(Instant::now() < end, "the long job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second job waits behind it past the 2 s queue deadline.
    let late_png = daemon.scratch.join("late.png");
    let late = spawn(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "2",
        "-o",
        late_png.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    // An admin verb behind the running job says it waits, then succeeds.
    let rotate = spawn(&["rotate-keys"]);

    let long = long.wait_with_output().unwrap();
    assert!(long.status.success(), "{}", text(&long.stderr));
    let late = late.wait_with_output().unwrap();
    assert_eq!(late.status.code(), Some(6), "{}", text(&late.stderr));
    let stderr = text(&late.stderr);
    assert!(stderr.contains("waited in the queue"), "{stderr}");
    assert!(!stderr.contains("fewer steps"), "{stderr}");
    assert!(!late_png.exists());
    let rotate = rotate.wait_with_output().unwrap();
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    assert!(
        text(&rotate.stderr).contains("waiting for the running job"),
        "{}",
        text(&rotate.stderr)
    );
}

#[test]
fn system_mode_admins_need_both_groups_and_are_told_so() {
    if !require_root("first-run-system-admins") {
        return;
    }
    const CLIENTS: &str = "weave-t13-clients";
    const ADMINS: &str = "weave-t13-admins";
    ensure_user("weave-t-svc", &[]);
    ensure_group(CLIENTS);
    ensure_group(ADMINS);
    ensure_user("weave-t13-admin-only", &[ADMINS]);
    ensure_user("weave-t13-admin", &[CLIENTS, ADMINS]);
    ensure_user("weave-t13-client", &[CLIENTS]);
    let scratch = Scratch::new("first-run-system");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::new(&sink.path);
    config.daemon = format!(
        "user = \"weave-t-svc\"\nclient_group = \"{CLIENTS}\"\nadmin_group = \"{ADMINS}\"\n"
    );
    let config = config.write(&etc);
    let socket = scratch.join("run/weave.sock");
    let _broker = BrokerProcess::start(
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
    let sshmctl_as = |user: &str, args: &[&str]| {
        Command::new("setpriv")
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups")
            .arg("--")
            .arg(target_bin("sshmctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    // In the admin group only: the socket is not theirs, and they are told
    // which group to join.
    let out = sshmctl_as("weave-t13-admin-only", &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains(&format!("group {CLIENTS}")), "{stderr}");
    assert!(stderr.contains("admins need it as well"), "{stderr}");
    // In both, as the docs say: an admin.
    let out = sshmctl_as("weave-t13-admin", &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Admin of a System-mode daemon"),
        "{}",
        text(&out.stdout)
    );
    let out = sshmctl_as("weave-t13-admin", &["drain"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sshmctl_as("weave-t13-admin", &["resume"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A client: connects, but not to the admin verbs.
    let out = sshmctl_as("weave-t13-client", &["status"]);
    assert!(
        text(&out.stdout).contains("Client of a System-mode daemon"),
        "{}",
        text(&out.stdout)
    );
    let out = sshmctl_as("weave-t13-client", &["drain"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn a_worker_that_cannot_start_is_not_a_retry() {
    let name = "first-run-worker-down";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    // The old example config's mistake: a placeholder model whose file is
    // not there, next to a good one. The good one still generates.
    let mut config = TestConfig::digits(&sink.path).toml();
    config.push_str(
        "\n[[model]]\nid = \"sd15\"\nkind = \"sd1\"\npath = \"/nonexistent/v1-5.safetensors\"\n",
    );
    let path = etc.join("weave.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    {
        let broker = BrokerProcess::start_user(&scratch, &path);
        let out = Command::new(target_bin("sshmctl"))
            .arg("--socket")
            .arg(&broker.socket)
            .args(["generate", "-m", "digits", "-p", "3", "-o"])
            .arg(scratch.join("three.png"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(scratch.join("three.png").exists());
    }
    // A worker that really cannot start (a GPU configured on a machine
    // without one) is named as such, not as a job to retry.
    let mut config = TestConfig::digits(&sink.path);
    config.worker = "device = \"cuda\"\n".into();
    let path = etc.join("weave-cuda.toml");
    std::fs::write(&path, config.toml()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let broker = BrokerProcess::start_user(&scratch, &path);
    let out = Command::new(target_bin("sshmctl"))
        .arg("--socket")
        .arg(&broker.socket)
        .args(["generate", "-m", "digits", "-p", "3", "-o"])
        .arg(scratch.join("three-cuda.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("worker could not start"), "{stderr}");
    assert!(stderr.contains("retrying will not help"), "{stderr}");
    assert!(stderr.contains("broker log"), "{stderr}");
}

#[test]
fn an_empty_negative_clears_the_models_default() {
    let name = "first-run-negative";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.steps = 2;
    let mut toml = config.toml();
    // The digits model's [model.defaults] ends the file.
    toml.push_str("negative_prompt = \"blurry\"\n");
    let path = etc.join("weave.toml");
    std::fs::write(&path, toml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let broker = BrokerProcess::start_user(&scratch, &path);
    let generate = |extra: &[&str]| {
        let out = Command::new(target_bin("sshmctl"))
            .arg("--socket")
            .arg(&broker.socket)
            .args([
                "generate", "-m", "digits", "-p", "5", "--seed", "5", "-o", "-",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        png_parameters(&out.stdout)
    };
    let default = generate(&[]);
    assert!(default.contains("\nNegative prompt: blurry\n"), "{default}");
    let cleared = generate(&["--negative", ""]);
    assert!(!cleared.contains("Negative prompt"), "{cleared}");
    let own = generate(&["--negative", "smudge"]);
    assert!(own.contains("\nNegative prompt: smudge\n"), "{own}");
}
