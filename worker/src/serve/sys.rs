//! The few libc calls the worker's start-up makes, each wrapped in a safe
//! function. All FFI of the serve module lives here.

use std::io;
use std::os::fd::RawFd;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

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
    // SAFETY: close_range only closes descriptors; this runs at the very start
    // of main, before anything in this process owns a descriptor >= `first`
    // (Rust's std opens none before main).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// libtorch's C++ API has no C binding in tch for this switch; these are the
// exported Itanium-ABI symbols of `at::globalContext()` and
// `at::Context::{setUserEnabledMkldnn, userEnabledMkldnn}` in libtorch_cpu.
// A member function takes `this` as its first argument; `bool` is C's
// `_Bool` on every ABI Rust and libtorch share.
extern "C" {
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut std::ffi::c_void;
    #[link_name = "_ZN2at7Context20setUserEnabledMkldnnEb"]
    fn at_context_set_user_enabled_mkldnn(context: *mut std::ffi::c_void, enabled: bool);
    #[link_name = "_ZNK2at7Context17userEnabledMkldnnEv"]
    fn at_context_user_enabled_mkldnn(context: *const std::ffi::c_void) -> bool;
}

/// Turns oneDNN (mkldnn) off in libtorch and reports whether it is off now.
///
/// oneDNN JIT-compiles a kernel for every new convolution shape into
/// `PROT_READ|PROT_WRITE|PROT_EXEC` memory; with it off, libtorch uses its
/// native kernels and no executable mapping appears after the seccomp
/// boundary (measured in docs/SANDBOX.md), so the allowlist can refuse
/// `PROT_EXEC`.
pub fn disable_onednn() -> bool {
    // SAFETY: `at::globalContext()` returns a reference to libtorch's
    // process-wide context, valid for the life of the process; the setter
    // and getter only read/write a flag in it and do not throw. Called
    // before any generation, from the only thread that uses libtorch.
    unsafe {
        let context = at_global_context();
        if context.is_null() {
            return false;
        }
        at_context_set_user_enabled_mkldnn(context, false);
        !at_context_user_enabled_mkldnn(context)
    }
}
