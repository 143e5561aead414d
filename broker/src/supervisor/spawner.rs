//! The worker spawner: a small process forked from the broker before the
//! broker's seccomp boundary (Chromium's zygote pattern), so the broker
//! itself never needs `execve`, `fork` or executable mappings after it.
//!
//! The broker sends one request per worker start over a `SOCK_SEQPACKET`
//! pair: one byte and exactly six descriptors (the two segments, the two
//! doorbells, the bootstrap pipe's read end and the stderr pipe's write
//! end). The spawner `clone(CLONE_PARENT)`s a child — so the worker is the
//! broker's child, which waits for it and sees a SIGSYS — places the
//! descriptors on 0–7 (stdin and stdout on /dev/null), and execs the one
//! executable and environment fixed when the spawner started. It answers
//! with the pid, or with what failed. It can exec nothing else, reads no
//! path, and exits when the broker's end closes (or the broker dies).
//!
//! Everything the spawner does after the fork is a raw syscall on stack
//! memory (no allocation, no locks), so forking it from a process with
//! other threads (a test harness) is safe too.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use weave_common::worker_proto::fds;

use super::spawn_syscalls::{self as sys, ExecImage, Forked, MAX_MESSAGE_FDS};
use super::worker_process::WorkerProcess;

/// The request's one byte.
const SPAWN_REQUEST: u8 = b'S';
/// Descriptors one request carries, in [`SpawnFds`] order.
const REQUEST_FDS: usize = 6;
/// Where the spawner keeps its socket and /dev/null; 0–2 stay as inherited.
const SPAWNER_SOCKET: RawFd = 3;
const SPAWNER_NULL: RawFd = 4;
/// Copies are numbered from here so none sits on 0..=7 in the new worker
/// before it is placed there.
const STAGING_FD_MIN: RawFd = 64;
/// Exit status of a spawner child whose set-up or exec failed.
const CHILD_FAILED: i32 = 127;
const REPLY_LEN: usize = 12;

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("cannot start the worker spawner: {0}")]
    Start(io::Error),
    #[error("the worker spawner is gone ({0}); restart the broker to start workers again")]
    Gone(String),
    #[error("the worker spawner refused a malformed request")]
    BadRequest,
    #[error("the worker spawner cannot fork: {0}")]
    Fork(io::Error),
    #[error("setting up the worker's descriptors: {0}")]
    Setup(io::Error),
    #[error("exec weave-worker: {0}")]
    Exec(io::Error),
}

/// What failed, as the spawner reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Started = 0,
    BadRequest = 1,
    Fork = 2,
    Setup = 3,
    Exec = 4,
}

impl Stage {
    fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            0 => Self::Started,
            1 => Self::BadRequest,
            2 => Self::Fork,
            3 => Self::Setup,
            4 => Self::Exec,
            _ => return None,
        })
    }
}

/// The spawner's answer: stage, errno, pid (0 when none was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    stage: Stage,
    errno: i32,
    pid: libc::pid_t,
}

