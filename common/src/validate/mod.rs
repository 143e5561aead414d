//! Bounds for every generation parameter, checked by the broker before a job
//! is queued. An error names the field and the allowed range, never the value.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use crate::proto::{ErrorCode, GenerateRequest, GenerationDefaults, LoraChoice};

/// Allowed ranges for generation parameters; `[bounds]` in the config.
///
/// The defaults suit a single consumer GPU running SD 1.x-sized models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParamBounds {
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub max_steps: u32,
    pub min_guidance: f32,
    pub max_guidance: f32,
    /// In bytes of UTF-8.
    pub max_prompt_len: u32,
    pub max_negative_prompt_len: u32,
    pub max_batch: u32,
    pub max_tag_len: u32,
}

impl Default for ParamBounds {
    fn default() -> Self {
        Self {
            min_width: 32,
            max_width: 1024,
            min_height: 32,
            max_height: 1024,
            max_steps: 150,
            min_guidance: 0.0,
            max_guidance: 30.0,
            max_prompt_len: 2000,
            max_negative_prompt_len: 2000,
            max_batch: 4,
            max_tag_len: 64,
        }
    }
}

/// Longest accepted model id, in bytes.
pub const MAX_MODEL_ID_LEN: usize = 64;
/// Longest accepted `Hello` client name, in bytes.
pub const MAX_CLIENT_NAME_LEN: usize = 64;
/// Width and height must be multiples of this (the VAE downsamples by 8).
pub const DIMENSION_MULTIPLE: u32 = 8;

/// Largest `limits.preview_max_size` the config accepts: previews are
/// small by design (the latents are 1/8 of the image's edge).
pub const MAX_PREVIEW_SIZE: u32 = 1024;

/// Description of the identifier charset, as shown to callers.
const IDENTIFIER_CHARSET: &str =
    "ASCII letters, digits, '.', '_' and '-', starting with a letter or digit";

