//! Setting up the production worker: where `weave-worker` and its libtorch
//! libraries are, and the supervisor's configuration from the broker's.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use weave_common::config::{pool, Config, Device};
use weave_common::worker_proto::{LoraEntry, ModelEntry};

use crate::gpu_env;
use crate::supervisor::{SupervisorConfig, WorkerSupervisor};

/// libtorch's library folder as known when the broker was built (the worker
/// is linked against the same one); packages put it in `<prefix>/lib/weave`.
const BUILD_LIBTORCH_LIB: Option<&str> = option_env!("WEAVE_BUILD_LIBTORCH_LIB");

/// Why the worker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerSetupError {
    #[error(
        "the worker executable {0} is missing (nor in <prefix>/libexec/weave/); install \
         weave-worker next to weave-broker (cargo build --bins builds both)"
    )]
    MissingWorker(PathBuf),
    #[error("cannot locate the broker executable: {0}")]
    CurrentExe(std::io::Error),
}

/// `weave-worker` next to the running `weave-broker` (the build tree), or in
/// `<prefix>/libexec/weave/` (the packages: `/usr/bin/weave-broker` and
/// `/usr/libexec/weave/weave-worker`, so the worker is not on `$PATH`).
pub fn worker_executable() -> Result<PathBuf, WorkerSetupError> {
    let exe = std::env::current_exe().map_err(WorkerSetupError::CurrentExe)?;
    let sibling = exe.with_file_name("weave-worker");
    let libexec = exe
        .parent()
        .and_then(|bin| bin.parent())
        .map(|prefix| prefix.join("libexec/weave/weave-worker"));
    std::iter::once(sibling.clone())
        .chain(libexec)
        .find(|candidate| candidate.is_file())
        .ok_or(WorkerSetupError::MissingWorker(sibling))
}

fn library_dirs(worker: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = BUILD_LIBTORCH_LIB.map(PathBuf::from) {
        dirs.push(dir);
    }
    if let Some(prefix) = worker.parent().and_then(|bin| bin.parent()) {
        dirs.push(prefix.join("lib/weave"));
    }
    dirs.into_iter()
        .filter(|dir| dir.is_dir())
        .filter_map(|dir| dir.canonicalize().ok())
        .collect()
}

/// The supervisor configuration for `config`.
pub fn supervisor_config(config: &Config, worker: PathBuf) -> SupervisorConfig {
    let models = config
        .models
        .iter()
        .map(|model| ModelEntry {
            id: model.id.clone(),
            kind: model.kind,
            path: model.path.clone(),
            sha256: model.sha256.clone(),
        })
        .collect();
    let library_dirs = library_dirs(&worker);
    let mut supervisor = SupervisorConfig::new(worker, models);
    supervisor.library_dirs = library_dirs;
    supervisor.loras = config
        .loras
        .iter()
        .map(|lora| LoraEntry {
            id: lora.id.clone(),
            path: lora.path.clone(),
            sha256: lora.sha256.clone(),
        })
        .collect();
    // `auto` goes to the worker as it is: only the worker's libtorch can say
    // whether it sees a CUDA device (it reports what it chose in `Ready`).
    supervisor.device = config.worker.device;
    supervisor.torch_threads = config.worker.torch_threads;
    supervisor.allow_degraded_sandbox = config.worker.allow_degraded_sandbox;
    supervisor.seccomp_debug = config.worker.seccomp_debug;
    supervisor.seccomp_exec_mappings = config.worker.seccomp_exec_mappings;
    supervisor.max_image_pixels =
        config.bounds.max_width as usize * config.bounds.max_height as usize;
    supervisor.max_image_request_bytes = config.limits.max_image_request_bytes as usize;
    supervisor
}

