//! Turns a caller's `GenerateRequest` into a resolved [`WorkerJob`]: model by
//! id only, defaults applied, every bound checked before anything is queued.

use weave_common::proto::{ErrorCode, GenerateRequest};
use weave_common::validate::ParamBounds;

use crate::runner::WorkerJob;
use crate::settings::ModelEntry;

fn invalid(field: &str, allowed: String) -> ErrorCode {
    ErrorCode::InvalidParameter {
        field: field.to_owned(),
        allowed,
    }
}

fn check_dimension(field: &str, value: u32, min: u32, max: u32) -> Result<(), ErrorCode> {
    if value < min || value > max || value % 8 != 0 {
        return Err(invalid(field, format!("a multiple of 8 from {min} to {max}")));
    }
    Ok(())
}

fn check_text(field: &str, text: &str, max: u32) -> Result<(), ErrorCode> {
    if text.len() > max as usize {
        return Err(invalid(field, format!("at most {max} bytes of UTF-8")));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(field, "text without control characters".to_owned()));
    }
    Ok(())
}

/// Checks `request` against `bounds` and the model's defaults. `seed` is
/// used when the request has none.
pub fn resolve(
    request: &GenerateRequest,
    model: &ModelEntry,
    bounds: &ParamBounds,
    job_id: u64,
    random_seed: u64,
) -> Result<WorkerJob, ErrorCode> {
    let defaults = model.generation_defaults();
    let width = request.width.unwrap_or(defaults.width);
    let height = request.height.unwrap_or(defaults.height);
    let steps = request.steps.unwrap_or(defaults.steps);
    let guidance = request.guidance.unwrap_or(defaults.guidance);
    check_dimension("width", width, bounds.min_width, bounds.max_width)?;
    check_dimension("height", height, bounds.min_height, bounds.max_height)?;
    if steps == 0 || steps > bounds.max_steps {
        return Err(invalid("steps", format!("from 1 to {}", bounds.max_steps)));
    }
    if !guidance.is_finite() || guidance < bounds.min_guidance || guidance > bounds.max_guidance {
        return Err(invalid(
            "guidance",
            format!("from {} to {}", bounds.min_guidance, bounds.max_guidance),
        ));
    }
    if request.batch == 0 || request.batch > bounds.max_batch {
        return Err(invalid("batch", format!("from 1 to {}", bounds.max_batch)));
    }
    check_text("prompt", &request.prompt, bounds.max_prompt_len)?;
    check_text(
        "negative_prompt",
        &request.negative_prompt,
        bounds.max_negative_prompt_len,
    )?;
    if let Some(tag) = &request.tag {
        let printable = tag.chars().all(|c| c.is_ascii_graphic());
        if tag.is_empty() || tag.len() > bounds.max_tag_len as usize || !printable {
            return Err(invalid(
                "tag",
                format!("1 to {} printable ASCII characters", bounds.max_tag_len),
            ));
        }
    }
    Ok(WorkerJob {
        job_id,
        model_id: model.id.clone(),
        prompt: request.prompt.clone(),
        negative_prompt: request.negative_prompt.clone(),
        width,
        height,
        steps,
        guidance,
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
        assert_eq!((job.width, job.height, job.steps, job.seed), (32, 32, 10, 1234));
        assert_eq!(job.job_id, 9);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(GenerateRequest { width: Some(33), ..request() }), "width");
        assert_eq!(field_of(GenerateRequest { height: Some(4096), ..request() }), "height");
        assert_eq!(field_of(GenerateRequest { steps: Some(0), ..request() }), "steps");
        assert_eq!(
            field_of(GenerateRequest { guidance: Some(f32::NAN), ..request() }),
            "guidance"
        );
        assert_eq!(field_of(GenerateRequest { batch: 0, ..request() }), "batch");
        assert_eq!(
            field_of(GenerateRequest { prompt: "x".repeat(5000), ..request() }),
            "prompt"
        );
        assert_eq!(
            field_of(GenerateRequest { negative_prompt: "\u{1b}[31m".into(), ..request() }),
            "negative_prompt"
        );
        assert_eq!(field_of(GenerateRequest { tag: Some(" ".into()), ..request() }), "tag");
    }
}