/// A parameter outside its bounds. Names the field and what is allowed;
/// never carries the rejected value, so it is safe to log and to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// A number outside `min..=max`.
    OutOfRange {
        field: &'static str,
        min: String,
        max: String,
    },
    /// A width or height in range but not a multiple of
    /// [`DIMENSION_MULTIPLE`].
    NotMultiple {
        field: &'static str,
        multiple: u32,
        min: u32,
        max: u32,
    },
    /// NaN or an infinity.
    NotFinite {
        field: &'static str,
        min: String,
        max: String,
    },
    /// Longer than `max_bytes` bytes of UTF-8 (or shorter than `min_bytes`).
    BadLength {
        field: &'static str,
        min_bytes: u32,
        max_bytes: u32,
    },
    /// A character outside the field's charset.
    ForbiddenCharacter {
        field: &'static str,
        allowed: &'static str,
    },
    /// A prompt whose A1111 attention syntax does not parse: a `(text:w)`
    /// weight that is not a number or is out of range.
    BadPromptSyntax { field: &'static str },
    /// `mask` or `strength` without `init_image`.
    NeedsInitImage { field: &'static str },
    /// `strength` not in (0, 1].
    BadStrength,
    /// `int(steps × strength)` is 0: no denoising step would run.
    StrengthRunsNoStep { steps: u32 },
    /// `init_image` or `mask` is not a usable PNG of the request's size.
    BadImage {
        field: &'static str,
        problem: crate::image::ImageProblem,
    },
    /// `preview_every` neither 0 nor from `min` to `max` (the job's steps).
    Preview { min: u32, max: u32 },
    /// A list longer than `max` entries.
    TooMany { field: &'static str, max: u32 },
    /// A LoRA id the config does not define.
    UnknownLora { field: &'static str },
    /// A configured LoRA not made for the requested model (`[[lora]] models`).
    LoraNotForModel { field: &'static str },
    /// The same LoRA twice in one request.
    Duplicate { field: &'static str },
}

impl ValidationError {
    /// The request field that failed.
    pub fn field(&self) -> &'static str {
        match self {
            ValidationError::OutOfRange { field, .. }
            | ValidationError::NotMultiple { field, .. }
            | ValidationError::NotFinite { field, .. }
            | ValidationError::BadLength { field, .. }
            | ValidationError::ForbiddenCharacter { field, .. }
            | ValidationError::BadPromptSyntax { field }
            | ValidationError::NeedsInitImage { field }
            | ValidationError::BadImage { field, .. }
            | ValidationError::TooMany { field, .. }
            | ValidationError::UnknownLora { field }
            | ValidationError::LoraNotForModel { field }
            | ValidationError::Duplicate { field } => field,
            ValidationError::BadStrength | ValidationError::StrengthRunsNoStep { .. } => "strength",
            ValidationError::Preview { .. } => "preview_every",
        }
    }

    /// What the field accepts, phrased to follow "must be".
    pub fn allowed(&self) -> String {
        match self {
            ValidationError::OutOfRange { min, max, .. } => format!("from {min} to {max}"),
            ValidationError::NotMultiple {
                multiple, min, max, ..
            } => format!("a multiple of {multiple} from {min} to {max}"),
            ValidationError::NotFinite { min, max, .. } => {
                format!("a finite number from {min} to {max}")
            }
            ValidationError::BadLength {
                min_bytes,
                max_bytes,
                ..
            } if *min_bytes == 0 => format!("at most {max_bytes} bytes of UTF-8"),
            ValidationError::BadLength {
                min_bytes,
                max_bytes,
                ..
            } => format!("{min_bytes} to {max_bytes} bytes long"),
            ValidationError::ForbiddenCharacter { allowed, .. } => {
                format!("made only of {allowed}")
            }
            ValidationError::BadPromptSyntax { .. } => format!(
                "in A1111 prompt syntax, each `(text:weight)` weight a number from -{max} to {max} \
                 (write `\\(` and `\\)` for literal brackets)",
                max = crate::prompt::syntax::MAX_EXPLICIT_WEIGHT
            ),
            ValidationError::NeedsInitImage { .. } => {
                "left out unless init_image is sent (send the starting image as init_image, \
                 or leave this field out for text to image)"
                    .to_owned()
            }
            ValidationError::BadStrength => format!(
                "a number above 0 and at most 1 (the share of the steps run on the noised \
                 init_image; {} when left out)",
                crate::image::DEFAULT_STRENGTH
            ),
            ValidationError::StrengthRunsNoStep { steps } => format!(
                "large enough that int({steps} steps × strength) is at least 1 (no step would \
                 run; raise the strength or the steps)"
            ),
            ValidationError::BadImage { problem, .. } => problem.allowed(),
            ValidationError::Preview { min, max } if min > max => format!(
                "0 (no previews): the job's {max} steps are fewer than limits.min_preview_every \
                 ({min})"
            ),
            ValidationError::Preview { min, max } => {
                format!("0 (no previews) or from {min} to {max} (the job's steps)")
            }
            ValidationError::TooMany { max, .. } => format!("at most {max} entries"),
            ValidationError::UnknownLora { .. } => {
                "the id of a configured LoRA (`sshmctl models` lists them)".to_owned()
            }
            ValidationError::LoraNotForModel { .. } => {
                "a LoRA made for the requested model (`sshmctl models` lists which fit)".to_owned()
            }
            ValidationError::Duplicate { .. } => "each LoRA at most once".to_owned(),
        }
    }
}

// The message is built from `field()` and `allowed()` so that it reads the
// same as the `ErrorCode::InvalidParameter` a caller receives.
impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must be {}", self.field(), self.allowed())
    }
}

impl std::error::Error for ValidationError {}

impl From<ValidationError> for ErrorCode {
    fn from(error: ValidationError) -> Self {
        ErrorCode::InvalidParameter {
            field: error.field().to_owned(),
            allowed: error.allowed(),
        }
    }
}

/// Checks every field of a generation request against `bounds`.
///
/// `None` fields (model defaults) are not checked here: the defaults come
/// from the config and are checked with [`validate_defaults`] when it loads.
/// Whether the model id names a configured model is the broker's lookup.
pub fn validate_generate(
    request: &GenerateRequest,
    bounds: &ParamBounds,
) -> Result<(), ValidationError> {
    validate_model_id(&request.model_id)?;
    validate_text("prompt", &request.prompt, bounds.max_prompt_len)?;
    validate_text(
        "negative_prompt",
        &request.negative_prompt,
        bounds.max_negative_prompt_len,
    )?;
    validate_prompt_syntax("prompt", &request.prompt)?;
    validate_prompt_syntax("negative_prompt", &request.negative_prompt)?;
    if let Some(width) = request.width {
        validate_dimension("width", width, bounds.min_width, bounds.max_width)?;
    }
    if let Some(height) = request.height {
        validate_dimension("height", height, bounds.min_height, bounds.max_height)?;
    }
    if let Some(steps) = request.steps {
        validate_range("steps", steps, 1, bounds.max_steps)?;
    }
    if let Some(guidance) = request.guidance {
        validate_guidance(guidance, bounds)?;
    }
    validate_range("batch", request.batch, 1, bounds.max_batch)?;
    if let Some(tag) = &request.tag {
        validate_identifier("tag", tag, bounds.max_tag_len)?;
    }
    crate::image::validate_image_fields(request)?;
    for lora in &request.loras {
        validate_identifier("loras.id", &lora.id, MAX_MODEL_ID_LEN as u32)?;
        if !lora.weight.is_finite() {
            return Err(ValidationError::NotFinite {
                field: "loras.weight",
                min: "the LoRA's min_weight".into(),
                max: "its max_weight".into(),
            });
        }
    }
    Ok(())
}

/// `preview_every` of a request that runs `steps` steps (the request's or
/// the model's default): 0 (no previews), or from `min_every`
/// (`limits.min_preview_every`, the previews' rate limit) to `steps` (a
/// larger value would never send one).
pub fn validate_preview_every(
    preview_every: u32,
    min_every: u32,
    steps: u32,
) -> Result<(), ValidationError> {
    if preview_every == 0 || (min_every.max(1)..=steps).contains(&preview_every) {
        return Ok(());
    }
    Err(ValidationError::Preview {
        min: min_every.max(1),
        max: steps,
    })
}

/// What the config says about one LoRA, for [`validate_loras`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraBounds {
    /// Made for the requested model (`[[lora]] models`).
    pub fits: bool,
    pub min_weight: f32,
    pub max_weight: f32,
}

/// Checks a request's LoRAs against the config: at most `max_loras`, each
/// id once, configured (`lookup` gives its bounds), made for the model, its
/// weight finite and within the LoRA's range. [`validate_generate`] has
/// checked the ids' charset already.
pub fn validate_loras(
    loras: &[LoraChoice],
    max_loras: u32,
    lookup: impl Fn(&str) -> Option<LoraBounds>,
) -> Result<(), ValidationError> {
    if loras.len() > max_loras as usize {
        return Err(ValidationError::TooMany {
            field: "loras",
            max: max_loras,
        });
    }
    for (index, lora) in loras.iter().enumerate() {
        if loras[..index].iter().any(|earlier| earlier.id == lora.id) {
            return Err(ValidationError::Duplicate { field: "loras.id" });
        }
        let bounds = lookup(&lora.id).ok_or(ValidationError::UnknownLora { field: "loras.id" })?;
        if !bounds.fits {
            return Err(ValidationError::LoraNotForModel { field: "loras.id" });
        }
        let (min, max) = (bounds.min_weight, bounds.max_weight);
        if !lora.weight.is_finite() {
            return Err(ValidationError::NotFinite {
                field: "loras.weight",
                min: min.to_string(),
                max: max.to_string(),
            });
        }
        if !(min..=max).contains(&lora.weight) {
            return Err(ValidationError::OutOfRange {
                field: "loras.weight",
                min: min.to_string(),
                max: max.to_string(),
            });
        }
    }
    Ok(())
}

/// Checks a model's configured defaults against the bounds it will be held
/// to, so that a request relying on defaults is as valid as an explicit one.
pub fn validate_defaults(
    defaults: &GenerationDefaults,
    bounds: &ParamBounds,
) -> Result<(), ValidationError> {
    validate_dimension("width", defaults.width, bounds.min_width, bounds.max_width)?;
    validate_dimension(
        "height",
        defaults.height,
        bounds.min_height,
        bounds.max_height,
    )?;
    validate_range("steps", defaults.steps, 1, bounds.max_steps)?;
    validate_guidance(defaults.guidance, bounds)
}

/// Model ids: 1 to [`MAX_MODEL_ID_LEN`] bytes of `[A-Za-z0-9][A-Za-z0-9._-]*`.
pub fn validate_model_id(model_id: &str) -> Result<(), ValidationError> {
    validate_identifier("model_id", model_id, MAX_MODEL_ID_LEN as u32)
}

/// `Hello` client names: 1 to [`MAX_CLIENT_NAME_LEN`] bytes of
/// `[A-Za-z0-9][A-Za-z0-9._-]*`. They end up in audit records.
pub fn validate_client_name(client_name: &str) -> Result<(), ValidationError> {
    validate_identifier("client_name", client_name, MAX_CLIENT_NAME_LEN as u32)
}

fn validate_range(
    field: &'static str,
    value: u32,
    min: u32,
    max: u32,
) -> Result<(), ValidationError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::OutOfRange {
            field,
            min: min.to_string(),
            max: max.to_string(),
        })
    }
}

