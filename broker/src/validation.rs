//! Turns a caller's `GenerateRequest` into the worker's resolved
//! [`WorkerGenerateParams`]: model by id only, defaults applied, every bound
//! checked before anything is queued.
#![forbid(unsafe_code)]

use weave_common::config::Limits;
use weave_common::image::{validate_images, DEFAULT_STRENGTH};
use weave_common::proto::{ErrorCode, GenerateRequest};
use weave_common::validate::{validate_generate, validate_preview_every, ParamBounds};

use weave_common::worker_proto::{WorkerGenerateParams, WorkerImageInput, WorkerLora};

use crate::settings::ModelConfig;

/// Checks `request` against the model's bounds (`[model.bounds]` over
/// `bounds`, common rules) and resolves the model's defaults. `random_seed`
/// is used when the request has none; `max_prompt_chunks` travels to the
/// worker, which alone can count tokens.
pub fn resolve(
    request: &GenerateRequest,
    model: &ModelConfig,
    bounds: &ParamBounds,
    max_prompt_chunks: u32,
    random_seed: u64,
) -> Result<WorkerGenerateParams, ErrorCode> {
    validate_generate(request, &model.bounds(bounds))?;
    let defaults = model.defaults();
    let width = request.width.unwrap_or(defaults.width);
    let height = request.height.unwrap_or(defaults.height);
    let steps = request.steps.unwrap_or(defaults.steps);
    // Image inputs are checked against the resolved size: their PNG
    // structure and IHDR only, nothing is decoded here (docs/SANDBOX.md).
    validate_images(request, width, height, steps)?;
    let image = request.init_image.as_ref().map(|init| WorkerImageInput {
        init_png: init.clone(),
        mask_png: request.mask.clone(),
        strength: request.strength.unwrap_or(DEFAULT_STRENGTH),
    });
    // Defaults were checked against the bounds when the config loaded.
    Ok(WorkerGenerateParams {
        model_id: model.id.clone(),
        prompt: request.prompt.clone(),
        negative_prompt: if request.use_model_negative && request.negative_prompt.is_empty() {
            model.default_negative_prompt().to_owned()
        } else {
            request.negative_prompt.clone()
        },
        width,
        height,
        steps,
        guidance: request.guidance.unwrap_or(defaults.guidance),
        seed: request.seed.unwrap_or(random_seed),
        scheduler: request.scheduler.unwrap_or(defaults.scheduler),
        batch: request.batch,
        max_prompt_chunks,
        image,
        preview_every: 0,
        preview_max_size: 0,
        // Checked against the config by the caller (`validate_loras`).
        loras: request
            .loras
            .iter()
            .map(|lora| WorkerLora {
                id: lora.id.clone(),
                weight: lora.weight,
            })
            .collect(),
    })
}

/// Checks `request.preview_every` against `[limits]` and the resolved
/// steps, and sets the previews of `params` (none when it is 0).
pub fn resolve_previews(
    request: &GenerateRequest,
    limits: &Limits,
    params: &mut WorkerGenerateParams,
) -> Result<(), ErrorCode> {
    // Of the steps that run: with an init image, int(steps × strength).
    validate_preview_every(
        request.preview_every,
        limits.min_preview_every,
        params.steps_to_run(),
    )?;
    params.preview_every = request.preview_every;
    params.preview_max_size = if request.preview_every == 0 {
        0
    } else {
        limits.preview_max_size
    };
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weave_common::config::{ModelBounds, ModelDefaults, ModelKind};

    fn request(width: u32) -> GenerateRequest {
        GenerateRequest {
            model_id: "xl".into(),
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            width: Some(width),
            height: None,
            steps: None,
            guidance: None,
            seed: Some(1),
            scheduler: None,
            batch: 1,
            tag: None,
            use_model_negative: false,
            init_image: None,
            mask: None,
            strength: None,
            loras: Vec::new(),
            preview_every: 0,
        }
    }

    /// `[model.bounds]` narrows `[bounds]` for that model only.
    #[test]
    fn a_models_own_bounds_apply_to_its_requests() {
        let bounds = ParamBounds {
            max_width: 2048,
            max_height: 2048,
            ..ParamBounds::default()
        };
        let mut model = ModelConfig {
            id: "xl".into(),
            kind: ModelKind::Sdxl,
            path: "/m".into(),
            sha256: None,
            defaults: ModelDefaults::default(),
            bounds: ModelBounds::default(),
            native_size: None,
            max_workers: None,
        };
        assert!(resolve(&request(512), &model, &bounds, 8, 0).is_ok());
        model.bounds.min_width = Some(768);
        model.bounds.max_width = Some(1536);
        assert!(matches!(
            resolve(&request(512), &model, &bounds, 8, 0),
            Err(ErrorCode::InvalidParameter { field, allowed })
                if field == "width" && allowed.contains("768") && allowed.contains("1536")
        ));
        assert!(resolve(&request(1536), &model, &bounds, 8, 0).is_ok());
        assert!(matches!(
            resolve(&request(2048), &model, &bounds, 8, 0),
            Err(ErrorCode::InvalidParameter { .. })
        ));
    }

    /// `preview_every` is checked against the resolved steps (the model's
    /// default here) and `[limits]`, which also give the preview size.
    #[test]
    fn previews_follow_the_limits_and_the_steps() {
        let model = ModelConfig {
            id: "xl".into(),
            kind: ModelKind::Sdxl,
            path: "/m".into(),
            sha256: None,
            defaults: ModelDefaults {
                steps: Some(6),
                ..ModelDefaults::default()
            },
            bounds: ModelBounds::default(),
            native_size: None,
            max_workers: None,
        };
        let limits = Limits {
            min_preview_every: 2,
            preview_max_size: 96,
            ..Limits::default()
        };
        let run = |every: u32| {
            let mut req = request(512);
            req.preview_every = every;
            let mut params = resolve(&req, &model, &ParamBounds::default(), 8, 0)?;
            resolve_previews(&req, &limits, &mut params).map(|()| params)
        };
        let off = run(0).unwrap();
        assert_eq!((off.preview_every, off.preview_max_size), (0, 0));
        let on = run(3).unwrap();
        assert_eq!((on.preview_every, on.preview_max_size), (3, 96));
        for every in [1, 7] {
            match run(every) {
                Err(ErrorCode::InvalidParameter { field, allowed }) => {
                    assert_eq!(field, "preview_every");
                    assert!(allowed.contains("from 2 to 6"), "{allowed}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
