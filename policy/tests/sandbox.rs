//! Sandbox death tests. Each case runs its probe in a fresh child process
//! (this binary re-executed with `WEAVE_POLICY_PROBE=<case>`), single-threaded
//! because this binary has no libtest harness; the parent observes the real
//! outcome: the signal that killed the child, its exit status, and what the
//! kernel reported in the child's `/proc/self/status`.
//!
//! `cargo test -p weave-policy --test sandbox [-- FILTER | --exact NAME]`
//!
//! Under `CI=true` a missing prerequisite (root, Landlock ABI 6+, seccomp)
//! fails the case; elsewhere it is skipped with the reason printed.

#![allow(clippy::unwrap_used)] // test fixtures: a failed setup should panic

use std::path::{Path, PathBuf};
use std::process::Command;
use weave_policy::death_test::{self, Outcome};
use weave_policy::seccomp::WorkerSyscallOptions;
use weave_policy::worker::{self, WorkerPaths};
use weave_policy::{broker, ProcessStatus, SeccompMode};

const PROBE_ENV: &str = "WEAVE_POLICY_PROBE";
const DIR_ENV: &str = "WEAVE_POLICY_PROBE_DIR";
const TEST_USER: &str = "weave-test-policy";
const SIGSYS: i32 = 31;

/// The few raw system calls the probes make on purpose.
mod raw {
    /// Issues `nr` with up to five integer arguments; returns (ret, errno).
    pub fn syscall5(nr: libc::c_long, a: [libc::c_long; 5]) -> (libc::c_long, i32) {
        // SAFETY: the probes only pass integer arguments or null pointers;
        // the calls either fail with an errno, are killed by seccomp, or (for
        // clone with a null stack) behave like fork, which the caller handles.
        let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        (ret, errno)
    }

    pub fn setuid0() -> (i32, i32) {
        // SAFETY: plain integer argument.
        let ret = unsafe { libc::setuid(0) };
        (
            ret,
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        )
    }

    pub fn dumpable() -> i32 {
        // SAFETY: PR_GET_DUMPABLE takes no pointer arguments.
        unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }
    }

    /// `dlopen(path, RTLD_NOW)`: true when the library was mapped.
    pub fn dlopen(path: &std::path::Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a NUL-terminated path; the probe libraries are glibc's
        // stub libraries whose constructors do nothing.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        !handle.is_null()
    }

    pub fn exit_now(code: i32) -> ! {
        // SAFETY: _exit never returns; used in a forked child to avoid
        // running the parent's atexit handlers twice.
        unsafe { libc::_exit(code) }
    }
}

/// What a probe's child process must end with.
enum Expect {
    /// Exit status 0 (the probe checked its own results and printed them).
    Success,
    /// Killed by this signal.
    Signal(i32),
    /// Exit status 0 after the parent stopped the child (SIGSTOP) while it
    /// slept in the kernel and continued it (SIGCONT): what `kill -STOP`,
    /// `strace -p`, a debugger or the cgroup freezer do to a worker.
    SuccessAfterStopAndContinue,
}

/// The line a stop/continue probe prints once it is about to sleep.
const SLEEPING: &str = "probe: sleeping";