fn validate_dimension(
    field: &'static str,
    value: u32,
    min: u32,
    max: u32,
) -> Result<(), ValidationError> {
    if (min..=max).contains(&value) && value % DIMENSION_MULTIPLE == 0 {
        Ok(())
    } else {
        Err(ValidationError::NotMultiple {
            field,
            multiple: DIMENSION_MULTIPLE,
            min,
            max,
        })
    }
}

fn validate_guidance(guidance: f32, bounds: &ParamBounds) -> Result<(), ValidationError> {
    let (min, max) = (bounds.min_guidance, bounds.max_guidance);
    if !guidance.is_finite() {
        return Err(ValidationError::NotFinite {
            field: "guidance",
            min: min.to_string(),
            max: max.to_string(),
        });
    }
    if (min..=max).contains(&guidance) {
        Ok(())
    } else {
        Err(ValidationError::OutOfRange {
            field: "guidance",
            min: min.to_string(),
            max: max.to_string(),
        })
    }
}

/// Free text (prompts): at most `max_bytes` bytes, no control characters
/// except newline and tab (no NUL, escape sequences, carriage returns, C1).
/// The worker parses prompts the same way; refusing here names the field
/// before the job waits in the queue.
fn validate_prompt_syntax(field: &'static str, text: &str) -> Result<(), ValidationError> {
    crate::prompt::parse_prompt(text)
        .map(|_| ())
        .map_err(|_| ValidationError::BadPromptSyntax { field })
}

fn validate_text(field: &'static str, text: &str, max_bytes: u32) -> Result<(), ValidationError> {
    if text.len() > max_bytes as usize {
        return Err(ValidationError::BadLength {
            field,
            min_bytes: 0,
            max_bytes,
        });
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::ForbiddenCharacter {
            field,
            allowed: "printable text, newlines and tabs",
        });
    }
    Ok(())
}

/// Identifiers (model ids, tags, client names): 1 to `max_bytes` bytes of
/// `[A-Za-z0-9][A-Za-z0-9._-]*`: safe in logs, file names (never `.` or
/// `..`) and PNG text chunks.
fn validate_identifier(
    field: &'static str,
    text: &str,
    max_bytes: u32,
) -> Result<(), ValidationError> {
    if text.is_empty() || text.len() > max_bytes as usize {
        return Err(ValidationError::BadLength {
            field,
            min_bytes: 1,
            max_bytes,
        });
    }
    let starts_alphanumeric = text
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if !starts_alphanumeric
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ValidationError::ForbiddenCharacter {
            field,
            allowed: IDENTIFIER_CHARSET,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
