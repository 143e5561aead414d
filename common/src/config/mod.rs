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

mod by_name;
mod document;
mod permissions;
mod rules;

use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::{GenerationDefaults, Mode, Scheduler};
use crate::validate::ParamBounds;

pub use permissions::check_permissions;

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

/// `[daemon]`: where to listen and, in system mode, who is who.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Absolute socket path; absent means the mode's default
    /// ([`default_socket_path`]).
    pub socket: Option<PathBuf>,
    /// System mode only, required: members may connect as clients.
    pub client_group: Option<String>,
    /// System mode only, required: members may use the admin verbs.
    pub admin_group: Option<String>,
    /// System mode only: the account broker and worker drop to
    /// ([`DEFAULT_DAEMON_USER`] when absent).
    pub user: Option<String>,
}

/// `[limits]`: admission control (DESIGN.md invariant 4). Every value is > 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Jobs queued or running, all clients together.
    pub queue_depth: u32,
    /// Jobs queued or running for one uid.
    pub per_client_queue_depth: u32,
    /// Token-bucket refill: generate requests per minute per uid.
    pub rate_per_minute: u32,
    /// Token-bucket size: requests a uid may make at once after being idle.
    pub rate_burst: u32,
    /// A job still queued after this long fails with a typed error.
    pub queue_deadline_s: u32,
    /// Wall-clock limit for one job once the worker starts it.
    pub job_timeout_s: u32,
    /// A loaded model nobody used for this long is unloaded (pinning keeps it).
    pub idle_unload_s: u32,
    /// Largest frame the broker sends to a client, in bytes; must hold the
    /// largest PNG the bounds allow.
    pub max_response_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue_depth: 32,
            per_client_queue_depth: 4,
            rate_per_minute: 30,
            rate_burst: 10,
            queue_deadline_s: 300,
            job_timeout_s: 600,
            idle_unload_s: 600,
            max_response_frame: 64 << 20,
        }
    }
}

impl Limits {
    pub fn queue_deadline(&self) -> Duration {
        Duration::from_secs(self.queue_deadline_s.into())
    }
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_s.into())
    }
    pub fn idle_unload(&self) -> Duration {
        Duration::from_secs(self.idle_unload_s.into())
    }
}

/// syslog facility of the audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    #[default]
    Daemon,
    User,
    Auth,
    Authpriv,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    /// The facility bits of a syslog priority (`LOG_DAEMON` and so on).
    pub fn code(self) -> libc::c_int {
        match self {
            Facility::Daemon => libc::LOG_DAEMON,
            Facility::User => libc::LOG_USER,
            Facility::Auth => libc::LOG_AUTH,
            Facility::Authpriv => libc::LOG_AUTHPRIV,
            Facility::Local0 => libc::LOG_LOCAL0,
            Facility::Local1 => libc::LOG_LOCAL1,
            Facility::Local2 => libc::LOG_LOCAL2,
            Facility::Local3 => libc::LOG_LOCAL3,
            Facility::Local4 => libc::LOG_LOCAL4,
            Facility::Local5 => libc::LOG_LOCAL5,
            Facility::Local6 => libc::LOG_LOCAL6,
            Facility::Local7 => libc::LOG_LOCAL7,
        }
    }
}

/// `[audit]`: where audit records go (DESIGN.md invariant 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Absolute path of the syslog datagram socket.
    pub sink: PathBuf,
    /// Whether audit records of jobs include the prompt text.
    pub log_prompts: bool,
    pub facility: Facility,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: PathBuf::from(DEFAULT_AUDIT_SINK),
            log_prompts: false,
            facility: Facility::Daemon,
        }
    }
}

/// Which device the worker runs models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// CUDA device 0 when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda` is `cuda:0`.
    Cuda(u32),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        // "; fix: " splits what is wrong from what to do (see document.rs).
        let bad = || {
            format!(
                "is \"{text}\", which is not a device; fix: write \"auto\", \"cpu\", \
                 \"cuda\" or \"cuda:N\" (N the CUDA device index, like \"cuda:1\")"
            )
        };
        match text {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let index = text.strip_prefix("cuda:").ok_or_else(bad)?;
                // Digits only: u32::from_str would also take "+1".
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                index.parse().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

/// `[worker]`: the sandboxed process that runs the models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub device: Device,
    /// Start even when landlock or seccomp cannot be fully enforced
    /// (DESIGN.md invariant 7: otherwise the worker fails closed).
    pub allow_degraded_sandbox: bool,
    /// seccomp violations trap and are logged instead of killing the worker.
    /// For developing the allowlist; refused in system mode.
    pub seccomp_debug: bool,
}