struct Case {
    name: &'static str,
    needs: &'static [Need],
    expect: Expect,
    probe: fn(&Path) -> i32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Need {
    Root,
    Landlock,
    Seccomp,
}

fn cases() -> Vec<Case> {
    let killed = |name, probe| Case {
        name,
        needs: &[Need::Seccomp],
        expect: Expect::Signal(SIGSYS),
        probe,
    };
    vec![
        Case {
            name: "landlock_worker_view_is_read_only_and_limited",
            needs: &[Need::Landlock],
            expect: Expect::Success,
            probe: probe_landlock_view,
        },
        Case {
            name: "landlock_missing_model_path_is_an_error",
            needs: &[Need::Landlock],
            expect: Expect::Success,
            probe: probe_landlock_missing_model,
        },
        killed("seccomp_kills_socket", |_| {
            lock();
            attempt(
                libc::SYS_socket,
                [libc::AF_INET as _, libc::SOCK_STREAM as _, 0, 0, 0],
            )
        }),
        killed("seccomp_kills_execve", |_| {
            lock();
            attempt(libc::SYS_execve, [0, 0, 0, 0, 0])
        }),
        killed("seccomp_kills_ptrace", |_| {
            lock();
            attempt(libc::SYS_ptrace, [libc::PTRACE_TRACEME as _, 0, 0, 0, 0])
        }),
        killed("seccomp_kills_process_vm_readv", |_| {
            lock();
            attempt(libc::SYS_process_vm_readv, [1, 0, 0, 0, 0])
        }),
        killed("seccomp_kills_mount", |_| {
            lock();
            attempt(libc::SYS_mount, [0, 0, 0, 0, 0])
        }),
        killed("seccomp_kills_bpf", |_| {
            lock();
            attempt(libc::SYS_bpf, [0, 0, 0, 0, 0])
        }),
        killed("seccomp_kills_unshare", |_| {
            lock();
            attempt(libc::SYS_unshare, [libc::CLONE_NEWUSER as _, 0, 0, 0, 0])
        }),
        killed("seccomp_kills_clone_with_newuser", |_| {
            lock();
            attempt(
                libc::SYS_clone,
                [(libc::CLONE_NEWUSER | libc::SIGCHLD) as _, 0, 0, 0, 0],
            )
        }),
        killed("seccomp_kills_mmap_prot_exec", |_| {
            lock();
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
        killed("seccomp_kills_openat_for_writing", |dir| {
            lock();
            let path = std::ffi::CString::new(
                dir.join("model")
                    .join("weights.bin")
                    .to_string_lossy()
                    .as_bytes(),
            )
            .unwrap();
            attempt(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as _,
                    path.as_ptr() as _,
                    libc::O_WRONLY as _,
                    0,
                    0,
                ],
            )
        }),
        Case {
            name: "seccomp_exec_mappings_option_allows_prot_exec",
            needs: &[Need::Seccomp],
            expect: Expect::Success,
            probe: probe_exec_mappings_allowed,
        },
        Case {
            name: "seccomp_gpu_allows_nvidia_shaped_ioctls",
            needs: &[Need::Seccomp],
            expect: Expect::Success,
            probe: probe_gpu_ioctls_allowed,
        },
        killed("seccomp_gpu_kills_other_ioctls", |_| {
            lock_with(WorkerSyscallOptions {
                gpu: true,
                exec_mappings: false,
            });
            // FIONREAD on stdin: a real request, but not an NVIDIA one.
            attempt(libc::SYS_ioctl, [0, libc::FIONREAD as _, 0, 0, 0])
        }),
        Case {
            name: "seccomp_tsync_covers_threads_started_before_the_filter",
            needs: &[Need::Seccomp],
            expect: Expect::Signal(SIGSYS),
            probe: probe_tsync,
        },
        Case {
            name: "seccomp_trap_mode_reports_and_continues",
            needs: &[Need::Seccomp],
            expect: Expect::Success,
            probe: probe_trap_mode,
        },
        Case {
            name: "seccomp_allows_threads_and_clone3_gets_enosys",
            needs: &[Need::Seccomp],
            expect: Expect::Success,
            probe: probe_threads_and_clone3,
        },
        Case {
            name: "seccomp_allows_plain_fork_style_clone",
            needs: &[Need::Seccomp],
            expect: Expect::Success,
            probe: probe_plain_clone,
        },
        Case {
            name: "seccomp_survives_stop_and_continue_while_sleeping",
            needs: &[Need::Seccomp],
            expect: Expect::SuccessAfterStopAndContinue,
            probe: probe_stop_and_continue,
        },
        Case {
            name: "root_drops_to_test_user_with_nothing_left",
            needs: &[Need::Root, Need::Seccomp],
            expect: Expect::Success,
            probe: probe_privilege_drop,
        },
    ]
}

/// Applies the worker's allowlist in enforce mode, or exits 3.
fn lock() {
    lock_with(WorkerSyscallOptions::default());
}

/// Applies the worker's allowlist with `options` in enforce mode, or exits 3.
fn lock_with(options: WorkerSyscallOptions) {
    if let Err(e) = worker::lock_syscalls(SeccompMode::Enforce, options) {
        eprintln!("probe: lock_syscalls failed: {e}");
        std::process::exit(3);
    }
}

/// `exec_mappings: true` (config `seccomp_exec_mappings`): an executable
/// mapping after the boundary is allowed.
fn probe_exec_mappings_allowed(_: &Path) -> i32 {
    lock_with(WorkerSyscallOptions {
        gpu: false,
        exec_mappings: true,
    });
    let (ret, errno) = raw::syscall5(
        libc::SYS_mmap,
        [
            0,
            4096,
            (libc::PROT_READ | libc::PROT_EXEC) as _,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as _,
            -1,
        ],
    );
    if ret == -1 {
        println!("FAIL: mmap(PROT_EXEC) with exec_mappings failed: errno {errno}");
        return 1;
    }
    println!("ok: mmap(PROT_EXEC) allowed at {ret:#x}");
    0
}

/// A GPU worker's filter lets NVIDIA/UVM-shaped requests through to the
/// kernel (which answers ENOTTY on /dev/null, proving the filter passed
/// them), including a sign-extended request register.
fn probe_gpu_ioctls_allowed(_: &Path) -> i32 {
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            println!("FAIL: cannot open /dev/null: {e}");
            return 1;
        }
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null) as libc::c_long;
    lock_with(WorkerSyscallOptions {
        gpu: true,
        exec_mappings: false,
    });
    // NV_ESC_RM_CONTROL = _IOWR('F', 0x2a, 32 bytes); UVM_INITIALIZE.
    let rm_control: libc::c_long = 0xc020_462a;
    let sign_extended = rm_control | !0xffff_ffff;
    let mut failures = 0;
    for (what, req) in [
        ("NV_ESC_RM_CONTROL", rm_control),
        ("NV_ESC_RM_CONTROL, sign-extended", sign_extended),
        ("UVM_INITIALIZE", 0x3000_0001),
        ("UVM ioctl 39", 39),
        ("TCGETS", libc::TCGETS as _),
    ] {
        match raw::syscall5(libc::SYS_ioctl, [fd, req, 0, 0, 0]) {
            (-1, libc::ENOTTY) => println!("ok: {what} reached the kernel (ENOTTY)"),
            (ret, errno) => {
                println!("FAIL: {what}: returned {ret}, errno {errno}, expected ENOTTY");
                failures += 1;
            }
        }
    }
    i32::from(failures != 0)
}

