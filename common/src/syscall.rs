//! The result convention of raw system calls, in one place for every crate:
//! a negative return means failure, and `errno` says why.

use std::io;

/// `ret` if it is not negative, else the calling thread's `errno`. Read
/// right after the call: anything in between may overwrite `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Closes every descriptor of this process from `first` up
/// (`close_range(first, ~0U, 0)`, Linux 5.9+): what a parent left open must
/// not reach a more confined process.
///
/// # Safety
/// No object in this process may own a descriptor numbered `first` or
/// higher (an `OwnedFd`, a `File`, a socket): it would be left holding a
/// closed number that a later open reuses.
pub unsafe fn close_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range touches no memory; descriptor ownership is the
    // caller's promise (above).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the default SIGPIPE action (Rust starts programs with it
/// ignored). For command-line tools: `sshmctl … | head` then ends quietly
/// when the reader goes away instead of failing every later write.
pub fn default_sigpipe() {
    // SAFETY: setting a standard signal's disposition to SIG_DFL has no
    // preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The calling process's real uid.
pub fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn negative_is_errno_and_the_rest_passes_through() {
        assert_eq!(check(7).ok(), Some(7));
        // SAFETY: close(-1) only fails with EBADF; it touches no memory.
        let ret = unsafe { libc::close(-1) };
        let error = check(ret).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn close_from_closes_that_number_and_above_only() {
        // In a child, so that no descriptor of the test harness is touched.
        // SAFETY: fork in a test; the child only makes raw calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: dup/fcntl/_exit on numbers this child owns alone.
            unsafe {
                let low = libc::dup2(2, 40);
                let high = libc::dup2(2, 41);
                let closed = close_from(41).is_ok()
                    && low == 40
                    && high == 41
                    && libc::fcntl(40, libc::F_GETFD) >= 0
                    && libc::fcntl(41, libc::F_GETFD) < 0;
                libc::_exit(if closed { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
