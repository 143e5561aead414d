//! `sshmctl` against a real user-mode broker, sandboxed worker and the digits
//! demo model: every command in human and `--json` form, the documented exit
//! codes, an unauthorized caller, and Ctrl-C cancelling a running job.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weave_common::proto::{Request, Response};
use weave_tests::{
    ensure_user, require_digits, require_root, target_bin, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

struct Daemon {
    broker: BrokerProcess,
    _sink: AuditSink,
    scratch: Scratch,
}

impl Daemon {
    fn start(name: &str) -> Option<Self> {
        if !require_root(name) || !require_digits(name) {
            return None;
        }
        let scratch = Scratch::new(name);
        let sink = AuditSink::bind(scratch.join("audit.sock"));
        let etc = scratch.join("etc");
        std::fs::create_dir(&etc).unwrap();
        let mut config = TestConfig::digits(&sink.path);
        config.steps = 4;
        let config = config.write(&etc);
        let broker = BrokerProcess::start_user(&scratch, &config);
        Some(Self {
            broker,
            _sink: sink,
            scratch,
        })
    }

    fn socket(&self) -> &Path {
        &self.broker.socket
    }

    fn sshmctl(&self, args: &[&str]) -> Output {
        Command::new(target_bin("sshmctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env_remove("WEAVE_SOCKET")
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sshmctl failed ({}): stdout {} stderr {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn status_models_and_jobs_in_both_forms() {
    let Some(daemon) = Daemon::start("sshmctl-status") else {
        return;
    };
    let status = ok(&daemon.sshmctl(&["status"]));
    assert!(status.contains("weave-broker"), "{status}");
    assert!(status.contains("worker"), "{status}");
    assert!(status.contains("sandbox"), "{status}");
    let status = json_lines(&daemon.sshmctl(&["--json", "status"]));
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["mode"], "user");
    assert!(status[0]["daemon_version"].is_string());
    assert!(status[0]["queue_depth"].is_u64());

    let models = ok(&daemon.sshmctl(&["models"]));
    assert!(models.contains("digits"), "{models}");
    let models = json_lines(&daemon.sshmctl(&["--json", "models"]));
    assert_eq!(models[0][0]["id"], "digits");
    assert_eq!(models[0][0]["defaults"]["width"], 32);

    assert_eq!(ok(&daemon.sshmctl(&["jobs"])).trim(), "no jobs");
    assert_eq!(
        json_lines(&daemon.sshmctl(&["--json", "jobs"]))[0],
        serde_json::json!([])
    );
}

#[test]
fn generate_writes_pngs_and_reports_the_seed() {
    let Some(daemon) = Daemon::start("sshmctl-generate") else {
        return;
    };
    let out = daemon.scratch.join("seven.png");
    let stdout = ok(&daemon.sshmctl(&[
        "generate",
        "--model",
        "digits",
        "--prompt",
        "the number 7",
        "--seed",
        "41",
        "--steps",
        "4",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(is_png(&out), "no PNG at {}", out.display());
    assert!(stdout.contains("(seed 41)"), "{stdout}");
    // Not a terminal: plain progress lines, one per step.
    assert_eq!(stdout.matches("step ").count(), 4, "{stdout}");

    let batch = daemon.scratch.join("batch.png");
    let events = json_lines(&daemon.sshmctl(&[
        "--json",
        "generate",
        "--model",
        "digits",
        "--prompt",
        "a handwritten digit two",
        "--batch",
        "2",
        "--steps",
        "3",
        "-o",
        batch.to_str().unwrap(),
    ]));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"finished"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "progress").count(),
        3,
        "{kinds:?}"
    );
    let images: Vec<_> = events.iter().filter(|e| e["event"] == "image").collect();
    assert_eq!(images.len(), 2);
    for image in images {
        assert!(is_png(Path::new(image["path"].as_str().unwrap())));
    }
    assert!(is_png(&daemon.scratch.join("batch-0.png")));
    assert!(is_png(&daemon.scratch.join("batch-1.png")));
}

#[test]
fn bad_requests_map_to_documented_exit_codes() {
    let Some(daemon) = Daemon::start("sshmctl-errors") else {
        return;
    };
    let out = daemon.sshmctl(&[
        "generate", "--model", "digits", "--prompt", "x", "--width", "33",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("width"), "{}", text(&out.stderr));

    let out = daemon.sshmctl(&["generate", "--model", "nope", "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains("unknown model"),
        "{}",
        text(&out.stderr)
    );

    let out = daemon.sshmctl(&["--json", "cancel", "999999"]);
    assert_eq!(out.status.code(), Some(5));
    let error = &json_lines(&out)[0];
    assert_eq!(error["ok"], false);
    assert_eq!(error["error"], "invalid_parameter");

    let missing = daemon.scratch.join("no-such.sock");
    let out = Command::new(target_bin("sshmctl"))
        .arg("--socket")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("is it running?"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn admin_verbs_round_trip() {
    let Some(daemon) = Daemon::start("sshmctl-admin") else {
        return;
    };
    ok(&daemon.sshmctl(&["load", "digits"]));
    let models = json_lines(&daemon.sshmctl(&["--json", "models"]));
    assert_eq!(models[0][0]["loaded"], true);
    ok(&daemon.sshmctl(&["pin", "digits"]));
    assert_eq!(
        json_lines(&daemon.sshmctl(&["--json", "models"]))[0][0]["pinned"],
        true
    );
    ok(&daemon.sshmctl(&["unpin", "digits"]));
    assert_eq!(
        json_lines(&daemon.sshmctl(&["--json", "models"]))[0][0]["pinned"],
        false
    );

    let before = json_lines(&daemon.sshmctl(&["--json", "segments"]))[0]["key_generation"]
        .as_u64()
        .unwrap();
    ok(&daemon.sshmctl(&["rotate-keys"]));
    let segments = json_lines(&daemon.sshmctl(&["--json", "segments"]));
    assert!(segments[0]["key_generation"].as_u64().unwrap() > before);
    assert_eq!(segments[0]["segments"].as_array().unwrap().len(), 2);
    let table = ok(&daemon.sshmctl(&["segments"]));
    assert!(
        table.contains("broker→worker") && table.contains("worker→broker"),
        "{table}"
    );

    ok(&daemon.sshmctl(&["drain"]));
    let out = daemon.sshmctl(&["generate", "--model", "digits", "--prompt", "one"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    ok(&daemon.sshmctl(&["resume"]));
    ok(&daemon.sshmctl(&["unload"]));
    assert_eq!(
        json_lines(&daemon.sshmctl(&["--json", "models"]))[0][0]["loaded"],
        false
    );
    ok(&daemon.sshmctl(&["quarantine", "clear", "digits"]));
}

#[test]
fn unauthorized_user_gets_a_clear_refusal() {
    let Some(daemon) = Daemon::start("sshmctl-unauthorized") else {
        return;
    };
    ensure_user("weave-test-outsider", &[]);
    // Open the socket file itself so SO_PEERCRED, not the file mode, decides.
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        daemon.socket().parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=weave-test-outsider",
            "--regid=weave-test-outsider",
            "--init-groups",
            "--",
        ])
        .arg(target_bin("sshmctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not accepting you"), "{stderr}");
    assert!(stderr.contains("client group"), "{stderr}");
}

#[test]
fn ctrl_c_cancels_the_job_on_the_daemon() {
    let Some(daemon) = Daemon::start("sshmctl-sigint") else {
        return;
    };
    let out = daemon.scratch.join("never.png");
    let mut child = Command::new(target_bin("sshmctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["generate", "--model", "digits", "--prompt", "the number 3"])
        .args(["--steps", "150", "--width", "64", "--height", "64"])
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the daemon reports the job running.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut job_id = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("job ") {
            if line.contains("started") {
                job_id = rest
                    .split_whitespace()
                    .next()
                    .map(|id| id.parse::<u64>().unwrap());
                break;
            }
        }
        assert!(Instant::now() < deadline, "job never started");
    }
    let job_id = job_id.expect("sshmctl never reported the job as started");
    let mut admin = Client::hello(daemon.socket());
    let running = |admin: &mut Client| match admin.call(&Request::AllJobs) {
        // Live, not in the history of ended jobs.
        Response::Jobs(jobs) => jobs.iter().any(|j| {
            j.job_id == job_id
                && !matches!(
                    j.state,
                    weave_common::proto::JobState::Finished | weave_common::proto::JobState::Failed
                )
        }),
        other => panic!("unexpected {other:?}"),
    };
    assert!(running(&mut admin), "job {job_id} is not on the daemon");

    // SAFETY: kill with a valid pid of our own child and a standard signal.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) };
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(130), "stderr: {rest:?}");
    assert!(
        !PathBuf::from(&out).exists(),
        "a cancelled job wrote its image"
    );
    let end = Instant::now() + Duration::from_secs(30);
    while running(&mut admin) {
        assert!(
            Instant::now() < end,
            "job {job_id} still on the daemon after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn config_check_reports_every_problem_offline() {
    if !require_root("sshmctl-config-check") {
        return;
    }
    let scratch = Scratch::new("sshmctl-config-check");
    let good = scratch.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"{}\"\n",
            weave_tests::repo_root().join("models/digits").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |path: &Path, json: bool| {
        let mut cmd = Command::new(target_bin("sshmctl"));
        if json {
            cmd.arg("--json");
        }
        cmd.args(["config", "check"]).arg(path).output().unwrap()
    };
    let out = run(&good, false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));

    let bad = scratch.join("bad.toml");
    std::fs::write(
        &bad,
        "[limits]\nqueue_dept = 3\n\n[[model]]\nid = \"x\"\nkind = \"sd1\"\npath = \"/nonexistent/model\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(&bad, false);
    assert_eq!(out.status.code(), Some(7));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("queue_dept"), "{stderr}");
    assert!(stderr.contains("chmod"), "{stderr}");
    let out = run(&bad, true);
    assert_eq!(out.status.code(), Some(7));
    let report = &json_lines(&out)[0];
    assert_eq!(report["ok"], false);
    assert!(
        report["problems"].as_array().unwrap().len() >= 2,
        "{report}"
    );
}

#[test]
fn man_page_and_completions_come_from_the_cli_definition() {
    let run = |args: &[&str]| {
        Command::new(target_bin("sshmctl"))
            .args(args)
            .output()
            .unwrap()
    };
    let man = text(&ok(&run(&["man"])).into_bytes());
    assert!(
        man.starts_with(".ie") || man.contains(".TH sshmctl"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("rotate\\-keys"), "subcommands are not listed");
    let scratch = Scratch::new("sshmctl-man");
    ok(&run(&["man", scratch.path.to_str().unwrap()]));
    for page in ["sshmctl.1", "sshmctl-generate.1", "sshmctl-rotate-keys.1"] {
        let text = std::fs::read_to_string(scratch.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let bash = ok(&run(&["completions", "bash"]));
    assert!(bash.contains("sshmctl") && bash.contains("generate"));
}
