//! Death tests of the broker's seccomp boundary. Each case runs in a fresh
//! child process (this binary re-executed with `WEAVE_BROKER_PROBE=<case>`),
//! which crosses the boundary through the function the daemon calls,
//! `weave_broker::boundary::initialization_complete`, and then makes one
//! call; the parent observes the real outcome (the signal that killed the
//! child, its exit status, files left behind).
//!
//! `cargo test -p weave-broker --test broker_seccomp [-- FILTER]`
//!
//! Under `CI=true` a kernel without seccomp filters fails the cases;
//! elsewhere they are skipped with the reason printed (the harness:
//! `weave_policy::death_test`).

#![allow(clippy::unwrap_used)] // test fixtures: a failed setup should panic

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use weave_policy::death_test::{self, Outcome};

const PROBE_ENV: &str = "WEAVE_BROKER_PROBE";
const DIR_ENV: &str = "WEAVE_BROKER_PROBE_DIR";
const SIGSYS: i32 = libc::SIGSYS;

/// The raw calls the probes make on purpose.
mod raw {
    /// Issues `nr` with up to five integer arguments; returns (ret, errno).
    pub fn syscall5(nr: libc::c_long, a: [libc::c_long; 5]) -> (libc::c_long, i32) {
        // SAFETY: the probes pass integers, null pointers or pointers to
        // live NUL-terminated strings; the calls fail with an errno, are
        // killed by seccomp, or (fork-style clone) return twice, which
        // `attempt` handles.
        let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        (ret, errno)
    }

    pub fn exit_now(code: i32) -> ! {
        // SAFETY: _exit never returns; used in a forked child.
        unsafe { libc::_exit(code) }
    }

    pub fn setsid() {
        // SAFETY: no arguments.
        unsafe { libc::setsid() };
    }
}

enum Expect {
    /// Exit status 0 (the probe checked its own results and printed them).
    Success,
    /// Killed by this signal.
    Signal(i32),
}

/// A check of what a probe left behind.
type AfterCheck = fn(&Path) -> Result<(), String>;

struct Case {
    name: &'static str,
    expect: Expect,
    probe: fn(&Path) -> i32,
    /// Checked by the parent after the child ended.
    after: Option<AfterCheck>,
}

