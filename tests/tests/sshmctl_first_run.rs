//! First run (issue 13), against a real user-mode broker, the sandboxed
//! worker and the digits model: the README's "Using it" steps with the
//! shipped example config as a real non-root user; `make demo`'s script; a
//! progress bar and Ctrl-C on a real terminal (pty); the broker
//! backgrounded from a terminal; completions and manuals.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{decode_png, png_parameters, text, Daemon};
use weave_tests::digits_gate::digits_gate;
use weave_tests::pty::{visible_lines, PtyChild};
use weave_tests::{
    ensure_user, in_ci, repo_root, require_digits, require_root, target_bin, AuditSink,
    BrokerProcess, Scratch, TestConfig,
};

/// The first ```sh block of the README's "Using it" section.
fn readme_user_mode_steps() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Using it")
        .nth(1)
        .expect("README has a \"Using it\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("\"Using it\" has a ```sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_walkthrough_with_the_example_config_draws_a_clean_digit() {
    let name = "first-run-readme";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let user = "weave-test-newcomer";
    let account = ensure_user(user, &[]);
    let scratch = Scratch::new(name);
    // The newcomer's own home and runtime dir, and a checkout they can
    // write into (seven.png lands there): the repository's docs/, models/
    // and target/ linked in.
    let home = scratch.join("home");
    let runtime = scratch.join("run-user");
    let checkout = scratch.join("checkout");
    for dir in [&home, &runtime, &checkout] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid)).unwrap();
    }
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    for part in ["docs", "models", "target"] {
        std::os::unix::fs::symlink(repo_root().join(part), checkout.join(part)).unwrap();
    }

    // The steps exactly as written; after a line that starts something in
    // the background, the pause a person takes before typing the next one.
    let steps = readme_user_mode_steps();
    assert!(
        steps
            .iter()
            .any(|l| l.contains("cp docs/weave.example.toml")),
        "the README no longer copies the example config: {steps:?}"
    );
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n");
    for line in &steps {
        script.push_str(line);
        script.push('\n');
        if line.contains(" &") {
            script.push_str(
                "for _ in $(seq 100); do [ -S \"$XDG_RUNTIME_DIR/weave/weave.sock\" ] && break; sleep 0.1; done\n",
            );
        }
    }
    // The same daemon, the same defaults: more sevens for the quality gate.
    script.push_str(
        "sshmctl generate --model digits --prompt \"a handwritten digit seven\" --batch 4 --seed 70 -o more.png\n",
    );
    let out = Command::new("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--init-groups")
        .arg("--")
        .args(["env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("XDG_RUNTIME_DIR={}", runtime.display()))
        .arg("PATH=/usr/local/bin:/usr/bin:/bin")
        .args(["bash", "-c", &script])
        .current_dir(&checkout)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the README steps failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("ok (user mode, 1 model)"),
        "config check: {stdout}"
    );
    assert!(
        stdout.contains("daemon     weave-broker"),
        "status: {stdout}"
    );
    assert!(stdout.contains("wrote seven.png"), "{stdout}");

    let (width, height, seven) = decode_png(&std::fs::read(checkout.join("seven.png")).unwrap());
    assert_eq!(
        (width, height),
        (32, 32),
        "the example's defaults must fit the digits model"
    );
    let mut images = vec![seven];
    for i in 0..4 {
        let (w, h, pixels) =
            decode_png(&std::fs::read(checkout.join(format!("more-{i}.png"))).unwrap());
        assert_eq!((w, h), (32, 32));
        images.push(pixels);
    }
    if let Some(verdict) = digits_gate(&images, &vec![7; images.len()], &scratch.path) {
        verdict.unwrap_or_else(|report| panic!("not clean sevens: {report}"));
    }
}