/// `[output]`: what the broker puts in the PNGs it returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Write the A1111-style `parameters` tEXt chunk (prompt, seed, ...).
    pub png_parameters: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            png_parameters: true,
        }
    }
}

/// Model architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Stable Diffusion 1.x (CLIP ViT-L/14, 512 px).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP ViT-H/14, 768 px).
    Sd2,
    /// Stable Diffusion XL (two text encoders, 1024 px).
    Sdxl,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::Sd1 => "sd1",
            ModelKind::Sd2 => "sd2",
            ModelKind::Sdxl => "sdxl",
        })
    }
}

/// `[model.defaults]`: what a request that leaves a parameter out gets.
/// Absent keys fall back to the model kind's defaults
/// ([`ModelConfig::defaults`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelDefaults {
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    #[serde(with = "by_name")]
    pub scheduler: Option<Scheduler>,
    pub negative_prompt: Option<String>,
}

/// One `[[model]]`: clients name models by `id`; the path never leaves the
/// broker (DESIGN.md invariants 2 and 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit; unique.
    pub id: String,
    pub kind: ModelKind,
    /// A diffusers folder, or a single `*.safetensors` checkpoint. Absolute
    /// once loaded: a relative path is resolved against the directory of the
    /// config file.
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of a single-file checkpoint; the engine refuses
    /// the file when it does not match. Not allowed for folders.
    pub sha256: Option<String>,
    #[serde(default)]
    pub defaults: ModelDefaults,
}

impl ModelConfig {
    /// Whether `path` names a single-file checkpoint (else a diffusers folder).
    pub fn is_single_file(&self) -> bool {
        is_safetensors_name(&self.path)
    }

    /// The generation defaults: `[model.defaults]` over the kind's defaults.
    pub fn defaults(&self) -> GenerationDefaults {
        let (size, guidance) = match self.kind {
            ModelKind::Sd1 => (512, 7.5),
            ModelKind::Sd2 => (768, 7.5),
            ModelKind::Sdxl => (1024, 5.0),
        };
        let given = &self.defaults;
        GenerationDefaults {
            steps: given.steps.unwrap_or(30),
            guidance: given.guidance.unwrap_or(guidance),
            width: given.width.unwrap_or(size),
            height: given.height.unwrap_or(size),
            scheduler: given.scheduler.unwrap_or(Scheduler::Euler),
        }
    }

    /// The negative prompt a request without one gets (empty: none).
    pub fn default_negative_prompt(&self) -> &str {
        self.defaults.negative_prompt.as_deref().unwrap_or_default()
    }
}

pub(crate) fn is_safetensors_name(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "safetensors")
}

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
}

/// The environment values default paths depend on; [`EnvPaths::from_process`]
/// reads them, tests build them by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPaths {
    pub home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl EnvPaths {
    /// `$HOME`, `$XDG_CONFIG_HOME`, `$XDG_RUNTIME_DIR`; empty counts as unset.
    pub fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        Self {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
        }
    }
}

/// An XDG base directory counts only when absolute (the XDG spec says to
/// ignore relative ones).
fn absolute_env(value: &Option<PathBuf>) -> Option<&Path> {
    value.as_deref().filter(|path| path.is_absolute())
}

