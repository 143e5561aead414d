//! The daemon's configuration: one TOML file, read once at startup, in user
//! mode (`~/.config/weave/weave.toml`) or system mode
//! (`/etc/weave/weave.toml`). The reference for every key is
//! `docs/CONFIG.md`.
//!
//! Reading a config is three separate steps, so that the broker and
//! `sshmctl config check` run exactly the same code:
//!
//! 1. [`check_permissions`]: who owns the file and the directories above it,
//!    and who may write them. A config that someone else can edit can point
//!    the daemon at any model file, so it is refused.
//! 2. Parsing and validation ([`Config::from_toml_str`]): unknown keys and
//!    wrong types are errors with line and column, then the values are checked
//!    against each other (bounds, defaults inside bounds, unique model ids).
//! 3. [`Config::check_model_paths`]: every model path exists and can be read.
//!
//! [`Config::load`] (the daemon) runs 1 and 2; [`Config::check`] (the CLI)
//! runs all three. Both report every problem they find at once, each with the
//! file, the key, what is wrong and how to fix it.
//!
//! This module reads only the file it is given and `stat`s the paths in it.
//! Looking up user and group names is the caller's business: it passes the
//! uids allowed to own the config.

#![forbid(unsafe_code)]

mod by_name;
mod document;
mod loras;
mod model_rules;
mod paths;
mod permissions;
pub mod pool;
mod problem;
mod read;
mod rules;
mod sections;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::proto::Mode;
use crate::validate::ParamBounds;

pub use loras::{
    LoraConfig, DEFAULT_MAX_LORA_WEIGHT, DEFAULT_MIN_LORA_WEIGHT, MAX_LORAS_BOUND,
    MAX_LORA_WEIGHT_BOUND,
};
use paths::absolute_env;
pub use paths::{default_socket_path, EnvPaths};
pub use permissions::check_permissions;
pub use problem::{ConfigErrors, ConfigProblem, Location, Place};
use read::read_config_text;
pub use sections::{
    is_safetensors_name, AuditConfig, DaemonConfig, Device, Facility, Limits, ModelBounds,
    ModelConfig, ModelDefaults, ModelKind, OutputConfig, WorkerConfig, MAX_TORCH_THREADS,
};

/// Where system mode reads its config.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/weave/weave.toml";
/// Where system mode listens, unless `daemon.socket` says otherwise.
pub const SYSTEM_SOCKET_PATH: &str = "/run/weave/weave.sock";
/// The syslog socket audit records go to, unless `audit.sink` says otherwise.
pub const DEFAULT_AUDIT_SINK: &str = "/dev/log";
/// The account system mode drops to, unless `daemon.user` says otherwise.
pub const DEFAULT_DAEMON_USER: &str = "weave";
/// A config is a few KiB; anything larger than this is not one (and reading
/// stops there, so pointing `--config` at `/dev/zero` cannot exhaust memory).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// The file as written; [`Config`] adds where it came from and the mode.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    #[serde(with = "by_name")]
    mode: Option<Mode>,
    daemon: DaemonConfig,
    limits: Limits,
    bounds: ParamBounds,
    audit: AuditConfig,
    worker: WorkerConfig,
    output: OutputConfig,
    #[serde(rename = "model")]
    models: Vec<ModelConfig>,
    #[serde(rename = "lora")]
    loras: Vec<LoraConfig>,
}

/// A parsed, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Absolute path of the file it was read from.
    pub source: PathBuf,
    /// The mode it was validated for (the caller's, which wins over the
    /// file's `mode` key).
    pub mode: Mode,
    pub daemon: DaemonConfig,
    pub limits: Limits,
    pub bounds: ParamBounds,
    pub audit: AuditConfig,
    pub worker: WorkerConfig,
    pub output: OutputConfig,
    /// In file order; never empty, ids unique, paths absolute.
    pub models: Vec<ModelConfig>,
    /// `[[lora]]` in file order; ids unique, paths absolute, every
    /// `models` entry a configured model.
    pub loras: Vec<LoraConfig>,
}

impl Config {
    /// Where `mode` looks for its config: user mode
    /// `$XDG_CONFIG_HOME/weave/weave.toml`, else `$HOME/.config/weave/weave.toml`;
    /// system mode [`SYSTEM_CONFIG_PATH`].
    pub fn default_path(mode: Mode, env: &EnvPaths) -> Result<PathBuf, ConfigProblem> {
        match mode {
            Mode::System => Ok(PathBuf::from(SYSTEM_CONFIG_PATH)),
            Mode::User => absolute_env(&env.xdg_config_home)
                .map(Path::to_path_buf)
                .or_else(|| absolute_env(&env.home).map(|home| home.join(".config")))
                .map(|base| base.join("weave").join("weave.toml"))
                .ok_or_else(|| ConfigProblem::Environment {
                    variable: "HOME",
                    problem: "neither XDG_CONFIG_HOME nor HOME is set to an absolute path, so \
                              there is no default config path"
                        .into(),
                    fix: "set HOME, or pass the config file explicitly with --config".into(),
                }),
        }
    }

    /// The socket to listen on / connect to: `daemon.socket` or the mode's
    /// default.
    pub fn socket_path(&self, env: &EnvPaths) -> Result<PathBuf, ConfigProblem> {
        match &self.daemon.socket {
            Some(path) => Ok(path.clone()),
            None => default_socket_path(self.mode, env),
        }
    }