/// Makes a syscall that should kill the process; reaching the return means
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

fn expect_errno(what: &str, result: std::io::Result<impl Sized>, errno: i32, failures: &mut u32) {
    match result {
        Err(e) if e.raw_os_error() == Some(errno) => println!("ok: {what}: errno {errno}"),
        Err(e) => {
            println!("FAIL: {what}: {e}, expected errno {errno}");
            *failures += 1;
        }
        Ok(_) => {
            println!("FAIL: {what}: succeeded, expected errno {errno}");
            *failures += 1;
        }
    }
}

fn probe_landlock_view(dir: &Path) -> i32 {
    let model_dir = dir.join("model");
    let paths = WorkerPaths {
        models: vec![model_dir.clone()],
        libraries: vec![],
        gpu: Some(0),
        extra_read_only: vec![],
    };
    let report = match worker::confine_filesystem(&paths, false) {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL: confine_filesystem: {e}");
            return 1;
        }
    };
    println!("report: {report:?}");
    let mut failures = 0;
    let home_file =
        PathBuf::from(std::env::var("WEAVE_POLICY_PROBE_HOME_FILE").unwrap_or_default());
    match std::fs::read(model_dir.join("weights.bin")) {
        Ok(bytes) if bytes == b"weights" => println!("ok: model file readable"),
        other => {
            println!("FAIL: model file: {other:?}");
            failures += 1;
        }
    }
    let eacces = libc::EACCES;
    expect_errno(
        "read /etc/passwd",
        std::fs::read("/etc/passwd"),
        eacces,
        &mut failures,
    );
    expect_errno(
        "read file in $HOME",
        std::fs::read(&home_file),
        eacces,
        &mut failures,
    );
    expect_errno(
        "read file in a non-allowed dir",
        std::fs::read(dir.join("other").join("secret.txt")),
        eacces,
        &mut failures,
    );
    expect_errno(
        "list a non-allowed dir",
        std::fs::read_dir(dir.join("other")),
        eacces,
        &mut failures,
    );
    expect_errno(
        "create a file in the model dir",
        std::fs::File::create(model_dir.join("new.bin")),
        eacces,
        &mut failures,
    );
    expect_errno(
        "open the model file for writing",
        std::fs::OpenOptions::new()
            .append(true)
            .open(model_dir.join("weights.bin")),
        eacces,
        &mut failures,
    );
    expect_errno(
        "create a file in /tmp",
        std::fs::File::create(dir.join("created-by-sandbox")),
        eacces,
        &mut failures,
    );
    expect_errno(
        "mkdir in the model dir",
        std::fs::create_dir(model_dir.join("sub")),
        eacces,
        &mut failures,
    );
    expect_errno(
        "remove the model file",
        std::fs::remove_file(model_dir.join("weights.bin")),
        eacces,
        &mut failures,
    );
    // Shared objects in a read-only-granted directory still load (mmap
    // PROT_EXEC is not a Landlock access); the same file elsewhere does not.
    let lib_name = std::env::var("WEAVE_POLICY_PROBE_LIB").unwrap_or_default();
    if lib_name.is_empty() {
        println!("note: no stub library found to test dlopen");
    } else {
        if raw::dlopen(&model_dir.join(&lib_name)) {
            println!("ok: dlopen from the model dir");
        } else {
            println!("FAIL: dlopen from the read-only model dir");
            failures += 1;
        }
        if raw::dlopen(&dir.join("other").join(&lib_name)) {
            println!("FAIL: dlopen from a non-allowed dir succeeded");
            failures += 1;
        } else {
            println!("ok: dlopen from a non-allowed dir refused");
        }
    }
    // Signal scoping: the parent (outside the domain) cannot be signalled.
    // Signal 0 only checks permission.
    // SAFETY: kill with signal 0 sends nothing; getppid cannot fail.
    let rc = unsafe { libc::kill(libc::getppid(), 0) };
    let err = std::io::Error::last_os_error();
    if rc == 0 {
        println!("FAIL: signal to the parent permitted");
        failures += 1;
    } else {
        println!("ok: signal to the parent refused: {err}");
    }
    i32::from(failures > 0)
}