#[test]
fn progress_bar_fits_a_narrow_terminal_and_ctrl_c_cancels() {
    let Some(daemon) = Daemon::start("first-run-pty", "") else {
        return;
    };
    let out = daemon.scratch.join("never.png");
    let mut command = daemon.sshmctl_command();
    command
        .args(["generate", "--model", "digits", "--prompt", "the number 3"])
        // Large enough to be still running after the bar has redrawn for
        // 1.5 s on a fast, idle machine (150 steps at 64x64 take about that).
        .args(["--steps", "150", "--width", "192", "--height", "192", "-o"])
        .arg(&out)
        .env("TERM", "xterm");
    const COLUMNS: usize = 30;
    let mut term = PtyChild::spawn(command, COLUMNS as u16, 24);
    term.wait_for("/150", Duration::from_secs(120));
    // Let the bar redraw a few times.
    std::thread::sleep(Duration::from_millis(1500));
    let drawn = term.output();
    let bar_lines: Vec<String> = visible_lines(&drawn)
        .into_iter()
        .filter(|l| l.contains("/150"))
        .collect();
    assert!(!bar_lines.is_empty(), "no progress bar drawn:\n{drawn}");
    for line in &bar_lines {
        assert!(
            line.chars().count() <= COLUMNS,
            "a bar line is wider than the {COLUMNS}-column terminal: {line:?}"
        );
    }
    assert!(
        !drawn.contains("step 1/150"),
        "on a terminal the bar replaces the step lines:\n{drawn}"
    );
    let jobs = daemon.running_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");

    term.type_bytes(b"\x03");
    let status = term.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{}", term.output());
    assert!(
        term.output().contains("cancelling job"),
        "{}",
        term.output()
    );
    assert!(!out.exists(), "a cancelled job wrote its image");
    let leftovers: Vec<_> = std::fs::read_dir(&daemon.scratch.path)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "reserved outputs left behind: {leftovers:?}"
    );
    let end = Instant::now() + Duration::from_secs(30);
    while !daemon.running_jobs().is_empty() {
        assert!(
            Instant::now() < end,
            "the job is still on the daemon after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn broker_flags_and_a_backgrounded_broker_keep_the_terminal_clean() {
    if !require_root("first-run-broker-flags") {
        return;
    }
    let help = Command::new(target_bin("weave-broker"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0), "{}", text(&help.stderr));
    let usage = text(&help.stdout);
    assert!(usage.starts_with("usage: weave-broker"), "{usage}");
    let version = Command::new(target_bin("weave-broker"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("weave-broker {}", env!("CARGO_PKG_VERSION"))
    );
    let bad = Command::new(target_bin("weave-broker"))
        .arg("--tcp")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    // `weave-broker --user &` in an interactive shell with job control.
    let scratch = Scratch::new("first-run-background");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let socket = scratch.join("run/weave.sock");
    let state = scratch.join("state");
    let script = format!(
        "set -m\n'{}' --user --config '{}' --socket '{}' &\necho \"broker pid $!\"\nwait\n",
        target_bin("weave-broker").display(),
        config.display(),
        socket.display()
    );
    let mut command = Command::new("bash");
    command
        .args(["--norc", "-c", &script])
        .env(weave_tests::ROOT_USER_MODE_HATCH, "1")
        .env("XDG_STATE_HOME", &state)
        .env("TERM", "dumb");
    let mut term = PtyChild::spawn(command, 80, 24);
    let shown = term.wait_for("logging to", Duration::from_secs(20));
    let log = state.join("weave/weave-broker.log");
    assert!(shown.contains(&log.display().to_string()), "{shown}");
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(
            Instant::now() < end,
            "the log file never got the start-up line"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let shown = term.output();
    assert!(
        !shown.contains("listening on"),
        "the backgrounded broker wrote its log into the terminal:\n{shown}"
    );
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pid: i32 = shown
        .split("broker pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid on the terminal: {shown}"));
    // SAFETY: kill with the pid bash reported for the broker it started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(
        term.wait(Duration::from_secs(30)).success(),
        "{}",
        term.output()
    );

    // Not backgrounded (stderr a pipe): the log stays on stderr.
    let scratch = Scratch::new("first-run-foreground");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::new(&sink.path).write(&etc);
    let mut broker = BrokerProcess::start_user(&scratch, &config);
    let end = Instant::now() + Duration::from_secs(30);
    while !broker.log_text().contains("listening on") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.stop();
    assert!(
        broker.log_text().contains("listening on"),
        "{}",
        broker.log_text()
    );
}

#[test]
fn completions_survive_a_closed_pipe_and_offer_the_daemons_model_ids() {
    let Some(daemon) = Daemon::start("first-run-completions", "") else {
        return;
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; '{}' completions {shell} | head -c 10 >/dev/null",
                target_bin("sshmctl").display()
            ))
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{shell}: {stderr}");
        // 0, or 141 (SIGPIPE, as any Unix filter ends when its reader goes).
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{shell}: {} {stderr}",
            out.status
        );
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' --socket '{}' models | head -c 1 >/dev/null",
            target_bin("sshmctl").display(),
            daemon.broker.socket.display()
        ))
        .output()
        .unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );

    // bash: complete `sshmctl generate --model <TAB>` with the real daemon.
    let script = daemon.scratch.join("sshmctl.bash");
    let out = Command::new(target_bin("sshmctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    std::fs::write(&script, &out.stdout).unwrap();
    let bin_dir = target_bin("sshmctl").parent().unwrap().to_owned();
    let complete = |socket: &Path| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}'; COMP_WORDS=(sshmctl generate --model ''); COMP_CWORD=3; \
                 _sshmctl_with_model_ids sshmctl '' --model; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("WEAVE_SOCKET", socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(complete(&daemon.broker.socket).trim(), "digits");
    assert_eq!(complete(&daemon.scratch.join("none.sock")).trim(), "");
}