/// The socket path of `mode` when the config does not set `daemon.socket`:
/// user mode `$XDG_RUNTIME_DIR/weave/weave.sock`, system mode
/// [`SYSTEM_SOCKET_PATH`].
pub fn default_socket_path(mode: Mode, env: &EnvPaths) -> Result<PathBuf, ConfigProblem> {
    match mode {
        Mode::System => Ok(PathBuf::from(SYSTEM_SOCKET_PATH)),
        Mode::User => absolute_env(&env.xdg_runtime_dir)
            .map(|dir| dir.join("weave").join("weave.sock"))
            .ok_or_else(|| ConfigProblem::Environment {
                variable: "XDG_RUNTIME_DIR",
                problem: "is not set to an absolute path, so user mode has no default socket \
                          path"
                    .into(),
                fix: "log in through a session that sets it (systemd-logind does), or set \
                      `socket = \"/run/user/<uid>/weave/weave.sock\"` under [daemon]"
                    .into(),
            }),
    }
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
        let (config, mut problems) = load_collecting(path, mode, allowed_owner_uids);
        if let Some(config) = &config {
            problems.extend(config.check_model_paths());
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

    /// Every model path exists, is the kind of thing its name says (a
    /// `*.safetensors` file, else a directory) and can be opened by this
    /// process. Run as root this cannot tell whether the daemon account may
    /// read it; the worker reports that when it loads the model.
    pub fn check_model_paths(&self) -> Vec<ConfigProblem> {
        self.models
            .iter()
            .filter_map(|model| rules::check_model_path(&self.source, model))
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

/// Reads the file through one descriptor. With `recheck`, also checks on
/// that descriptor what [`check_permissions`] checked by path, so what is
/// parsed is the file that passed even if the path was swapped in between.
/// Without it (the permission check already failed), a file that is not
/// regular stops here with no further problem: that check reported it.
fn read_config_text(
    path: &Path,
    recheck: Option<(Mode, &[u32])>,
) -> Result<String, Option<Box<ConfigProblem>>> {
    let unreadable =
        |source: std::io::Error| Some(Box::new(ConfigProblem::unreadable(path, source)));
    // O_NONBLOCK: opening a FIFO must not hang; fstat then reports it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if let Some((mode, allowed)) = recheck {
        if let Some(problem) = permissions::check_opened_file(path, &meta, mode, allowed) {
            return Err(Some(Box::new(problem)));
        }
    }
    if !meta.is_file() {
        return Err(None);
    }
    let too_large = || ConfigProblem::InvalidFile {
        path: path.to_path_buf(),
        problem: format!("is larger than {MAX_CONFIG_BYTES} bytes, too large for a config"),
        fix: "check that --config names the right file".into(),
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Some(Box::new(too_large())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    // The size can change between fstat and read; what was read counts.
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Some(Box::new(too_large())));
    }
    String::from_utf8(bytes).map_err(|error| {
        Some(Box::new(ConfigProblem::InvalidFile {
            path: path.to_path_buf(),
            problem: format!(
                "is not valid UTF-8 (first bad byte at offset {})",
                error.utf8_error().valid_up_to()
            ),
            fix: "save the file as UTF-8".into(),
        }))
    })
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

/// Line and column (both from 1, column in characters) of a key in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// `file` or `file:line:column`, the prefix of every problem about the
/// file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub location: Option<Location>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(location) => write!(f, "{}:{location}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One thing wrong with a config. The message names the file (with line and
/// column where there is one), the key, what is wrong and, on a line starting
/// with `fix:`, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error("{}: cannot read the config file: {source}\n    fix: {fix}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
        fix: String,
    },

    #[error("{}: {problem}\n    fix: {fix}", path.display())]
    InvalidFile {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error(
        "{place}: TOML syntax error: {message}\n    fix: correct the TOML at that line and column"
    )]
    Syntax { place: Place, message: String },

    #[error("{place}: unknown key `{key}`{}\n    fix: {fix}", valid_keys(valid))]
    UnknownKey {
        place: Place,
        /// Dotted path, e.g. `limits.queue_dpeth` or `model[1].pth`.
        key: String,
        /// The keys allowed where this one is.
        valid: Vec<String>,
        fix: String,
    },

    #[error("{place}: `{key}` {problem}\n    fix: {fix}")]
    InvalidValue {
        place: Place,
        key: String,
        problem: String,
        fix: String,
    },

    #[error("{}: {problem} (config file {})\n    fix: {fix}", path.display(), config.display())]
    UnsafePermissions {
        /// The file or directory at fault: the config or one above it.
        path: PathBuf,
        config: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("{}: model `{model_id}`: path {} {problem}\n    fix: {fix}", config.display(), path.display())]
    ModelPath {
        config: PathBuf,
        model_id: String,
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("environment variable {variable} {problem}\n    fix: {fix}")]
    Environment {
        variable: &'static str,
        problem: String,
        fix: String,
    },
}

fn valid_keys(valid: &[String]) -> String {
    if valid.is_empty() {
        String::new()
    } else {
        format!(" (valid keys here: {})", valid.join(", "))
    }
}

impl ConfigProblem {
    fn unreadable(path: &Path, source: std::io::Error) -> Self {
        let fix = match source.kind() {
            std::io::ErrorKind::NotFound => format!(
                "create {} (annotated examples: docs/weave.example.toml for user mode, \
                 packaging/weave.toml.example for system mode) or name another file with \
                 --config",
                path.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "make it readable by the account the daemon starts as, e.g. `chmod 0644 {}`",
                path.display()
            ),
            _ => "check that the path names a readable regular file".into(),
        };
        ConfigProblem::Unreadable {
            path: path.to_path_buf(),
            source,
            fix,
        }
    }
}

/// Every problem found in one config, in the order found: permissions,
/// syntax and types, values, model paths.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The config file.
    pub path: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "config {} has {count} problem{}:",
            self.path.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for (number, problem) in self.problems.iter().enumerate() {
            write!(f, "\n{}. {problem}", number + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests;
