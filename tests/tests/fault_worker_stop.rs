//! Ordinary operator actions on the real sandboxed worker: `kill -STOP` and
//! `kill -CONT` (what `strace -p`, a debugger attaching, the cgroup freezer
//! and suspend do through the same kernel path) while it is idle and while
//! it runs a job, through a real user-mode broker. The worker must survive
//! (same pid, no restart), and the job must complete with its PNG.
//! Each case starts its own broker and worker.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use weave_common::proto::{Request, Response};
use weave_tests::fault::{run_job, small_request, status, worker_pid, Rig, OPEN_LIMITS};
use weave_tests::{require_digits, target_bin, Client};

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the worker pid read from the broker's children
    // right before; a plain integer call.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// The kernel's state letter of `pid` (`T` stopped), from `/proc/PID/stat`.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// SIGSTOP, wait until the kernel shows every thread stopped, hold it
/// `hold`, SIGCONT.
fn stop_and_continue(pid: u32, hold: Duration) {
    signal(pid, libc::SIGSTOP);
    let end = Instant::now() + Duration::from_secs(5);
    while state(pid) != Some('T') {
        assert!(
            Instant::now() < end,
            "worker {pid} never stopped: {:?}",
            state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(hold);
    signal(pid, libc::SIGCONT);
}

fn start(name: &str) -> (Rig, Client, u32) {
    let rig = Rig::start(name, &target_bin("weave-broker"), OPEN_LIMITS, 4);
    let mut client = Client::hello(rig.socket());
    // Worker up and the model loaded: the first job pays for both.
    let warm = run_job(&mut client, small_request("1", 4));
    assert!(warm.finished() && warm.has_one_png(), "{warm:?}");
    let pid = worker_pid(rig.pid()).expect("the worker runs after a job");
    (rig, client, pid)
}

#[test]
fn stop_and_continue_of_an_idle_worker_keeps_it_serving() {
    let name = "stop_idle";
    if !require_digits(name) {
        return;
    }
    let (rig, mut client, pid) = start(name);
    // Idle: its threads sleep in poll (the doorbell) and timed futexes.
    std::thread::sleep(Duration::from_millis(300));
    stop_and_continue(pid, Duration::from_millis(500));
    // Give a SIGSYS kill (the old failure) time to land before looking.
    std::thread::sleep(Duration::from_millis(500));
    // Alive, not a zombie the broker has not reaped yet.
    assert!(
        worker_pid(rig.pid()) == Some(pid) && !matches!(state(pid), Some('Z' | 'X') | None),
        "the worker died after SIGSTOP/SIGCONT (state {:?}): {}",
        state(pid),
        rig.broker.log_text()
    );
    let run = run_job(&mut client, small_request("2", 4));
    assert!(
        run.finished() && run.has_one_png(),
        "job after stop/continue: {run:?}\n{}",
        rig.broker.log_text()
    );
    let report = status(&mut client);
    assert_eq!(report.worker_restarts, 0, "{report:?}");
    assert_eq!(worker_pid(rig.pid()), Some(pid));
}

#[test]
fn stop_and_continue_of_a_busy_worker_completes_the_job() {
    let name = "stop_busy";
    if !require_digits(name) {
        return;
    }
    let (rig, mut client, pid) = start(name);
    client.send(&Request::Generate(small_request("3", 40)));
    let mut stopped = false;
    let mut events = Vec::new();
    let terminal = loop {
        let event = client.recv().unwrap();
        if !stopped && matches!(event, Response::Progress { .. }) {
            // Mid-job: stop the worker between steps, then continue it.
            stop_and_continue(pid, Duration::from_millis(500));
            stopped = true;
        }
        if event.ends_generate_stream() {
            break event;
        }
        events.push(event);
    };
    assert!(stopped, "no progress event before the end: {events:?}");
    assert!(
        matches!(terminal, Response::Finished { .. }),
        "busy job after stop/continue: {terminal:?}\n{}",
        rig.broker.log_text()
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Response::Image { png, .. } if png.starts_with(b"\x89PNG")))
            .count(),
        1
    );
    assert_eq!(worker_pid(rig.pid()), Some(pid));
    assert_eq!(state(pid).map(|s| s != 'Z'), Some(true));
    assert_eq!(status(&mut client).worker_restarts, 0);
}

/// A worker that dies between jobs (here SIGKILL, as the OOM killer or an
/// operator would) is noticed while the broker is idle: `status` stops
/// saying `Ready` for the dead one and shows a respawned worker, and the
/// next job is not charged for a death that happened before it started.
#[test]
fn an_idle_worker_that_dies_is_noticed_and_replaced_before_the_next_job() {
    let name = "idle_death";
    if !require_digits(name) {
        return;
    }
    let (rig, mut client, pid) = start(name);
    signal(pid, libc::SIGKILL);
    let end = Instant::now() + Duration::from_secs(10);
    let replaced = loop {
        let report = status(&mut client);
        let now = worker_pid(rig.pid());
        if report.worker_restarts == 1
            && report.worker == weave_common::proto::WorkerState::Ready
            && now.is_some_and(|p| p != pid)
        {
            break now.unwrap();
        }
        assert!(
            Instant::now() < end,
            "the dead worker was never noticed: {report:?}, children {now:?}\n{}",
            rig.broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!matches!(state(replaced), Some('Z' | 'X') | None));
    let run = run_job(&mut client, small_request("4", 4));
    assert!(
        run.finished() && run.has_one_png(),
        "the job after an idle death: {run:?}\n{}",
        rig.broker.log_text()
    );
    assert_eq!(status(&mut client).worker_restarts, 1);
}