fn probe_landlock_missing_model(dir: &Path) -> i32 {
    let paths = WorkerPaths {
        models: vec![dir.join("no-such-model.safetensors")],
        ..WorkerPaths::default()
    };
    match worker::confine_filesystem(&paths, false) {
        Err(
            e @ worker::WorkerConfineError::Landlock(
                weave_policy::landlock::LandlockError::MissingPath { .. },
            ),
        ) => {
            println!("ok: {e}");
            // Nothing was restricted: /etc/passwd is still readable.
            if std::fs::read("/etc/passwd").is_ok() {
                0
            } else {
                println!("FAIL: a failed confine restricted the process anyway");
                1
            }
        }
        other => {
            println!("FAIL: expected MissingPath, got {other:?}");
            1
        }
    }
}

fn probe_tsync(_: &Path) -> i32 {
    // A thread that exists before the filter (like libtorch's OpenMP pool)
    // must be filtered too: it waits, then tries a socket.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let _ = go_rx.recv();
        raw::syscall5(
            libc::SYS_socket,
            [libc::AF_INET as _, libc::SOCK_STREAM as _, 0, 0, 0],
        )
    });
    lock();
    let _ = go_tx.send(());
    let result = worker.join();
    eprintln!("probe: the pre-existing thread was not killed: {result:?}");
    4
}

fn probe_trap_mode(_: &Path) -> i32 {
    if let Err(e) = worker::lock_syscalls(SeccompMode::Trap, WorkerSyscallOptions::default()) {
        println!("FAIL: lock_syscalls(Trap): {e}");
        return 1;
    }
    // Not allowed: the SIGSYS reporter prints the number and the call
    // returns ENOSYS instead of killing the process.
    let (ret, errno) = raw::syscall5(
        libc::SYS_socket,
        [libc::AF_INET as _, libc::SOCK_STREAM as _, 0, 0, 0],
    );
    if ret == -1 && errno == libc::ENOSYS {
        println!("ok: socket returned ENOSYS under the trap mode");
        0
    } else {
        println!("FAIL: socket returned {ret}, errno {errno}");
        1
    }
}

