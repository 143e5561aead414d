//! Turns a caller's `GenerateRequest` into a resolved [`WorkerJob`]: model by
//! id only, defaults applied, every bound checked before anything is queued.

use weave_common::proto::{ErrorCode, GenerateRequest};
use weave_common::validate::{validate_generate, ParamBounds};

use crate::runner::WorkerJob;
use crate::settings::ModelEntry;

/// Checks `request` against `bounds` (common rules) and resolves the
/// model's defaults. `random_seed` is used when the request has none.
pub fn resolve(
    request: &GenerateRequest,
    model: &ModelEntry,
    bounds: &ParamBounds,
    job_id: u64,
    random_seed: u64,
) -> Result<WorkerJob, ErrorCode> {
    validate_generate(request, bounds)?;
    let defaults = model.generation_defaults();
    // Defaults were checked against the bounds when the config loaded.
    Ok(WorkerJob {
        job_id,
        model_id: model.id.clone(),
        prompt: request.prompt.clone(),
        negative_prompt: request.negative_prompt.clone(),
        width: request.width.unwrap_or(defaults.width),
        height: request.height.unwrap_or(defaults.height),
        steps: request.steps.unwrap_or(defaults.steps),
        guidance: request.guidance.unwrap_or(defaults.guidance),
        seed: request.seed.unwrap_or(random_seed),
        scheduler: request.scheduler.unwrap_or(defaults.scheduler),
        batch: request.batch,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::ModelDefaults;

    fn model() -> ModelEntry {
        ModelEntry {
            id: "digits".into(),
            kind: "digits".into(),
            path: "/m".into(),
            sha256: None,
            defaults: ModelDefaults {
                width: 32,
                height: 32,
                steps: 10,
                guidance: 1.0,
                scheduler: "ddim".into(),
            },
        }
    }

    fn request() -> GenerateRequest {
        GenerateRequest {
            model_id: "digits".into(),
            prompt: "7".into(),
            negative_prompt: String::new(),
            width: None,
            height: None,
            steps: None,
            guidance: None,
            seed: None,
            scheduler: None,
            batch: 1,
            tag: None,
        }
    }

    fn field_of(request: GenerateRequest) -> String {
        match resolve(&request, &model(), &ParamBounds::default(), 1, 5) {
            Err(ErrorCode::InvalidParameter { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_random_seed_apply() {
        let job = resolve(&request(), &model(), &ParamBounds::default(), 9, 1234).unwrap();
        assert_eq!(
            (job.width, job.height, job.steps, job.seed),
            (32, 32, 10, 1234)
        );
        assert_eq!(job.job_id, 9);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(GenerateRequest {
                width: Some(33),
                ..request()
            }),
            "width"
        );
        assert_eq!(
            field_of(GenerateRequest {
                height: Some(4096),
                ..request()
            }),
            "height"
        );
        assert_eq!(
            field_of(GenerateRequest {
                steps: Some(0),
                ..request()
            }),
            "steps"
        );
        assert_eq!(
            field_of(GenerateRequest {
                guidance: Some(f32::NAN),
                ..request()
            }),
            "guidance"
        );
        assert_eq!(
            field_of(GenerateRequest {
                batch: 0,
                ..request()
            }),
            "batch"
        );
        assert_eq!(
            field_of(GenerateRequest {
                prompt: "x".repeat(5000),
                ..request()
            }),
            "prompt"
        );
        assert_eq!(
            field_of(GenerateRequest {
                negative_prompt: "\u{1b}[31m".into(),
                ..request()
            }),
            "negative_prompt"
        );
        assert_eq!(
            field_of(GenerateRequest {
                tag: Some(" ".into()),
                ..request()
            }),
            "tag"
        );
    }
}
