//! The worker's confinement, in the order the worker must apply it:
//!
//! 1. [`confine_filesystem`] right after exec, while still single-threaded
//!    and before libtorch or CUDA start any thread or read any file a caller
//!    could influence;
//! 2. libtorch / CUDA initialization, model loading;
//! 3. [`lock_syscalls`] at the marked *initialization complete* boundary:
//!    the seccomp allowlist on every thread (TSYNC).
#![forbid(unsafe_code)]

use crate::capabilities::{self, CapabilityError};
use crate::landlock::{self, LandlockError, LandlockReport, PathAccess, PathRule, Presence};
use crate::process;
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
    /// GPU worker: the index `N` of its GPU's node `/dev/nvidiaN`. Includes
    /// that node and the driver's shared ones (`nvidiactl`, `nvidia-uvm`,
    /// `nvidia-caps`; never another GPU's node, see
    /// [`landlock::gpu_nodes`]) with ioctl access, the driver's files, and
    /// the loader paths and library folders CUDA's lazy `dlopen`s need.
    /// `None`: a CPU worker, no GPU path at all.
    pub gpu: Option<u32>,
    /// Further read-only paths (optional; skipped with a note when absent).
    pub extra_read_only: Vec<PathBuf>,
}

/// Read-only paths libtorch CPU reads after Landlock is in place, as traced
/// with `tools/seccomp-trace.sh` / strace (see docs/SANDBOX.md). Absent ones
/// are skipped.
pub const SYSTEM_READ_ONLY: &[&str] = &[
    // cpuinfo (libtorch's CPU feature and topology probe) and libgomp read
    // /proc/cpuinfo and /sys/devices/system/cpu/{possible,present,kernel_max}.
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
    // Not seen on this single-node host; cpuinfo and libgomp read the NUMA
    // topology on multi-node machines.
    "/sys/devices/system/node",
    // c10 seeds the default CPU generator from /dev/urandom the first time
    // it is used (randn, manual_seed); read-only, no ioctl.
    "/dev/urandom",
    // The process's own view: /proc/self/{status,maps,task} (libtorch's
    // thread and memory queries, the SandboxReport).
    "/proc/self",
];

/// Read-only paths for GPU workers: CUDA `dlopen`s the driver library
/// (`libcuda.so.1`) and its math libraries lazily, after Landlock, through
/// the loader cache and the distribution's library directories. Not needed
/// by CPU workers (the trace shows no library opens after Landlock there).
pub const LOADER_READ_ONLY: &[&str] = &[
    "/etc/ld.so.cache",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/cuda",
    // Where container runtimes mount the driver's user-space libraries
    // (libcuda.so.1), read-only; the lent GPU machine has it there.
    "/usr/local/nvidia",
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
        if self.gpu.is_some() {
            for path in LOADER_READ_ONLY {
                rules.push(PathRule::new(
                    *path,
                    PathAccess::ReadOnly,
                    Presence::Optional,
                ));
            }
        }
        for path in &self.extra_read_only {
            rules.push(PathRule::new(
                path.clone(),
                PathAccess::ReadOnly,
                Presence::Optional,
            ));
        }
        if let Some(gpu) = self.gpu {
            rules.extend(landlock::gpu_device_rules(gpu));
            // CUDA's math libraries dlopen their siblings lazily (cuDNN's
            // engines, NVRTC), from wherever the loader found them: a CUDA
            // libtorch is often a Python venv's, with the nvidia-* wheels in
            // folders of their own that no configuration names.
            for dir in process::mapped_library_dirs().unwrap_or_default() {
                rules.push(PathRule::new(dir, PathAccess::ReadOnly, Presence::Optional));
            }
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
/// [`capabilities::clear_for_current_privileges`]), makes it not dumpable, then installs the
/// worker's seccomp allowlist on every thread. `mode` is
/// [`SeccompMode::Enforce`] in production.
pub fn lock_syscalls(
    mode: SeccompMode,
    options: WorkerSyscallOptions,
) -> Result<(), WorkerConfineError> {
    capabilities::clear_for_current_privileges()?;
    capabilities::set_no_new_privs()?;
    // Other processes of the same uid (the broker, in system mode) cannot
    // ptrace the worker or read its memory through /proc; no core dumps of
    // model or prompt data.
    capabilities::set_not_dumpable()?;
    seccomp::worker_filter(options).apply(mode)?;
    Ok(())
}
