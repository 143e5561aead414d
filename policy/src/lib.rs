//! Confinement for weave processes: privilege drop, capabilities, landlock,
//! seccomp. This crate is the one place where confinement is defined and
//! applied; the broker and the worker call the entry points in [`broker`] and
//! [`worker`]. docs/SANDBOX.md describes the policy and how to regenerate
//! the seccomp allowlists.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod broker;
pub mod capabilities;
pub mod death_test;
pub mod landlock;
pub mod privileges;
pub mod process;
pub mod seccomp;
mod syscalls;
pub mod worker;

pub use crate::landlock::{EnforcementStatus, LandlockReport};
pub use process::{ProcessError, ProcessStatus};
pub use seccomp::{SeccompMode, WorkerSyscallOptions};
