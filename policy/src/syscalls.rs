//! The crate's only foreign-function calls: thin, typed wrappers over libc.
//!
//! Every function here does one system call (or one libc lookup), turns its
//! result into `io::Result`, and nothing else; the policy decisions live in
//! the modules that call them.

use std::io;

/// The calls here return 0 or -1; what they return on success is not used.
fn check(rc: libc::c_int) -> io::Result<()> {
    weave_common::syscall::check(rc).map(drop)
}

/// `setgroups(2)`: replaces the supplementary group list.
pub fn setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live slice of gid_t.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
}

/// `getgroups(2)`: the current supplementary group list.
pub fn getgroups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: size 0 with a null list only asks for the count.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups = vec![0; usize::try_from(count).unwrap_or(0)];
    // SAFETY: `groups` has room for exactly `count` entries.
    let filled = unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
    if filled < 0 {
        return Err(io::Error::last_os_error());
    }
    groups.truncate(usize::try_from(filled).unwrap_or(0));
    Ok(groups)
}

/// `setresgid(2)` with the same id for real, effective and saved.
pub fn setresgid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) })
}

/// `setresuid(2)` with the same id for real, effective and saved.
pub fn setresuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

/// `getresuid(2)`: (real, effective, saved).
pub fn getresuid() -> io::Result<(libc::uid_t, libc::uid_t, libc::uid_t)> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three live, writable locals.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    Ok((r, e, s))
}

/// `getresgid(2)`: (real, effective, saved).
pub fn getresgid() -> io::Result<(libc::gid_t, libc::gid_t, libc::gid_t)> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three live, writable locals.
    check(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })?;
    Ok((r, e, s))
}

/// `setuid(2)`; used only to prove that regaining an id fails.
pub fn setuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain integer argument.
    check(unsafe { libc::setuid(uid) })
}

/// `setgid(2)`; used only to prove that regaining an id fails.
pub fn setgid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain integer argument.
    check(unsafe { libc::setgid(gid) })
}

/// `geteuid(2)`.
pub fn geteuid() -> libc::uid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// `getpid(2)`.
pub fn getpid() -> libc::pid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() }
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the options used by this module take integer arguments only;
    // the unused trailing arguments must be zero.
    let rc = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `PR_SET_NO_NEW_PRIVS` 1: execve can never grant privileges again.
pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

/// `PR_GET_NO_NEW_PRIVS`.
pub fn no_new_privs() -> io::Result<bool> {
    prctl(libc::PR_GET_NO_NEW_PRIVS, 0).map(|v| v == 1)
}

/// `PR_SET_DUMPABLE`.
pub fn set_dumpable(dumpable: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(dumpable)).map(drop)
}

/// `PR_GET_DUMPABLE`.
pub fn dumpable() -> io::Result<bool> {
    prctl(libc::PR_GET_DUMPABLE, 0).map(|v| v != 0)
}

/// `PR_CAPBSET_DROP` for one capability number.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)).map(drop)
}

/// `PR_CAP_AMBIENT_CLEAR_ALL`.
pub fn cap_ambient_clear_all() -> io::Result<()> {
    // SAFETY: integer arguments only; the trailing ones must be zero.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(rc)
}

/// The Landlock ABI version of the running kernel
/// (`landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`);
/// `Err` with ENOSYS or EOPNOTSUPP where Landlock is missing or disabled.
pub fn landlock_abi_version() -> io::Result<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: the version query takes a null attribute pointer and size 0 by
    // definition and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i32::try_from(rc).unwrap_or(i32::MAX))
    }
}

/// Writes `bytes` to stderr with one `write(2)`; async-signal-safe.
fn write_stderr(bytes: &[u8]) {
    // SAFETY: the pointer and length describe a live slice; a short or failed
    // write to stderr is acceptable for a diagnostic.
    let _ = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
}

/// Room for the longest line [`format_blocked`] writes.
const BLOCKED_LINE: usize = 160;