/// One supervisor per worker of the pool `config` asks for (`[worker]
/// count` / `devices`), each with its device and, for a GPU worker, the
/// environment that shows it that GPU only (`gpu_env`); the workers
/// themselves start on first use.
pub fn start_pool(config: &Config) -> Result<Vec<(Device, WorkerSupervisor)>, WorkerSetupError> {
    let worker = worker_executable()?;
    let base = supervisor_config(config, worker);
    let visible = visible_gpus();
    let uuids = gpu_env::read_gpu_uuids();
    let devices = pool::worker_devices(&config.worker, &visible);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let gpus: Vec<Option<u32>> = devices
        .iter()
        .enumerate()
        .map(|(slot, &device)| gpu_env::gpu_of(device, &visible, slot))
        .collect();
    let threads = pool_torch_threads(config.worker.torch_threads, &gpus, cpus);
    Ok(devices
        .into_iter()
        .zip(gpus)
        .zip(threads)
        .map(|((device, gpu), threads)| {
            let mut supervisor = base.clone();
            supervisor.device = device;
            supervisor.gpu = gpu;
            supervisor.torch_threads = threads;
            supervisor.worker_env.extend(gpu_env::gpu_env(gpu, &uuids));
            (device, WorkerSupervisor::new(supervisor))
        })
        .collect())
}

/// Each worker's libtorch threads, in pool order: `torch_threads` when set.
/// Unset, several workers computing on the CPU share the CPUs out among
/// them (at least one each), since libtorch's default of one thread per CPU
/// in every one would make them spin against each other; a lone CPU worker
/// and every GPU worker (whose CPU side is tokenising and PNG encoding)
/// keep libtorch's default. `gpus`: each worker's GPU
/// ([`gpu_env::gpu_of`]), `None` for a CPU worker.
fn pool_torch_threads(
    configured: Option<u32>,
    gpus: &[Option<u32>],
    cpus: usize,
) -> Vec<Option<u32>> {
    let on_cpu = gpus.iter().filter(|gpu| gpu.is_none()).count();
    let share = match configured {
        Some(threads) => Some(threads),
        None if on_cpu > 1 => u32::try_from((cpus / on_cpu).max(1)).ok(),
        None => None,
    };
    gpus.iter()
        .map(|gpu| match (configured, gpu) {
            (Some(threads), _) => Some(threads),
            (None, Some(_)) => None,
            (None, None) => share,
        })
        .collect()
}

/// The CUDA device indices whose nodes the broker sees (`/dev/nvidiaN`),
/// for `devices = ["auto"]`.
fn visible_gpus() -> Vec<u32> {
    let names: Vec<String> = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    pool::gpu_indices(names.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_cpu_workers_share_the_cpus_unless_threads_are_set() {
        let two_cpu = [None, None];
        assert_eq!(pool_torch_threads(None, &two_cpu, 16), vec![Some(8); 2]);
        assert_eq!(pool_torch_threads(None, &two_cpu, 1), vec![Some(1); 2]);
        assert_eq!(pool_torch_threads(Some(3), &two_cpu, 16), vec![Some(3); 2]);
        // One worker, or GPUs only: libtorch's own default.
        assert_eq!(pool_torch_threads(None, &[None], 16), vec![None]);
        assert_eq!(
            pool_torch_threads(None, &[Some(0), Some(1)], 16),
            vec![None, None]
        );
    }

    #[test]
    fn in_a_mixed_pool_only_the_cpu_workers_share_the_cpus() {
        // ["cpu", "cpu", "cuda:0"]: the GPU worker takes no share.
        assert_eq!(
            pool_torch_threads(None, &[None, None, Some(0)], 16),
            vec![Some(8), Some(8), None]
        );
        // ["cpu", "cuda:0"]: the CPU worker alone has every CPU.
        assert_eq!(
            pool_torch_threads(None, &[None, Some(0)], 16),
            vec![None, None]
        );
        assert_eq!(
            pool_torch_threads(Some(2), &[None, Some(0)], 16),
            vec![Some(2), Some(2)]
        );
    }
}
