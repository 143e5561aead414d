//! Seccomp allowlists, one per process type, compiled with seccompiler.
//!
//! Each process gets two stacked filters. The kernel runs every filter and
//! the most severe verdict wins (kill > trap > errno > log > allow):
//!
//! 1. a small *errno* filter: syscalls that must fail softly so a library
//!    falls back (`clone3` → ENOSYS makes glibc use `clone`, whose flags a
//!    classic BPF filter can inspect — `clone3` passes them in memory);
//! 2. the *allowlist*: every syscall the process needs after its
//!    initialization-complete boundary, with argument conditions where they
//!    hold; anything else kills the process (or traps/logs in a debug mode).
//!
//! The errno filter is installed first so that installing the allowlist is
//! still permitted; the allowlist itself does not allow `seccomp`, so no
//! further filter (or a filter replacement) can follow.
#![forbid(unsafe_code)]

use crate::syscalls;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is not supported on this CPU architecture; only x86_64 and aarch64 have allowlists")]
    UnsupportedArch,
    #[error("cannot build the {process} seccomp filter: {source}")]
    Build {
        process: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {process} seccomp filter: {source}; the kernel needs CONFIG_SECCOMP_FILTER")]
    Install {
        process: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS reporter for the trace mode: {0}")]
    Handler(#[source] std::io::Error),
}

/// What happens to a syscall outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SeccompMode {
    /// Production: the whole process is killed with SIGSYS.
    Enforce,
    /// Tracing: a SIGSYS handler prints the syscall number to stderr and the
    /// call returns ENOSYS, so one run lists every missing syscall.
    Trap,
    /// Tracing without a handler: the kernel logs the call
    /// (`SECCOMP_RET_LOG`, visible in the audit log / dmesg) and allows it.
    Log,
}

impl SeccompMode {
    fn mismatch_action(self) -> SeccompAction {
        match self {
            Self::Enforce => SeccompAction::KillProcess,
            Self::Trap => SeccompAction::Trap,
            Self::Log => SeccompAction::Log,
        }
    }
}

#[cfg(target_arch = "x86_64")]
const ARCH: Option<TargetArch> = Some(TargetArch::x86_64);
#[cfg(target_arch = "aarch64")]
const ARCH: Option<TargetArch> = Some(TargetArch::aarch64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: Option<TargetArch> = None;

/// Namespace-creating `clone` flags: a sandboxed process must not make new
/// namespaces (user namespaces in particular are a large kernel attack
/// surface).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u64;

/// An allowlist under construction: syscall number → alternatives (an empty
/// list allows the syscall unconditionally; otherwise any one matching rule
/// allows it).
#[derive(Debug, Clone)]
pub struct SyscallPolicy {
    process: &'static str,
    allowed: BTreeMap<i64, Vec<SeccompRule>>,
    enosys: Vec<i64>,
}

pub(crate) fn condition(arg: u8, len: ArgLen, op: Op, value: u64) -> SeccompCondition {
    // The arguments are compile-time constants of this module: index < 6 and
    // a valid length, which is all `new` validates.
    match SeccompCondition::new(arg, len, op, value) {
        Ok(c) => c,
        Err(e) => panic!("invalid seccomp condition in the policy source: {e}"),
    }
}

impl SyscallPolicy {
    pub(crate) fn new(process: &'static str) -> Self {
        Self {
            process,
            allowed: BTreeMap::new(),
            enosys: Vec::new(),
        }
    }

    /// Allows `nr` with any arguments.
    pub(crate) fn allow(&mut self, nr: libc::c_long) -> &mut Self {
        self.allowed.insert(nr, Vec::new());
        self
    }

    /// Allows `nr` when all `conditions` hold (one more alternative if called
    /// again for the same syscall).
    pub(crate) fn allow_when(
        &mut self,
        nr: libc::c_long,
        conditions: Vec<SeccompCondition>,
    ) -> &mut Self {
        let rule = match SeccompRule::new(conditions) {
            Ok(rule) => rule,
            Err(e) => panic!("invalid seccomp rule in the policy source: {e}"),
        };
        self.allowed.entry(nr).or_default().push(rule);
        self
    }

    /// Makes `nr` fail with ENOSYS (the second filter), whatever the mode.
    pub(crate) fn enosys(&mut self, nr: libc::c_long) -> &mut Self {
        self.enosys.push(nr);
        self
    }

    /// Is `nr` in the allowlist (with or without conditions)?
    pub fn allows(&self, nr: libc::c_long) -> bool {
        self.allowed.contains_key(&nr)
    }

    /// Does `nr` carry argument conditions?
    pub fn is_conditional(&self, nr: libc::c_long) -> bool {
        self.allowed.get(&nr).is_some_and(|rules| !rules.is_empty())
    }

    /// Is `nr` answered with ENOSYS?
    pub fn returns_enosys(&self, nr: libc::c_long) -> bool {
        self.enosys.contains(&nr)
    }

    /// Number of allowlisted syscalls.
    pub fn len(&self) -> usize {
        self.allowed.len()
    }

    /// True when nothing is allowed (never the case for a built policy).
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Compiles both BPF programs: (errno filter, allowlist).
    pub fn compile(&self, mode: SeccompMode) -> Result<(BpfProgram, BpfProgram), SeccompError> {
        let arch = ARCH.ok_or(SeccompError::UnsupportedArch)?;
        let build = |source| SeccompError::Build {
            process: self.process,
            source,
        };
        let errno_rules = self.enosys.iter().map(|&nr| (nr, Vec::new())).collect();
        let errno_filter = SeccompFilter::new(
            errno_rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(build)?;
        // The ENOSYS syscalls must pass the allowlist: the kernel takes the
        // most severe verdict of all filters, and kill/trap outrank errno.
        let mut allowed = self.allowed.clone();
        for &nr in &self.enosys {
            allowed.insert(nr, Vec::new());
        }
        let allow_filter =
            SeccompFilter::new(allowed, mode.mismatch_action(), SeccompAction::Allow, arch)
                .map_err(build)?;
        Ok((
            BpfProgram::try_from(errno_filter).map_err(build)?,
            BpfProgram::try_from(allow_filter).map_err(build)?,
        ))
    }

    /// Installs both filters on every thread of the process (TSYNC). Sets
    /// `no_new_privs` as a side effect (seccompiler does, the kernel requires
    /// it for unprivileged filters).
    pub fn apply(&self, mode: SeccompMode) -> Result<(), SeccompError> {
        let (errno_filter, allow_filter) = self.compile(mode)?;
        if mode == SeccompMode::Trap {
            syscalls::install_sigsys_reporter().map_err(SeccompError::Handler)?;
        }
        let install = |source| SeccompError::Install {
            process: self.process,
            source,
        };
        if !errno_filter.is_empty() && !self.enosys.is_empty() {
            seccompiler::apply_filter_all_threads(&errno_filter).map_err(install)?;
        }
        seccompiler::apply_filter_all_threads(&allow_filter).map_err(install)
    }
}

/// Options of the worker allowlist that depend on the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct WorkerSyscallOptions {
    /// CUDA: `ioctl` with the request numbers shaped like the NVIDIA and UVM
    /// drivers' ([`NVIDIA_IOCTL_MASKS`]) and `openat` with write flags (the
    /// driver opens its device nodes `O_RDWR`). Off for CPU workers.
    pub gpu: bool,
    /// Allow `PROT_EXEC` in `mmap`/`mprotect` after initialization. Needed
    /// when libtorch JIT-compiles kernels at run time (oneDNN) or dlopens
    /// lazily; see docs/SANDBOX.md for the measurement.
    pub exec_mappings: bool,
}

/// `ioctl` request numbers a CUDA worker may pass, as (mask, value) pairs
/// compared on the low 32 bits of the request: `request & mask == value`.
///
/// **Unverified**: written from the drivers' public headers (the open
/// kernel modules' `nv-ioctl-numbers.h`, `nv_escape.h`, `uvm_ioctl.h`,
/// `uvm_linux_ioctl.h`), not yet from a trace; `tools/gpu/check.sh` runs the
/// worker in trap mode on a GPU and lists any request outside these masks
/// (docs/SANDBOX.md, "GPU").
///
/// The low 32 bits only: the kernel's `ioctl` takes an `unsigned int`
/// request, so the upper half of the register is ignored by the kernel and
/// may hold a sign extension (`_IOWR` numbers have bit 31 set).
pub const NVIDIA_IOCTL_MASKS: &[(u32, u32)] = &[
    // /dev/nvidiactl, /dev/nvidiaN: every request is _IOWR('F', nr, size)
    // with the size of its parameter struct (any size, so the size bits are
    // not compared). nr 0x20..=0x5f: the resource-manager escapes (RM_ALLOC,
    // RM_CONTROL, RM_FREE, RM_MAP_MEMORY, ...).
    (0xc000_ffe0, 0xc000_4620),
    (0xc000_ffe0, 0xc000_4640),
    // nr 200..=223 (NV_IOCTL_BASE + 0..23): CARD_INFO, CHECK_VERSION_STR,
    // REGISTER_FD, ATTACH_GPUS_TO_FD, SYS_PARAMS, WAIT_OPEN_COMPLETE, ...
    (0xc000_fff8, 0xc000_46c8),
    (0xc000_fff8, 0xc000_46d0),
    (0xc000_fff8, 0xc000_46d8),
    // /dev/nvidia-uvm: plain numbers, not _IOC-encoded: 1..=127 (UVM_IOCTL_BASE(i) = i) ...
    (0xffff_ff80, 0),
    // ... and UVM_INITIALIZE / UVM_DEINITIALIZE.
    (0xffff_ffff, 0x3000_0001),
    (0xffff_ffff, 0x3000_0002),
];

pub(crate) fn arg_eq(arg: u8, value: u64) -> SeccompCondition {
    condition(arg, ArgLen::Qword, Op::Eq, value)
}

pub(crate) fn arg_masked_zero(arg: u8, mask: u64) -> SeccompCondition {
    condition(arg, ArgLen::Qword, Op::MaskedEq(mask), 0)
}

/// The worker's allowlist: what libtorch CPU inference (ATen kernels,
/// OpenMP through libgomp, model tensors mmapped from files) and the shm
/// channel loop need once initialization is complete. Built from
/// `tools/seccomp-trace.sh` runs; see docs/SANDBOX.md.
pub fn worker_filter(options: WorkerSyscallOptions) -> SyscallPolicy {
    let mut p = SyscallPolicy::new("worker");
    let own_pid = u64::try_from(syscalls::getpid()).unwrap_or(u64::MAX);
    let prot_exec = libc::PROT_EXEC as u64;

    // ---- memory ----
    // why: tensor storage, thread stacks and mmapped model files.
    if options.exec_mappings {
        p.allow(libc::SYS_mmap);
        // why: changing page protections (guard pages, JIT code).
        p.allow(libc::SYS_mprotect);
    } else {
        // why: tensor storage, thread stacks, model files; never executable
        // (no new code can appear after initialization).
        p.allow_when(libc::SYS_mmap, vec![arg_masked_zero(2, prot_exec)]);
        // why: guard pages of new thread stacks; never executable.
        p.allow_when(libc::SYS_mprotect, vec![arg_masked_zero(2, prot_exec)]);
    }
    // why: freeing tensors and thread stacks.
    p.allow(libc::SYS_munmap);
    // why: glibc realloc of large blocks.
    p.allow(libc::SYS_mremap);
    // why: allocators return memory (MADV_DONTNEED) and hint huge pages.
    p.allow(libc::SYS_madvise);
    // why: glibc malloc's main arena.
    p.allow(libc::SYS_brk);

    // ---- threads and synchronisation ----
    // why: pthread_create (glibc falls back here after clone3's ENOSYS);
    // namespace flags are refused, so no new user/mount/pid/net namespace.
    p.allow_when(
        libc::SYS_clone,
        vec![arg_masked_zero(0, CLONE_NAMESPACE_FLAGS)],
    );
    // why: clone3 passes its flags in memory, which BPF cannot inspect;
    // ENOSYS makes glibc use clone instead.
    p.enosys(libc::SYS_clone3);
    // why: mutexes, condition variables, OpenMP barriers, shm channel waits.
    p.allow(libc::SYS_futex);
    // why: glibc registers each new thread's robust mutex list.
    p.allow(libc::SYS_set_robust_list);
    // why: glibc registers restartable sequences for each new thread.
    p.allow(libc::SYS_rseq);
    // why: libgomp and at::parallel_for spin-then-yield.
    p.allow(libc::SYS_sched_yield);
    // why: OpenMP and libtorch size thread pools from the CPU mask.
    p.allow(libc::SYS_sched_getaffinity);
    // why: libgomp pins threads when OMP_PROC_BIND is set.
    p.allow(libc::SYS_sched_setaffinity);
    // why: thread ids for logging and pthread internals.
    p.allow(libc::SYS_gettid);
    // why: pid for logging; abort() and raise() use it.
    p.allow(libc::SYS_getpid);
    // why: thread exit and process exit.
    p.allow(libc::SYS_exit);
    p.allow(libc::SYS_exit_group);
    // why: raise()/abort()/pthread_kill, only towards this process.
    p.allow_when(libc::SYS_tgkill, vec![arg_eq(0, own_pid)]);
    // why: naming threads (PR_SET_NAME) and reading names; reading the
    // dumpable flag (read-only). No prctl that changes anything else.
    p.allow_when(libc::SYS_prctl, vec![arg_eq(0, libc::PR_SET_NAME as u64)]);
    p.allow_when(libc::SYS_prctl, vec![arg_eq(0, libc::PR_GET_NAME as u64)]);
    p.allow_when(
        libc::SYS_prctl,
        vec![arg_eq(0, libc::PR_GET_DUMPABLE as u64)],
    );
    // why: id queries (read-only; none of these can change an id).
    p.allow(libc::SYS_getresuid);
    p.allow(libc::SYS_getresgid);
    p.allow(libc::SYS_getuid);
    p.allow(libc::SYS_geteuid);
    p.allow(libc::SYS_getgid);
    p.allow(libc::SYS_getegid);

    // ---- signals ----
    // why: a process stopped and resumed during a sleeping call (SIGSTOP /
    // SIGCONT from an operator, `strace -p`, a debugger attaching, the
    // cgroup freezer, suspend) has the kernel re-enter `poll`, `nanosleep`,
    // `clock_nanosleep` or a timed `futex` through restart_syscall; without
    // it an ordinary operator action kills the process with SIGSYS. It can
    // only resume the call that was interrupted.
    p.allow(libc::SYS_restart_syscall);
    // why: glibc and Rust install handlers (SIGSEGV stack overflow guard).
    p.allow(libc::SYS_rt_sigaction);
    // why: pthread_create blocks signals around clone; abort() unblocks.
    p.allow(libc::SYS_rt_sigprocmask);
    // why: returning from any signal handler.
    p.allow(libc::SYS_rt_sigreturn);
    // why: Rust's main-thread and per-thread alternate signal stacks.
    p.allow(libc::SYS_sigaltstack);

    // ---- files (what may be opened is Landlock's decision) ----
    if options.gpu {
        // why: model files, and the GPU device nodes CUDA opens O_RDWR
        // (Landlock still denies writing or creating any file).
        p.allow(libc::SYS_openat);
    } else {
        // why: reading model files and the /proc and /sys bits libtorch asks
        // for lazily; read-only opens only (defence in depth under Landlock).
        let write_flags = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        p.allow_when(libc::SYS_openat, vec![arg_masked_zero(2, write_flags)]);
    }
    // why: reading files, the channel's control fd, eventfds.
    p.allow(libc::SYS_read);
    p.allow(libc::SYS_pread64);
    p.allow(libc::SYS_readv);
    // why: stdout/stderr logging and the channel's notification fd.
    p.allow(libc::SYS_write);
    p.allow(libc::SYS_writev);
    // why: closing files after loading.
    p.allow(libc::SYS_close);
    // why: size checks of model files and memfds.
    p.allow(libc::SYS_fstat);
    p.allow(libc::SYS_newfstatat);
    p.allow(libc::SYS_statx);
    // why: seeking inside safetensors files.
    p.allow(libc::SYS_lseek);
    // why: listing diffusers model folders.
    p.allow(libc::SYS_getdents64);
    // why: realpath() on configured model paths, /proc/self/exe.
    p.allow(libc::SYS_readlinkat);
    // why: F_GETFL/F_SETFD on inherited fds, F_GET_SEALS on memfds.
    p.allow(libc::SYS_fcntl);
    // why: waiting for channel notifications with a timeout.
    p.allow(libc::SYS_ppoll);
    #[cfg(target_arch = "x86_64")]
    {
        // why: legacy x86_64 entry points glibc and Rust still use.
        p.allow(libc::SYS_poll);
        p.allow(libc::SYS_stat);
        p.allow(libc::SYS_lstat);
        p.allow(libc::SYS_readlink);
    }
    // why: isatty() on stdout/stderr (TCGETS) when logging; nothing else.
    p.allow_when(libc::SYS_ioctl, vec![arg_eq(1, libc::TCGETS)]);
    if options.gpu {
        // why: the CUDA driver talks to /dev/nvidia* through ioctls; only
        // request numbers of the NVIDIA and UVM shapes (unverified, see
        // NVIDIA_IOCTL_MASKS). Which device nodes can be opened with the
        // ioctl right at all is Landlock's decision.
        for &(mask, value) in NVIDIA_IOCTL_MASKS {
            p.allow_when(
                libc::SYS_ioctl,
                vec![condition(
                    1,
                    ArgLen::Dword,
                    Op::MaskedEq(u64::from(mask)),
                    u64::from(value),
                )],
            );
        }
    }

    // ---- time, randomness, limits ----
    // why: timing steps and timeouts (when the vDSO is not used).
    p.allow(libc::SYS_clock_gettime);
    p.allow(libc::SYS_clock_getres);
    p.allow(libc::SYS_gettimeofday);
    // why: OpenMP and libtorch back-off sleeps.
    p.allow(libc::SYS_nanosleep);
    p.allow(libc::SYS_clock_nanosleep);
    // why: seeds for random tensors when no seed is given; HashMap keys.
    p.allow(libc::SYS_getrandom);
    // why: libtorch and allocators read memory size and the stack limit.
    p.allow(libc::SYS_sysinfo);
    p.allow(libc::SYS_prlimit64);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_allowlist_excludes_dangerous_calls() {
        let p = worker_filter(WorkerSyscallOptions::default());
        for nr in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_seccomp,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_keyctl,
            libc::SYS_kill,
            libc::SYS_connect,
        ] {
            assert!(!p.allows(nr), "syscall {nr} must not be allowed");
        }
        assert!(p.is_conditional(libc::SYS_clone));
        assert!(p.is_conditional(libc::SYS_mmap));
        assert!(p.is_conditional(libc::SYS_ioctl));
        assert!(p.is_conditional(libc::SYS_openat));
        assert!(p.returns_enosys(libc::SYS_clone3));
        assert!(!p.allows(libc::SYS_clone3));
    }

    #[test]
    fn stopped_and_resumed_processes_can_restart_their_sleep() {
        // SIGSTOP/SIGCONT during poll/nanosleep/futex re-enters the call
        // through restart_syscall (policy/tests/sandbox.rs has the death
        // test with a real stop and continue).
        assert!(worker_filter(WorkerSyscallOptions::default()).allows(libc::SYS_restart_syscall));
    }

    #[test]
    fn options_relax_only_what_they_name() {
        let gpu = worker_filter(WorkerSyscallOptions {
            gpu: true,
            exec_mappings: false,
        });
        // Never "any ioctl": only the NVIDIA/UVM masks on top of TCGETS.
        assert!(gpu.is_conditional(libc::SYS_ioctl));
        assert_eq!(
            gpu.allowed[&libc::SYS_ioctl].len(),
            1 + NVIDIA_IOCTL_MASKS.len()
        );
        assert!(gpu.is_conditional(libc::SYS_mmap));
        let exec = worker_filter(WorkerSyscallOptions {
            gpu: false,
            exec_mappings: true,
        });
        assert!(!exec.is_conditional(libc::SYS_mmap));
        assert!(exec.is_conditional(libc::SYS_ioctl));
    }

    /// The driver headers' numbers the masks are written for, and neighbours
    /// that must stay outside them.
    #[test]
    fn nvidia_masks_cover_the_driver_shapes_and_nothing_terminal() {
        let allowed = |req: u32| {
            NVIDIA_IOCTL_MASKS
                .iter()
                .any(|&(mask, value)| req & mask == value)
        };
        let iowr = |nr: u32, size: u32| 0xc000_0000 | (size << 16) | (0x46 << 8) | nr;
        for (nr, size) in [
            (0x2a, 0x20),
            (0x2b, 0x30),
            (0x29, 0x10),
            (0x4e, 0x38),
            (0x5f, 8),
        ] {
            assert!(allowed(iowr(nr, size)), "RM escape {nr:#x}");
        }
        for nr in 200..=223 {
            assert!(allowed(iowr(nr, 0x48)), "NV_IOCTL_BASE + {}", nr - 200);
        }
        for req in [1, 39, 75, 127, 0x3000_0001, 0x3000_0002] {
            assert!(allowed(req), "UVM {req:#x}");
        }
        // Outside: other 'F' numbers, _IO-style 'F' (fbdev FBIOGET_*),
        // terminal and socket ioctls, larger plain numbers.
        for req in [
            iowr(0x1f, 8),
            iowr(0x60, 8),
            iowr(224, 8),
            0x4600,
            0x4602,
            0x5401,
            0x541b,
            0x8912,
            128,
            0x3000_0003,
        ] {
            assert!(!allowed(req), "{req:#x} must not pass");
        }
    }

    #[test]
    fn filters_compile_in_every_mode() {
        for mode in [SeccompMode::Enforce, SeccompMode::Trap, SeccompMode::Log] {
            let (errno, allow) = worker_filter(WorkerSyscallOptions::default())
                .compile(mode)
                .unwrap();
            assert!(!errno.is_empty());
            assert!(allow.len() > 50);
            crate::broker::broker_filter().compile(mode).unwrap();
        }
    }
}
