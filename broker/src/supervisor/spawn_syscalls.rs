//! The libc calls of the worker spawn, each wrapped in a safe function.
//! The ones used in the forked child (`child_*`) are async-signal-safe:
//! plain syscalls, no allocation, no locks.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use weave_common::syscall::check;

/// `pipe2(O_CLOEXEC)` → (read end, write end).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of the two ints pipe2 fills.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both numbers are fresh descriptors that
    // nothing else owns; each is wrapped exactly once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec duplicate numbered at least `min`, so that placing the
/// descriptors on 3..=7 in the child can never overwrite a source that is
/// still to be placed.
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; no memory is passed.
    let new = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: fcntl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// In the child: marks every descriptor from `first` up close-on-exec, so
/// whatever the broker had open (sockets, the audit log) never reaches the
/// worker. CLOEXEC rather than close: std's own exec-error pipe must stay
/// open until exec.
pub fn child_cloexec_from(first: RawFd) -> io::Result<()> {
    let first =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on
    // descriptors of this (child) process; no memory is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the child: SIGKILL the worker when the thread that spawned it (the
/// broker's scheduler thread) dies, so a crashed broker leaves no worker.
pub fn child_die_with_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and no memory.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    Ok(())
}