#[test]
fn manuals_have_their_sections_and_match_the_binaries() {
    let scratch = Scratch::new("first-run-man");
    let out = Command::new(target_bin("sshmctl"))
        .arg("man")
        .arg(&scratch.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pages = [
        scratch.join("sshmctl.1"),
        repo_root().join("packaging/man/weave-broker.8"),
        repo_root().join("packaging/man/weave.toml.5"),
    ];
    for page in &pages {
        let out = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(page)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            text(&out.stderr)
        );
    }
    let sshmctl = std::fs::read_to_string(&pages[0]).unwrap();
    let broker = std::fs::read_to_string(&pages[1]).unwrap();
    let config = std::fs::read_to_string(&pages[2]).unwrap();
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
        assert!(
            sshmctl.contains(&format!(".SH \"{section}\""))
                || sshmctl.contains(&format!(".SH {section}")),
            "sshmctl(1) lacks {section}"
        );
        assert!(
            broker.contains(&format!(".SH \"{section}\""))
                || broker.contains(&format!(".SH {section}")),
            "weave-broker(8) lacks {section}"
        );
    }
    assert!(config.contains(".SH EXAMPLES") && config.contains(".SH FILES"));
    // Every flag weave-broker --help lists is in its page.
    let help = text(
        &Command::new(target_bin("weave-broker"))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    );
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.trim_end_matches([',', ']', '|']);
        assert!(
            broker.contains(&flag.replace('-', "\\-")),
            "weave-broker(8) does not document {flag}"
        );
    }
    // Every key docs/CONFIG.md documents is in weave.toml(5).
    let doc = std::fs::read_to_string(repo_root().join("docs/CONFIG.md")).unwrap();
    let mut keys = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap();
        for key in cell.split('`').skip(1).step_by(2) {
            keys += 1;
            assert!(
                has_word(&config, key),
                "weave.toml(5) does not document `{key}` (docs/CONFIG.md does)"
            );
        }
    }
    assert!(keys > 30, "found only {keys} keys in docs/CONFIG.md");
}

/// Whether `word` occurs in `text` with no identifier character either side.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(|c| ident(c) && c != '.')
    })
}

#[test]
fn make_demo_drives_sshmctl_with_a_progress_bar_on_a_terminal() {
    let name = "first-run-demo";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let out_dir = scratch.join("demo");
    let mut command = Command::new(repo_root().join("scripts/demo.sh"));
    command
        .env("WEAVE_BIN_DIR", target_bin("sshmctl").parent().unwrap())
        .env("WEAVE_DEMO_OUT", &out_dir)
        .env("TERM", "xterm");
    let mut term = PtyChild::spawn(command, 80, 24);
    let status = term.wait(Duration::from_secs(300));
    let shown = term.output();
    assert!(status.success(), "{shown}");
    let png = out_dir.join("digit-7.png");
    assert!(
        shown.contains(&format!("wrote {}", png.display())),
        "{shown}"
    );
    assert!(shown.contains("xdg-open"), "says how to view it: {shown}");
    assert!(shown.contains("/20"), "no progress bar: {shown}");
    assert!(
        !shown.contains("step 1/20"),
        "step lines instead of a bar: {shown}"
    );
    let (width, height, _) = decode_png(&std::fs::read(&png).unwrap());
    assert_eq!((width, height), (32, 32));
}

/// `make demo MODEL=digits-xl` (the Makefile passes it as WEAVE_DEMO_ID):
/// the same script serves the SDXL demo model as `kind = "sdxl"`, and the
/// PNG's parameters name it; any other name is refused with the two that
/// work, before anything starts.
#[test]
fn make_demo_model_digits_xl_serves_the_sdxl_model() {
    let name = "first-run-demo-xl";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let model = repo_root().join("models/digits-xl/model_index.json");
    if !model.exists() {
        assert!(!in_ci(), "{name} needs models/digits-xl");
        eprintln!("SKIP {name}: models/digits-xl is not in the tree");
        return;
    }
    let scratch = Scratch::new(name);
    let out_dir = scratch.join("demo");
    let run = |id: &str| {
        Command::new(repo_root().join("scripts/demo.sh"))
            .env("WEAVE_BIN_DIR", target_bin("sshmctl").parent().unwrap())
            .env("WEAVE_DEMO_OUT", &out_dir)
            .env("WEAVE_DEMO_ID", id)
            .output()
            .unwrap()
    };
    let out = run("digits-xl");
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{shown}");
    let png = std::fs::read(out_dir.join("digit-xl-7.png")).unwrap();
    let (width, height, _) = decode_png(&png);
    assert_eq!((width, height), (32, 32));
    let parameters = png_parameters(&png);
    assert!(parameters.contains("Model: digits-xl"), "{parameters}");

    let refused = run("sd15");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("MODEL=digits-xl"),
        "{}",
        text(&refused.stderr)
    );
}