fn probe_threads_and_clone3(_: &Path) -> i32 {
    lock();
    let mut failures = 0;
    let handle = std::thread::spawn(|| (1..=10u64).sum::<u64>());
    match handle.join() {
        Ok(55) => println!("ok: thread created and joined"),
        other => {
            println!("FAIL: thread: {other:?}");
            failures += 1;
        }
    }
    let (ret, errno) = raw::syscall5(libc::SYS_clone3, [0, 0, 0, 0, 0]);
    if ret == -1 && errno == libc::ENOSYS {
        println!("ok: clone3 returned ENOSYS");
    } else {
        println!("FAIL: clone3 returned {ret}, errno {errno}");
        failures += 1;
    }
    i32::from(failures > 0)
}

fn probe_plain_clone(_: &Path) -> i32 {
    lock();
    // Fork-style clone without namespace flags must pass the flag check; the
    // child exits at once (wait4 is not in the worker's allowlist, so the
    // parent does not reap it; the process exits right after).
    let (ret, errno) = raw::syscall5(libc::SYS_clone, [libc::SIGCHLD as _, 0, 0, 0, 0]);
    match ret {
        0 => raw::exit_now(0),
        pid if pid > 0 => {
            println!("ok: clone without namespace flags created pid {pid}");
            0
        }
        _ => {
            println!("FAIL: clone failed with errno {errno}");
            1
        }
    }
}

fn probe_stop_and_continue(_: &Path) -> i32 {
    use std::io::Write;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;
    // A thread that sleeps in a timed futex (an idle libtorch/OpenMP pool
    // thread) and one in clock_nanosleep, both started before the filter;
    // the main thread sleeps in poll (the worker's doorbell wait). All three
    // are interrupted by the stop and re-entered through restart_syscall.
    let pair = std::sync::Arc::new((Mutex::new(false), Condvar::new()));
    let futex_pair = std::sync::Arc::clone(&pair);
    let futex_sleeper = std::thread::spawn(move || {
        let (lock, cvar) = &*futex_pair;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = cvar.wait_timeout(guard, Duration::from_millis(1500));
    });
    let nano_sleeper = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(1500)));
    lock();
    println!("{SLEEPING}");
    let _ = std::io::stdout().flush();
    let (ret, errno) = raw::syscall5(libc::SYS_poll, [0, 0, 1500, 0, 0]);
    if ret != 0 {
        println!("FAIL: poll returned {ret}, errno {errno}");
        return 1;
    }
    if futex_sleeper.join().is_err() || nano_sleeper.join().is_err() {
        println!("FAIL: a sleeping thread panicked");
        return 1;
    }
    drop(pair);
    println!("ok: poll, futex and nanosleep resumed after SIGSTOP/SIGCONT");
    0
}

fn probe_privilege_drop(_: &Path) -> i32 {
    let target = match broker::drop_privileges(TEST_USER) {
        Ok(t) => t,
        Err(e) => {
            println!("FAIL: drop_privileges: {e}");
            return 1;
        }
    };
    let mut failures = 0;
    let (ret, errno) = raw::setuid0();
    if ret == -1 && errno == libc::EPERM {
        println!("ok: setuid(0) failed with EPERM");
    } else {
        println!("FAIL: setuid(0) returned {ret}, errno {errno}");
        failures += 1;
    }
    if raw::dumpable() != 0 {
        println!("FAIL: still dumpable");
        failures += 1;
    }
    lock();
    // The parent parses these lines; print them verbatim from the kernel.
    match std::fs::read_to_string("/proc/self/status") {
        Ok(text) => {
            println!("target uid={} gid={}", target.uid, target.gid);
            for line in text.lines() {
                println!("status> {line}");
            }
        }
        Err(e) => {
            println!("FAIL: read /proc/self/status: {e}");
            failures += 1;
        }
    }
    i32::from(failures > 0)
}

