//! The broker's side of the spawn contract (`docs/WORKER.md`): through the
//! spawner (`spawner.rs`), `weave-worker` starts with an empty environment,
//! stdin on /dev/null, stderr into a pipe the broker reads and labels
//! (`worker_stderr`), and exactly fds 3–7; then the bootstrap through the
//! pipe.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use weave_common::worker_proto::channel::BrokerEndpoint;
use weave_common::worker_proto::{self, WorkerBootstrap, WORKER_PROTOCOL_VERSION};

use super::spawner::{SpawnFds, Spawner};
use super::worker_process::WorkerProcess;
use super::{spawn_syscalls, SupervisorConfig, SupervisorError};

/// Starts the worker and hands it the bootstrap. The worker is killed (and
/// reaped) if the bootstrap cannot be delivered.
pub fn spawn_worker(
    spawner: &Spawner,
    config: &SupervisorConfig,
    channel: &BrokerEndpoint,
) -> Result<WorkerProcess, SupervisorError> {
    let spawn_err = |what: &str, e: std::io::Error| SupervisorError::Spawn(format!("{what}: {e}"));
    let (pipe_read, pipe_write) =
        spawn_syscalls::pipe_cloexec().map_err(|e| spawn_err("bootstrap pipe", e))?;
    let (stderr_read, stderr_write) =
        spawn_syscalls::pipe_cloexec().map_err(|e| spawn_err("stderr pipe", e))?;
    let mut child = spawner
        .spawn(&SpawnFds {
            channel: channel.worker_fds(),
            bootstrap_read: pipe_read.as_fd(),
            stderr_write: stderr_write.as_fd(),
        })
        .map_err(|e| SupervisorError::Spawn(e.to_string()))?;
    // Our copies: the worker has its own now.
    drop(pipe_read);
    drop(stderr_write);
    super::worker_stderr::forward(child.id(), std::fs::File::from(stderr_read));

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
        gpu: config.gpu,
        torch_threads: config.torch_threads,
        allow_degraded_sandbox: config.allow_degraded_sandbox,
        seccomp_debug: config.seccomp_debug,
        seccomp_exec_mappings: config.seccomp_exec_mappings,
        library_dirs: config.library_dirs.clone(),
        loras: config.loras.clone(),
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
