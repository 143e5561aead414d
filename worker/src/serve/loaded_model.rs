//! The seam between the channel loop and `weave_worker::engine`: loading a
//! model from a table entry, generating with a per-step callback, and turning
//! engine errors into path-free [`WorkerFailure`]s.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ops::ControlFlow;

use weave_common::config::Device;
use weave_common::worker_proto::{
    LoraEntry, ModelEntry, WorkerBootstrap, WorkerFailure, WorkerGenerateParams, WorkerLora,
};
use weave_worker::{engine, to_engine};

/// Starts libtorch before seccomp: thread pool size, and a first tensor on
/// the device so CUDA (or the CPU allocator) is initialised while every
/// syscall is still allowed. `device` is the worker's device as configured
/// (`cuda:N`), `torch_device` the one libtorch addresses (`cuda:0`, see
/// `device::torch_device`).
pub fn init_torch(
    bootstrap: &WorkerBootstrap,
    device: Device,
    torch_device: Device,
) -> Result<(), String> {
    if let Some(threads) = bootstrap.torch_threads {
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        tch::set_num_interop_threads(1);
    }
    if let Device::Cuda(_) = device {
        if !tch::Cuda::is_available() {
            return Err(format!(
                "device = \"{device}\" is configured but libtorch sees no CUDA device \
                 (a CPU build of libtorch, no driver, no GPU, or no GPU with that node \
                 /dev/nvidiaN); use device = \"auto\" or \"cpu\""
            ));
        }
        // The broker shows a GPU worker its own GPU only; more would mean
        // `cuda:0` might not be the GPU whose node Landlock granted.
        let visible = tch::Cuda::device_count();
        if visible != 1 {
            return Err(format!(
                "device = \"{device}\": libtorch sees {visible} CUDA devices, expected only \
                 this worker's (CUDA_VISIBLE_DEVICES is set by weave-broker; start the worker \
                 through the broker)"
            ));
        }
    }
    let device = to_engine::device(torch_device)
        .resolve()
        .map_err(|e| e.to_string())?;
    let probe = tch::Tensor::ones([16, 16], (tch::Kind::Float, device));
    let sum = probe.matmul(&probe).sum(tch::Kind::Float).double_value(&[]);
    if sum != 16.0 * 16.0 * 16.0 {
        return Err(format!("the device probe computed {sum}, expected 4096"));
    }
    Ok(())
}

