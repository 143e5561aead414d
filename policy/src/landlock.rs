//! Landlock: a read-only filesystem view, signal and abstract-socket scoping.
//!
//! The ruleset handles every filesystem access right Landlock ABI 6 knows
//! (reads, writes, creation, truncation, device ioctls), so anything not
//! granted below is denied: nothing is writable, only the listed hierarchies
//! are readable. Device nodes get read, write and ioctl on the node itself
//! (the GPU driver opens them `O_RDWR`) but nothing beneath `/dev` can be
//! created. Execute is never granted: the sandboxed process never execs,
//! and mapping a shared object `PROT_EXEC` is not a Landlock-controlled access.
//!
//! Landlock applies to the calling thread (and threads it creates later), so
//! it must be applied while the process is single-threaded.
#![forbid(unsafe_code)]

use crate::process::{self, ProcessError};
use crate::syscalls;
use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, RestrictionStatus,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use std::path::PathBuf;

/// The Landlock ABI this ruleset is written and tested against: filesystem
/// rights through `IoctlDev` (ABI 5) and scoping (ABI 6). ABI 7 only adds
/// audit-logging flags.
pub const TARGET_ABI: ABI = ABI::V6;

/// Errors building or enforcing a ruleset.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("required path {path} cannot be opened ({reason}); fix the configured path")]
    MissingPath { path: PathBuf, reason: String },
    #[error("landlock must be applied while single-threaded, but this process has {threads} threads; apply it before starting any runtime")]
    NotSingleThreaded { threads: usize },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("landlock ruleset failed: {0}; the kernel may lack Landlock ABI {abi} (Linux 6.12+, `lsm=landlock` on the kernel command line)", abi = TARGET_ABI as i32)]
    Ruleset(#[from] landlock::RulesetError),
    #[error("landlock is {status:?} on this kernel (ABI {abi:?}); refusing to run unconfined. Use a kernel with Landlock ABI {target}+ or set `allow_degraded_sandbox = true` in the config to accept a weaker sandbox", target = TARGET_ABI as i32)]
    NotFullyEnforced {
        status: EnforcementStatus,
        abi: Option<i32>,
    },
}

/// How a path may be used inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PathAccess {
    /// Read files (and list directories) beneath the path.
    ReadOnly,
    /// A device node or a directory of device nodes: open read-write and
    /// ioctl, but create, remove or rename nothing.
    Device,
}

/// Whether a missing path is an error or is skipped with a note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Presence {
    /// Configured by the operator (model paths, libtorch): must exist.
    Required,
    /// Present on some machines only (GPU nodes, distro library dirs).
    Optional,
}

/// One granted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub access: PathAccess,
    pub presence: Presence,
}

impl PathRule {
    pub fn new(path: impl Into<PathBuf>, access: PathAccess, presence: Presence) -> Self {
        Self {
            path: path.into(),
            access,
            presence,
        }
    }
}

/// Mirror of landlock's `RulesetStatus` that can be serialized into a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EnforcementStatus {
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
}

impl From<&RulesetStatus> for EnforcementStatus {
    fn from(status: &RulesetStatus) -> Self {
        match status {
            RulesetStatus::FullyEnforced => Self::FullyEnforced,
            RulesetStatus::PartiallyEnforced => Self::PartiallyEnforced,
            RulesetStatus::NotEnforced => Self::NotEnforced,
        }
    }
}

/// What was enforced, for logs and the broker's `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LandlockReport {
    /// The running kernel's Landlock ABI, `None` when Landlock is unavailable.
    pub kernel_abi: Option<i32>,
    pub status: EnforcementStatus,
    /// Signal and abstract-unix-socket scoping in effect.
    pub scoped: bool,
    pub no_new_privs: bool,
    /// Paths a rule was added for.
    pub granted: Vec<PathBuf>,
    /// Optional paths that were absent, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl std::fmt::Display for LandlockReport {
    /// One log line: status, ABI, scoping, granted and skipped paths.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "landlock {:?} (kernel ABI {}, target ABI {}), scoped: {}, no_new_privs: {}, read-only: [",
            self.status,
            self.kernel_abi.map_or_else(|| "none".to_owned(), |a| a.to_string()),
            TARGET_ABI as i32,
            self.scoped,
            self.no_new_privs,
        )?;
        for (i, p) in self.granted.iter().enumerate() {
            write!(f, "{}{}", if i > 0 { ", " } else { "" }, p.display())?;
        }
        write!(f, "]")?;
        for (p, why) in &self.skipped {
            write!(f, "; skipped {}: {why}", p.display())?;
        }
        Ok(())
    }
}

fn access_for(access: PathAccess, is_dir: bool) -> BitFlags<AccessFs> {
    let read_file = AccessFs::ReadFile;
    match (access, is_dir) {
        (PathAccess::ReadOnly, false) => read_file.into(),
        (PathAccess::ReadOnly, true) => read_file | AccessFs::ReadDir,
        (PathAccess::Device, false) => read_file | AccessFs::WriteFile | AccessFs::IoctlDev,
        (PathAccess::Device, true) => {
            read_file | AccessFs::ReadDir | AccessFs::WriteFile | AccessFs::IoctlDev
        }
    }
}

