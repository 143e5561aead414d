//! The broker's side of the spawn contract (`docs/WORKER.md`): exec
//! `weave-worker` with an empty environment, stdin on /dev/null, stderr
//! into a pipe the broker reads and labels (`worker_stderr`), and exactly
//! fds 3–7; then the bootstrap through the pipe.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use weave_common::worker_proto::channel::BrokerEndpoint;
use weave_common::worker_proto::{self, fds, WorkerBootstrap, WORKER_PROTOCOL_VERSION};

use super::{spawn_syscalls, SupervisorConfig, SupervisorError};

/// Duplicates are numbered from here so none sits on 3..=7 in the child
/// before it is placed there.
const STAGING_FD_MIN: RawFd = 64;

/// Starts the worker and hands it the bootstrap. The child is killed (and
/// reaped) if the bootstrap cannot be delivered.
pub fn spawn_worker(
    config: &SupervisorConfig,
    channel: &BrokerEndpoint,
) -> Result<Child, SupervisorError> {
    let spawn_err = |what: &str, e: std::io::Error| SupervisorError::Spawn(format!("{what}: {e}"));
    let (pipe_read, pipe_write) =
        spawn_syscalls::pipe_cloexec().map_err(|e| spawn_err("bootstrap pipe", e))?;

    let [seg_out, seg_in, bell_out, bell_in] = channel.worker_fds();
    let staged: Vec<OwnedFd> = [seg_out, seg_in, bell_out, bell_in, pipe_read.as_fd()]
        .into_iter()
        .map(|fd| spawn_syscalls::dup_at_least(fd, STAGING_FD_MIN))
        .collect::<Result<_, _>>()
        .map_err(|e| spawn_err("staging descriptors", e))?;
    // Plain numbers, captured by value: the pre_exec closure must not
    // allocate or touch anything shared.
    let mut placement = [(0 as RawFd, 0 as RawFd); 5];
    let targets = [
        fds::TO_WORKER_SEGMENT,
        fds::TO_BROKER_SEGMENT,
        fds::TO_WORKER_DOORBELL,
        fds::TO_BROKER_DOORBELL,
        fds::BOOTSTRAP_PIPE,
    ];
    for (slot, (fd, target)) in placement.iter_mut().zip(staged.iter().zip(targets)) {
        *slot = (fd.as_raw_fd(), target);
    }

    let mut command = Command::new(&config.worker_exe);
    command
        .env_clear()
        .envs(config.worker_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe syscalls (dup2, close_range, prctl) on plain
    // integers it owns by value: no allocation, no locks, no shared state.
    unsafe {
        command.pre_exec(move || {
            for (src, dst) in placement {
                weave_common::shm::inherit_fd_as(src, dst)?;
            }
            spawn_syscalls::child_cloexec_from(fds::FIRST_UNUSED)?;
            spawn_syscalls::child_die_with_parent()?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| spawn_err("exec weave-worker", e))?;
    // Our copies: the child has its own now.
    drop(staged);
    drop(pipe_read);
    if let Some(stderr) = child.stderr.take() {
        super::worker_stderr::forward(child.id(), stderr);
    }

    if let Err(e) = send_bootstrap(config, channel, pipe_write) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

fn send_bootstrap(
    config: &SupervisorConfig,
    channel: &BrokerEndpoint,
    pipe: OwnedFd,
) -> Result<(), SupervisorError> {
    let (to_worker_key, to_broker_key) = channel.keys_for_worker();
    let bootstrap = WorkerBootstrap {
        protocol_version: WORKER_PROTOCOL_VERSION,
        to_worker: channel.to_worker_geometry(),
        to_broker: channel.to_broker_geometry(),
        to_worker_key,
        to_broker_key,
        models: config.models.clone(),
        device: config.device,
        torch_threads: config.torch_threads,
        allow_degraded_sandbox: config.allow_degraded_sandbox,
        seccomp_debug: config.seccomp_debug,
        seccomp_exec_mappings: config.seccomp_exec_mappings,
        library_dirs: config.library_dirs.clone(),
    };
    let mut bytes = worker_proto::encode_bootstrap(&bootstrap)
        .map_err(|e| SupervisorError::Spawn(format!("bootstrap: {e}")))?;
    drop(bootstrap);
    let mut file = std::fs::File::from(pipe);
    // Closing the write end (drop) is the EOF the worker waits for.
    let written = file.write_all(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    written.map_err(|e| {
        SupervisorError::Spawn(format!(
            "writing the bootstrap (the worker exited early?): {e}"
        ))
    })
}
