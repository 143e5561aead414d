//! The user and group databases (`getpwnam_r`, `getpwuid_r`, `getgrnam_r`,
//! `getgrgid_r`, `getgrouplist`): the one place any weave-compute crate looks accounts up.
//! Each function is one reentrant libc lookup behind a safe signature.

use std::ffi::{CStr, CString};
use std::io;

/// A user database entry: what the daemon and the CLI need of it.
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
    lookup_group(
        |grp, buf, result| {
            // SAFETY: `c_name` is NUL-terminated and outlives the call; the
            // other pointers refer to live locals with the lengths passed
            // alongside.
            unsafe {
                libc::getgrnam_r(
                    c_name.as_ptr(),
                    grp,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    result,
                )
            }
        },
        |grp| grp.gr_gid,
    )
}

/// The name of group `gid`; `Ok(None)` if unknown.
pub fn group_name_by_gid(gid: u32) -> io::Result<Option<String>> {
    lookup_group(
        |grp, buf, result| {
            // SAFETY: every pointer refers to a live local of the caller with
            // the length passed alongside it.
            unsafe { libc::getgrgid_r(gid, grp, buf.as_mut_ptr().cast(), buf.len(), result) }
        },
        |grp| {
            // SAFETY: getgr*_r succeeded, so gr_name points to a
            // NUL-terminated string inside the caller's buffer, alive for
            // this call.
            let name = unsafe { CStr::from_ptr(grp.gr_name) };
            name.to_string_lossy().into_owned()
        },
    )
}

/// The group twin of `lookup_user`: grows the buffer on `ERANGE` (groups
/// with many members need more than users do, hence the larger cap) and
/// hands the entry to `read` while the buffer it points into is alive.
fn lookup_group<T>(
    call: impl Fn(&mut libc::group, &mut [u8], &mut *mut libc::group) -> libc::c_int,
    read: impl Fn(&libc::group) -> T,
) -> io::Result<Option<T>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: group is plain old data; all-zero is a valid value that
        // getgr*_r overwrites.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = call(&mut grp, &mut buf, &mut result);
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
        return Ok(Some(read(&grp)));
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_0_and_names_with_nul_are_refused() {
        let root = user_by_name("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user_by_uid(0).unwrap().unwrap().name, "root");
        assert_eq!(user_by_name("no-such-user-weave-xyz").unwrap(), None);
        assert!(user_by_name("a\0b").is_err());
        assert_eq!(group_id_by_name("root").unwrap(), Some(0));
        assert!(groups_of_user("root", 0).unwrap().contains(&0));
        assert_eq!(group_name_by_gid(0).unwrap().as_deref(), Some("root"));
    }
}
