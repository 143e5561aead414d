//! The worker's side of the spawn contract (`docs/WORKER.md`): check that
//! the broker handed us fds 3–7 of the right types, read the bootstrap.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use weave_common::worker_proto::{self, fds, WorkerBootstrap, WorkerProtoError};

use super::syscalls;

/// What a human who ran `weave-worker` by hand needs to hear.
pub const STARTED_BY_BROKER: &str =
    "weave-worker is started by weave-broker; run weave-broker instead";

/// Errors before the channel is up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{STARTED_BY_BROKER} (fd {fd} {problem})")]
    NotStartedByBroker { fd: RawFd, problem: String },
    #[error("could not close inherited descriptors ({0}); the kernel must support close_range (Linux 5.9+)")]
    CloseStray(std::io::Error),
    #[error("reading the bootstrap from the broker failed ({0}); {STARTED_BY_BROKER}")]
    BootstrapRead(std::io::Error),
    #[error("the bootstrap from the broker is invalid: {0}")]
    Bootstrap(#[from] WorkerProtoError),
}

/// The inherited channel descriptors, owned from here on.
pub struct InheritedFds {
    pub to_worker_segment: OwnedFd,
    pub to_broker_segment: OwnedFd,
    pub to_worker_doorbell: OwnedFd,
    pub to_broker_doorbell: OwnedFd,
    pub bootstrap_pipe: OwnedFd,
}

fn not_started(fd: RawFd, problem: impl Into<String>) -> StartupError {
    StartupError::NotStartedByBroker {
        fd,
        problem: problem.into(),
    }
}

fn check_segment(fd: RawFd) -> Result<(), StartupError> {
    let ty = syscalls::file_type(fd).map_err(|e| not_started(fd, format!("is not open: {e}")))?;
    if ty != libc::S_IFREG {
        return Err(not_started(fd, "is not a memfd"));
    }
    let seals = syscalls::seals(fd).map_err(|_| not_started(fd, "is not a sealable memfd"))?;
    let required = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    if seals & required != required {
        return Err(not_started(
            fd,
            "is a memfd without the shrink/grow/seal seals",
        ));
    }
    Ok(())
}

fn check_eventfd(fd: RawFd) -> Result<(), StartupError> {
    syscalls::file_type(fd).map_err(|e| not_started(fd, format!("is not open: {e}")))?;
    // An eventfd is an anonymous inode; its /proc link names the kind.
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| not_started(fd, format!("cannot be inspected through /proc: {e}")))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(not_started(fd, "is not an eventfd"));
    }
    Ok(())
}

fn check_pipe(fd: RawFd) -> Result<(), StartupError> {
    let ty = syscalls::file_type(fd).map_err(|e| not_started(fd, format!("is not open: {e}")))?;
    if ty != libc::S_IFIFO {
        return Err(not_started(fd, "is not a pipe"));
    }
    Ok(())
}

/// Checks fds 3–7, then closes every descriptor above them. Must run first
/// in `main`, before anything else opens a descriptor.
pub fn take_inherited_fds() -> Result<InheritedFds, StartupError> {
    check_segment(fds::TO_WORKER_SEGMENT)?;
    check_segment(fds::TO_BROKER_SEGMENT)?;
    check_eventfd(fds::TO_WORKER_DOORBELL)?;
    check_eventfd(fds::TO_BROKER_DOORBELL)?;
    check_pipe(fds::BOOTSTRAP_PIPE)?;
    syscalls::close_from(fds::FIRST_UNUSED).map_err(StartupError::CloseStray)?;
    let take = |fd: RawFd| {
        // SAFETY: the checks above proved each descriptor is open, the spawn
        // contract makes this process its only user, and each number below
        // is wrapped exactly once.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    Ok(InheritedFds {
        to_worker_segment: take(fds::TO_WORKER_SEGMENT),
        to_broker_segment: take(fds::TO_BROKER_SEGMENT),
        to_worker_doorbell: take(fds::TO_WORKER_DOORBELL),
        to_broker_doorbell: take(fds::TO_BROKER_DOORBELL),
        bootstrap_pipe: take(fds::BOOTSTRAP_PIPE),
    })
}

/// Reads the bootstrap up to EOF (bounded), then closes the pipe.
pub fn read_bootstrap(pipe: OwnedFd) -> Result<WorkerBootstrap, StartupError> {
    let file = std::fs::File::from(pipe);
    let limit = u64::try_from(worker_proto::MAX_BOOTSTRAP_LEN + 1).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(StartupError::BootstrapRead)?;
    let bootstrap = worker_proto::decode_bootstrap(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(bootstrap?)
}
