//! The libc calls of the worker spawn and the spawner, each wrapped in a
//! safe function. Everything the spawner and its children call after the
//! fork is async-signal-safe: plain syscalls, no allocation, no locks.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
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

/// Where a fork-like call returned.
pub enum Forked {
    /// In the new process.
    Child,
    /// In the caller; the new process's pid.
    Parent(libc::pid_t),
}

/// A connected `SOCK_SEQPACKET` pair (message boundaries kept, so one
/// request is one `recvmsg`), both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of the two ints socketpair fills.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded: two fresh descriptors, each wrapped once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most descriptors one spawner message carries.
pub const MAX_MESSAGE_FDS: usize = 8;

/// Control-message room for [`MAX_MESSAGE_FDS`] descriptors, aligned for
/// `cmsghdr` (u64 alignment covers it on every Linux target).
#[repr(C, align(8))]
struct ControlBuffer([u8; 128]);

/// Sends `bytes` as one message with `fds` attached (`SCM_RIGHTS`), without
/// SIGPIPE when the peer is gone (the error is EPIPE instead). Allocation
/// free: the spawner calls it in a forked child.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_MESSAGE_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut control = ControlBuffer([0; 128]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as libc::c_uint;
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
        let (space, len) = unsafe { (libc::CMSG_SPACE(payload), libc::CMSG_LEN(payload)) };
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `control`, which has room for
        // `space` bytes (at most 8 fds: CMSG_SPACE(32) = 48 < 128), so the
        // first header and its data lie inside it; the copy writes `payload`
        // bytes of plain integers there.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = len as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                payload as usize,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at the live iovec, byte slice and control
        // buffer above; sendmsg only reads them.
        let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Receives one message into `buf` and the descriptors attached to it into
/// `fds` (close-on-exec). Returns (bytes, descriptors); (0, 0) is the
/// peer's hang-up. A message whose descriptors did not fit is refused
/// (EMSGSIZE) after closing the ones that arrived. Allocation free.
pub fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut [RawFd; MAX_MESSAGE_FDS],
) -> io::Result<(usize, usize)> {
    let mut control = ControlBuffer([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    let received = loop {
        // SAFETY: `msg` points at the writable `buf` and `control` above,
        // which recvmsg fills within the lengths given.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    let mut count = 0;
    let mut overflow = false;
    // SAFETY: the CMSG_* walk stays within msg_controllen bytes of
    // `control`, which recvmsg filled; SCM_RIGHTS data is an array of ints.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(
                        data.add(i * std::mem::size_of::<RawFd>()).cast::<RawFd>(),
                    );
                    if count < MAX_MESSAGE_FDS {
                        fds[count] = fd;
                        count += 1;
                    } else {
                        libc::close(fd);
                        overflow = true;
                    }
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if overflow || msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        close_all(&fds[..count]);
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((received, count))
}

/// Closes raw descriptors this process owns (received ones).
pub fn close_all(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: closing a descriptor number this process received and
        // owns; errors (EBADF) change nothing.
        unsafe { libc::close(fd) };
    }
}

/// `fork()`. The child must only make async-signal-safe calls until it
/// execs or exits (the caller may have other threads).
pub fn fork_process() -> io::Result<Forked> {
    // SAFETY: fork has no memory arguments; the callers' children
    // (spawn_syscalls users) make only raw syscalls afterwards.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// A new process that is the caller's *sibling*: `clone(CLONE_PARENT)`, so
/// its parent is the caller's parent (the broker), which waits for it and
/// sees how it ended. Fork semantics otherwise (copied memory, same stack).
pub fn clone_as_sibling() -> io::Result<Forked> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone with a null stack and no CLONE_VM is fork: the child
    // runs on a copy of this stack and returns 0 here. No pointers passed.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid as libc::pid_t)
    })
}

