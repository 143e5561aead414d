//! A model that cannot be used does not take the others down, and the
//! broker knows it: with one good model (digits), one whose path does not
//! exist and one broken folder, the broker lists the two bad ones
//! unavailable with the reason (to admins; clients get `available: false`
//! without one, and a neutral `ModelUnavailable` when they ask for them),
//! the good one generates, and `sshmctl models`, `jobs` and `status` show
//! what the broker said. A worker that cannot start (a GPU configured on a
//! machine without one) is named in `status` with the worker's own reason.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use weave_common::proto::{ErrorCode, GenerateRequest, JobState, ModelInfo, Request, Response};
use weave_tests::{
    digits_request, ensure_group, ensure_user, proc_status_field, require_digits, require_root,
    stream_error, target_bin, workers_of, AuditSink, BrokerProcess, Client, Scratch, TestConfig,
};

/// The digits config plus `ghost` (no such path) and `broken` (a folder
/// with only `model_index.json`).
fn three_models(scratch: &Scratch, base: TestConfig) -> std::path::PathBuf {
    let broken = scratch.join("broken-model");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model_index.json"), b"{}").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "{}\n[[model]]\nid = \"ghost\"\nkind = \"sd1\"\npath = \"{}\"\n\
         \n[[model]]\nid = \"broken\"\nkind = \"sd1\"\npath = \"{}\"\n",
        base.toml(),
        scratch.join("no-such-model").display(),
        broken.display()
    );
    let etc = scratch.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("weave.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    config
}

fn models(client: &mut Client) -> Vec<ModelInfo> {
    match client.call(&Request::ListModels) {
        Response::Models(models) => models,
        other => panic!("{other:?}"),
    }
}

fn find<'a>(models: &'a [ModelInfo], id: &str) -> &'a ModelInfo {
    models.iter().find(|m| m.id == id).unwrap()
}