/// Formats "weave-policy: seccomp blocked syscall N args 0xA 0xB 0xC\n"
/// (the first three arguments: an ioctl's request, mmap's/mprotect's
/// protection, openat's flags — what an allowlist condition looks at)
/// without allocating.
fn format_blocked(nr: i64, args: [u64; 3], out: &mut [u8; BLOCKED_LINE]) -> usize {
    const PREFIX: &[u8] = b"weave-policy: seccomp blocked syscall ";
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut len = PREFIX.len();
    let mut digits = [0u8; 20];
    let mut n = nr.unsigned_abs();
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if nr < 0 {
        out[len] = b'-';
        len += 1;
    }
    while d > 0 {
        d -= 1;
        out[len] = digits[d];
        len += 1;
    }
    out[len..len + 5].copy_from_slice(b" args");
    len += 5;
    for arg in args {
        out[len..len + 3].copy_from_slice(b" 0x");
        len += 3;
        // Hex digits without leading zeros (at least one).
        let width = (64 - arg.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..width).rev() {
            out[len] = HEX[((arg >> (shift * 4)) & 0xf) as usize];
            len += 1;
        }
    }
    out[len] = b'\n';
    len + 1
}

/// The SIGSYS handler of the tracing mode: reports the blocked syscall
/// number on stderr and makes the syscall return -ENOSYS, so a whole run can
/// be traced in one go instead of dying at the first miss.
extern "C" fn report_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // Layout of the SIGSYS member of siginfo_t's union (see
    // <asm-generic/siginfo.h>): after si_signo, si_errno, si_code (and
    // padding to pointer alignment: the union starts at byte 16 on 64-bit
    // targets) come `void *_call_addr; int _syscall;`.
    const SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();
    let mut nr: i64 = -1;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo_t for a SIGSYS raised by
        // seccomp; `_syscall` is an int at SYSCALL_OFFSET within it, well
        // inside the 128-byte structure.
        nr = i64::from(unsafe { info.cast::<u8>().add(SYSCALL_OFFSET).cast::<i32>().read() });
    }
    #[allow(unused_mut)] // only architectures with a register layout fill it
    let mut args = [0u64; 3];
    #[cfg(target_arch = "x86_64")]
    if !context.is_null() {
        // SAFETY: for an SA_SIGINFO handler the third argument is the
        // interrupted thread's ucontext_t; the syscall's arguments are still
        // in RDI, RSI, RDX.
        unsafe {
            let gregs = &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
            args = [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX].map(|r| gregs[r as usize] as u64);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if !context.is_null() {
        // SAFETY: as above; x0..x2 hold the arguments (x0 until it is
        // overwritten with the return value below).
        unsafe {
            let regs = &(*context.cast::<libc::ucontext_t>()).uc_mcontext.regs;
            args = [regs[0], regs[1], regs[2]];
        }
    }
    let mut line = [0u8; BLOCKED_LINE];
    let len = format_blocked(nr, args, &mut line);
    write_stderr(&line[..len]);
    #[cfg(target_arch = "x86_64")]
    if !context.is_null() {
        // SAFETY: for an SA_SIGINFO handler the third argument is the
        // interrupted thread's ucontext_t; RAX holds the syscall's return
        // value once the handler returns.
        unsafe {
            let uc = context.cast::<libc::ucontext_t>();
            (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::ENOSYS);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if !context.is_null() {
        // SAFETY: as above; x0 holds the syscall's return value on aarch64.
        unsafe {
            let uc = context.cast::<libc::ucontext_t>();
            (*uc).uc_mcontext.regs[0] = (-i64::from(libc::ENOSYS)) as u64;
        }
    }
}

/// Installs [`report_sigsys`] as the process-wide SIGSYS handler.
pub fn install_sigsys_reporter() -> io::Result<()> {
    // SAFETY: `sigaction` is plain old data; zeroed is a valid starting value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = report_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
    // SAFETY: `action.sa_mask` is a live sigset_t.
    check(unsafe { libc::sigemptyset(&mut action.sa_mask) })?;
    // SAFETY: `action` is fully initialised and the handler only calls
    // async-signal-safe functions (write).
    check(unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_line_is_formatted_without_allocation() {
        let mut out = [0u8; BLOCKED_LINE];
        let len = format_blocked(41, [2, 1, 0], &mut out);
        assert_eq!(
            &out[..len],
            b"weave-policy: seccomp blocked syscall 41 args 0x2 0x1 0x0\n"
        );
        let len = format_blocked(16, [3, 0xc020_462a, 0x7ffd_0000_1000], &mut out);
        assert_eq!(
            &out[..len],
            b"weave-policy: seccomp blocked syscall 16 args 0x3 0xc020462a 0x7ffd00001000\n"
        );
        let len = format_blocked(-1, [u64::MAX; 3], &mut out);
        assert_eq!(
            &out[..len],
            b"weave-policy: seccomp blocked syscall -1 args 0xffffffffffffffff 0xffffffffffffffff 0xffffffffffffffff\n"
        );
    }
}