/// Checks the child's `/proc/self/status` as printed by the drop probe.
fn check_drop_output(stdout: &str) -> Result<(), String> {
    let status_text: String = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("status> "))
        .map(|l| format!("{l}\n"))
        .collect();
    let status = ProcessStatus::parse(&status_text).map_err(|e| e.to_string())?;
    if !status.capabilities_empty() {
        return Err(format!("capability sets not empty: {status:?}"));
    }
    if !status.no_new_privs {
        return Err("NoNewPrivs is not 1".into());
    }
    if status.seccomp_mode != 2 {
        return Err(format!("Seccomp is {}, expected 2", status.seccomp_mode));
    }
    let target = stdout
        .lines()
        .find_map(|l| l.strip_prefix("target "))
        .ok_or("no target line")?;
    let uid = target
        .split_whitespace()
        .find_map(|f| f.strip_prefix("uid="))
        .ok_or("no uid")?;
    let gid = target
        .split_whitespace()
        .find_map(|f| f.strip_prefix("gid="))
        .ok_or("no gid")?;
    let field = |name: &str| {
        status_text
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let uids: Vec<String> = field("Uid:")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let gids: Vec<String> = field("Gid:")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if uids.len() != 4 || uids.iter().any(|u| u != uid) {
        return Err(format!("Uid line {uids:?}, expected all {uid}"));
    }
    if gids.len() != 4 || gids.iter().any(|g| g != gid) {
        return Err(format!("Gid line {gids:?}, expected all {gid}"));
    }
    if field("Groups:") != gid {
        return Err(format!("Groups: {:?}, expected {gid}", field("Groups:")));
    }
    Ok(())
}

// ---------------------------------------------------------------- parent

fn missing(need: Need) -> Option<String> {
    match need {
        Need::Root => {
            // SAFETY: geteuid cannot fail.
            let euid = unsafe { libc::geteuid() };
            (euid != 0).then(|| format!("needs root (euid {euid})"))
        }
        Need::Landlock => {
            // SAFETY: the Landlock version query takes no pointers.
            let abi = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    std::ptr::null::<libc::c_void>(),
                    0usize,
                    1u32,
                )
            };
            (abi < 6).then(|| format!("needs Landlock ABI 6+ (kernel reports {abi})"))
        }
        Need::Seccomp => death_test::seccomp_unavailable(),
    }
}

