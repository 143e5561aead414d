//! The rules of the `[[model]]` tables: ids, paths (never a pickle), the
//! per-model bounds inside the global ones, the defaults inside both; and
//! the model and LoRA file checks of `sshmctl config check`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;

use super::document::KeyPath;
use super::rules::Report;
use super::{Config, ConfigProblem, ModelConfig};
use crate::validate::ParamBounds;

/// Longest model id; ids appear in logs and in every request.
const MAX_MODEL_ID_LEN: usize = 64;
/// File name extensions of pickle-based checkpoints, which are never loaded
/// (DESIGN.md invariant 2).
const PICKLE_EXTENSIONS: [&str; 5] = ["ckpt", "pt", "pth", "bin", "pkl"];

pub(super) fn is_model_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_MODEL_ID_LEN
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

pub(super) fn check_models(config: &mut Config, report: &mut Report<'_, '_>) {
    let context = report.context;
    if config.models.is_empty() && context.models_in_file == 0 {
        report.invalid(
            &KeyPath::of(&["model"]),
            "is missing: no [[model]] is defined, so the daemon would have nothing to run",
            "add a [[model]] table with id, kind and path (see docs/weave.example.toml)",
        );
    }
    let config_dir = context.source.parent().unwrap_or(Path::new("/"));
    let mut first_with_id: HashMap<String, usize> = HashMap::new();
    for (position, model) in config.models.iter_mut().enumerate() {
        let index = context
            .model_origin
            .get(position)
            .copied()
            .unwrap_or(position);
        let here = KeyPath::model(index);
        check_model_id(model, index, &here, &mut first_with_id, report);

        if model.path.as_os_str().is_empty() {
            report.invalid(
                &here.key("path"),
                "is empty",
                "set it to a diffusers folder or a .safetensors file",
            );
        } else if model.path.is_relative() {
            model.path = config_dir.join(&model.path);
        }
        if let Some(extension) = model.path.extension().and_then(|e| e.to_str()) {
            if PICKLE_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str()) {
                report.invalid(
                    &here.key("path"),
                    format!(
                        "names a .{extension} file; pickle-based checkpoints can run code \
                         when loaded and are never read"
                    ),
                    "convert the checkpoint to .safetensors and point `path` at that",
                );
            }
        }
        if let Some(sha256) = &mut model.sha256 {
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                report.invalid(
                    &here.key("sha256"),
                    "is not a SHA-256 digest (64 hexadecimal digits)",
                    "write the output of `sshmctl hash PATH` (for a single file the same as \
                     `sha256sum`), or remove the pin",
                );
            }
            sha256.make_ascii_lowercase();
        }
        check_model_bounds(model, &here, &config.bounds, report);
        check_model_defaults(model, &here, &model.bounds(&config.bounds), report);
    }
}

/// `[model.bounds]`: multiples of 8 inside `[bounds]`, min ≤ max.
fn check_model_bounds(
    model: &ModelConfig,
    here: &KeyPath,
    global: &ParamBounds,
    report: &mut Report<'_, '_>,
) {
    let own = &model.bounds;
    let mine = model.bounds(global);
    let key = |name: &str| here.key("bounds").key(name);
    for (name, value, min, max) in [
        (
            "min_width",
            own.min_width,
            global.min_width,
            global.max_width,
        ),
        (
            "max_width",
            own.max_width,
            global.min_width,
            global.max_width,
        ),
        (
            "min_height",
            own.min_height,
            global.min_height,
            global.max_height,
        ),
        (
            "max_height",
            own.max_height,
            global.min_height,
            global.max_height,
        ),
    ] {
        let Some(value) = value else { continue };
        if value == 0 || value % 8 != 0 || value < min || value > max {
            report.invalid(
                &key(name),
                format!(
                    "is {value}, not a multiple of 8 inside [bounds] ({min}..={max}); a model's \
                     range narrows the daemon's"
                ),
                format!("choose a multiple of 8 in {min}..={max}, or widen [bounds]"),
            );
        }
    }
    for (min_name, min, max_name, max) in [
        ("min_width", mine.min_width, "max_width", mine.max_width),
        ("min_height", mine.min_height, "max_height", mine.max_height),
    ] {
        if min > max {
            report.invalid(
                &key(min_name),
                format!("is {min}, larger than this model's {max_name} ({max})"),
                format!("make {min_name} at most {max_name} for this model"),
            );
        }
    }
}

fn check_model_id(
    model: &ModelConfig,
    index: usize,
    here: &KeyPath,
    first_with_id: &mut HashMap<String, usize>,
    report: &mut Report<'_, '_>,
) {
    if !is_model_id(&model.id) {
        report.invalid(
            &here.key("id"),
            format!("is \"{}\", which is not a valid model id", model.id),
            format!(
                "use 1 to {MAX_MODEL_ID_LEN} of a-z 0-9 . _ -, starting with a letter or digit, \
                 like \"sd15-base\""
            ),
        );
    }
    if let Some(&first) = first_with_id.get(&model.id) {
        let first_place = report
            .context
            .source_map
            .place(&KeyPath::model(first).key("id"));
        let at = match first_place.location {
            Some(location) => format!(" at line {}", location.line),
            None => String::new(),
        };
        report.invalid(
            &here.key("id"),
            format!(
                "is \"{}\", the same id as model[{first}]{at}; clients choose models by id, so \
                 ids must be unique",
                model.id
            ),
            "rename one of them",
        );
    } else {
        first_with_id.insert(model.id.clone(), index);
    }
}

