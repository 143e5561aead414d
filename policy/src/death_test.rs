//! The harness both sandbox death-test binaries share
//! (`policy/tests/sandbox.rs` for the worker's sandbox,
//! `broker/tests/broker_seccomp.rs` for the broker's boundary).
//!
//! A filter, once on, holds for the whole process and cannot be taken back,
//! so each case runs in a fresh child: the test binary re-executes itself
//! with the case's name in an environment variable, the child crosses the
//! boundary and makes its call, and the parent judges what really happened
//! (the signal that killed the child, its exit status). The binaries have no
//! libtest harness (`harness = false`) so that the child is single-threaded
//! until the probe says otherwise; this module gives them the command line
//! (`FILTER`, `--exact`, `--list`), the summary and the exit status libtest
//! would, and one rule for unmet prerequisites: skipped with the reason,
//! except under `CI=true`, where they fail.
#![forbid(unsafe_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Skipped(String),
    Failed(String),
}

/// Whether this is a CI run (`CI=true` or `CI=1`), where a missing
/// prerequisite fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The outcome of a case whose prerequisite is missing.
pub fn unmet(reason: String) -> Outcome {
    if in_ci() {
        Outcome::Failed(format!("CI=true and {reason}"))
    } else {
        Outcome::Skipped(reason)
    }
}

/// Why seccomp death tests cannot run here, if they cannot: this process is
/// filtered already (a filter cannot be tested under another), or the kernel
/// lacks the kill-process action.
pub fn seccomp_unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mode = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    (mode != "0" || !actions.contains("kill_process")).then(|| {
        format!(
            "needs seccomp filters (this process's mode {mode}, actions {:?})",
            actions.trim()
        )
    })
}

/// "exit status N" or "killed by signal N".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// The child's status and both of its streams, for a failure message.
pub fn detail(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        describe(output.status),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The child must have been killed by `signal`.
pub fn expect_signal(output: &Output, signal: i32) -> Result<(), String> {
    match output.status.signal() {
        Some(s) if s == signal => Ok(()),
        _ => Err(format!("expected signal {signal}, got {}", detail(output))),
    }
}

/// The child must have exited 0.
pub fn expect_success(output: &Output) -> Result<(), String> {
    match output.status.success() {
        true => Ok(()),
        false => Err(detail(output)),
    }
}

/// In the child: when `probe_env` names a case, runs its probe with the
/// folder from `dir_env` and exits with the probe's status. Returns in the
/// parent (the variable unset).
pub fn run_probe_if_child(
    probe_env: &str,
    dir_env: &str,
    probe_of: impl Fn(&str) -> Option<fn(&Path) -> i32>,
) {
    let Ok(name) = std::env::var(probe_env) else {
        return;
    };
    let dir = PathBuf::from(std::env::var_os(dir_env).unwrap_or_default());
    let Some(probe) = probe_of(&name) else {
        eprintln!("unknown probe {name}");
        std::process::exit(2);
    };
    std::process::exit(probe(&dir));
}

/// In the parent: the cases the command line selects (`FILTER`s as
/// substrings, or whole names with `--exact`); `None` after `--list` printed
/// them, as libtest does for `cargo test -- --list`.
pub fn select(names: &[&'static str]) -> Option<Vec<&'static str>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let selected: Vec<&'static str> = names
        .iter()
        .copied()
        .filter(|name| {
            filters.is_empty()
                || filters.iter().any(|f| match exact {
                    true => *name == f.as_str(),
                    false => name.contains(f.as_str()),
                })
        })
        .collect();
    if args.iter().any(|a| a == "--list") {
        for name in &selected {
            println!("{name}: test");
        }
        return None;
    }
    Some(selected)
}

/// Runs `selected` one after the other and prints a line per case and the
/// summary; returns the exit status for the binary: 101 when one failed (as
/// libtest), else 0.
#[must_use = "exit with the status so that cargo test sees a failure"]
pub fn run_cases(
    what: &str,
    selected: &[&'static str],
    mut run_case: impl FnMut(&'static str) -> Outcome,
) -> i32 {
    println!("\nrunning {} {what}", selected.len());
    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), 0);
    for &name in selected {
        match run_case(name) {
            Outcome::Ok => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Outcome::Skipped(reason) => {
                println!("test {name} ... skipped: {reason}");
                skipped += 1;
            }
            Outcome::Failed(why) => {
                println!("test {name} ... FAILED\n{why}");
                failed.push(name);
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {skipped} skipped",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if failed.is_empty() {
        return 0;
    }
    println!("failures: {failed:?}");
    101
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn output_of(script: &str) -> Output {
        Command::new("sh")
            .args(["-c", script])
            .output()
            .expect("sh runs")
    }

    #[test]
    fn a_kill_by_the_expected_signal_passes_and_anything_else_fails() {
        let killed = output_of("kill -SYS $$");
        assert_eq!(expect_signal(&killed, libc::SIGSYS), Ok(()));
        let exited = output_of("echo out; echo err >&2; exit 4");
        let why = expect_signal(&exited, libc::SIGSYS).unwrap_err();
        assert!(why.contains("exit status 4"), "{why}");
        assert!(why.contains("out") && why.contains("err"), "{why}");
        assert!(expect_success(&exited).is_err());
        assert_eq!(expect_success(&output_of("true")), Ok(()));
        assert!(describe(killed.status).contains("signal 31"));
    }
}
