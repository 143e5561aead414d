//! `[[lora]]` and `limits.max_loras`: every key reaches the config, and
//! every rule names the key and a fix.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

const MODELS: &str = "[[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"/models/digits\"\n\n\
                      [[model]]\nid = \"xl\"\nkind = \"sdxl\"\npath = \"/models/xl\"\n";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(
        &format!("{MODELS}{text}"),
        Path::new("/etc/weave/weave.toml"),
        Mode::User,
    )
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(errors) => errors
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn every_lora_key_reaches_the_config() {
    let config = parse(
        "[limits]\nmax_loras = 2\n\n[[lora]]\nid = \"bold\"\npath = \"loras/bold.safetensors\"\n\
         sha256 = \"ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\"\n\
         models = [\"digits\"]\nmin_weight = -0.5\nmax_weight = 1.5\n\n\
         [[lora]]\nid = \"both\"\npath = \"/l/both.safetensors\"\nmodels = [\"digits\", \"xl\"]\n",
    )
    .unwrap();
    assert_eq!(config.limits.max_loras, 2);
    let bold = config.lora("bold").unwrap();
    assert_eq!(bold.path, Path::new("/etc/weave/loras/bold.safetensors"));
    assert_eq!(
        bold.sha256.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
    );
    assert_eq!((bold.min_weight, bold.max_weight), (-0.5, 1.5));
    assert!(bold.fits("digits") && !bold.fits("xl"));
    let both = config.lora("both").unwrap();
    assert_eq!(
        (both.min_weight, both.max_weight),
        (DEFAULT_MIN_LORA_WEIGHT, DEFAULT_MAX_LORA_WEIGHT)
    );
    let for_xl: Vec<_> = config.loras_for("xl").map(|l| l.id.as_str()).collect();
    assert_eq!(for_xl, ["both"]);
    assert_eq!(Limits::default().max_loras, 4);
    // No [[lora]] is fine.
    assert!(parse("").unwrap().loras.is_empty());
}

#[test]
fn bad_loras_are_refused_by_key_with_a_fix() {
    let all = problems(
        "[limits]\nmax_loras = 17\n\n\
         [[lora]]\nid = \"Bold!\"\npath = \"/l/bold.ckpt\"\nsha256 = \"abc\"\nmodels = []\n\
         min_weight = 3.0\nmax_weight = 11.0\n\n\
         [[lora]]\nid = \"x\"\npath = \"\"\nmodels = [\"nope\"]\n\n\
         [[lora]]\nid = \"x\"\npath = \"/l/x.safetensors\"\nmodels = [\"xl\"]\n\
         min_weight = 1.0\nmax_weight = 0.5\n",
    );
    for expected in [
        "`limits.max_loras` is 17, more than 16",
        "`lora[0].id` is \"Bold!\", which is not a valid LoRA id",
        "`lora[0].path` does not name a .safetensors file",
        "`lora[0].sha256` is not a SHA-256 digest",
        "`lora[0].models` is empty",
        "`lora[0].max_weight` is 11, not a number from -10 to 10",
        "`lora[2].min_weight` is 1, larger than max_weight (0.5)",
        "`lora[1].path` is empty",
        "`lora[1].models[0]` is \"nope\", which is no [[model]] id",
        "`lora[2].id` is \"x\", the same id as lora[1]",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in\n{all}");
    }
    assert!(all.contains("fix:"), "{all}");
    // Unknown keys and a missing `models` are type errors with the key.
    assert!(problems(
        "[[lora]]\nid = \"a\"\npath = \"/a.safetensors\"\nmodels = [\"xl\"]\nweight = 1\n"
    )
    .contains("lora[0].weight"));
    assert!(problems("[[lora]]\nid = \"a\"\npath = \"/a.safetensors\"\n").contains("models"));
}

#[test]
fn check_reports_a_missing_lora_file() {
    let dir = std::env::temp_dir().join(format!("weave-lora-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let present = dir.join("here.safetensors");
    std::fs::write(&present, b"x").unwrap();
    let text = "[[model]]\nid = \"m\"\nkind = \"sd1\"\npath = \"/no/model\"\n\n[[lora]]\n\
                id = \"gone\"\npath = \"missing.safetensors\"\nmodels = [\"m\"]\n\n[[lora]]\n\
                id = \"here\"\npath = \"here.safetensors\"\nmodels = [\"m\"]\n";
    let config = Config::from_toml_str(text, &dir.join("weave.toml"), Mode::User).unwrap();
    let found: Vec<String> = config
        .check_model_paths()
        .iter()
        .map(ToString::to_string)
        .collect();
    let loras: Vec<&String> = found.iter().filter(|p| p.contains("lora ")).collect();
    assert_eq!(loras.len(), 1, "{found:#?}");
    assert!(
        loras[0].contains("lora gone") && loras[0].contains("does not exist"),
        "{found:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