/// Builds the ruleset from `rules`, applies it to this (single-threaded)
/// process and returns what was enforced. With `allow_degraded = false` the
/// features of [`TARGET_ABI`] are a hard requirement and anything short of
/// `FullyEnforced` is an error; with `true` it is best effort and the report
/// says what was left out.
pub fn restrict_self(
    rules: &[PathRule],
    allow_degraded: bool,
) -> Result<LandlockReport, LandlockError> {
    let threads = process::thread_count()?;
    if threads != 1 {
        return Err(LandlockError::NotSingleThreaded { threads });
    }
    let level = if allow_degraded {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };

    // Open every path first, so a missing model is reported as such and not
    // as a half-built ruleset.
    let mut opened = Vec::new();
    let mut skipped = Vec::new();
    for rule in rules {
        match PathFd::new(&rule.path) {
            Ok(fd) => {
                let is_dir = std::fs::metadata(&rule.path)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                opened.push((rule.path.clone(), fd, access_for(rule.access, is_dir)));
            }
            Err(err) => match rule.presence {
                Presence::Required => {
                    return Err(LandlockError::MissingPath {
                        path: rule.path.clone(),
                        reason: err.to_string(),
                    })
                }
                Presence::Optional => {
                    skipped.push((rule.path.clone(), format!("not present: {err}")));
                }
            },
        }
    }

    let kernel_abi = syscalls::landlock_abi_version().ok();
    let mut created = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?
        .no_new_privs(true);
    let mut granted = Vec::new();
    for (path, fd, access) in opened {
        created = created.add_rule(PathBeneath::new(fd, access))?;
        granted.push(path);
    }
    let status: RestrictionStatus = created.restrict_self()?;
    let enforcement = EnforcementStatus::from(&status.ruleset);
    let report = LandlockReport {
        kernel_abi,
        status: enforcement,
        scoped: enforcement != EnforcementStatus::NotEnforced && kernel_abi.unwrap_or(0) >= 6,
        no_new_privs: status.no_new_privs,
        granted,
        skipped,
    };
    if enforcement != EnforcementStatus::FullyEnforced && !allow_degraded {
        return Err(LandlockError::NotFullyEnforced {
            status: enforcement,
            abi: kernel_abi,
        });
    }
    Ok(report)
}

/// What the worker of GPU `gpu` (its node is `/dev/nvidia<gpu>`) may do
/// with the `/dev` entry `name`, or `None` to leave it out. **Unverified**
/// until `tools/gpu/check.sh` runs on a GPU (the list follows the NVIDIA
/// driver's documented nodes, docs/SANDBOX.md "GPU"):
///
/// - `nvidiactl`: the driver's control node, shared by every GPU; CUDA opens
///   it `O_RDWR` and talks to it with ioctls, so `Device` (read, write,
///   ioctl);
/// - `nvidia<gpu>`: this worker's own GPU, likewise. Every other
///   `nvidiaN` is left out, so a worker of a pool cannot open (and CUDA in
///   it does not even see) the GPUs of the other workers;
/// - `nvidia-uvm`: unified memory, shared, `Device`;
/// - `nvidia-caps` (folder): MIG capability nodes, opened read-only;
/// - not `nvidia-uvm-tools` (profilers), `nvidia-modeset` (display) or
///   anything else.
pub fn gpu_node_access(name: &str, gpu: u32) -> Option<PathAccess> {
    match name {
        "nvidiactl" | "nvidia-uvm" => Some(PathAccess::Device),
        "nvidia-caps" => Some(PathAccess::ReadOnly),
        _ => (per_gpu_index(name) == Some(gpu)).then_some(PathAccess::Device),
    }
}

/// `N` for a per-GPU node name `nvidiaN` (digits only, so not `nvidiactl`
/// nor `nvidia0x`), else `None`.
pub fn per_gpu_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("nvidia")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The `/dev` entries of `dev_names` that the worker of GPU `gpu` is
/// granted (see [`gpu_node_access`]), sorted by name.
pub fn gpu_nodes<'a>(
    dev_names: impl IntoIterator<Item = &'a str>,
    gpu: u32,
) -> Vec<(&'a str, PathAccess)> {
    let mut nodes: Vec<(&str, PathAccess)> = dev_names
        .into_iter()
        .filter_map(|name| Some((name, gpu_node_access(name, gpu)?)))
        .collect();
    nodes.sort_unstable_by_key(|(name, _)| *name);
    nodes.dedup_by_key(|(name, _)| *name);
    nodes
}

/// Files the CUDA driver reads at initialisation and when it creates a
/// context (**unverified**, as above): its parameters and version under
/// `/proc/driver/nvidia`, the kernel modules' parameters, `/proc/devices`
/// (the major number of `nvidia-caps`), and the PCI devices' sysfs entries
/// (NUMA node, BARs; `/sys/bus/pci/devices/*` are links into
/// `/sys/devices/pci*`, and Landlock checks the resolved path).
pub const GPU_DRIVER_READ_ONLY: &[&str] = &[
    "/proc/driver/nvidia",
    "/proc/devices",
    "/sys/module/nvidia",
    "/sys/module/nvidia_uvm",
    "/sys/bus/pci/devices",
];