fn check_model_defaults(
    model: &ModelConfig,
    here: &KeyPath,
    bounds: &ParamBounds,
    report: &mut Report<'_, '_>,
) {
    let defaults = model.defaults();
    let given = &model.defaults;
    let key = |name: &str| here.key("defaults").key(name);
    // Where a value came from, for the message: the user's, or the kind's.
    let origin = |set: bool| {
        if set {
            String::new()
        } else {
            format!(" (the default for kind \"{}\")", model.kind)
        }
    };
    let fix_for = |name: &str, set: bool, range: String| {
        if set {
            format!("choose a value in {range}, or widen [bounds]")
        } else {
            format!(
                "add [model.defaults] with `{name} = ...` in {range} to this model, or widen \
                 [bounds]"
            )
        }
    };
    for (name, value, set, min, max) in [
        (
            "width",
            defaults.width,
            given.width.is_some(),
            bounds.min_width,
            bounds.max_width,
        ),
        (
            "height",
            defaults.height,
            given.height.is_some(),
            bounds.min_height,
            bounds.max_height,
        ),
    ] {
        if value < min || value > max || value % 8 != 0 {
            report.invalid(
                &key(name),
                format!(
                    "is {value}{}, outside the bounds {min}..={max} or not a multiple of 8",
                    origin(set)
                ),
                fix_for(name, set, format!("{min}..={max} (a multiple of 8)")),
            );
        }
    }
    if defaults.steps == 0 || defaults.steps > bounds.max_steps {
        let set = given.steps.is_some();
        report.invalid(
            &key("steps"),
            format!(
                "is {}{}, outside 1..={} (bounds.max_steps)",
                defaults.steps,
                origin(set),
                bounds.max_steps
            ),
            fix_for("steps", set, format!("1..={}", bounds.max_steps)),
        );
    }
    let guidance = defaults.guidance;
    if !guidance.is_finite() || guidance < bounds.min_guidance || guidance > bounds.max_guidance {
        let set = given.guidance.is_some();
        report.invalid(
            &key("guidance"),
            format!(
                "is {guidance}{}, outside the bounds {}..={}",
                origin(set),
                bounds.min_guidance,
                bounds.max_guidance
            ),
            fix_for(
                "guidance",
                set,
                format!("{}..={}", bounds.min_guidance, bounds.max_guidance),
            ),
        );
    }
    let negative_len = model.default_negative_prompt().len();
    if negative_len > bounds.max_negative_prompt_len as usize {
        report.invalid(
            &key("negative_prompt"),
            format!(
                "is {negative_len} bytes long, more than bounds.max_negative_prompt_len ({})",
                bounds.max_negative_prompt_len
            ),
            "shorten it, or raise bounds.max_negative_prompt_len",
        );
    }
    if let Err(error) = crate::prompt::parse_prompt(model.default_negative_prompt()) {
        report.invalid(
            &key("negative_prompt"),
            format!("is not valid A1111 prompt syntax: {error}"),
            "fix the weight, or write `\\(` and `\\)` for literal brackets (docs/PROMPTS.md)",
        );
    }
}

/// One LoRA's file, for [`Config::check_model_paths`]: it must be a
/// readable regular file.
pub(super) fn check_lora_path(config: &Path, lora: &super::LoraConfig) -> Option<ConfigProblem> {
    let problem = match std::fs::metadata(&lora.path) {
        Ok(meta) if meta.is_file() => match std::fs::File::open(&lora.path) {
            Ok(_) => return None,
            Err(error) => format!("cannot be opened: {error}"),
        },
        Ok(_) => "is not a regular file".to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            crate::model_files::NOT_FOUND.to_owned()
        }
        Err(error) => format!("cannot be read: {error}"),
    };
    let config_dir = config.parent().unwrap_or(Path::new("/"));
    Some(ConfigProblem::ModelPath {
        config: config.to_path_buf(),
        model_id: format!("lora {}", lora.id),
        path: lora.path.clone(),
        problem,
        fix: format!(
            "point `path` at the LoRA's .safetensors file (a relative path is taken from {})",
            config_dir.display()
        ),
    })
}

/// One model's files, for [`Config::check_model_paths`]: the broker's own
/// check ([`crate::model_files::check`]) as a config problem.
pub(super) fn check_model_path(config: &Path, model: &ModelConfig) -> Option<ConfigProblem> {
    let found = crate::model_files::check(&model.path).err()?;
    let fix = if found.problem == crate::model_files::NOT_FOUND {
        let config_dir = config.parent().unwrap_or(Path::new("/"));
        format!(
            "{} (a relative path is taken from {})",
            found.fix,
            config_dir.display()
        )
    } else {
        found.fix
    };
    Some(ConfigProblem::ModelPath {
        config: config.to_path_buf(),
        model_id: model.id.clone(),
        path: model.path.clone(),
        problem: found.problem,
        fix,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn model_ids_are_short_lowercase_names() {
        for good in ["digits", "sd15-base", "a", "v1.5_x", "0abc"] {
            assert!(is_model_id(good), "{good}");
        }
        let long = "a".repeat(MAX_MODEL_ID_LEN + 1);
        for bad in [
            "",
            "Digits",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(!is_model_id(bad), "{bad}");
        }
    }
}
