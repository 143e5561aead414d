//! The types of the file's tables (`[daemon]`, `[limits]`, `[audit]`,
//! `[worker]`, `[output]`, `[[model]]`), each with its defaults.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{by_name, DEFAULT_AUDIT_SINK};
use crate::proto::{GenerationDefaults, Scheduler};
use crate::validate::ParamBounds;

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
    /// Connections served at once, all uids together.
    pub max_connections: u32,
    /// Connections one client uid may hold at once.
    pub max_connections_per_uid: u32,
    /// Places of `max_connections` only admins may take.
    pub admin_reserved_connections: u32,
    /// A connection that has not sent Hello this long after it was accepted
    /// is closed.
    pub hello_timeout_s: u32,
    /// 75-token chunks one prompt (or negative prompt) may take after A1111
    /// syntax and `BREAK`s; each chunk is one more text-encoder pass and 77
    /// more positions for the UNet's cross-attention.
    pub max_prompt_chunks: u32,
    /// Largest request body of a `Generate` carrying `init_image` (and
    /// `mask`), in bytes; every other request stays within
    /// `proto::MAX_REQUEST_FRAME`.
    pub max_image_request_bytes: u32,
    /// The smallest `preview_every` a request may ask for: at most one
    /// preview per this many steps of each image (the previews' rate).
    pub min_preview_every: u32,
    /// Longest edge of a preview, in pixels. Previews are drawn at the
    /// latent resolution (or twice it) and scaled down to fit.
    pub preview_max_size: u32,
    /// `[[lora]]`s one request may use (0: none); at most
    /// [`super::MAX_LORAS_BOUND`].
    pub max_loras: u32,
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
            max_connections: 512,
            max_connections_per_uid: 64,
            admin_reserved_connections: 16,
            hello_timeout_s: 5,
            max_prompt_chunks: crate::prompt::DEFAULT_MAX_PROMPT_CHUNKS,
            max_image_request_bytes: crate::proto::DEFAULT_MAX_IMAGE_REQUEST_FRAME,
            min_preview_every: 1,
            preview_max_size: 256,
            max_loras: 4,
        }
    }
}

impl Limits {
    pub fn queue_deadline(&self) -> Duration {
        Duration::from_secs(self.queue_deadline_s.into())
    }
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_s.into())
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
    /// libtorch's intra-op thread count in each worker (and one inter-op
    /// thread). Unset: libtorch's default, one per CPU the worker may run on,
    /// which spins against every other process on a loaded machine; with
    /// several workers on the CPU, the CPUs divided among them (at least one
    /// each).
    pub torch_threads: Option<u32>,
    /// Let oneDNN run, at the price of allowing executable mappings after
    /// initialization: its JIT writes convolution kernels into RWX memory,
    /// so a compromised worker could then create new code. Off (the default):
    /// oneDNN is switched off before the sandbox and `PROT_EXEC` is refused.
    pub seccomp_exec_mappings: bool,
    /// How many workers run on `device` (each its own sandboxed process, keys
    /// and segments). Unset: one, or one per entry of `devices`.
    pub count: Option<u32>,
    /// One worker per entry, each on that device (instead of `device`);
    /// `["auto"]` alone: one per GPU the broker sees (`/dev/nvidiaN`), else
    /// one CPU worker. See [`super::pool`].
    pub devices: Option<Vec<Device>>,
}

/// The most libtorch threads `torch_threads` may ask for.
pub const MAX_TORCH_THREADS: u32 = 1024;

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

/// `[model.bounds]`: a model's own image-size range (SDXL's differs from
/// SD 1.5's), inside `[bounds]`; an absent key takes `[bounds]`' value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelBounds {
    pub min_width: Option<u32>,
    pub max_width: Option<u32>,
    pub min_height: Option<u32>,
    pub max_height: Option<u32>,
}

impl ModelBounds {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
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
    /// The image size the model's folder declares
    /// ([`crate::model_files::native_size`]), filled by
    /// [`super::Config::read_native_sizes`]; never a key of the file.
    #[serde(skip)]
    pub native_size: Option<u32>,
    #[serde(default, skip_serializing_if = "ModelBounds::is_empty")]
    pub bounds: ModelBounds,
    /// The most workers of the pool that may hold this model at once, so one
    /// popular model does not take the whole box; unset: no limit but the
    /// pool's size.
    #[serde(default)]
    pub max_workers: Option<u32>,
}

impl ModelConfig {
    /// Whether `path` names a single-file checkpoint (else a diffusers folder).
    pub fn is_single_file(&self) -> bool {
        is_safetensors_name(&self.path)
    }

    /// The generation defaults: `[model.defaults]`, then (for width and
    /// height) the folder's native size, then the kind's defaults.
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
            width: given.width.or(self.native_size).unwrap_or(size),
            height: given.height.or(self.native_size).unwrap_or(size),
            scheduler: given.scheduler.unwrap_or(Scheduler::Euler),
        }
    }

    /// The bounds requests for this model are held to: `[model.bounds]`
    /// over `[bounds]`.
    pub fn bounds(&self, global: &ParamBounds) -> ParamBounds {
        let own = &self.bounds;
        ParamBounds {
            min_width: own.min_width.unwrap_or(global.min_width),
            max_width: own.max_width.unwrap_or(global.max_width),
            min_height: own.min_height.unwrap_or(global.min_height),
            max_height: own.max_height.unwrap_or(global.max_height),
            ..global.clone()
        }
    }

    /// The negative prompt a request without one gets (empty: none).
    pub fn default_negative_prompt(&self) -> &str {
        self.defaults.negative_prompt.as_deref().unwrap_or_default()
    }
}

/// Whether `path` names a single-file checkpoint (`*.safetensors`).
pub fn is_safetensors_name(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "safetensors")
}
