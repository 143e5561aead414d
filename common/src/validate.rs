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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proto::Scheduler;

    fn bounds() -> ParamBounds {
        ParamBounds::default()
    }

    fn request() -> GenerateRequest {
        GenerateRequest {
            model_id: "sd15-base_v1.0".into(),
            prompt: "a lighthouse at dusk,\n\tvolumetric light, 灯台".into(),
            negative_prompt: "blurry".into(),
            width: Some(512),
            height: Some(768),
            steps: Some(30),
            guidance: Some(7.5),
            seed: Some(u64::MAX),
            scheduler: Some(Scheduler::EulerAncestral),
            batch: 2,
            tag: Some("user-42.session_7".into()),
            use_model_negative: true,
            init_image: None,
            mask: None,
            strength: None,
            loras: Vec::new(),
            preview_every: 0,
        }
    }

    /// Applies `change` to a valid request and returns the validation error.
    fn rejected(change: impl FnOnce(&mut GenerateRequest)) -> ValidationError {
        let mut request = request();
        change(&mut request);
        validate_generate(&request, &bounds()).expect_err("request should be rejected")
    }

    fn accepted(change: impl FnOnce(&mut GenerateRequest)) {
        let mut request = request();
        change(&mut request);
        if let Err(error) = validate_generate(&request, &bounds()) {
            panic!("request should be accepted: {error}");
        }
    }

    #[test]
    fn valid_request_passes() {
        accepted(|_| {});
    }

    #[test]
    fn defaults_and_random_seed_pass() {
        accepted(|r| {
            r.width = None;
            r.height = None;
            r.steps = None;
            r.guidance = None;
            r.seed = None;
            r.scheduler = None;
            r.tag = None;
            r.negative_prompt.clear();
            r.prompt.clear();
        });
    }

    #[test]
    fn width_range_and_multiple_of_8() {
        accepted(|r| r.width = Some(32));
        accepted(|r| r.width = Some(1024));
        for width in [0, 24, 1032, 515, 516, u32::MAX] {
            let error = rejected(|r| r.width = Some(width));
            assert_eq!(error.field(), "width", "{width}");
            assert_eq!(error.allowed(), "a multiple of 8 from 32 to 1024");
        }
    }

    #[test]
    fn height_range_and_multiple_of_8() {
        accepted(|r| r.height = Some(32));
        accepted(|r| r.height = Some(1024));
        for height in [8, 1040, 33] {
            let error = rejected(|r| r.height = Some(height));
            assert_eq!(error.field(), "height", "{height}");
            assert_eq!(error.allowed(), "a multiple of 8 from 32 to 1024");
        }
    }

    #[test]
    fn steps_from_1_to_max() {
        accepted(|r| r.steps = Some(1));
        accepted(|r| r.steps = Some(150));
        for steps in [0, 151] {
            let error = rejected(|r| r.steps = Some(steps));
            assert_eq!(error.field(), "steps");
            assert_eq!(error.allowed(), "from 1 to 150");
        }
    }

    #[test]
    fn guidance_range_and_finite() {
        accepted(|r| r.guidance = Some(0.0));
        accepted(|r| r.guidance = Some(30.0));
        for guidance in [-0.5, 30.01] {
            let error = rejected(|r| r.guidance = Some(guidance));
            assert_eq!(error.field(), "guidance");
            assert_eq!(error.allowed(), "from 0 to 30");
        }
        for guidance in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let error = rejected(|r| r.guidance = Some(guidance));
            assert_eq!(error.field(), "guidance");
            assert_eq!(error.allowed(), "a finite number from 0 to 30");
        }
    }

    #[test]
    fn prompt_length_in_bytes() {
        accepted(|r| r.prompt = "x".repeat(2000));
        let error = rejected(|r| r.prompt = "x".repeat(2001));
        assert_eq!(error.field(), "prompt");
        assert_eq!(error.allowed(), "at most 2000 bytes of UTF-8");
        // 667 three-byte characters = 2001 bytes, although only 667 chars.
        let error = rejected(|r| r.prompt = "灯".repeat(667));
        assert_eq!(error.field(), "prompt");
    }

    #[test]
    fn prompt_control_characters() {
        for bad in ['\0', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{8}'] {
            let error = rejected(|r| r.prompt = format!("a{bad}b"));
            assert_eq!(error.field(), "prompt", "{bad:?}");
            assert_eq!(
                error.allowed(),
                "made only of printable text, newlines and tabs"
            );
        }
        accepted(|r| r.prompt = "line one\nline two\tcolumn".into());
    }

    #[test]
    fn prompt_attention_syntax_is_checked_for_both_prompts() {
        let error = rejected(|r| r.prompt = "a (cat:1.2.3) here".into());
        assert_eq!(error.field(), "prompt");
        assert!(error.allowed().contains("A1111 prompt syntax"), "{error}");
        let error = rejected(|r| r.negative_prompt = "(blurry:500)".into());
        assert_eq!(error.field(), "negative_prompt");
        accepted(|r| r.prompt = "((a cat)), [dog], (red:1.3) BREAK \\(x\\) 16:9".into());
    }

    #[test]
    fn negative_prompt_length_and_control_characters() {
        let mut small = bounds();
        small.max_negative_prompt_len = 10;
        let mut request = request();
        request.negative_prompt = "x".repeat(11);
        let error = validate_generate(&request, &small).unwrap_err();
        assert_eq!(error.field(), "negative_prompt");
        assert_eq!(error.allowed(), "at most 10 bytes of UTF-8");
        request.negative_prompt = "x".repeat(10);
        assert_eq!(validate_generate(&request, &small), Ok(()));

        let error = rejected(|r| r.negative_prompt = "ugly\0".into());
        assert_eq!(error.field(), "negative_prompt");
    }

    #[test]
    fn batch_from_1_to_max() {
        accepted(|r| r.batch = 1);
        accepted(|r| r.batch = 4);
        for batch in [0, 5] {
            let error = rejected(|r| r.batch = batch);
            assert_eq!(error.field(), "batch");
            assert_eq!(error.allowed(), "from 1 to 4");
        }
    }

    #[test]
    fn tag_length_and_charset() {
        accepted(|r| r.tag = Some("a".repeat(64)));
        let error = rejected(|r| r.tag = Some("a".repeat(65)));
        assert_eq!(error.field(), "tag");
        assert_eq!(error.allowed(), "1 to 64 bytes long");
        let error = rejected(|r| r.tag = Some(String::new()));
        assert_eq!(error.allowed(), "1 to 64 bytes long");
        for bad in ["user 1", "a/b", "..", ".hidden", "-x", "é", "a\nb", "a;b"] {
            let error = rejected(|r| r.tag = Some(bad.into()));
            assert_eq!(error.field(), "tag", "{bad:?}");
            assert!(matches!(error, ValidationError::ForbiddenCharacter { .. }));
        }
    }

    #[test]
    fn model_id_length_and_charset() {
        assert_eq!(validate_model_id(&"m".repeat(64)), Ok(()));
        for bad in [String::new(), "m".repeat(65)] {
            let error = rejected(|r| r.model_id = bad);
            assert_eq!(error.field(), "model_id");
            assert_eq!(error.allowed(), "1 to 64 bytes long");
        }
        for bad in ["../etc/passwd", "/abs", "sd 15", "sd15\0", "..", "_x"] {
            let error = rejected(|r| r.model_id = bad.into());
            assert_eq!(error.field(), "model_id", "{bad:?}");
            assert!(matches!(error, ValidationError::ForbiddenCharacter { .. }));
        }
    }

    #[test]
    fn client_name_length_and_charset() {
        assert_eq!(validate_client_name("weave-web.1"), Ok(()));
        assert_eq!(validate_client_name("").unwrap_err().field(), "client_name");
        assert!(validate_client_name(&"c".repeat(65)).is_err());
        assert!(matches!(
            validate_client_name("web app"),
            Err(ValidationError::ForbiddenCharacter {
                field: "client_name",
                ..
            })
        ));
    }

    type Change = dyn FnOnce(&mut GenerateRequest);

    #[test]
    fn preview_every_is_off_or_within_the_rate_limit_and_the_steps() {
        // Not a field of the bounds check: it needs the resolved steps.
        assert!(validate_generate(
            &GenerateRequest {
                preview_every: 1_000,
                ..request()
            },
            &bounds()
        )
        .is_ok());
        assert!(validate_preview_every(0, 3, 6).is_ok());
        assert!(validate_preview_every(3, 3, 6).is_ok());
        assert!(validate_preview_every(6, 3, 6).is_ok());
        for (every, min, steps) in [(2, 3, 6), (7, 3, 6), (1, 2, 1)] {
            let error = validate_preview_every(every, min, steps).unwrap_err();
            assert_eq!(error.field(), "preview_every");
            assert!(error.allowed().starts_with("0 (no previews)"), "{error}");
        }
        assert_eq!(
            validate_preview_every(7, 3, 6).unwrap_err().to_string(),
            "preview_every must be 0 (no previews) or from 3 to 6 (the job's steps)"
        );
        assert!(validate_preview_every(1, 2, 1)
            .unwrap_err()
            .to_string()
            .contains("fewer than limits.min_preview_every (2)"));
        // A minimum of 0 (refused by the config check) still means 1.
        assert!(validate_preview_every(1, 0, 6).is_ok());
    }

    fn lora(id: &str, weight: f32) -> LoraChoice {
        LoraChoice {
            id: id.into(),
            weight,
        }
    }

    #[test]
    fn lora_ids_and_weights_are_checked_without_the_config() {
        accepted(|r| r.loras.push(lora("digits-bold", 1.0)));
        let error = rejected(|r| r.loras.push(lora("../x", 1.0)));
        assert_eq!(error.field(), "loras.id");
        assert!(matches!(error, ValidationError::ForbiddenCharacter { .. }));
        for weight in [f32::NAN, f32::INFINITY] {
            assert_eq!(
                rejected(|r| r.loras.push(lora("a", weight))).field(),
                "loras.weight"
            );
        }
    }

    #[test]
    fn loras_are_checked_against_the_config() {
        let lookup = |id: &str| match id {
            "bold" => Some(LoraBounds {
                fits: true,
                min_weight: -1.0,
                max_weight: 2.0,
            }),
            "other" => Some(LoraBounds {
                fits: false,
                min_weight: 0.0,
                max_weight: 1.0,
            }),
            _ => None,
        };
        let check = |loras: &[LoraChoice], max| validate_loras(loras, max, lookup);
        assert_eq!(check(&[lora("bold", 2.0)], 4), Ok(()));
        assert_eq!(check(&[lora("bold", -1.0)], 1), Ok(()));
        assert_eq!(check(&[], 0), Ok(()));
        let error = check(&[lora("bold", 1.0)], 0).unwrap_err();
        assert_eq!(
            (error.field(), error.allowed()),
            ("loras", "at most 0 entries".into())
        );
        let error = check(&[lora("bold", 1.0), lora("bold", 0.5)], 4).unwrap_err();
        assert_eq!(error, ValidationError::Duplicate { field: "loras.id" });
        let error = check(&[lora("nope", 1.0)], 4).unwrap_err();
        assert_eq!(error, ValidationError::UnknownLora { field: "loras.id" });
        let error = check(&[lora("other", 1.0)], 4).unwrap_err();
        assert_eq!(
            error,
            ValidationError::LoraNotForModel { field: "loras.id" }
        );
        for weight in [2.01, -1.5] {
            let error = check(&[lora("bold", weight)], 4).unwrap_err();
            assert_eq!(error.to_string(), "loras.weight must be from -1 to 2");
        }
        let error = check(&[lora("bold", f32::NAN)], 4).unwrap_err();
        assert_eq!(error.field(), "loras.weight");
    }

    #[test]
    fn errors_never_contain_the_rejected_value() {
        let cases: Vec<Box<Change>> = vec![
            Box::new(|r| r.width = Some(77777)),
            Box::new(|r| r.steps = Some(77777)),
            Box::new(|r| r.batch = 77777),
            Box::new(|r| r.guidance = Some(77777.0)),
            Box::new(|r| r.tag = Some("77777 x".into())),
            Box::new(|r| r.model_id = "77777/x".into()),
            Box::new(|r| r.prompt = "77777\0".into()),
        ];
        for change in cases {
            let error = rejected(change);
            let code = ErrorCode::from(error.clone());
            for text in [error.to_string(), code.to_string(), format!("{error:?}")] {
                assert!(!text.contains("77777"), "{text}");
            }
        }
    }

    #[test]
    fn converts_into_invalid_parameter() {
        let error = rejected(|r| r.steps = Some(0));
        assert_eq!(error.to_string(), "steps must be from 1 to 150");
        assert_eq!(
            ErrorCode::from(error),
            ErrorCode::InvalidParameter {
                field: "steps".into(),
                allowed: "from 1 to 150".into(),
            }
        );
    }

    #[test]
    fn configured_defaults_are_checked_against_bounds() {
        let mut defaults = GenerationDefaults {
            width: 512,
            height: 512,
            steps: 25,
            guidance: 7.0,
            scheduler: Scheduler::DpmPp2mKarras,
        };
        assert_eq!(validate_defaults(&defaults, &bounds()), Ok(()));
        defaults.height = 500;
        assert_eq!(
            validate_defaults(&defaults, &bounds()).unwrap_err().field(),
            "height"
        );
        defaults.height = 512;
        defaults.guidance = f32::NAN;
        assert_eq!(
            validate_defaults(&defaults, &bounds()).unwrap_err().field(),
            "guidance"
        );
    }

    #[test]
    fn bounds_keep_their_config_shape() {
        // `[bounds]` in the config: all fields optional, unknown keys denied.
        let parsed: ParamBounds = toml::from_str("max_steps = 50").unwrap();
        assert_eq!(parsed.max_steps, 50);
        assert_eq!(parsed.max_width, ParamBounds::default().max_width);
        assert!(toml::from_str::<ParamBounds>("max_stepz = 50").is_err());
    }
}