fn sshmctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(target_bin("sshmctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_missing_and_a_broken_model_are_listed_unavailable_and_the_good_one_generates() {
    let name = "model_availability";
    if !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let config = three_models(&scratch, TestConfig::digits(&sink.path));
    let broker = BrokerProcess::start_user(&scratch, &config);
    // User mode: the one uid is an admin, so the reasons are there.
    let mut client = Client::hello(&broker.socket);

    // Checked at start-up, before any worker ran.
    let listed = models(&mut client);
    assert!(find(&listed, "digits").available);
    assert_eq!(find(&listed, "digits").reason, None);
    let ghost = find(&listed, "ghost");
    assert!(!ghost.available);
    let reason = ghost.reason.as_deref().unwrap();
    assert!(reason.contains("no-such-model does not exist"), "{reason}");
    let broken = find(&listed, "broken");
    assert!(!broken.available);
    let reason = broken.reason.as_deref().unwrap();
    assert!(
        reason.contains("not a complete diffusers folder")
            && reason.contains("text_encoder/config.json is missing"),
        "{reason}"
    );
    assert!(workers_of(broker.pid()).is_empty(), "no worker yet");

    let events = client.generate(digits_request("7"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Response::Image { png, .. } if png.starts_with(b"\x89PNG"))),
        "digits next to two bad models: {events:?}\n{}",
        broker.log_text()
    );
    // The bad ones are refused at once with the typed, path-free error.
    for id in ["ghost", "broken"] {
        let refused = client.generate(GenerateRequest {
            model_id: id.into(),
            ..digits_request("7")
        });
        assert_eq!(refused.len(), 1, "nothing queued: {refused:?}");
        assert_eq!(stream_error(&refused), Some(ErrorCode::ModelUnavailable));
        let message = ErrorCode::ModelUnavailable.to_string();
        assert!(!message.contains('/'), "{message}");
    }
    let log = broker.log_text();
    assert!(
        log.contains("model \"ghost\" is unavailable: path") && log.contains("the other models"),
        "{log}"
    );
    // The refusals did not cost the worker: digits still generates on it.
    let again = client.generate(digits_request("8"));
    assert!(stream_error(&again).is_none(), "{again:?}");

    // sshmctl models: the broker's answer, human and --json.
    let out = sshmctl(&broker.socket, &["models"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    let ghost_line = human.lines().find(|l| l.starts_with("ghost ")).unwrap();
    assert!(ghost_line.contains("UNAVAILABLE"), "{human}");
    assert!(human.contains("no-such-model does not exist"), "{human}");
    assert!(human.contains("not a complete diffusers folder"), "{human}");
    let out = sshmctl(&broker.socket, &["models", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_id = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("digits")["available"], true);
    assert_eq!(by_id("digits")["reason"], Value::Null);
    assert_eq!(by_id("ghost")["available"], false);
    assert!(by_id("ghost")["reason"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    // Digits' folder declares 32x32 and the test config says so too.
    assert_eq!(by_id("digits")["defaults"]["width"], 32);

    // sshmctl jobs: the two finished jobs, newest first, with progress,
    // device and run time; refused requests never became jobs. (The last
    // job moves to the history a moment after its stream ended.)
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < end {
        match client.call(&Request::Jobs) {
            Response::Jobs(jobs) if jobs.iter().all(|j| j.state == JobState::Finished) => break,
            Response::Jobs(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            other => panic!("{other:?}"),
        }
    }
    let out = sshmctl(&broker.socket, &["jobs", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in jobs {
        assert_eq!(job["state"], "finished", "{job}");
        assert_eq!(job["device"], "cpu", "{job}");
        assert!(job["total"].as_u64().unwrap() > 0, "{job}");
        assert_eq!(job["step"], job["total"], "{job}");
        assert!(job["run_ms"].as_u64().unwrap() > 0, "{job}");
    }
    assert!(jobs[0]["job_id"].as_u64() > jobs[1]["job_id"].as_u64());
    let out = sshmctl(&broker.socket, &["jobs"]);
    let human = text(&out.stdout);
    let total = jobs[0]["total"].as_u64().unwrap();
    let first = human.lines().nth(1).unwrap();
    assert!(
        first.contains("finished") && first.contains(&format!("{total}/{total}")),
        "{human}"
    );
    assert!(first.contains("cpu") && first.contains("(ran "), "{human}");

    // sshmctl status: the worker's memory as the kernel counts it.
    let worker = workers_of(broker.pid())[0];
    let out = sshmctl(&broker.socket, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let resident = status["worker_memory"]["resident_bytes"].as_u64().unwrap();
    let peak = status["worker_memory"]["peak_bytes"].as_u64().unwrap();
    let kib = |field: &str| -> u64 {
        proc_status_field(worker, field)
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    // The high-water mark only rises: what status saw is at most now's.
    assert!(peak >= resident && peak <= kib("VmHWM"), "{status}");
    assert!(resident > 16 << 20, "libtorch is resident: {status}");
    let out = sshmctl(&broker.socket, &["status"]);
    let human = text(&out.stdout);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("memory") && l.contains("resident") && l.contains("peak")),
        "{human}"
    );
}

#[test]
fn clients_see_unavailable_models_without_the_reason() {
    let name = "model_availability_client";
    if !require_root(name) {
        return;
    }
    const CLIENTS: &str = "weave-t-clients";
    const ADMINS: &str = "weave-t-admins";
    ensure_user("weave-t-svc", &[]);
    ensure_group(CLIENTS);
    ensure_group(ADMINS);
    ensure_user("weave-t-member", &[CLIENTS]);
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let mut base = TestConfig::new(&sink.path);
    base.daemon = format!(
        "user = \"weave-t-svc\"\nclient_group = \"{CLIENTS}\"\nadmin_group = \"{ADMINS}\"\n"
    );
    // Creates the placeholder folder (it passes the file checks); the
    // config itself is rewritten with the two bad models.
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    base.write(&etc);
    let config = three_models(&scratch, base);
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
    let as_member = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=weave-t-member",
                "--regid=weave-t-member",
                "--init-groups",
                "--",
            ])
            .arg(target_bin("sshmctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_member(&["models", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ghost = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "ghost")
        .unwrap();
    assert_eq!(ghost["available"], false, "{listed}");
    assert_eq!(
        ghost["reason"],
        Value::Null,
        "no path for a client: {listed}"
    );
    let all = text(&out.stdout);
    assert!(!all.contains("no-such-model"), "{all}");
    let out = as_member(&["models"]);
    let human = text(&out.stdout);
    assert!(human.contains("an administrator sees why"), "{human}");
    assert!(!human.contains("no-such-model"), "{human}");

    // Asking for it: the neutral error, exit status 6, no path.
    let out = as_member(&["generate", "-m", "ghost", "-p", "3", "-o", "-"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "no image");
    let said = text(&out.stderr);
    assert!(said.contains("not available on this daemon"), "{said}");
    assert!(!said.contains("no-such-model"), "{said}");
}

#[test]
fn status_says_why_the_worker_could_not_start() {
    let name = "model_availability_cuda";
    if !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let mut config = TestConfig::digits(&sink.path);
    config.worker = "device = \"cuda\"\n".into();
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    match client.call(&Request::Status) {
        Response::Status(status) => assert_eq!(status.worker_error, None),
        other => panic!("{other:?}"),
    }
    let events = client.generate(digits_request("3"));
    assert_eq!(stream_error(&events), Some(ErrorCode::WorkerCrashed));
    let status = match client.call(&Request::Status) {
        Response::Status(status) => status,
        other => panic!("{other:?}"),
    };
    let why = status.worker_error.unwrap_or_default();
    assert!(
        why.contains("device = \"cuda:0\" is configured but libtorch sees no CUDA device"),
        "{why}\n{}",
        broker.log_text()
    );
    assert_eq!(status.worker_memory, None, "no worker runs");
    let out = sshmctl(&broker.socket, &["status"]);
    let human = text(&out.stdout);
    assert!(
        human.contains("last start failed: libtorch initialisation failed: device = \"cuda:0\""),
        "{human}"
    );
    let out = sshmctl(&broker.socket, &["status", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["worker_error"]
        .as_str()
        .unwrap()
        .contains("no CUDA device"));
    // sshmctl generate: the worker could not start, and why.
    let out = sshmctl(
        &broker.socket,
        &["generate", "-m", "digits", "-p", "3", "-o", "-"],
    );
    assert_eq!(out.status.code(), Some(6));
    let said = text(&out.stderr);
    assert!(
        said.contains("could not start") && said.contains("libtorch sees no CUDA device"),
        "{said}"
    );
    // The failed jobs are in the history, never started (the last one
    // moves there a moment after its stream ended).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let jobs = loop {
        let jobs = match client.call(&Request::Jobs) {
            Response::Jobs(jobs) => jobs,
            other => panic!("{other:?}"),
        };
        if jobs.iter().all(|j| j.state == JobState::Failed) || std::time::Instant::now() > end {
            break jobs;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job.state, JobState::Failed, "{jobs:?}");
        assert_eq!(job.error, Some(ErrorCode::WorkerCrashed));
        assert_eq!(job.run_ms, None);
    }
}

#[test]
fn a_model_without_default_sizes_gets_its_folders_native_size() {
    let name = "model_availability_native";
    if !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let config = TestConfig::digits(&sink.path);
    let text_config = config.toml().replace("width = 32\nheight = 32\n", "");
    assert!(!text_config.contains("width"), "{text_config}");
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let path = etc.join("weave.toml");
    std::fs::write(&path, &text_config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // config check shows where the size comes from.
    let out = Command::new(target_bin("sshmctl"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("digits: default size 32x32 (native size 32 declared by its folder)"),
        "{shown}{}",
        text(&out.stderr)
    );
    // The broker serves it: 32x32 (an sd1 model's own default is 512).
    let broker = BrokerProcess::start_user(&scratch, &path);
    let mut client = Client::hello(&broker.socket);
    let digits = models(&mut client).remove(0);
    assert_eq!((digits.defaults.width, digits.defaults.height), (32, 32));
    let events = client.generate(digits_request("4"));
    assert!(
        events.iter().any(|e| matches!(
            e,
            Response::Image {
                width: 32,
                height: 32,
                ..
            }
        )),
        "{events:?}"
    );
}