impl Reply {
    fn encode(self) -> [u8; REPLY_LEN] {
        let mut out = [0; REPLY_LEN];
        out[0..4].copy_from_slice(&(self.stage as u32).to_le_bytes());
        out[4..8].copy_from_slice(&self.errno.to_le_bytes());
        out[8..12].copy_from_slice(&self.pid.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != REPLY_LEN {
            return None;
        }
        let word = |i: usize| [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
        Some(Self {
            stage: Stage::from_wire(u32::from_le_bytes(word(0)))?,
            errno: i32::from_le_bytes(word(4)),
            pid: i32::from_le_bytes(word(8)),
        })
    }

    fn failed(stage: Stage, error: &io::Error, pid: libc::pid_t) -> Self {
        Self {
            stage,
            errno: error.raw_os_error().unwrap_or(libc::EIO),
            pid,
        }
    }
}

/// The six descriptors of one worker start, by role.
pub struct SpawnFds<'a> {
    /// Segments and doorbells as `BrokerEndpoint::worker_fds` orders them.
    pub channel: [BorrowedFd<'a>; 4],
    pub bootstrap_read: BorrowedFd<'a>,
    pub stderr_write: BorrowedFd<'a>,
}

/// The broker's end of the spawner.
#[derive(Debug)]
pub struct Spawner {
    socket: Option<OwnedFd>,
    pid: libc::pid_t,
}

impl Spawner {
    /// Forks the spawner for `worker_exe` with exactly `env` as the
    /// worker's environment. Call before the seccomp boundary.
    pub fn start(worker_exe: &Path, env: &[(OsString, OsString)]) -> Result<Self, SpawnerError> {
        let image = ExecImage::new(
            worker_exe,
            env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
        )
        .map_err(SpawnerError::Start)?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(SpawnerError::Start)?;
        let (broker_end, spawner_end) = sys::seqpacket_pair().map_err(SpawnerError::Start)?;
        match sys::fork_process().map_err(SpawnerError::Start)? {
            Forked::Child => run(spawner_end.as_raw_fd(), null.as_raw_fd(), &image),
            Forked::Parent(pid) => Ok(Self {
                socket: Some(broker_end),
                pid,
            }),
        }
    }

    /// The spawner's pid (diagnostics and tests).
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Starts one worker with `fds`; the broker's copies stay open (the
    /// caller closes its ends when it no longer needs them).
    pub fn spawn(&self, fds: &SpawnFds<'_>) -> Result<WorkerProcess, SpawnerError> {
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| SpawnerError::Gone("closed".into()))?
            .as_raw_fd();
        let [a, b, c, d] = fds.channel;
        let raw = [
            a.as_raw_fd(),
            b.as_raw_fd(),
            c.as_raw_fd(),
            d.as_raw_fd(),
            fds.bootstrap_read.as_raw_fd(),
            fds.stderr_write.as_raw_fd(),
        ];
        let gone = |e: io::Error| SpawnerError::Gone(e.to_string());
        sys::send_with_fds(socket, &[SPAWN_REQUEST], &raw).map_err(gone)?;
        let mut buf = [0u8; 2 * REPLY_LEN];
        let mut stray = [-1; MAX_MESSAGE_FDS];
        let (len, count) = sys::recv_with_fds(socket, &mut buf, &mut stray).map_err(gone)?;
        sys::close_all(&stray[..count]);
        if len == 0 {
            return Err(SpawnerError::Gone("it exited".into()));
        }
        let reply = Reply::decode(&buf[..len])
            .ok_or_else(|| SpawnerError::Gone(format!("a {len}-byte reply")))?;
        let error = io::Error::from_raw_os_error(reply.errno);
        let failed = match reply.stage {
            Stage::Started if reply.pid > 0 => return Ok(WorkerProcess::new(reply.pid)),
            Stage::Started => SpawnerError::Gone(format!("pid {}", reply.pid)),
            Stage::BadRequest => SpawnerError::BadRequest,
            Stage::Fork => SpawnerError::Fork(error),
            Stage::Setup => SpawnerError::Setup(error),
            Stage::Exec => SpawnerError::Exec(error),
        };
        if reply.pid > 0 {
            // The failed child is ours to reap (it exits at once).
            let _ = WorkerProcess::new(reply.pid).wait();
        }
        Err(failed)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing our end is the spawner's signal to exit; then reap it.
        drop(self.socket.take());
        let _ = sys::wait_pid(self.pid, true);
    }
}

/// The spawner's life, in the forked child: settle the descriptors, then
/// answer requests until the broker's end closes.
fn run(socket: RawFd, null: RawFd, image: &ExecImage) -> ! {
    if settle(socket, null).is_err() {
        sys::exit_now(1);
    }
    loop {
        let mut buf = [0u8; 8];
        let mut received = [-1; MAX_MESSAGE_FDS];
        let reply = match sys::recv_with_fds(SPAWNER_SOCKET, &mut buf, &mut received) {
            Ok((0, 0)) => sys::exit_now(0),
            Ok((len, count)) => {
                let reply = if len == 1 && buf[0] == SPAWN_REQUEST && count == REQUEST_FDS {
                    spawn_one(&received[..REQUEST_FDS], image)
                } else {
                    Reply::failed(Stage::BadRequest, &io::Error::from_raw_os_error(0), 0)
                };
                sys::close_all(&received[..count]);
                reply
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                Reply::failed(Stage::BadRequest, &e, 0)
            }
            Err(_) => sys::exit_now(1),
        };
        if sys::send_with_fds(SPAWNER_SOCKET, &reply.encode(), &[]).is_err() {
            sys::exit_now(1);
        }
    }
}

/// Dies with the broker; names itself `weave-spawner`; keeps only its socket (3) and /dev/null (4)
/// besides 0–2.
fn settle(socket: RawFd, null: RawFd) -> io::Result<()> {
    sys::child_die_with_parent()?;
    sys::child_name_spawner()?;
    let socket = sys::child_dup_at_least(socket, STAGING_FD_MIN)?;
    let null = sys::child_dup_at_least(null, STAGING_FD_MIN)?;
    sys::dup_onto_cloexec(socket, SPAWNER_SOCKET)?;
    sys::dup_onto_cloexec(null, SPAWNER_NULL)?;
    sys::close_from(SPAWNER_NULL + 1)
}

/// One worker: a sibling process that places `received` and execs. The
/// exec-error pipe (close-on-exec) reads EOF when the exec succeeded.
fn spawn_one(received: &[RawFd], image: &ExecImage) -> Reply {
    let (error_read, error_write) = match sys::pipe_cloexec() {
        Ok(pair) => pair,
        Err(e) => return Reply::failed(Stage::Fork, &e, 0),
    };
    match sys::clone_as_sibling() {
        Err(e) => Reply::failed(Stage::Fork, &e, 0),
        Ok(Forked::Child) => {
            let (stage, error) = match place_descriptors(received) {
                Err(e) => (Stage::Setup, e),
                Ok(()) => (Stage::Exec, sys::child_exec(image)),
            };
            let report = Reply::failed(stage, &error, 0).encode();
            let _ = sys::write_all_raw(error_write.as_raw_fd(), &report[..8]);
            sys::exit_now(CHILD_FAILED)
        }
        Ok(Forked::Parent(pid)) => {
            drop(error_write);
            let mut report = [0u8; REPLY_LEN];
            match sys::read_full_raw(error_read.as_raw_fd(), &mut report[..8]) {
                Ok(0) => Reply {
                    stage: Stage::Started,
                    errno: 0,
                    pid,
                },
                Ok(8) => Reply::decode(&report).map_or_else(
                    || Reply::failed(Stage::Setup, &io::Error::from_raw_os_error(libc::EIO), pid),
                    |r| Reply { pid, ..r },
                ),
                Ok(_) => Reply::failed(Stage::Setup, &io::Error::from_raw_os_error(libc::EIO), pid),
                Err(e) => Reply::failed(Stage::Setup, &e, pid),
            }
        }
    }
}

/// In the new worker: stdin and stdout on /dev/null, stderr the pipe, the
/// channel and the bootstrap pipe on 3..=7, everything else close-on-exec;
/// dies with the broker; `/` as its directory; default signal state.
fn place_descriptors(received: &[RawFd]) -> io::Result<()> {
    let mut staged = [-1; REQUEST_FDS];
    for (slot, &fd) in staged.iter_mut().zip(received) {
        *slot = sys::child_dup_at_least(fd, STAGING_FD_MIN)?;
    }
    sys::child_dup_onto(SPAWNER_NULL, 0)?;
    sys::child_dup_onto(SPAWNER_NULL, 1)?;
    sys::child_dup_onto(staged[5], 2)?;
    let targets = [
        fds::TO_WORKER_SEGMENT,
        fds::TO_BROKER_SEGMENT,
        fds::TO_WORKER_DOORBELL,
        fds::TO_BROKER_DOORBELL,
        fds::BOOTSTRAP_PIPE,
    ];
    for (&fd, target) in staged.iter().zip(targets) {
        weave_common::shm::inherit_fd_as(fd, target)?;
    }
    sys::child_cloexec_from(fds::FIRST_UNUSED)?;
    sys::child_die_with_parent()?;
    sys::child_chdir_root()?;
    sys::child_reset_signals()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_garbage_is_refused() {
        let reply = Reply {
            stage: Stage::Exec,
            errno: libc::ENOENT,
            pid: 4242,
        };
        assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        assert_eq!(Reply::decode(&reply.encode()[..8]), None);
        let mut bad = reply.encode();
        bad[0] = 9;
        assert_eq!(Reply::decode(&bad), None);
    }

    #[test]
    fn a_missing_executable_is_an_exec_error_and_the_spawner_keeps_serving() {
        let spawner = Spawner::start(Path::new("/nonexistent/weave-worker"), &[]).unwrap();
        let (r, w) = sys::pipe_cloexec().unwrap();
        let (er, ew) = sys::pipe_cloexec().unwrap();
        use std::os::fd::AsFd;
        let fds = SpawnFds {
            channel: [r.as_fd(), w.as_fd(), r.as_fd(), w.as_fd()],
            bootstrap_read: er.as_fd(),
            stderr_write: ew.as_fd(),
        };
        for _ in 0..2 {
            match spawner.spawn(&fds) {
                Err(SpawnerError::Exec(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
                other => panic!("expected an exec error, got {other:?}"),
            }
        }
    }

    const LEAK_PROBE: RawFd = 200;

    #[test]
    fn the_worker_is_the_callers_child_with_exactly_its_descriptors() {
        // /bin/sh stands in for the worker: it lists its descriptors on
        // stderr (the pipe) and exits 3; the caller reaps it by pid.
        let script = "ls /proc/self/fd >&2; exit 3";
        let dir = std::env::temp_dir().join(format!("weave-spawner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("fake-worker");
        std::fs::write(&exe, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A descriptor of the caller without close-on-exec must not reach
        // the worker (the spawner keeps only its socket and /dev/null).
        let marker = std::fs::File::open("/dev/null").unwrap();
        sys::child_dup_onto(marker.as_raw_fd(), LEAK_PROBE).unwrap();
        let spawner = Spawner::start(&exe, &[("A".into(), "1".into())]).unwrap();
        sys::close_all(&[LEAK_PROBE]);
        let (r, w) = sys::pipe_cloexec().unwrap();
        let (stderr_read, stderr_write) = sys::pipe_cloexec().unwrap();
        use std::os::fd::AsFd;
        let fds = SpawnFds {
            channel: [r.as_fd(), w.as_fd(), r.as_fd(), w.as_fd()],
            bootstrap_read: r.as_fd(),
            stderr_write: stderr_write.as_fd(),
        };
        let mut worker = spawner.spawn(&fds).unwrap();
        drop(stderr_write);
        let status = worker.wait().unwrap();
        assert_eq!(status.code(), Some(3), "reaped by the caller: {status}");
        let mut listing = String::new();
        use std::io::Read;
        std::fs::File::from(stderr_read)
            .read_to_string(&mut listing)
            .unwrap();
        let seen: Vec<i32> = listing
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        for fd in 0..=7 {
            assert!(seen.contains(&fd), "fd {fd} missing: {listing}");
        }
        assert!(
            !seen.contains(&LEAK_PROBE),
            "the caller's fd leaked: {listing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