/// How a CPU worker without oneDNN runs the VAE decoder's large 3×3
/// convolutions (engine::conv3x3), said once in its log. NNPACK starts here,
/// before seccomp: it reads the CPU's features and starts its thread pool
/// on its first convolution, so one small convolution runs now.
pub fn large_convolutions() -> &'static str {
    let input = tch::Tensor::ones([1, 2, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
    let weight = tch::Tensor::ones([2, 2, 3, 3], (tch::Kind::Float, tch::Device::Cpu));
    let bias = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
    // The centre pixel sums 2 channels × 9 taps of ones.
    let works = engine::conv3x3::nnpack_ready()
        && engine::conv3x3::conv3x3_nnpack(&input, &weight, &bias)
            .ok()
            .and_then(|out| out.f_double_value(&[0, 0, 4, 4]).ok())
            == Some(18.0);
    if works {
        "NNPACK"
    } else {
        "nine matrix products (NNPACK did not start on this CPU)"
    }
}

/// A model loaded on the device.
pub struct LoadedModel {
    pipeline: engine::Pipeline,
    /// The LoRAs merged now, `(id, weight bits)` in request order.
    applied: Vec<(String, u32)>,
}

impl LoadedModel {
    /// Loads `entry`; a failure's text never contains the path, and files
    /// that do not match the `sha256` pin are their own failure.
    pub fn load(entry: &ModelEntry, device: Device) -> Result<Self, WorkerFailure> {
        let failed = |reason: String| WorkerFailure::LoadFailed { reason };
        let spec = engine::ModelSpec {
            kind: to_engine::model_kind(entry.kind).map_err(failed)?,
            path: entry.path.clone(),
            config: None,
            sha256: entry.sha256.clone(),
        };
        let device = to_engine::device(device);
        let pipeline = engine::Pipeline::load(&spec, device, engine::Precision::Auto).map_err(
            |e| match e {
                engine::EngineError::Loader(engine::LoaderError::PinMismatch) => {
                    WorkerFailure::PinMismatch
                }
                other => failed(redact_path(&other.to_string(), entry)),
            },
        )?;
        Ok(Self {
            pipeline,
            applied: Vec::new(),
        })
    }

    /// Makes the merged LoRAs exactly `wanted` (none: the model as loaded,
    /// bit for bit). Unchanged from the last job: nothing to do. A LoRA
    /// that cannot be used fails the job by its id and leaves the model as
    /// loaded.
    pub fn set_loras(
        &mut self,
        wanted: &[WorkerLora],
        table: &HashMap<String, LoraEntry>,
    ) -> Result<(), WorkerFailure> {
        let key: Vec<(String, u32)> = wanted
            .iter()
            .map(|l| (l.id.clone(), l.weight.to_bits()))
            .collect();
        if key == self.applied {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut files = Vec::with_capacity(wanted.len());
        for lora in wanted {
            let failed = |reason: String| WorkerFailure::LoraFailed {
                id: lora.id.clone(),
                reason,
            };
            let Some(entry) = table.get(&lora.id) else {
                return Err(failed("not in the worker's LoRA table".into()));
            };
            let file = engine::lora::LoraFile::open(&entry.path, entry.sha256.as_deref()).map_err(
                |e| match e {
                    engine::lora::LoraError::PinMismatch => WorkerFailure::LoraPinMismatch {
                        id: lora.id.clone(),
                    },
                    other => failed(redact(&other.to_string(), &entry.path, &lora.id)),
                },
            )?;
            self.pipeline
                .check_lora(&file)
                .map_err(|e| failed(redact(&e.to_string(), &entry.path, &lora.id)))?;
            files.push(file);
        }
        let uses: Vec<engine::lora::LoraUse<'_>> = files
            .iter()
            .zip(wanted)
            .map(|(file, lora)| engine::lora::LoraUse {
                file,
                weight: lora.weight,
            })
            .collect();
        self.applied.clear();
        self.pipeline
            .apply_loras(&uses)
            .map_err(|e| WorkerFailure::EngineError {
                reason: e.to_string(),
            })?;
        self.applied = key;
        eprintln!(
            "weave-worker[{}]: LoRAs {:?} applied in {} ms",
            std::process::id(),
            wanted.iter().map(|l| &l.id).collect::<Vec<_>>(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.pipeline.memory_bytes()
    }

    /// Runs the generation; `on_step(step, total)` is called after every
    /// step and may stop it, `on_preview` with each preview the job asked
    /// for (`preview_every`).
    pub fn generate(
        &mut self,
        params: &WorkerGenerateParams,
        on_step: &mut dyn FnMut(u32, u32) -> ControlFlow<()>,
        on_preview: &mut dyn FnMut(engine::Preview) -> ControlFlow<()>,
    ) -> Result<Vec<engine::RgbImage>, WorkerFailure> {
        let image = match &params.image {
            Some(input) => Some(
                to_engine::image_input(input, params.width, params.height)
                    .map_err(|(field, problem)| WorkerFailure::BadImage { field, problem })?,
            ),
            None => None,
        };
        let gp = engine::GenerateParams {
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            width: params.width,
            height: params.height,
            steps: params.steps,
            guidance: f64::from(params.guidance),
            seed: params.seed,
            scheduler: to_engine::scheduler(params.scheduler),
            batch: params.batch,
            max_prompt_chunks: params.max_prompt_chunks,
            image,
            ..Default::default()
        };
        let mut progress = |step: usize, total: usize| {
            on_step(
                u32::try_from(step).unwrap_or(u32::MAX),
                u32::try_from(total).unwrap_or(u32::MAX),
            )
        };
        let preview = engine::PreviewRequest {
            every: params.preview_every,
            max_size: params.preview_max_size,
        };
        self.pipeline
            .generate_with_previews(&gp, preview, &mut progress, on_preview)
            .map_err(|e| match e {
                engine::EngineError::Cancelled => WorkerFailure::Cancelled,
                engine::EngineError::PromptTooLong { field, chunks } => {
                    WorkerFailure::PromptTooLong { field, chunks }
                }
                engine::EngineError::InvalidParams(reason) => WorkerFailure::Unsupported { reason },
                engine::EngineError::NotBuilt(reason) if params.image.is_some() => {
                    WorkerFailure::ImageNotBuilt { reason }
                }
                other => WorkerFailure::EngineError {
                    reason: other.to_string(),
                },
            })
    }
}

/// A LoRA error's text with the file's path replaced by `<lora ID>`.
fn redact(reason: &str, path: &std::path::Path, id: &str) -> String {
    let path = path.to_string_lossy();
    if path.is_empty() {
        return reason.to_owned();
    }
    reason.replace(path.as_ref(), &format!("<lora {id}>"))
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
            kind: weave_common::config::ModelKind::Sd1,
            path: "/srv/m/digits".into(),
            sha256: None,
        };
        let r = redact_path("cannot open /srv/m/digits/unet.safetensors: denied", &entry);
        assert_eq!(r, "cannot open <model digits>/unet.safetensors: denied");
    }
}
