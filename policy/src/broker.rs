//! The broker's confinement. After setup (socket bound, config read):
//! privilege drop (system mode), empty capability sets, `no_new_privs`, not
//! dumpable. At its initialization-complete boundary (the spawner forked,
//! the name-service modules loaded): the seccomp allowlist
//! [`broker_filter`], on every thread, default kill.
#![forbid(unsafe_code)]

use crate::capabilities::{self, CapabilityError};
use crate::privileges::{self, PrivilegeError, TargetUser};
use crate::seccomp::{
    arg_eq, arg_masked_zero, condition, SeccompError, SeccompMode, SyscallPolicy,
    CLONE_NAMESPACE_FLAGS,
};
use crate::syscalls;
use seccompiler::{SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op};

/// Errors confining the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerConfineError {
    #[error("broker privilege drop: {0}")]
    Privileges(#[from] PrivilegeError),
    #[error("broker capabilities: {0}")]
    Capabilities(#[from] CapabilityError),
    #[error("broker seccomp: {0}")]
    Seccomp(#[from] SeccompError),
}

/// System mode: started as root, becomes `user` for good. In order: the
/// bounding set is cleared while root still has CAP_SETPCAP, then groups,
/// gid and uid are dropped and verified, then the remaining capability sets
/// are cleared and verified empty, then `no_new_privs` and not dumpable.
/// Must be called while single-threaded (before the async runtime starts).
pub fn drop_privileges(user: &str) -> Result<TargetUser, BrokerConfineError> {
    let target = TargetUser::lookup(user)?;
    privileges::require_single_threaded()?;
    capabilities::clear_bounding_set()?;
    privileges::drop_to(&target)?;
    harden()?;
    // All five sets, the bounding set included, must be empty now.
    capabilities::verify_empty()?;
    Ok(target)
}

/// User mode (or after [`drop_privileges`]): empty capability sets (all
/// five where CAP_SETPCAP is still held, else all but the bounding set, see
/// [`capabilities::clear_process_sets`]), `no_new_privs`, not dumpable.
/// Works unprivileged.
pub fn harden() -> Result<(), BrokerConfineError> {
    capabilities::clear_for_current_privileges()?;
    capabilities::set_no_new_privs()?;
    capabilities::set_not_dumpable()?;
    Ok(())
}

/// The initialization-complete boundary: [`broker_filter`] on every thread
/// (TSYNC). Nothing after it can exec, fork, open a file for writing, make
/// a non-Unix socket or add another filter.
pub fn lock_syscalls(mode: SeccompMode) -> Result<(), BrokerConfineError> {
    capabilities::set_no_new_privs()?;
    broker_filter().apply(mode)?;
    Ok(())
}

/// The broker's allowlist after its boundary: serving Unix-socket clients
/// on std threads, the audit syslog connection (and its reconnects),
/// sd_notify, the shm channel (memfd segments, eventfd doorbells), key
/// rotation, talking to the spawner, waiting for and killing workers,
/// removing its socket at shutdown. Built from `tools/seccomp-trace.sh`
/// runs of that workload (docs/SANDBOX.md, "The broker").
///
/// Not here, on purpose: `execve`/`execveat` and fork-style `clone` (the
/// spawner, forked before the boundary, starts workers), executable
/// mappings, write-mode `openat`, any non-Unix socket, `bind`/`listen`
/// (the socket exists by then), `ptrace`, `process_vm_*`, `mount`, `bpf`,
/// namespaces, `seccomp`, and signals other than SIGKILL to one pid.
pub fn broker_filter() -> SyscallPolicy {
    let mut p = SyscallPolicy::new("broker");
    let own_pid = u64::try_from(syscalls::getpid()).unwrap_or(u64::MAX);
    let prot_exec = libc::PROT_EXEC as u64;

    // ---- memory ----
    // why: heap, thread stacks, PNG buffers and the mapped shm segments;
    // never executable (no new code after the boundary).
    p.allow_when(libc::SYS_mmap, vec![arg_masked_zero(2, prot_exec)]);
    // why: guard pages of new thread stacks; never executable.
    p.allow_when(libc::SYS_mprotect, vec![arg_masked_zero(2, prot_exec)]);
    // why: unmapping segments of a finished worker, freeing stacks.
    p.allow(libc::SYS_munmap);
    // why: glibc realloc of large blocks (image buffers).
    p.allow(libc::SYS_mremap);
    // why: glibc returns freed memory (M_TRIM / MADV_DONTNEED).
    p.allow(libc::SYS_madvise);
    // why: glibc malloc's main arena.
    p.allow(libc::SYS_brk);

    // ---- threads ----
    // why: std::thread (a thread per connection, the scheduler, the worker
    // stderr reader). Only real threads: CLONE_THREAD must be set and no
    // namespace flag, so no fork and no new namespace.
    p.allow_when(
        libc::SYS_clone,
        vec![condition(
            0,
            ArgLen::Qword,
            Op::MaskedEq(libc::CLONE_THREAD as u64 | CLONE_NAMESPACE_FLAGS),
            libc::CLONE_THREAD as u64,
        )],
    );
    // why: clone3 passes its flags in memory, which BPF cannot inspect;
    // ENOSYS makes glibc use clone instead.
    p.enosys(libc::SYS_clone3);
    // why: mutexes and condition variables (the job queue, the audit log).
    p.allow(libc::SYS_futex);
    // why: glibc registers each new thread's robust mutex list and rseq area.
    p.allow(libc::SYS_set_robust_list);
    p.allow(libc::SYS_rseq);
    // why: spin-then-yield in std's and glibc's locks.
    p.allow(libc::SYS_sched_yield);
    // why: std::thread::available_parallelism.
    p.allow(libc::SYS_sched_getaffinity);
    // why: thread and process ids for logs and audit records.
    p.allow(libc::SYS_gettid);
    p.allow(libc::SYS_getpid);
    // why: thread exit (a connection ends) and process exit.
    p.allow(libc::SYS_exit);
    p.allow(libc::SYS_exit_group);
    // why: raise()/abort() on a panic, only towards this process.
    p.allow_when(libc::SYS_tgkill, vec![arg_eq(0, own_pid)]);
    // why: std names each new thread (PR_SET_NAME); nothing else.
    p.allow_when(libc::SYS_prctl, vec![arg_eq(0, libc::PR_SET_NAME as u64)]);
    // why: id queries for audit records (read-only).
    p.allow(libc::SYS_getuid);
    p.allow(libc::SYS_geteuid);
    p.allow(libc::SYS_getgid);
    p.allow(libc::SYS_getegid);

    // ---- signals ----
    // why: a broker stopped and resumed (SIGSTOP/SIGCONT, `strace -p`, the
    // cgroup freezer) re-enters its sleeping call through restart_syscall.
    p.allow(libc::SYS_restart_syscall);
    // why: signal-hook's SIGTERM/SIGINT handlers; glibc and std handlers.
    p.allow(libc::SYS_rt_sigaction);
    p.allow(libc::SYS_rt_sigprocmask);
    p.allow(libc::SYS_rt_sigreturn);
    // why: std's per-thread alternate signal stacks (stack overflow guard).
    p.allow(libc::SYS_sigaltstack);

    // ---- processes ----
    // why: reaping the worker (it is the broker's child; the spawner is too).
    p.allow(libc::SYS_wait4);
    // why: killing a worker that crashed, hung or lied: SIGKILL to one
    // positive pid only (never a process group, never -1 = every process
    // of the uid, never any other signal).
    p.allow_when(
        libc::SYS_kill,
        vec![
            condition(0, ArgLen::Dword, Op::Gt, 0),
            condition(0, ArgLen::Dword, Op::Le, i32::MAX as u64),
            condition(1, ArgLen::Dword, Op::Eq, libc::SIGKILL as u64),
        ],
    );

    // ---- sockets: Unix only ----
    // why: the audit syslog connection (reconnects make a new one) and
    // sd_notify's datagram; AF_UNIX only, no network.
    p.allow_when(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)]);
    // why: signal-hook's self-pipe (a Unix socket pair).
    p.allow_when(libc::SYS_socketpair, vec![arg_eq(0, libc::AF_UNIX as u64)]);
    // why: taking connections from the bound listener.
    p.allow(libc::SYS_accept4);
    // why: connecting the syslog socket and sd_notify's.
    p.allow(libc::SYS_connect);
    // why: SO_PEERCRED right after accept; SO_ERROR.
    p.allow(libc::SYS_getsockopt);
    // why: per-connection read/write timeouts.
    p.allow(libc::SYS_setsockopt);
    // why: frames to and from clients, syslog datagrams, sd_notify, the
    // spawner's requests (SCM_RIGHTS) and replies.
    p.allow(libc::SYS_sendto);
    p.allow(libc::SYS_recvfrom);
    p.allow(libc::SYS_sendmsg);
    p.allow(libc::SYS_recvmsg);
    // why: closing a connection's write side; waking the listener at
    // shutdown.
    p.allow(libc::SYS_shutdown);

    // ---- the shm channel and the worker's pipes ----
    // why: a fresh segment per direction at every worker start.
    p.allow(libc::SYS_memfd_create);
    // why: sizing a new segment before sealing it.
    p.allow(libc::SYS_ftruncate);
    // why: the doorbells.
    p.allow(libc::SYS_eventfd2);
    // why: the bootstrap pipe and the worker's stderr pipe.
    p.allow(libc::SYS_pipe2);

    // ---- files ----
    // why: reading what the broker reads after start-up (the name-service
    // files for a caller's groups, /proc/self bits); read-only opens only,
    // so no file can be created, truncated or written.
    let write_flags = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
    p.allow_when(libc::SYS_openat, vec![arg_masked_zero(2, write_flags)]);
    // why: reading and writing descriptors already open (sockets, pipes,
    // eventfds, stderr).
    p.allow(libc::SYS_read);
    p.allow(libc::SYS_write);
    p.allow(libc::SYS_writev);
    p.allow(libc::SYS_close);
    // why: std's metadata() (statx; fstat/newfstatat where the kernel
    // lacks statx): is our socket still ours at shutdown, memfd sizes.
    p.allow(libc::SYS_statx);
    p.allow(libc::SYS_fstat);
    p.allow(libc::SYS_newfstatat);
    // why: glibc's NSS `files` backend rewinds /etc/passwd and /etc/group
    // between lookups of a caller's groups (system mode).
    p.allow(libc::SYS_lseek);
    // why: NSS `systemd` looks for userdb drop-in records in /etc/userdb,
    // /run/userdb, /usr/lib/userdb: it walks the path with O_PATH opens
    // and readlinkat, and lists the folders that exist.
    p.allow(libc::SYS_readlinkat);
    p.allow(libc::SYS_getdents64);
    // why: F_ADD_SEALS/F_GET_SEALS on segments, F_GETFL/F_SETFL,
    // F_DUPFD_CLOEXEC (try_clone of a connection).
    p.allow(libc::SYS_fcntl);
    // why: removing the broker's own socket at shutdown.
    p.allow(libc::SYS_unlinkat);
    // why: waiting on the doorbells, a connection's hang-up, the listener.
    p.allow(libc::SYS_ppoll);
    // why: std's set_nonblocking (FIONBIO) and isatty (TCGETS); nothing
    // else.
    p.allow_when(libc::SYS_ioctl, vec![arg_eq(1, libc::FIONBIO)]);
    p.allow_when(libc::SYS_ioctl, vec![arg_eq(1, libc::TCGETS)]);
    #[cfg(target_arch = "x86_64")]
    {
        // why: legacy x86_64 entry points std still uses: poll (a
        // connection's hang-up check), unlink (remove_file of the socket).
        p.allow(libc::SYS_poll);
        p.allow(libc::SYS_unlink);
    }

    // ---- time and randomness ----
    // why: deadlines, rate limits, timestamps (when the vDSO is not used).
    p.allow(libc::SYS_clock_gettime);
    p.allow(libc::SYS_gettimeofday);
    // why: liveness ticks, backoff and idle sleeps (glibc's nanosleep and
    // std's sleep both use clock_nanosleep).
    p.allow(libc::SYS_clock_nanosleep);
    // why: fresh channel keys at every worker start and rotation, nonces,
    // random seeds.
    p.allow(libc::SYS_getrandom);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_allowlist_excludes_what_the_spawner_and_the_boundary_took_away() {
        let p = broker_filter();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_seccomp,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_keyctl,
            libc::SYS_setuid,
            libc::SYS_setresuid,
            libc::SYS_chmod,
            libc::SYS_fchmodat,
            libc::SYS_fchownat,
            libc::SYS_renameat2,
            libc::SYS_mkdirat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_truncate,
            libc::SYS_landlock_create_ruleset,
        ] {
            assert!(!p.allows(nr), "syscall {nr} must not be allowed");
        }
        for nr in [
            libc::SYS_clone,
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_kill,
            libc::SYS_ioctl,
            libc::SYS_prctl,
        ] {
            assert!(p.is_conditional(nr), "syscall {nr} must carry conditions");
        }
        assert!(p.returns_enosys(libc::SYS_clone3));
        assert!(p.allows(libc::SYS_restart_syscall));
    }
}
