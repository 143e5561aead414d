//! The broker's only FFI: peer credentials, user and group database lookups,
//! and `poll` for disconnect detection. Everything else uses std.

use std::ffi::{CStr, CString};
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

/// A user database entry: what the broker needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

fn passwd_to_entry(pwd: &libc::passwd) -> UserEntry {
    // SAFETY: getpw*_r succeeded, so pw_name and pw_dir point to
    // NUL-terminated strings inside the caller's buffer, alive for this call.
    let (name, home) = unsafe {
        (
            CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
            CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
        )
    };
    UserEntry {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    }
}

/// Looks a user up by uid; `Ok(None)` if there is no such user.
pub fn user_by_uid(uid: u32) -> io::Result<Option<UserEntry>> {
    lookup_user(|pwd, buf, result| {
        // SAFETY: every pointer refers to a live local of the caller with the
        // length passed alongside it.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr().cast(), buf.len(), result) }
    })
}

/// Looks a user up by name; `Ok(None)` if there is no such user.
pub fn user_by_name(name: &str) -> io::Result<Option<UserEntry>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    lookup_user(|pwd, buf, result| {
        // SAFETY: `c_name` is NUL-terminated and outlives the call; the other
        // pointers refer to live locals with the lengths passed alongside.
        unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                result,
            )
        }
    })
}

fn lookup_user(
    call: impl Fn(&mut libc::passwd, &mut [u8], &mut *mut libc::passwd) -> libc::c_int,
) -> io::Result<Option<UserEntry>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: passwd is plain old data; all-zero is a valid (empty) value
        // that getpw*_r overwrites.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pwd, &mut buf, &mut result);
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(passwd_to_entry(&pwd)));
    }
}

/// Looks a group up by name and returns its gid; `Ok(None)` if unknown.
pub fn group_id_by_name(name: &str) -> io::Result<Option<u32>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: group is plain old data; all-zero is a valid value that
        // getgrnam_r overwrites.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers refer to live locals; `buf.len()` is the
        // buffer's true length.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && size < 1 << 22 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(grp.gr_gid));
    }
}

/// Every group of a user from the group database (primary included), as
/// `getgrouplist` reports it. Unlike `/proc/<pid>/status` this cannot be
/// raced by a peer that exits and has its pid reused.
pub fn groups_of_user(name: &str, primary_gid: u32) -> io::Result<Vec<u32>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut capacity: libc::c_int = 64;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(capacity).unwrap_or(64)];
        let mut count = capacity;
        // SAFETY: `groups` has room for `count` gids and `count` is updated by
        // the call; `c_name` is NUL-terminated and outlives the call.
        let rc = unsafe {
            libc::getgrouplist(
                c_name.as_ptr(),
                primary_gid,
                groups.as_mut_ptr(),
                &mut count,
            )
        };
        if rc >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            return Ok(groups);
        }
        if count <= capacity || capacity >= 65536 {
            return Err(io::Error::other("getgrouplist failed"));
        }
        capacity = count;
    }
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

    #[test]
    fn root_user_and_group_resolve() {
        let root = user_by_uid(0).unwrap().unwrap();
        assert_eq!(root.name, "root");
        assert_eq!(user_by_name("root").unwrap().unwrap().uid, 0);
        assert_eq!(group_id_by_name("root").unwrap(), Some(0));
        assert!(groups_of_user("root", 0).unwrap().contains(&0));
        assert_eq!(user_by_name("no-such-user-weave-x").unwrap(), None);
    }
}
