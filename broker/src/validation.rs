//! Turns a caller's `GenerateRequest` into the worker's resolved
//! [`WorkerGenerateParams`]: model by id only, defaults applied, every bound
//! checked before anything is queued.
#![forbid(unsafe_code)]

use weave_common::proto::{ErrorCode, GenerateRequest};
use weave_common::validate::{validate_generate, ParamBounds};

use weave_common::worker_proto::WorkerGenerateParams;

use crate::settings::ModelConfig;

/// Checks `request` against `bounds` (common rules) and resolves the
/// model's defaults. `random_seed` is used when the request has none;
/// `max_prompt_chunks` travels to the worker, which alone can count tokens.
pub fn resolve(
    request: &GenerateRequest,
    model: &ModelConfig,
    bounds: &ParamBounds,
    max_prompt_chunks: u32,
    random_seed: u64,
) -> Result<WorkerGenerateParams, ErrorCode> {
    validate_generate(request, bounds)?;
    let defaults = model.defaults();
    // Defaults were checked against the bounds when the config loaded.
    Ok(WorkerGenerateParams {
        model_id: model.id.clone(),
        prompt: request.prompt.clone(),
        negative_prompt: if request.use_model_negative && request.negative_prompt.is_empty() {
            model.default_negative_prompt().to_owned()
        } else {
            request.negative_prompt.clone()
        },
        width: request.width.unwrap_or(defaults.width),
        height: request.height.unwrap_or(defaults.height),
        steps: request.steps.unwrap_or(defaults.steps),
        guidance: request.guidance.unwrap_or(defaults.guidance),
        seed: request.seed.unwrap_or(random_seed),
        scheduler: request.scheduler.unwrap_or(defaults.scheduler),
        batch: request.batch,
        max_prompt_chunks,
    })
}
