//! `sshmctl` against a real user-mode broker driving a pool of two
//! sandboxed CPU workers (`[worker] count = 2`) and the digits model:
//! `status` lists both workers, two `generate` runs at once land on
//! different workers and `jobs` says which, `segments` shows each worker's
//! own channel, and `--json` carries the same fields.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cli_support::{json, text, Daemon};

/// Two workers of one libtorch thread each, so both fit the test machine.
const POOL: &str = "device = \"cpu\"\ncount = 2\ntorch_threads = 1\n";

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "sshmctl failed ({}): stdout {} stderr {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The rows of `status`'s worker table, split into cells.
fn worker_rows(status: &str) -> Vec<Vec<String>> {
    status
        .lines()
        .map(str::trim_start)
        .skip_while(|line| !line.starts_with("WORKER "))
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The WORKER cell of each job row of `jobs`, by job id.
fn job_workers(jobs: &str) -> Vec<(u64, String)> {
    let mut lines = jobs.lines();
    let header = lines.next().unwrap_or_default();
    // The column is found by its header; cells are left-aligned under it.
    let at = header
        .find("WORKER")
        .unwrap_or_else(|| panic!("no WORKER column: {jobs}"));
    let at = header[..at].chars().count();
    lines
        .map(|line| {
            let id = line.split_whitespace().next().unwrap().parse().unwrap();
            let cell: String = line.chars().skip(at).take_while(|c| *c != ' ').collect();
            (id, cell)
        })
        .collect()
}

fn spawn_generate(daemon: &Daemon, prompt: &str, out: &std::path::Path) -> Child {
    daemon
        .sshmctl_command()
        .args(["generate", "--model", "digits", "--prompt", prompt])
        .args(["--steps", "150", "--seed", "3", "-o"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `sshmctl --json jobs --all` shows `n` jobs running their
/// steps (not loading a model), and returns them.
fn wait_running(daemon: &Daemon, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let end = Instant::now() + within;
    loop {
        let jobs = json(&daemon.sshmctl(&["--json", "jobs", "--all"]));
        let running: Vec<_> = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["state"] == "running" && j["step"].as_u64() > Some(0))
            .cloned()
            .collect();
        if running.len() == n {
            return running;
        }
        assert!(
            Instant::now() < end,
            "{n} jobs never ran at once: {jobs} (broker log: {})",
            daemon.broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "generate failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn status_jobs_and_segments_show_every_worker_of_the_pool() {
    let Some(daemon) = Daemon::start_configured("sshmctl-pool", |config, _| {
        config.worker = POOL.to_owned();
    }) else {
        return;
    };

    // Before any job: both workers listed, in index order, not started.
    let status = ok(&daemon.sshmctl(&["status"]));
    assert!(status.contains("\nworkers    2\n"), "{status}");
    let rows = worker_rows(&status);
    assert_eq!(rows.len(), 2, "{status}");
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row[0], index.to_string(), "{status}");
        assert_eq!(row[1], "cpu", "{status}");
    }
    let report = json(&daemon.sshmctl(&["--json", "status"]));
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{report}");
    for (index, worker) in workers.iter().enumerate() {
        assert_eq!(worker["index"], index, "{report}");
        assert_eq!(worker["device"], "cpu", "{report}");
        assert!(worker["state"].is_string(), "{report}");
        assert!(worker["loads"].is_u64(), "{report}");
    }

    // Two generate runs at once: each gets a worker of its own.
    let one = daemon.scratch.join("one.png");
    let two = daemon.scratch.join("two.png");
    let first = spawn_generate(&daemon, "a 1", &one);
    let second = spawn_generate(&daemon, "a 2", &two);
    let running = wait_running(&daemon, 2, Duration::from_secs(60));
    let on: BTreeSet<u64> = running
        .iter()
        .map(|j| j["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(on, BTreeSet::from([0, 1]), "{running:?}");
    let ids: BTreeSet<u64> = running
        .iter()
        .map(|j| j["job_id"].as_u64().unwrap())
        .collect();

    // The human forms say the same while both run. (A job may end between
    // two commands; each check is of the jobs still running then.)
    let jobs = ok(&daemon.sshmctl(&["jobs", "--all"]));
    let listed: BTreeSet<String> = job_workers(&jobs)
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, worker)| worker)
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(["0".to_owned(), "1".to_owned()]),
        "{jobs}"
    );
    let status = ok(&daemon.sshmctl(&["status"]));
    let rows = worker_rows(&status);
    assert_eq!(rows.len(), 2, "{status}");
    for row in &rows {
        // WORKER DEVICE STATE MODEL JOB RESTARTS LOADS MEMORY…; a worker
        // whose job just ended says how long its model has been idle.
        let mut row = row.clone();
        if row.get(4).is_some_and(|cell| cell.starts_with("(idle")) {
            row.drain(4..6);
        }
        assert_eq!(row[2], "ready", "{status}");
        assert_eq!(row[3], "digits", "{status}");
        if row[4] != "-" {
            assert!(ids.contains(&row[4].parse().unwrap()), "{status}");
        }
        assert_eq!(row[5], "0", "no restarts: {status}");
        assert_eq!(row[6], "1", "one load each: {status}");
        assert!(row[7].parse::<f64>().is_ok(), "memory: {status}");
    }

    // Each worker has its own channel: its own key generation, two
    // segments each.
    let segments = ok(&daemon.sshmctl(&["segments"]));
    for worker in 0..2 {
        assert!(
            segments.contains(&format!("worker {worker}: key generation ")),
            "{segments}"
        );
    }
    assert_eq!(segments.matches("broker→worker").count(), 2, "{segments}");
    assert_eq!(segments.matches("worker→broker").count(), 2, "{segments}");

    finish(first);
    finish(second);
    for png in [&one, &two] {
        assert!(std::fs::read(png)
            .unwrap()
            .starts_with(b"\x89PNG\r\n\x1a\n"));
    }

    // The history keeps the worker each job ran on, and so does the audit
    // record of each.
    let jobs = ok(&daemon.sshmctl(&["jobs"]));
    let ended: BTreeSet<String> = job_workers(&jobs)
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, worker)| worker)
        .collect();
    assert_eq!(
        ended,
        BTreeSet::from(["0".to_owned(), "1".to_owned()]),
        "{jobs}"
    );
    for worker in ["worker=0", "worker=1"] {
        assert!(
            daemon
                .sink
                .wait_for(
                    &["event=job", "outcome=finished", worker],
                    Duration::from_secs(5)
                )
                .is_some(),
            "no finished job on {worker}: {:?}",
            daemon.sink.records()
        );
    }

    // A key rotation reaches both workers: each one's generation goes up.
    let generations = |stats: &serde_json::Value| -> Vec<u64> {
        stats["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                assert_eq!(w["segments"].as_array().unwrap().len(), 2, "{stats}");
                w["key_generation"].as_u64().unwrap()
            })
            .collect()
    };
    let before = json(&daemon.sshmctl(&["--json", "segments"]));
    let before_generations = generations(&before);
    assert_eq!(before_generations.len(), 2, "{before}");
    assert!(before_generations.iter().all(|g| *g > 0), "{before}");
    assert_eq!(before["key_generation"], before_generations[0], "{before}");
    ok(&daemon.sshmctl(&["rotate-keys"]));
    let after = json(&daemon.sshmctl(&["--json", "segments"]));
    let after_generations = generations(&after);
    for (was, is) in before_generations.iter().zip(&after_generations) {
        assert!(
            is > was,
            "rotation did not reach every worker: {before} -> {after}"
        );
    }
}

/// `sshmctl status` of a one-worker daemon still shows its one-row table,
/// and the worker line says nothing about a pool.
#[test]
fn a_single_worker_is_a_pool_of_one() {
    let Some(daemon) = Daemon::start("sshmctl-pool-one", "") else {
        return;
    };
    ok(&daemon.sshmctl(&["generate", "-m", "digits", "-p", "a 4", "-o", "-"]));
    let status = ok(&daemon.sshmctl(&["status"]));
    assert!(status.contains("\nworkers    1\n"), "{status}");
    assert!(!status.contains("(worker 0)"), "{status}");
    let rows = worker_rows(&status);
    assert_eq!(rows.len(), 1, "{status}");
    assert_eq!(&rows[0][..4], ["0", "cpu", "ready", "digits"], "{status}");
    let jobs = ok(&daemon.sshmctl(&["jobs"]));
    assert_eq!(job_workers(&jobs)[0].1, "0", "{jobs}");
}