fn ensure_test_user() -> Result<(), String> {
    let exists = Command::new("id")
        .args(["-u", TEST_USER])
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?
        .status
        .success();
    if exists {
        return Ok(());
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .output()
        .map_err(|e| format!("cannot run useradd (install passwd): {e}"))?;
    // Exit status 9: created concurrently by another run.
    if out.status.success() || out.status.code() == Some(9) {
        Ok(())
    } else {
        Err(format!(
            "useradd {TEST_USER} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

struct Fixture {
    dir: PathBuf,
    home_file: PathBuf,
    /// File name of a glibc stub library copied into model/ and other/.
    lib_name: Option<String>,
}

/// A shared library nothing in this process has loaded yet.
fn find_stub_library() -> Option<PathBuf> {
    let dirs = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
    ];
    let names = ["libanl.so.1", "libutil.so.1", "libresolv.so.2"];
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| Path::new(d).join(n)))
        .find(|p| p.is_file())
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("weave-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("model")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        std::fs::write(dir.join("model").join("weights.bin"), b"weights").unwrap();
        std::fs::write(dir.join("other").join("secret.txt"), b"secret").unwrap();
        let home = std::env::var_os("HOME").map_or_else(|| dir.join("home"), PathBuf::from);
        std::fs::create_dir_all(&home).unwrap();
        let home_file = home.join(format!(".weave-policy-test-{}", std::process::id()));
        std::fs::write(&home_file, b"home").unwrap();
        let lib_name = find_stub_library().map(|lib| {
            let name = lib.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&lib, dir.join("model").join(&name)).unwrap();
            std::fs::copy(&lib, dir.join("other").join(&name)).unwrap();
            name
        });
        Self {
            dir,
            home_file,
            lib_name,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.home_file);
    }
}

fn run_case(case: &Case, fixture: &Fixture) -> Outcome {
    let missing: Vec<String> = case.needs.iter().filter_map(|&n| missing(n)).collect();
    if !missing.is_empty() {
        return death_test::unmet(missing.join("; "));
    }
    if case.needs.contains(&Need::Root) {
        if let Err(e) = ensure_test_user() {
            return Outcome::Failed(e);
        }
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("current_exe: {e}")),
    };
    let mut command = Command::new(exe);
    command
        .args(["--exact", case.name, "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, case.name)
        .env(DIR_ENV, &fixture.dir)
        .env("WEAVE_POLICY_PROBE_HOME_FILE", &fixture.home_file)
        .env(
            "WEAVE_POLICY_PROBE_LIB",
            fixture.lib_name.as_deref().unwrap_or_default(),
        );
    let output = match case.expect {
        Expect::SuccessAfterStopAndContinue => stop_and_continue(command),
        Expect::Success | Expect::Signal(_) => command.output(),
    };
    let output = match output {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("cannot spawn the probe: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = || death_test::detail(&output);
    match case.expect {
        Expect::Signal(sig) => match death_test::expect_signal(&output, sig) {
            Ok(()) => Outcome::Ok,
            Err(why) => Outcome::Failed(why),
        },
        Expect::SuccessAfterStopAndContinue if output.status.success() => {
            if stdout.contains("stopped: yes") {
                Outcome::Ok
            } else {
                Outcome::Failed(format!("the child was never seen stopped\n{}", detail()))
            }
        }
        Expect::SuccessAfterStopAndContinue => Outcome::Failed(detail()),
        Expect::Success if output.status.success() => {
            if case.name == "root_drops_to_test_user_with_nothing_left" {
                if let Err(e) = check_drop_output(&stdout) {
                    return Outcome::Failed(format!("{e}\n{}", detail()));
                }
            }
            if case.name == "seccomp_trap_mode_reports_and_continues" {
                // The number and the first three arguments as the probe
                // passed them: socket(AF_INET = 2, SOCK_STREAM = 1, 0).
                let line = format!(
                    "weave-policy: seccomp blocked syscall {} args 0x2 0x1 0x0",
                    libc::SYS_socket
                );
                if !stderr.lines().any(|l| l == line) {
                    return Outcome::Failed(format!("no `{line}` on stderr\n{}", detail()));
                }
            }
            Outcome::Ok
        }
        Expect::Success => Outcome::Failed(detail()),
    }
}

/// The kernel's state letter of `pid` (`T` = stopped), from `/proc/PID/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Runs the child, stops it once it sleeps, checks the kernel reports it
/// stopped, continues it and collects its output. A line `stopped: yes|no`
/// is appended to its stdout for the verdict.
fn stop_and_continue(mut command: Command) -> std::io::Result<std::process::Output> {
    use std::io::{BufRead, Read};
    use std::time::{Duration, Instant};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdout = std::io::BufReader::new(child.stdout.take().ok_or(std::io::ErrorKind::Other)?);
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line)? > 0 {
        seen.push_str(&line);
        if line.trim_end() == SLEEPING {
            break;
        }
        line.clear();
    }
    // Let it enter poll before the stop.
    std::thread::sleep(Duration::from_millis(200));
    let signal = |sig| {
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(pid as libc::pid_t, sig) }
    };
    signal(libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stopped = false;
    while Instant::now() < deadline && !stopped {
        stopped = process_state(pid) == Some('T');
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(libc::SIGCONT);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    seen.push_str(&rest);
    let mut stderr = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr)?;
    }
    let status = child.wait()?;
    seen.push_str(if stopped {
        "stopped: yes\n"
    } else {
        "stopped: no\n"
    });
    Ok(std::process::Output {
        status,
        stdout: seen.into_bytes(),
        stderr,
    })
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
    let fixture = Fixture::new();
    let status = death_test::run_cases("sandbox tests", &selected, |name| {
        cases
            .iter()
            .find(|c| c.name == name)
            .map_or(Outcome::Failed("no such case".into()), |case| {
                run_case(case, &fixture)
            })
    });
    drop(fixture);
    std::process::exit(status);
}