fn killed(name: &'static str, probe: fn(&Path) -> i32) -> Case {
    Case {
        name,
        expect: Expect::Signal(SIGSYS),
        probe,
        after: None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        killed("broker_seccomp_kills_socket_af_inet", |_| {
            boundary();
            attempt(
                libc::SYS_socket,
                [libc::AF_INET as _, libc::SOCK_STREAM as _, 0, 0, 0],
            )
        }),
        killed("broker_seccomp_kills_socket_af_netlink", |_| {
            boundary();
            attempt(
                libc::SYS_socket,
                [libc::AF_NETLINK as _, libc::SOCK_RAW as _, 0, 0, 0],
            )
        }),
        killed("broker_seccomp_kills_ptrace", |_| {
            boundary();
            attempt(libc::SYS_ptrace, [libc::PTRACE_TRACEME as _, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_process_vm_readv", |_| {
            boundary();
            attempt(libc::SYS_process_vm_readv, [1, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_execve", |_| {
            boundary();
            // A real exec of /bin/true: if the filter let it through, the
            // process would become /bin/true and exit 0.
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            attempt(
                libc::SYS_execve,
                [
                    path.as_ptr() as _,
                    argv.as_ptr() as _,
                    envp.as_ptr() as _,
                    0,
                    0,
                ],
            )
        }),
        killed("broker_seccomp_kills_fork", |_| {
            boundary();
            attempt(libc::SYS_clone, [libc::SIGCHLD as _, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_mount", |_| {
            boundary();
            attempt(libc::SYS_mount, [0, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_bpf", |_| {
            boundary();
            attempt(libc::SYS_bpf, [0, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_unshare", |_| {
            boundary();
            attempt(libc::SYS_unshare, [libc::CLONE_NEWUSER as _, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_another_filter", |_| {
            boundary();
            attempt(libc::SYS_seccomp, [0, 0, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_mmap_prot_exec", |_| {
            boundary();
            attempt(
                libc::SYS_mmap,
                [
                    0,
                    4096,
                    (libc::PROT_READ | libc::PROT_EXEC) as _,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as _,
                    -1,
                ],
            )
        }),
        Case {
            name: "broker_seccomp_kills_open_for_writing_outside_the_runtime_dir",
            expect: Expect::Signal(SIGSYS),
            probe: |dir| {
                boundary();
                let path = c_path(&outside_file(dir));
                attempt(
                    libc::SYS_openat,
                    [
                        libc::AT_FDCWD as _,
                        path.as_ptr() as _,
                        (libc::O_WRONLY | libc::O_CREAT) as _,
                        0o600,
                        0,
                    ],
                )
            },
            after: Some(|dir| {
                let path = outside_file(dir);
                match path.exists() {
                    true => Err(format!("{} was created", path.display())),
                    false => Ok(()),
                }
            }),
        },
        killed("broker_seccomp_kills_signals_other_than_sigkill", |_| {
            let child = sleeping_child();
            boundary();
            attempt(libc::SYS_kill, [child as _, libc::SIGTERM as _, 0, 0, 0])
        }),
        killed("broker_seccomp_kills_sigkill_to_a_process_group", |_| {
            // Its own session and group: were the call let through, it
            // would kill only this probe (by SIGKILL, not SIGSYS).
            raw::setsid();
            boundary();
            attempt(libc::SYS_kill, [0, libc::SIGKILL as _, 0, 0, 0])
        }),
        Case {
            name: "broker_seccomp_allows_the_brokers_workload",
            expect: Expect::Success,
            probe: probe_workload,
            after: None,
        },
    ]
}

/// Crosses the broker's boundary as the daemon does, or exits 3.
fn boundary() {
    if let Err(e) = weave_policy::broker::harden() {
        eprintln!("probe: harden failed: {e}");
        std::process::exit(3);
    }
    if let Err(e) = weave_broker::boundary::initialization_complete() {
        eprintln!("probe: initialization_complete failed: {e}");
        std::process::exit(3);
    }
}

fn outside_file(dir: &Path) -> PathBuf {
    dir.join("outside").join("written-by-the-broker")
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// A child that sleeps until killed (made before the boundary). The probe
/// reaps it with a raw `waitpid` after the boundary, or dies first (then
/// init reaps it).
#[allow(clippy::zombie_processes)]
fn sleeping_child() -> libc::pid_t {
    let child = Command::new("sleep").arg("10").spawn().unwrap();
    child.id() as libc::pid_t
}

/// Makes a call that should kill the process; reaching the return means
/// the filter let it through.
fn attempt(nr: libc::c_long, args: [libc::c_long; 5]) -> i32 {
    let (ret, errno) = raw::syscall5(nr, args);
    if ret == 0 && nr == libc::SYS_clone {
        // Fork-style clone succeeded: this is the child; leave quietly.
        raw::exit_now(0);
    }
    eprintln!("probe: syscall {nr} was not killed: returned {ret}, errno {errno}");
    4
}

/// Everything the broker does after its boundary, each step checked:
/// Unix sockets (a syslog-style datagram, a socket pair), a sealed memfd
/// segment mapped shared, an eventfd doorbell, a thread, pipes, a
/// read-only open, SIGKILL to and reaping of a child, a worker started
/// through the spawner (forked before the boundary), removing a socket.
fn probe_workload(dir: &Path) -> i32 {
    use std::io::{Read, Write};
    let sink_path = dir.join("sink.sock");
    let sink = std::os::unix::net::UnixDatagram::bind(&sink_path).unwrap();
    let victim = sleeping_child();
    let fake_worker = dir.join("fake-worker");
    let spawner =
        weave_broker::supervisor::Spawner::start(&fake_worker, &[("K".into(), "V".into())])
            .unwrap();
    let socket_file = dir.join("weave.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_file).unwrap();
    boundary();
    let mut failures = 0;
    let mut check = |what: &str, ok: Result<(), String>| match ok {
        Ok(()) => println!("ok: {what}"),
        Err(e) => {
            println!("FAIL: {what}: {e}");
            failures += 1;
        }
    };
    check("syslog-style datagram", {
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client
            .connect(&sink_path)
            .and_then(|()| client.send(b"<13>probe"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let mut buf = [0u8; 64];
    check(
        "datagram received",
        sink.recv(&mut buf).map(|_| ()).map_err(|e| e.to_string()),
    );
    check("socket pair, connection to the listener", {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&socket_file).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        a.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        b.read_exact(&mut one).map_err(|e| e.to_string())
    });
    check("sealed memfd segment, mapped shared, and a doorbell", {
        let keys = weave_common::worker_proto::SegmentGeometry {
            segment_id: 1,
            slot_count: 2,
            slot_size: 4096,
        };
        let other = weave_common::worker_proto::SegmentGeometry {
            segment_id: 2,
            ..keys
        };
        weave_common::worker_proto::channel::BrokerEndpoint::create(keys, other, 1)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    check("a thread", {
        std::thread::spawn(|| 7)
            .join()
            .map_err(|_| "panicked".to_string())
            .and_then(|v| if v == 7 { Ok(()) } else { Err("wrong".into()) })
    });
    check(
        "read-only open",
        std::fs::read("/proc/self/status")
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    check("SIGKILL to a child and reaping it", {
        // SAFETY: kill and waitpid on our own unreaped child.
        let (killed, reaped) = unsafe {
            let k = libc::kill(victim, libc::SIGKILL);
            let mut status = 0;
            let w = libc::waitpid(victim, &mut status, 0);
            (k, (w == victim && libc::WIFSIGNALED(status)).then_some(()))
        };
        match (killed, reaped) {
            (0, Some(())) => Ok(()),
            _ => Err(format!("kill {killed}, reaped {reaped:?}")),
        }
    });
    check("a worker started through the spawner after the boundary", {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        let fds = weave_broker::supervisor::SpawnFds {
            channel: [r.as_fd(), w.as_fd(), r.as_fd(), w.as_fd()],
            bootstrap_read: r.as_fd(),
            stderr_write: w.as_fd(),
        };
        spawner
            .spawn(&fds)
            .map_err(|e| e.to_string())
            .and_then(|mut worker| worker.wait().map_err(|e| e.to_string()))
            .and_then(|status| match status.code() {
                Some(5) => Ok(()),
                _ => Err(format!("fake worker ended {status}")),
            })
    });
    check("removing the socket at shutdown", {
        drop(listener);
        std::fs::remove_file(&socket_file).map_err(|e| e.to_string())
    });
    let _ = sink.as_raw_fd();
    i32::from(failures != 0)
}

fn run_case(case: &Case, dir: &Path) -> Outcome {
    if let Some(reason) = death_test::seccomp_unavailable() {
        return death_test::unmet(reason);
    }
    let case_dir = dir.join(case.name);
    std::fs::create_dir_all(case_dir.join("outside")).unwrap();
    std::fs::write(
        case_dir.join("fake-worker"),
        "#!/bin/sh\n[ \"$K\" = V ] && exit 5\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        case_dir.join("fake-worker"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .env(PROBE_ENV, case.name)
        .env(DIR_ENV, &case_dir)
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("cannot spawn the probe: {e}")),
    };
    let verdict = match case.expect {
        Expect::Signal(sig) => death_test::expect_signal(&output, sig),
        Expect::Success => death_test::expect_success(&output),
    };
    match verdict.and_then(|()| case.after.map_or(Ok(()), |after| after(&case_dir))) {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(e),
    }
}

fn main() {
    let cases = cases();
    death_test::run_probe_if_child(PROBE_ENV, DIR_ENV, |name| {
        cases.iter().find(|c| c.name == name).map(|c| c.probe)
    });
    let names: Vec<&'static str> = cases.iter().map(|c| c.name).collect();
    let Some(selected) = death_test::select(&names) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weave-broker-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let by_name = |name: &str| cases.iter().find(|c| c.name == name);
    let status = death_test::run_cases("broker seccomp tests", &selected, |name| {
        by_name(name).map_or(Outcome::Failed("no such case".into()), |case| {
            run_case(case, &dir)
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(status);
}
