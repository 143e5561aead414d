//! Confinement for weave processes: privilege drop, capabilities, landlock,
//! seccomp. This crate is the one place where confinement is defined and
//! applied; the broker and the worker call the entry points in [`broker`] and
//! [`worker`]. docs/SANDBOX.md describes the policy and how to regenerate
//! the seccomp allowlists.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod broker;
pub mod capabilities;
pub mod landlock;
pub mod privileges;
pub mod process;
pub mod seccomp;
mod syscalls;
pub mod worker;

pub use crate::landlock::{EnforcementStatus, LandlockReport};
pub use process::{ProcessError, ProcessStatus};
pub use seccomp::{SeccompMode, WorkerSyscallOptions};

/// The sandbox state of a process as the kernel reports it, for the
/// broker's `status` verb and the logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxReport {
    /// Effective uid, gid.
    pub uid: u32,
    pub gid: u32,
    /// Effective, permitted, inheritable and ambient capability sets empty.
    pub capabilities_empty: bool,
    /// Bounding set empty too (only possible for a process that started
    /// with CAP_SETPCAP, i.e. system mode; harmless otherwise under
    /// `no_new_privs`, see `capabilities::clear_process_sets`).
    pub bounding_set_empty: bool,
    pub no_new_privs: bool,
    /// `Seccomp:` mode from /proc/self/status (2 = filter).
    pub seccomp_mode: u8,
    pub seccomp_filters: u32,
    pub dumpable: bool,
    /// Present when the process applied a Landlock ruleset.
    pub landlock: Option<LandlockReport>,
}

impl SandboxReport {
    /// Reads the current state from the kernel; `landlock` is the report
    /// [`worker::confine_filesystem`] returned, if any.
    pub fn current(landlock: Option<LandlockReport>) -> Result<Self, ProcessError> {
        let status = ProcessStatus::current()?;
        let (_, euid, _) = syscalls::getresuid().unwrap_or((u32::MAX, u32::MAX, u32::MAX));
        let (_, egid, _) = syscalls::getresgid().unwrap_or((u32::MAX, u32::MAX, u32::MAX));
        Ok(Self {
            uid: euid,
            gid: egid,
            capabilities_empty: status.cap_effective
                | status.cap_permitted
                | status.cap_inheritable
                | status.cap_ambient
                == 0,
            bounding_set_empty: status.cap_bounding == 0,
            no_new_privs: status.no_new_privs,
            seccomp_mode: status.seccomp_mode,
            seccomp_filters: status.seccomp_filters,
            dumpable: syscalls::dumpable().unwrap_or(true),
            landlock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_reads_this_process() {
        let report = SandboxReport::current(None).unwrap();
        assert_eq!(report.uid, syscalls::geteuid());
        assert!(report.seccomp_mode <= 2);
    }
}
