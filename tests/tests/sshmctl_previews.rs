//! `sshmctl generate --preview K` against a real user-mode broker,
//! sandboxed worker and the digits model: `--json` lists a preview event
//! every K steps with the live file next to the output, which is gone once
//! the image is written; outputs are checked before the job is sent.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use weave_tests::{
    require_digits, require_root, target_bin, AuditSink, BrokerProcess, Scratch, TestConfig,
};

fn sshmctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(target_bin("sshmctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("WEAVE_SOCKET")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn previews_are_listed_and_the_live_file_goes_with_the_image() {
    let name = "sshmctl-previews";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = TestConfig::digits(&sink.path).write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let out = scratch.join("four.png");
    let live = scratch.join("four.preview.png");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = [
            "--json",
            "generate",
            "-m",
            "digits",
            "-p",
            "the digit 4",
            "--steps",
            "4",
            "--seed",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(extra.iter().map(|s| s.to_string()));
        all
    };
    let run = |extra: &[&str]| {
        let all = args(extra);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        sshmctl(&broker.socket, &refs)
    };

    let done = run(&["--preview", "2", "-o", out.to_str().unwrap()]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let events: Vec<serde_json::Value> = text(&done.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let previews: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "preview").collect();
    let steps: Vec<u64> = previews
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![2, 4], "{kinds:?}");
    for preview in &previews {
        assert_eq!(preview["path"], live.to_str().unwrap());
        assert_eq!(
            (preview["width"].as_u64(), preview["height"].as_u64()),
            (Some(16), Some(16))
        );
        assert!(preview["bytes"].as_u64().unwrap() > 0);
    }
    let last_preview = kinds.iter().rposition(|k| *k == "preview").unwrap();
    let image = kinds.iter().position(|k| *k == "image").unwrap();
    assert!(last_preview < image, "{kinds:?}");
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));
    assert!(!live.exists(), "the live preview outlived its image");

    // Checked before the job is sent: stdout cannot carry previews, and a
    // file in the way needs --force.
    let stdout = sshmctl(
        &broker.socket,
        &[
            "generate",
            "-m",
            "digits",
            "-p",
            "4",
            "--preview",
            "2",
            "-o",
            "-",
        ],
    );
    assert_eq!(stdout.status.code(), Some(2), "{}", text(&stdout.stderr));
    assert!(
        text(&stdout.stderr).contains("--preview"),
        "{}",
        text(&stdout.stderr)
    );
    assert!(stdout.stdout.is_empty());
    std::fs::write(&live, b"mine").unwrap();
    let other = scratch.join("other.png");
    std::fs::rename(&live, scratch.join("other.preview.png")).unwrap();
    let blocked = run(&["--preview", "2", "-o", other.to_str().unwrap()]);
    assert_eq!(blocked.status.code(), Some(2), "{}", text(&blocked.stderr));
    assert!(!other.exists());
    assert_eq!(
        std::fs::read(scratch.join("other.preview.png")).unwrap(),
        b"mine"
    );
    // Past the job's steps it is refused by field name (exit 5).
    let refused = run(&[
        "--preview",
        "5",
        "-o",
        scratch.join("x.png").to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stdout).contains("preview_every")
            || text(&refused.stderr).contains("preview_every")
    );
}
