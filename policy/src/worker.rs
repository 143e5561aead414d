//! The worker's confinement, in the order the worker must apply it:
//!
//! 1. [`confine_filesystem`] right after exec, while still single-threaded
//!    and before libtorch or CUDA start any thread or read any file a caller
//!    could influence;
//! 2. libtorch / CUDA initialization, model loading;
//! 3. [`lock_syscalls`] at the marked *initialization complete* boundary:
//!    the seccomp allowlist on every thread (TSYNC).

use crate::capabilities::{self, CapabilityError};
use crate::landlock::{self, LandlockError, LandlockReport, PathAccess, PathRule, Presence};
use crate::seccomp::{self, SeccompError, SeccompMode, WorkerSyscallOptions};
use std::path::PathBuf;

/// Errors confining the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerConfineError {
    #[error("worker filesystem sandbox: {0}")]
    Landlock(#[from] LandlockError),
    #[error("worker syscall filter: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("worker capabilities: {0}")]
    Capabilities(#[from] CapabilityError),
}

/// What the worker may read. Model paths and library directories come from
/// the configuration and must exist; everything else is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerPaths {
    /// Model files or folders (from the config, by id). Must exist.
    pub models: Vec<PathBuf>,
    /// libtorch's `lib` directory and, for CUDA, the CUDA library directories.
    /// Must exist: the worker cannot run without them.
    pub libraries: Vec<PathBuf>,
    /// Include GPU device nodes (`/dev/nvidia*`, `/dev/dri`) with ioctl access.
    pub gpu: bool,
    /// Further read-only paths (optional; skipped with a note when absent).
    pub extra_read_only: Vec<PathBuf>,
}

/// Read-only paths the dynamic loader and libtorch use after Landlock is in
/// place (lazy `dlopen`, CPU topology, memory size), found with
/// `tools/seccomp-trace.sh`. Absent ones are skipped.
pub const SYSTEM_READ_ONLY: &[&str] = &[
    // dlopen after the sandbox is up (CUDA libraries, libtorch's lazy loads):
    // the loader cache and the distribution's library directories.
    "/etc/ld.so.cache",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/cuda",
    // libtorch's cpuinfo and OpenMP read the CPU topology and features.
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
    // NUMA and memory size queries.
    "/sys/devices/system/node",
    "/proc/meminfo",
    // The process's own view: maps/status/stat (allocators, thread naming).
    "/proc/self",
];

impl WorkerPaths {
    /// The Landlock rules for these paths.
    pub fn rules(&self) -> Vec<PathRule> {
        let mut rules = Vec::new();
        for model in &self.models {
            rules.push(PathRule::new(
                model.clone(),
                PathAccess::ReadOnly,
                Presence::Required,
            ));
        }
        for lib in &self.libraries {
            rules.push(PathRule::new(
                lib.clone(),
                PathAccess::ReadOnly,
                Presence::Required,
            ));
        }
        for path in SYSTEM_READ_ONLY {
            rules.push(PathRule::new(
                *path,
                PathAccess::ReadOnly,
                Presence::Optional,
            ));
        }
        for path in &self.extra_read_only {
            rules.push(PathRule::new(
                path.clone(),
                PathAccess::ReadOnly,
                Presence::Optional,
            ));
        }
        if self.gpu {
            rules.extend(landlock::gpu_device_rules());
        }
        rules
    }
}

/// Step 1: the read-only Landlock view (plus signal and abstract-socket
/// scoping and `no_new_privs`). Fails closed unless everything is enforced,
/// or `allow_degraded` is set (config `allow_degraded_sandbox`).
pub fn confine_filesystem(
    paths: &WorkerPaths,
    allow_degraded: bool,
) -> Result<LandlockReport, WorkerConfineError> {
    Ok(landlock::restrict_self(&paths.rules(), allow_degraded)?)
}

/// Step 3: clears any capability the worker still has (see
/// [`capabilities::clear_for_current_privileges`]), then installs the
/// worker's seccomp allowlist on every thread. `mode` is
/// [`SeccompMode::Enforce`] in production.
pub fn lock_syscalls(
    mode: SeccompMode,
    options: WorkerSyscallOptions,
) -> Result<(), WorkerConfineError> {
    capabilities::clear_for_current_privileges()?;
    capabilities::set_no_new_privs()?;
    seccomp::worker_filter(options).apply(mode)?;
    Ok(())
}
