//! The broker's own system calls: peer credentials, `poll` for disconnect
//! detection, socket activation, umask, chown, malloc tuning and the
//! terminal checks of `background_log`. Account
//! lookups are `weave_common::accounts`; everything else uses std.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Credentials the kernel recorded for the peer of a Unix stream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Reads `SO_PEERCRED` of a connected Unix socket. Reads no data.
pub fn peer_credentials(socket: &impl AsRawFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, properly aligned ucred and `len` holds its
    // exact size; the kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short structure",
        ));
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Whether the peer of `fd` has hung up (closed or shut down its writing
/// side). Does not consume data the peer may have sent.
pub fn peer_hung_up(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `pollfd` is one live pollfd and nfds is 1; timeout 0 never blocks.
    let rc = unsafe { libc::poll(&mut pollfd, 1, 0) };
    rc > 0 && pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Changes the group of a path (owner unchanged).
pub fn chown_group(path: &std::path::Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// Keeps the broker's heap from growing for good after bursts. Called first
/// in `main`, while single-threaded.
///
/// - The broker serves each connection on its own thread; glibc gives
///   contending threads arenas of their own (up to 8 per core) and keeps
///   their pages after the threads exit. Two arenas are plenty here.
/// - Image-sized buffers (raw pixels from the worker, PNGs) are allocated
///   and freed per job. glibc raises its mmap threshold to the size of the
///   largest block freed, after which such buffers come from the heap and
///   their pages stay resident. A fixed threshold keeps every block of
///   256 KiB or more in its own mapping, returned to the kernel on free.
pub fn limit_malloc_retention() {
    // SAFETY: mallopt only sets allocator tunables; both values are valid
    // (positive), and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Closes every descriptor from 3 up that the broker inherited, except the
/// `count` sockets systemd passes from fd 3 (`LISTEN_FDS`, when
/// `LISTEN_PID` is this process): whatever a parent left open (a terminal,
/// a log file, another service's socket) must not reach the broker, and
/// through it the worker. Called first thing, single-threaded.
pub fn close_inherited_fds(count: u32) -> io::Result<()> {
    const FIRST: libc::c_uint = 3;
    let first = FIRST.saturating_add(count);
    // SAFETY: called first thing in main: nothing in this process owns a
    // descriptor from 3 up yet except the kept activation sockets, which lie
    // below `first`.
    unsafe { weave_common::syscall::close_from(first) }
}

/// The number of sockets systemd passed this process (`LISTEN_FDS` when
/// `LISTEN_PID` is our pid), else 0.
pub fn activation_fd_count() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if !ours {
        return 0;
    }
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets the process umask and returns the previous one. Only called while
/// the broker is still single-threaded (socket setup).
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Wakes a thread blocked in `accept` on `listener`: on Linux, shutting a
/// listening socket down makes `accept` fail with EINVAL.
pub fn shutdown_listener(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown only acts on the descriptor number; a stale number
    // yields EBADF, which we report.
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether stderr is a terminal whose foreground process group is not ours:
/// the shell started us with `&` and is reading commands on that terminal.
pub fn stderr_is_background_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read process and terminal
    // state for a descriptor number; an invalid one yields an error value.
    unsafe {
        if libc::isatty(libc::STDERR_FILENO) != 1 {
            return false;
        }
        let foreground = libc::tcgetpgrp(libc::STDERR_FILENO);
        foreground > 0 && foreground != libc::getpgrp()
    }
}

/// Makes `file` this process's stderr (and that of the workers it starts,
/// which inherit it). Only called while still single-threaded.
pub fn redirect_stderr(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: dup2 onto fd 2 with a descriptor `file` keeps open for the
    // call; the old stderr is closed atomically by the kernel.
    let rc = unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a listening socket passed by systemd.
pub fn listener_from_activation(fd: RawFd) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::fd::FromRawFd;
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` is a live c_int and `len` its exact size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if domain != libc::AF_UNIX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the activated socket is not a Unix socket (no TCP anywhere)",
        ));
    }
    // SAFETY: systemd passed this descriptor to us (LISTEN_FDS/LISTEN_PID
    // checked by sd-notify), it is a Unix socket, and nothing else in the
    // process owns it.
    Ok(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.uid, effective_uid());
        assert_eq!(cred.pid, i32::try_from(std::process::id()).unwrap());
    }

    #[test]
    fn hang_up_is_seen_without_consuming_data() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!peer_hung_up(a.as_raw_fd()));
        drop(b);
        assert!(peer_hung_up(a.as_raw_fd()));
    }
}
