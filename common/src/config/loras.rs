//! `[[lora]]`: LoRA files callers may choose by id for the models they fit,
//! each with its own weight range; `limits.max_loras` bounds how many one
//! request may use. Paths never leave the broker (like model paths).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::document::KeyPath;

/// Default `min_weight` of a `[[lora]]`.
pub const DEFAULT_MIN_LORA_WEIGHT: f32 = -1.0;
/// Default `max_weight` of a `[[lora]]`.
pub const DEFAULT_MAX_LORA_WEIGHT: f32 = 2.0;
/// No configured weight bound may lie outside `±MAX_LORA_WEIGHT_BOUND`:
/// past it a merge changes weights by more than the model holds.
pub const MAX_LORA_WEIGHT_BOUND: f32 = 10.0;
/// `limits.max_loras` may not exceed this (each LoRA is one more merge of
/// every layer it touches before the job).
pub const MAX_LORAS_BOUND: u32 = 16;

/// One `[[lora]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit; unique
    /// among LoRAs (a LoRA and a model may share an id).
    pub id: String,
    /// A `*.safetensors` file; a relative path is taken from the config
    /// file's directory.
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file; the worker refuses the file when
    /// it does not match.
    pub sha256: Option<String>,
    /// The `[[model]]` ids this LoRA was made for; requests for other
    /// models are refused. At least one.
    pub models: Vec<String>,
    #[serde(default = "default_min")]
    pub min_weight: f32,
    #[serde(default = "default_max")]
    pub max_weight: f32,
}

fn default_min() -> f32 {
    DEFAULT_MIN_LORA_WEIGHT
}

fn default_max() -> f32 {
    DEFAULT_MAX_LORA_WEIGHT
}

impl LoraConfig {
    /// Whether this LoRA was made for the model `model_id`.
    pub fn fits(&self, model_id: &str) -> bool {
        self.models.iter().any(|m| m == model_id)
    }
}

/// `[[lora]]`, `lora[2]`.
pub(super) fn lora_path(index: usize) -> KeyPath {
    KeyPath::of(&["lora"]).index(index)
}

/// What a rule reports: the key, what is wrong, the fix.
pub(super) type Problem = (KeyPath, String, String);

/// Checks every `[[lora]]` (ids, paths, pins, models, weight ranges) and
/// `limits.max_loras`; makes relative paths absolute and pins lower-case.
pub(super) fn check_loras(
    loras: &mut [LoraConfig],
    model_ids: &[&str],
    max_loras: u32,
    config_dir: &Path,
    is_id: impl Fn(&str) -> bool,
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut report = |path: KeyPath, problem: String, fix: &str| {
        problems.push((path, problem, fix.to_owned()));
    };
    if max_loras > MAX_LORAS_BOUND {
        report(
            KeyPath::of(&["limits", "max_loras"]),
            format!("is {max_loras}, more than {MAX_LORAS_BOUND}"),
            "lower it (0 turns LoRAs off for every request)",
        );
    }
    let mut first: HashMap<String, usize> = HashMap::new();
    for (index, lora) in loras.iter_mut().enumerate() {
        let here = lora_path(index);
        if !is_id(&lora.id) {
            report(
                here.key("id"),
                format!("is \"{}\", which is not a valid LoRA id", lora.id),
                "use 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit, like \"bold\"",
            );
        }
        if let Some(&earlier) = first.get(&lora.id) {
            report(
                here.key("id"),
                format!(
                    "is \"{}\", the same id as lora[{earlier}]; requests choose LoRAs by id",
                    lora.id
                ),
                "rename one of them",
            );
        } else {
            first.insert(lora.id.clone(), index);
        }
        if lora.path.as_os_str().is_empty() {
            report(
                here.key("path"),
                "is empty".into(),
                "set it to the LoRA's .safetensors file",
            );
        } else {
            if lora.path.is_relative() {
                lora.path = config_dir.join(&lora.path);
            }
            if !super::is_safetensors_name(&lora.path) {
                report(
                    here.key("path"),
                    "does not name a .safetensors file; LoRAs are read from safetensors only \
                     (pickle files can run code when loaded)"
                        .into(),
                    "convert the LoRA to .safetensors and point `path` at that",
                );
            }
        }
        if let Some(sha256) = &mut lora.sha256 {
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                report(
                    here.key("sha256"),
                    "is not a SHA-256 digest (64 hexadecimal digits)".into(),
                    "write the output of `sshmctl hash PATH` (the same as `sha256sum`), or \
                     remove the pin",
                );
            }
            sha256.make_ascii_lowercase();
        }
        if lora.models.is_empty() {
            report(
                here.key("models"),
                "is empty, so no request could use this LoRA".into(),
                "list the [[model]] ids it was made for, like models = [\"digits\"]",
            );
        }
        for (position, model) in lora.models.iter().enumerate() {
            if !model_ids.contains(&model.as_str()) {
                report(
                    here.key("models").index(position),
                    format!("is \"{model}\", which is no [[model]] id"),
                    "use the id of a configured [[model]]",
                );
            }
        }
        for (name, value) in [
            ("min_weight", lora.min_weight),
            ("max_weight", lora.max_weight),
        ] {
            if !value.is_finite() || value.abs() > MAX_LORA_WEIGHT_BOUND {
                report(
                    here.key(name),
                    format!(
                        "is {value}, not a number from -{MAX_LORA_WEIGHT_BOUND} to \
                         {MAX_LORA_WEIGHT_BOUND}"
                    ),
                    "choose a weight bound inside that range",
                );
            }
        }
        if lora.min_weight > lora.max_weight {
            report(
                here.key("min_weight"),
                format!(
                    "is {}, larger than max_weight ({})",
                    lora.min_weight, lora.max_weight
                ),
                "make min_weight at most max_weight",
            );
        }
    }
    problems
}
