//! How the supervisor starts and treats the worker.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use weave_common::config::Device;
use weave_common::worker_proto::{LoraEntry, ModelEntry};

/// How the supervisor starts and treats the worker; built by the broker
/// from its configuration.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Path of the `weave-worker` executable.
    pub worker_exe: PathBuf,
    /// The model table (id, kind, path), from the broker's config only.
    pub models: Vec<ModelEntry>,
    /// The LoRA table (id, path, pin), from the broker's config only.
    pub loras: Vec<LoraEntry>,
    /// The config's device for this worker; `Auto` stays `Auto` (the worker
    /// decides whether it can use [`Self::gpu`]).
    pub device: Device,
    /// The GPU node (`/dev/nvidiaN`) the broker made the worker's visible
    /// one (`CUDA_VISIBLE_DEVICES`, broker/src/gpu_env.rs): `N` for
    /// `cuda:N`, the one `auto` was given, `None` for the CPU.
    pub gpu: Option<u32>,
    pub torch_threads: Option<u32>,
    pub allow_degraded_sandbox: bool,
    pub seccomp_debug: bool,
    pub seccomp_exec_mappings: bool,
    /// libtorch/CUDA library folders the worker may read.
    pub library_dirs: Vec<PathBuf>,
    /// Environment of the worker (it starts from an empty one), e.g.
    /// `OMP_NUM_THREADS`. Never keys.
    pub worker_env: Vec<(OsString, OsString)>,
    /// Largest image the broker admits (`max_width × max_height`); sizes the
    /// worker → broker slots.
    pub max_image_pixels: usize,
    /// `limits.max_image_request_bytes`: the largest image-bearing request,
    /// whose PNG bytes travel to the worker in one broker → worker slot.
    pub max_image_request_bytes: usize,
    /// Time for a fresh worker to confine itself and say `Ready`.
    pub handshake_timeout: Duration,
    /// Time for a model load.
    pub load_timeout: Duration,
    /// Time for an acknowledgement (`Unloaded`, `RekeyAck`) or for a job to
    /// stop after a cancel.
    pub reply_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive crashes with a model loaded before it is quarantined.
    pub quarantine_after: u32,
}

impl SupervisorConfig {
    /// Sensible timings for a worker executable and model table.
    pub fn new(worker_exe: PathBuf, models: Vec<ModelEntry>) -> Self {
        Self {
            worker_exe,
            models,
            loras: Vec::new(),
            device: Device::Cpu,
            gpu: None,
            torch_threads: None,
            allow_degraded_sandbox: false,
            seccomp_debug: false,
            seccomp_exec_mappings: false,
            library_dirs: Vec::new(),
            worker_env: Vec::new(),
            max_image_pixels: 1024 * 1024,
            max_image_request_bytes: weave_common::proto::DEFAULT_MAX_IMAGE_REQUEST_FRAME as usize,
            handshake_timeout: Duration::from_secs(30),
            load_timeout: Duration::from_secs(300),
            reply_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            quarantine_after: 3,
        }
    }
}
