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
}
