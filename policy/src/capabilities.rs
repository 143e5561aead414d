//! Capability sets, `no_new_privs` and dumpability.
//!
//! The bounding set is cleared first because dropping from it needs
//! CAP_SETPCAP in the effective set; then effective, permitted, inheritable
//! and ambient. The result is read back from `/proc/self/status`, not assumed.

use crate::process::{ProcessError, ProcessStatus};
use crate::syscalls;
use caps::CapSet;
use std::io;

/// Errors clearing capabilities or setting process flags.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("cannot drop capability {cap} from the bounding set: {source}; this needs CAP_SETPCAP, so clear the bounding set before dropping root")]
    Bounding {
        cap: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot clear the {set} capability set: {source}")]
    Clear {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot clear the ambient capability set: {0}")]
    Ambient(#[source] io::Error),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("capability sets are not empty after clearing them (inh {inh:#x}, prm {prm:#x}, eff {eff:#x}, bnd {bnd:#x}, amb {amb:#x})")]
    NotEmpty {
        inh: u64,
        prm: u64,
        eff: u64,
        bnd: u64,
        amb: u64,
    },
    #[error("prctl({0}) failed: {1}")]
    Prctl(&'static str, #[source] io::Error),
    #[error("prctl({0}) reported success but the flag is not set")]
    NotSet(&'static str),
}

/// Drops every capability still in the bounding set, as the kernel lists it
/// in `/proc/self/status` (so capabilities newer than this crate are
/// covered too). Needs CAP_SETPCAP while anything is left.
pub fn clear_bounding_set() -> Result<(), CapabilityError> {
    let status = ProcessStatus::current()?;
    if status.cap_bounding == 0 {
        return Ok(());
    }
    for cap in 0..64u32 {
        if status.cap_bounding & (1u64 << cap) != 0 {
            syscalls::capbset_drop(cap)
                .map_err(|source| CapabilityError::Bounding { cap, source })?;
        }
    }
    Ok(())
}

/// Clears bounding, effective, permitted, inheritable and ambient sets, then
/// verifies all five are empty. Needs CAP_SETPCAP while the bounding set is
/// not empty (system mode, before the uid change).
pub fn clear_all() -> Result<(), CapabilityError> {
    clear_bounding_set()?;
    clear_process_sets()?;
    verify_empty()
}

/// Clears effective, permitted, inheritable and ambient sets (possible
/// without privileges) and verifies those four are empty. The bounding set
/// is left alone: an unprivileged process cannot shrink it, and it only
/// limits what an `execve` of a file with capabilities could gain, which
/// `no_new_privs` (and the seccomp allowlist, which has no `execve`) rule out.
pub fn clear_process_sets() -> Result<(), CapabilityError> {
    for (set, name) in [
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
        (CapSet::Inheritable, "inheritable"),
    ] {
        caps::clear(None, set).map_err(|source| CapabilityError::Clear { set: name, source })?;
    }
    syscalls::cap_ambient_clear_all().map_err(CapabilityError::Ambient)?;
    let s = ProcessStatus::current()?;
    if s.cap_inheritable | s.cap_permitted | s.cap_effective | s.cap_ambient != 0 {
        return Err(not_empty(&s));
    }
    Ok(())
}

/// [`clear_all`] when this process may still shrink the bounding set
/// (CAP_SETPCAP effective), else [`clear_process_sets`].
pub fn clear_for_current_privileges() -> Result<(), CapabilityError> {
    let s = ProcessStatus::current()?;
    const CAP_SETPCAP: u64 = 1 << 8;
    if s.cap_bounding != 0 && s.cap_effective & CAP_SETPCAP != 0 {
        clear_all()
    } else {
        clear_process_sets()
    }
}

fn not_empty(s: &ProcessStatus) -> CapabilityError {
    CapabilityError::NotEmpty {
        inh: s.cap_inheritable,
        prm: s.cap_permitted,
        eff: s.cap_effective,
        bnd: s.cap_bounding,
        amb: s.cap_ambient,
    }
}

/// Fails unless `/proc/self/status` shows every capability set empty.
pub fn verify_empty() -> Result<(), CapabilityError> {
    let s = ProcessStatus::current()?;
    if !s.capabilities_empty() {
        return Err(not_empty(&s));
    }
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no execve can ever raise privileges (setuid bits,
/// file capabilities); also the precondition for an unprivileged seccomp
/// filter and for Landlock.
pub fn set_no_new_privs() -> Result<(), CapabilityError> {
    syscalls::set_no_new_privs().map_err(|e| CapabilityError::Prctl("PR_SET_NO_NEW_PRIVS", e))?;
    match syscalls::no_new_privs() {
        Ok(true) => Ok(()),
        Ok(false) => Err(CapabilityError::NotSet("PR_SET_NO_NEW_PRIVS")),
        Err(e) => Err(CapabilityError::Prctl("PR_GET_NO_NEW_PRIVS", e)),
    }
}

/// `PR_SET_DUMPABLE 0`: no core dumps of key material, and processes of the
/// same uid (the worker) can neither ptrace this one nor open its
/// `/proc/<pid>/mem`. Must be called after the last uid change, which resets
/// the flag.
pub fn set_not_dumpable() -> Result<(), CapabilityError> {
    syscalls::set_dumpable(false).map_err(|e| CapabilityError::Prctl("PR_SET_DUMPABLE", e))?;
    match syscalls::dumpable() {
        Ok(false) => Ok(()),
        Ok(true) => Err(CapabilityError::NotSet("PR_SET_DUMPABLE 0")),
        Err(e) => Err(CapabilityError::Prctl("PR_GET_DUMPABLE", e)),
    }
}
