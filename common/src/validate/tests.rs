//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]

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
