//! The few libc calls the worker's start-up makes, each wrapped in a safe
//! function. All FFI of the serve module lives here.

use std::io;
use std::os::fd::RawFd;
use weave_common::syscall::check;

/// `fstat(fd)` → the file type bits (`S_IFMT` part of `st_mode`).
/// `EBADF` when the descriptor is not open.
pub fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of exactly the size fstat fills; the
    // call takes no ownership of `fd`, which may even be closed (EBADF).
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(st.st_mode & libc::S_IFMT)
}

/// `fcntl(fd, F_GET_SEALS)`.
pub fn seals(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: plain fcntl query on a descriptor number; no memory passed.
    check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) })
}

/// Closes every descriptor from `first` upwards, so nothing the broker (or
/// whoever started us) leaked survives into the sandbox.
pub fn close_from(first: RawFd) -> io::Result<()> {
    let first =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: this runs at the very start of main, before anything in this
    // process owns a descriptor >= `first` (Rust's std opens none before
    // main).
    unsafe { weave_common::syscall::close_from(first) }
}