/// The device nodes present under `/dev` for the worker of GPU `gpu` (see
/// [`gpu_nodes`]) and the driver files of [`GPU_DRIVER_READ_ONLY`], plus
/// `/sys/devices/pci*`.
pub fn gpu_device_rules(gpu: u32) -> Vec<PathRule> {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let dev = names("/dev");
    let mut rules: Vec<PathRule> = gpu_nodes(dev.iter().map(String::as_str), gpu)
        .into_iter()
        .map(|(name, access)| {
            PathRule::new(PathBuf::from("/dev").join(name), access, Presence::Optional)
        })
        .collect();
    let mut pci: Vec<&String> = Vec::new();
    let sys = names("/sys/devices");
    pci.extend(sys.iter().filter(|name| name.starts_with("pci")));
    pci.sort();
    for name in pci {
        rules.push(PathRule::new(
            PathBuf::from("/sys/devices").join(name),
            PathAccess::ReadOnly,
            Presence::Optional,
        ));
    }
    for p in GPU_DRIVER_READ_ONLY {
        rules.push(PathRule::new(*p, PathAccess::ReadOnly, Presence::Optional));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rules_never_carry_directory_rights() {
        for access in [PathAccess::ReadOnly, PathAccess::Device] {
            let file = access_for(access, false);
            assert!(!file.contains(AccessFs::ReadDir));
            assert!(!file.contains(AccessFs::Execute));
            assert!(!file.contains(AccessFs::MakeReg));
        }
        assert_eq!(
            access_for(PathAccess::ReadOnly, true),
            AccessFs::ReadFile | AccessFs::ReadDir
        );
    }

    #[test]
    fn nothing_writable_outside_devices() {
        let ro = access_for(PathAccess::ReadOnly, true);
        assert!((ro & AccessFs::from_write(TARGET_ABI)).is_empty());
    }

    #[test]
    fn gpu_nodes_are_the_compute_ones_only() {
        for name in ["nvidiactl", "nvidia0", "nvidia-uvm"] {
            assert_eq!(gpu_node_access(name, 0), Some(PathAccess::Device), "{name}");
        }
        assert_eq!(gpu_node_access("nvidia15", 15), Some(PathAccess::Device));
        assert_eq!(
            gpu_node_access("nvidia-caps", 0),
            Some(PathAccess::ReadOnly)
        );
        for name in [
            "nvidia",
            "nvidia-uvm-tools",
            "nvidia-modeset",
            "nvidia0x",
            "nvidia-nvswitchctl",
            "dri",
            "null",
            "mem",
        ] {
            assert_eq!(gpu_node_access(name, 0), None, "{name}");
        }
    }

    /// A shared box with four GPUs: each worker gets its own node and the
    /// shared ones, never another worker's.
    const FOUR_GPU_DEV: &[&str] = &[
        "null",
        "nvidia-uvm-tools",
        "nvidia3",
        "nvidia-caps",
        "nvidia1",
        "nvidiactl",
        "nvidia-modeset",
        "nvidia0",
        "nvidia-uvm",
        "nvidia2",
        "nvidia10",
        "urandom",
    ];

    #[test]
    fn a_gpu_worker_is_granted_exactly_its_own_node_and_the_shared_ones() {
        for gpu in [0u32, 1, 2, 3, 10] {
            let own = format!("nvidia{gpu}");
            let mut expected = vec![
                (own.as_str(), PathAccess::Device),
                ("nvidia-caps", PathAccess::ReadOnly),
                ("nvidia-uvm", PathAccess::Device),
                ("nvidiactl", PathAccess::Device),
            ];
            expected.sort_unstable_by_key(|(name, _)| *name);
            assert_eq!(
                gpu_nodes(FOUR_GPU_DEV.iter().copied(), gpu),
                expected,
                "gpu {gpu}"
            );
        }
    }

    #[test]
    fn a_gpu_absent_from_dev_gets_only_the_shared_nodes() {
        // nvidia1 matches no prefix of nvidia10 or the like.
        let names = ["nvidiactl", "nvidia10", "nvidia-uvm", "nvidia11"];
        assert_eq!(
            gpu_nodes(names, 1),
            vec![
                ("nvidia-uvm", PathAccess::Device),
                ("nvidiactl", PathAccess::Device)
            ]
        );
    }

    #[test]
    fn per_gpu_indices_are_digits_only() {
        assert_eq!(per_gpu_index("nvidia0"), Some(0));
        assert_eq!(per_gpu_index("nvidia12"), Some(12));
        for name in [
            "nvidia",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia+1",
            "nvidia0x",
            "dri",
        ] {
            assert_eq!(per_gpu_index(name), None, "{name}");
        }
    }

    #[test]
    fn multithreaded_process_is_refused() {
        // The libtest harness has a main thread plus this test's thread.
        let err = restrict_self(&[], false).unwrap_err();
        assert!(
            matches!(err, LandlockError::NotSingleThreaded { .. }),
            "{err}"
        );
    }
}
