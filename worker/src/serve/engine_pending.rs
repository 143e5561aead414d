//! Used while the engine's pipeline API is not merged (feature `pipeline`
//! off): libtorch is initialised exactly as in `engine_glue.rs`, but every
//! `Load` is refused with a clear reason, so the broker reports a typed
//! load failure instead of the worker pretending to generate.

use std::ops::ControlFlow;

use weave_common::worker_proto::{ModelEntry, WorkerBootstrap, WorkerDevice, WorkerFailure, WorkerGenerateParams};

pub struct RawImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

fn torch_device(device: WorkerDevice) -> tch::Device {
    match device {
        WorkerDevice::Cpu => tch::Device::Cpu,
        WorkerDevice::Cuda(i) => tch::Device::Cuda(usize::try_from(i).unwrap_or(0)),
    }
}

/// Same initialisation as the real glue: thread pool, then a first tensor on
/// the device while every syscall is still allowed.
pub fn init_torch(bootstrap: &WorkerBootstrap) -> Result<(), String> {
    if let Some(threads) = bootstrap.torch_threads {
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    }
    if let WorkerDevice::Cuda(_) = bootstrap.device {
        if !tch::Cuda::is_available() {
            return Err("CUDA was configured but no CUDA device is available".into());
        }
    }
    let probe = tch::Tensor::ones([16, 16], (tch::Kind::Float, torch_device(bootstrap.device)));
    let sum = probe.matmul(&probe).sum(tch::Kind::Float).double_value(&[]);
    if sum != 4096.0 {
        return Err(format!("the device probe computed {sum}, expected 4096"));
    }
    Ok(())
}

pub struct LoadedModel;

impl LoadedModel {
    pub fn load(_entry: &ModelEntry, _device: WorkerDevice) -> Result<Self, String> {
        Err("this weave-worker was built without the diffusion pipeline (feature `pipeline`)".into())
    }

    pub fn memory_bytes(&self) -> u64 {
        0
    }

    pub fn generate(
        &mut self,
        _params: &WorkerGenerateParams,
        _on_step: &mut dyn FnMut(u32, u32) -> ControlFlow<()>,
    ) -> Result<Vec<RawImage>, WorkerFailure> {
        Err(WorkerFailure::EngineError { reason: "no pipeline in this build".into() })
    }
}
