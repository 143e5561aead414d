//! Dropping from root to a named unprivileged user, and proving it happened.
//!
//! Order matters: supplementary groups first (only root may set them), then
//! the gid (still needs root), then the uid (after which nothing above is
//! possible). All three are done while the process has a single thread, so no
//! thread keeps running with the old credentials (glibc broadcasts id changes
//! to all threads, but code may run between the steps). Afterwards the kernel
//! is asked what the ids are, and `setuid(0)` must fail.

use crate::process::{self, ProcessError};
use crate::syscalls;
use std::io;

/// Errors of the privilege drop.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot look up user `{user}`: {source}")]
    Lookup {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error("user `{0}` does not exist; create it (e.g. `useradd --system --no-create-home weave`) or fix the configured user")]
    UnknownUser(String),
    #[error(
        "refusing to drop privileges to `{0}`: it has uid or gid 0; configure an unprivileged user"
    )]
    TargetIsRoot(String),
    #[error("dropping privileges needs root (euid is {euid}); start as root or run in user mode without a target user")]
    NotRoot { euid: u32 },
    #[error("privileges must be dropped while single-threaded, but this process has {threads} threads; drop before starting threads or runtimes")]
    NotSingleThreaded { threads: usize },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("privilege drop did not take effect: {what} is {actual:?}, expected {expected:?}")]
    NotApplied {
        what: &'static str,
        actual: Vec<u32>,
        expected: Vec<u32>,
    },
    #[error("privilege drop is reversible: {call} succeeded afterwards; aborting")]
    Regained { call: &'static str },
}

/// The user to run as, resolved from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TargetUser {
    /// Resolves `name` with `getpwnam_r`. A root target is refused.
    pub fn lookup(name: &str) -> Result<Self, PrivilegeError> {
        let entry = weave_common::accounts::user_by_name(name)
            .map_err(|source| PrivilegeError::Lookup {
                user: name.to_owned(),
                source,
            })?
            .ok_or_else(|| PrivilegeError::UnknownUser(name.to_owned()))?;
        if entry.uid == 0 || entry.gid == 0 {
            return Err(PrivilegeError::TargetIsRoot(entry.name));
        }
        Ok(Self {
            name: entry.name,
            uid: entry.uid,
            gid: entry.gid,
        })
    }
}

/// Fails unless this process has exactly one thread.
pub fn require_single_threaded() -> Result<(), PrivilegeError> {
    let threads = process::thread_count()?;
    if threads != 1 {
        return Err(PrivilegeError::NotSingleThreaded { threads });
    }
    Ok(())
}

/// `setgroups([gid])` → `setresgid(gid)` → `setresuid(uid)`, then
/// [`verify_dropped`]. Needs root and a single thread.
pub fn drop_to(user: &TargetUser) -> Result<(), PrivilegeError> {
    let euid = syscalls::geteuid();
    if euid != 0 {
        return Err(PrivilegeError::NotRoot { euid });
    }
    require_single_threaded()?;
    let call = |call: &'static str| move |source| PrivilegeError::Call { call, source };
    syscalls::setgroups(&[user.gid]).map_err(call("setgroups"))?;
    syscalls::setresgid(user.gid).map_err(call("setresgid"))?;
    syscalls::setresuid(user.uid).map_err(call("setresuid"))?;
    verify_dropped(user)
}

/// Checks with the kernel that real, effective and saved uid and gid are the
/// target's, the supplementary groups are exactly `[gid]`, and that neither
/// `setuid(0)` nor `setgid(0)` works any more.
pub fn verify_dropped(user: &TargetUser) -> Result<(), PrivilegeError> {
    let call = |call: &'static str| move |source| PrivilegeError::Call { call, source };
    let (ruid, euid, suid) = syscalls::getresuid().map_err(call("getresuid"))?;
    if [ruid, euid, suid] != [user.uid; 3] {
        return Err(PrivilegeError::NotApplied {
            what: "uid (real, effective, saved)",
            actual: vec![ruid, euid, suid],
            expected: vec![user.uid; 3],
        });
    }
    let (rgid, egid, sgid) = syscalls::getresgid().map_err(call("getresgid"))?;
    if [rgid, egid, sgid] != [user.gid; 3] {
        return Err(PrivilegeError::NotApplied {
            what: "gid (real, effective, saved)",
            actual: vec![rgid, egid, sgid],
            expected: vec![user.gid; 3],
        });
    }
    let groups = syscalls::getgroups().map_err(call("getgroups"))?;
    if groups != [user.gid] {
        return Err(PrivilegeError::NotApplied {
            what: "supplementary groups",
            actual: groups,
            expected: vec![user.gid],
        });
    }
    if syscalls::setuid(0).is_ok() {
        return Err(PrivilegeError::Regained { call: "setuid(0)" });
    }
    if syscalls::setgid(0).is_ok() {
        return Err(PrivilegeError::Regained { call: "setgid(0)" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_target_is_refused() {
        assert!(matches!(
            TargetUser::lookup("root"),
            Err(PrivilegeError::TargetIsRoot(_))
        ));
    }

    #[test]
    fn unknown_user_is_a_typed_error() {
        assert!(matches!(
            TargetUser::lookup("weave-no-such-user-zz"),
            Err(PrivilegeError::UnknownUser(_))
        ));
    }

    #[test]
    fn test_harness_is_multithreaded_so_drop_refuses() {
        // libtest runs each test on its own thread: the drop must refuse
        // before changing anything.
        let user = TargetUser {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        let before = syscalls::getresuid().unwrap();
        let err = drop_to(&user).unwrap_err();
        assert!(
            matches!(
                err,
                PrivilegeError::NotSingleThreaded { .. } | PrivilegeError::NotRoot { .. }
            ),
            "{err}"
        );
        assert_eq!(syscalls::getresuid().unwrap(), before);
    }
}
