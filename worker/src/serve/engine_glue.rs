//! The seam between the channel loop and `weave_worker::engine`: loading a
//! model from a table entry, generating with a per-step callback, and turning
//! engine errors into path-free [`WorkerFailure`]s.

use std::ops::ControlFlow;

use weave_common::proto::Scheduler;

use weave_common::worker_proto::{
    ModelEntry, WorkerBootstrap, WorkerDevice, WorkerFailure, WorkerGenerateParams,
};
use weave_worker::engine;

/// One finished image: raw RGB8, row-major.
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

/// Starts libtorch before seccomp: thread pool size, and a first tensor on
/// the device so CUDA (or the CPU allocator) is initialised while every
/// syscall is still allowed.
pub fn init_torch(bootstrap: &WorkerBootstrap) -> Result<(), String> {
    if let Some(threads) = bootstrap.torch_threads {
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        tch::set_num_interop_threads(1);
    }
    let device = torch_device(bootstrap.device);
    if let WorkerDevice::Cuda(_) = bootstrap.device {
        if !tch::Cuda::is_available() {
            return Err("CUDA was configured but no CUDA device is available".into());
        }
    }
    let probe = tch::Tensor::ones([16, 16], (tch::Kind::Float, device));
    let sum = probe.matmul(&probe).sum(tch::Kind::Float).double_value(&[]);
    if sum != 16.0 * 16.0 * 16.0 {
        return Err(format!("the device probe computed {sum}, expected 4096"));
    }
    Ok(())
}

/// A model loaded on the device.
pub struct LoadedModel {
    pipeline: engine::Pipeline,
}

/// The engine's kind for a model table entry; `auto` (and the demo model's
/// `digits`) lets the loader read the diffusers configs.
fn model_kind(kind: &str) -> Option<engine::ModelKind> {
    Some(match kind {
        "" | "auto" | "digits" | "diffusers" => engine::ModelKind::Auto,
        "sd1" | "sd15" | "sd1.5" => engine::ModelKind::Sd1,
        "sd2" | "sd21" | "sd2.1" => engine::ModelKind::Sd2,
        "sd2v" | "sd21v" | "sd2-v" => engine::ModelKind::Sd2V,
        _ => return None,
    })
}

fn scheduler_kind(s: Scheduler) -> engine::SchedulerKind {
    match s {
        Scheduler::Ddim => engine::SchedulerKind::Ddim,
        Scheduler::Euler => engine::SchedulerKind::Euler,
        Scheduler::EulerAncestral => engine::SchedulerKind::EulerAncestral,
        Scheduler::DpmPp2m => engine::SchedulerKind::DpmPlusPlus2M,
        Scheduler::DpmPp2mKarras => engine::SchedulerKind::DpmPlusPlus2MKarras,
    }
}

impl LoadedModel {
    /// Loads `entry`; the error text never contains the path.
    pub fn load(entry: &ModelEntry, device: WorkerDevice) -> Result<Self, String> {
        let kind = model_kind(&entry.kind).ok_or_else(|| {
            format!(
                "unknown model kind {:?} in the broker's model table",
                entry.kind
            )
        })?;
        let spec = engine::ModelSpec {
            kind,
            path: entry.path.clone(),
            config: None,
        };
        let device = match device {
            WorkerDevice::Cpu => engine::DeviceChoice::Cpu,
            WorkerDevice::Cuda(n) => {
                engine::DeviceChoice::Cuda(usize::try_from(n).unwrap_or(usize::MAX))
            }
        };
        let pipeline = engine::Pipeline::load(&spec, device, engine::Precision::Auto)
            .map_err(|e| redact_path(&e.to_string(), entry))?;
        Ok(Self { pipeline })
    }

    pub fn memory_bytes(&self) -> u64 {
        self.pipeline.memory_bytes()
    }

    /// Runs the generation; `on_step(step, total)` is called after every
    /// step and may stop it.
    pub fn generate(
        &mut self,
        params: &WorkerGenerateParams,
        on_step: &mut dyn FnMut(u32, u32) -> ControlFlow<()>,
    ) -> Result<Vec<RawImage>, WorkerFailure> {
        let gp = engine::GenerateParams {
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            width: params.width,
            height: params.height,
            steps: params.steps,
            guidance: f64::from(params.guidance),
            seed: params.seed,
            scheduler: scheduler_kind(params.scheduler),
            batch: params.batch,
            ..Default::default()
        };
        let mut progress = |step: usize, total: usize| {
            on_step(
                u32::try_from(step).unwrap_or(u32::MAX),
                u32::try_from(total).unwrap_or(u32::MAX),
            )
        };
        let images = self
            .pipeline
            .generate(&gp, &mut progress)
            .map_err(|e| match e {
                engine::EngineError::Cancelled => WorkerFailure::Cancelled,
                engine::EngineError::InvalidParams(reason) => WorkerFailure::Unsupported { reason },
                other => WorkerFailure::EngineError {
                    reason: other.to_string(),
                },
            })?;
        Ok(images
            .into_iter()
            .map(|img| RawImage {
                width: img.width,
                height: img.height,
                rgb: img.pixels,
            })
            .collect())
    }
}

/// Engine errors may name the file they failed on; the broker logs worker
/// reasons, and callers must never learn model paths (invariant 10).
fn redact_path(reason: &str, entry: &ModelEntry) -> String {
    let path = entry.path.to_string_lossy();
    if path.is_empty() {
        return reason.to_owned();
    }
    reason.replace(path.as_ref(), &format!("<model {}>", entry.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_redacted_from_reasons() {
        let entry = ModelEntry {
            id: "digits".into(),
            kind: "digits".into(),
            path: "/srv/m/digits".into(),
        };
        let r = redact_path("cannot open /srv/m/digits/unet.safetensors: denied", &entry);
        assert_eq!(r, "cannot open <model digits>/unet.safetensors: denied");
    }
}