    /// The account system mode drops to.
    pub fn daemon_user(&self) -> &str {
        self.daemon.user.as_deref().unwrap_or(DEFAULT_DAEMON_USER)
    }

    /// The LoRA with this id, if the config defines one.
    pub fn lora(&self, id: &str) -> Option<&LoraConfig> {
        self.loras.iter().find(|lora| lora.id == id)
    }

    /// The LoRAs made for the model `model_id`, in file order.
    pub fn loras_for<'a>(&'a self, model_id: &'a str) -> impl Iterator<Item = &'a LoraConfig> {
        self.loras.iter().filter(move |lora| lora.fits(model_id))
    }

    /// The model with this id, if the config defines one.
    pub fn model(&self, id: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|model| model.id == id)
    }

    /// For the daemon: permissions of the file and its directories
    /// ([`check_permissions`]), then parsing and validation. Model paths are
    /// not touched (the worker opens them under landlock).
    ///
    /// `allowed_owner_uids`: user mode, the caller's own uid; system mode,
    /// `0` and the uid of the daemon account. Never derive them from the file
    /// being checked (its `daemon.user` is not trusted yet).
    pub fn load(
        path: &Path,
        mode: Mode,
        allowed_owner_uids: &[u32],
    ) -> Result<Config, ConfigErrors> {
        let (config, problems) = load_collecting(path, mode, allowed_owner_uids);
        finish(path, config, problems)
    }

    /// For `sshmctl config check`: everything [`Config::load`] does, plus
    /// [`Config::check_model_paths`]; every problem found is reported.
    pub fn check(
        path: &Path,
        mode: Mode,
        allowed_owner_uids: &[u32],
    ) -> Result<Config, ConfigErrors> {
        let (mut config, mut problems) = load_collecting(path, mode, allowed_owner_uids);
        if let Some(config) = &mut config {
            problems.extend(config.check_model_paths());
            config.read_native_sizes();
        }
        finish(path, config, problems)
    }

    /// Parses and validates `text` as if read from `source` (which only names
    /// the file in messages and anchors relative model paths). No I/O.
    pub fn from_toml_str(text: &str, source: &Path, mode: Mode) -> Result<Config, ConfigErrors> {
        let source = absolute(source);
        let (config, problems) = parse_and_validate(text, &source, mode);
        finish(&source, config, problems)
    }

    /// Fills each model's `native_size` from its folder
    /// ([`crate::model_files::native_size`]) where the folder declares one
    /// that the bounds allow, so a model whose `[model.defaults]` sets no
    /// width or height defaults to the size it was made for. Reads two
    /// small JSON files per folder; a model without them keeps the kind's
    /// default.
    pub fn read_native_sizes(&mut self) {
        let bounds = &self.bounds;
        for model in &mut self.models {
            model.native_size = crate::model_files::native_size(&model.path).filter(|size| {
                (bounds.min_width..=bounds.max_width).contains(size)
                    && (bounds.min_height..=bounds.max_height).contains(size)
            });
        }
    }

    /// Every model's files pass the broker's checks
    /// ([`crate::model_files::check`]): the path exists, is the kind of
    /// thing its name says (a `*.safetensors` checkpoint, else a complete
    /// diffusers folder) and can be opened by this process. Run as root
    /// this cannot tell whether the daemon account may read it; the broker
    /// checks again as that account and lists the model unavailable.
    pub fn check_model_paths(&self) -> Vec<ConfigProblem> {
        self.models
            .iter()
            .filter_map(|model| model_rules::check_model_path(&self.source, model))
            .chain(
                self.loras
                    .iter()
                    .filter_map(|lora| model_rules::check_lora_path(&self.source, lora)),
            )
            .collect()
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn finish(
    path: &Path,
    config: Option<Config>,
    problems: Vec<ConfigProblem>,
) -> Result<Config, ConfigErrors> {
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors {
            path: absolute(path),
            problems,
        }),
    }
}

/// Permission checks, reading and parsing, each contributing its problems.
fn load_collecting(
    path: &Path,
    mode: Mode,
    allowed_owner_uids: &[u32],
) -> (Option<Config>, Vec<ConfigProblem>) {
    let path = absolute(path);
    let mut problems = check_permissions(&path, mode, allowed_owner_uids);
    if problems
        .iter()
        .any(|problem| matches!(problem, ConfigProblem::Unreadable { .. }))
    {
        return (None, problems);
    }
    // Only a file that passed is re-checked through its descriptor; one that
    // failed is already refused and still parsed, to report everything.
    let recheck = problems.is_empty().then_some((mode, allowed_owner_uids));
    let text = match read_config_text(&path, recheck) {
        Ok(text) => text,
        Err(problem) => {
            problems.extend(problem.map(|problem| *problem));
            return (None, problems);
        }
    };
    let (config, parse_problems) = parse_and_validate(&text, &path, mode);
    problems.extend(parse_problems);
    (config, problems)
}

fn parse_and_validate(
    text: &str,
    source: &Path,
    mode: Mode,
) -> (Option<Config>, Vec<ConfigProblem>) {
    let parsed = document::parse(text, source);
    let mut problems = parsed.problems;
    let Some(file) = parsed.file else {
        return (None, problems);
    };
    let context = rules::Context {
        source_map: &parsed.source_map,
        source,
        mode,
        model_origin: &parsed.model_origin,
        models_in_file: parsed.models_in_file,
    };
    let config = rules::validate(file, &context, &mut problems);
    (Some(config), problems)
}

#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;