/// The worker's executable, argv and environment as C strings, built
/// before the spawner forks so that exec needs no allocation.
pub struct ExecImage {
    path: std::ffi::CString,
    _strings: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl ExecImage {
    /// `path` with argv `[path]` and exactly `env` as the environment.
    pub fn new<'a>(
        path: &std::path::Path,
        env: impl IntoIterator<Item = (&'a std::ffi::OsStr, &'a std::ffi::OsStr)>,
    ) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| invalid())?;
        let mut strings = Vec::new();
        for (key, value) in env {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            strings.push(std::ffi::CString::new(entry).map_err(|_| invalid())?);
        }
        let argv = vec![path.as_ptr(), std::ptr::null()];
        let mut envp: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Self {
            path,
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// In the child: `execve` of `image`; returns only on failure.
pub fn child_exec(image: &ExecImage) -> io::Error {
    // SAFETY: every pointer comes from `image`, whose C strings outlive the
    // call, and both arrays end with a null pointer.
    unsafe {
        libc::execve(
            image.path.as_ptr(),
            image.argv.as_ptr(),
            image.envp.as_ptr(),
        )
    };
    io::Error::last_os_error()
}

/// In the child: an empty signal mask and SIGPIPE at its default, as a
/// freshly started program expects (both survive exec).
pub fn child_reset_signals() -> io::Result<()> {
    // SAFETY: sigemptyset fills the local set; sigprocmask reads it;
    // signal() takes a number and the SIG_DFL constant.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut(),
        ))?;
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child: `chdir("/")`, so the worker holds no directory of ours.
pub fn child_chdir_root() -> io::Result<()> {
    // SAFETY: a static NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) })?;
    Ok(())
}

/// `dup2(src, dst)` for the 0–2 slots (clears close-on-exec on `dst`).
pub fn child_dup_onto(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only edits this process's descriptor table.
    check(unsafe { libc::dup2(src, dst) })?;
    Ok(())
}

/// In the spawner: closes every descriptor from `first` up.
pub fn close_from(first: RawFd) -> io::Result<()> {
    let first =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the spawner's own descriptors are below `first` (its caller
    // moved them there); nothing in it owns one from `first` up.
    unsafe { weave_common::syscall::close_from(first) }
}

/// `write` of all of `bytes` (short writes continue; EINTR retried).
pub fn write_all_raw(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice of the given length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// `read` until `buf` is full or EOF; returns the bytes read.
pub fn read_full_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: reads into the unfilled tail of a live, writable slice.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if n == 0 {
            break;
        }
        filled += n as usize;
    }
    Ok(filled)
}

/// `_exit(code)`: no atexit handlers, no destructors (a forked child).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `waitpid(pid)`, blocking or not; the raw wait status when it ended.
pub fn wait_pid(pid: libc::pid_t, block: bool) -> io::Result<Option<i32>> {
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a writable int; waitpid reaps only `pid`.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret == pid {
            return Ok(Some(status));
        }
        if ret == 0 {
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// SIGKILL to `pid` (a worker this process has not reaped yet, so the pid
/// cannot have been reused).
pub fn kill_pid(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: kill takes two integers.
    check(unsafe { libc::kill(pid, libc::SIGKILL) })?;
    Ok(())
}

/// A duplicate of `fd` numbered at least `min`, close-on-exec, as a plain
/// number (the forked child never drops it: exec or `_exit` closes it).
pub fn child_dup_at_least(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; no memory is passed.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// `dup3(src, dst, O_CLOEXEC)`: `dst` becomes a close-on-exec copy.
pub fn dup_onto_cloexec(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup3 only edits this process's descriptor table.
    check(unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) })?;
    Ok(())
}

/// Names the calling process `weave-spawner` in `ps` and /proc (comm), so
/// it is not mistaken for the broker or a worker.
pub fn child_name_spawner() -> io::Result<()> {
    // SAFETY: PR_SET_NAME reads a static NUL-terminated name (at most 16
    // bytes with the NUL).
    check(unsafe { libc::prctl(libc::PR_SET_NAME, c"weave-spawner".as_ptr(), 0, 0, 0) })?;
    Ok(())
}
