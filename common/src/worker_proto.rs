//! Broker ↔ worker messages and the worker's bootstrap.
//!
//! Two layers:
//! - [`WorkerBootstrap`] travels once, postcard-encoded, through the pipe on
//!   fd 7 when the broker starts `weave-worker` (see `docs/WORKER.md` for the
//!   whole spawn contract). It is the only place channel keys and model paths
//!   reach the worker: never argv, never the environment.
//! - [`ToWorker`] / [`FromWorker`] are the postcard bodies carried inside the
//!   encrypted shared-memory slots, one message per slot.
//!
//! Everything the worker sends is untrusted input to the broker: decoding is
//! bounded by the slot size, and the broker checks every field against the
//! request (job id, dimensions, pixel count, image count).
//!
//! Compatibility: postcard encodes enum variants by index and struct fields by
//! position. Broker and worker ship together and check
//! [`WORKER_PROTOCOL_VERSION`] in the bootstrap, so reordering is allowed as
//! long as the version is bumped.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::config::{Device, ModelKind};
use crate::prompt::PromptField;
use crate::proto::Scheduler;

pub mod channel;

/// Version of the broker ↔ worker protocol. The worker refuses a bootstrap
/// with any other version (broker and worker binaries must come from the same
/// build).
pub const WORKER_PROTOCOL_VERSION: u32 = 7;

/// Largest bootstrap the worker accepts from the pipe. A model table of a few
/// hundred entries with long paths fits comfortably.
pub const MAX_BOOTSTRAP_LEN: usize = 256 * 1024;

/// The inherited descriptors of the spawn contract. The broker places exactly
/// these (and 0–2) in the worker; the worker closes everything above them.
pub mod fds {
    use std::os::fd::RawFd;

    /// Broker → worker ring (memfd, sealed).
    pub const TO_WORKER_SEGMENT: RawFd = 3;
    /// Worker → broker ring (memfd, sealed).
    pub const TO_BROKER_SEGMENT: RawFd = 4;
    /// Eventfd the broker signals after writing a slot.
    pub const TO_WORKER_DOORBELL: RawFd = 5;
    /// Eventfd the worker signals after writing a slot.
    pub const TO_BROKER_DOORBELL: RawFd = 6;
    /// Read end of a pipe carrying one postcard [`super::WorkerBootstrap`],
    /// then EOF.
    pub const BOOTSTRAP_PIPE: RawFd = 7;
    /// First descriptor number the worker does not inherit.
    pub const FIRST_UNUSED: RawFd = 8;
}

/// A 256-bit channel key on its way to the worker. Zeroized on drop; its
/// `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct KeyBytes(pub [u8; 32]);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

/// Key and generation of one direction's ring. The generation goes into every
/// message's AAD, so a message sealed under an old key generation never
/// verifies under a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionKey {
    pub key: KeyBytes,
    pub generation: u64,
}

/// Geometry of one direction's ring segment. The receiver of a segment fd
/// checks the memfd's size and seals against these values before mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentGeometry {
    /// Identifier bound into the AAD of every message in this segment.
    pub segment_id: u64,
    pub slot_count: u32,
    /// Bytes per slot, header and tag included.
    pub slot_size: u32,
}

/// One model the worker may load: the ID callers use, the engine kind and the
/// path from the broker's configuration. Paths never come from a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    /// The family the config names (`kind`); the worker maps it to the
    /// engine's, and refuses one its engine does not implement.
    pub kind: ModelKind,
    pub path: PathBuf,
    /// The config's `sha256` pin (lower-case hex), enforced by the loader.
    pub sha256: Option<String>,
}

/// One LoRA file the worker may read: the config's `[[lora]]` id, path and
/// pin. Paths never come from a caller; which model it fits is the
/// broker's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraEntry {
    pub id: String,
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file, enforced on the bytes read.
    pub sha256: Option<String>,
}

/// A LoRA a generation applies: a bootstrap table id and its weight
/// (checked by the broker against the LoRA's bounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLora {
    pub id: String,
    pub weight: f32,
}

/// Everything the worker needs to start, sent once through fd 7.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerBootstrap {
    pub protocol_version: u32,
    pub to_worker: SegmentGeometry,
    pub to_broker: SegmentGeometry,
    pub to_worker_key: DirectionKey,
    pub to_broker_key: DirectionKey,
    pub models: Vec<ModelEntry>,
    /// This worker's device from the config (`auto` stays `auto`).
    pub device: Device,
    /// The GPU node `N` (`/dev/nvidiaN`) the broker made the one CUDA shows
    /// this worker: `cuda:N`'s own, the one an `auto` worker was given (the
    /// visible GPUs in turn, `config::pool::auto_gpu`), `None` for the CPU or
    /// a box without GPUs. Landlock grants this node and no other.
    pub gpu: Option<u32>,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub torch_threads: Option<u32>,
    /// Run even when landlock is only partially enforced (config opt-in).
    pub allow_degraded_sandbox: bool,
    /// Seccomp traps and logs a denied syscall instead of killing.
    pub seccomp_debug: bool,
    /// Allow `PROT_EXEC` mappings after initialization (libtorch JIT).
    pub seccomp_exec_mappings: bool,
    /// Folders holding libtorch/CUDA shared libraries the worker may read.
    pub library_dirs: Vec<PathBuf>,
    /// The LoRA table (`[[lora]]`); each file is readable under landlock.
    pub loras: Vec<LoraEntry>,
}

/// Parameters of one generation. Unlike the client request every field is
/// concrete: the broker has applied defaults and picked the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerGenerateParams {
    pub model_id: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    /// Image `i` of the batch uses `seed.wrapping_add(i)`.
    pub seed: u64,
    pub scheduler: Scheduler,
    pub batch: u32,
    /// `limits.max_prompt_chunks`: 75-token chunks each prompt may take.
    pub max_prompt_chunks: u32,
    /// LoRAs to merge for this job, in request order; empty: the model as
    /// loaded.
    pub loras: Vec<WorkerLora>,
    /// Send a `FromWorker::Preview` of each image after every step that is
    /// a multiple of this (of the image's own steps); 0: none.
    pub preview_every: u32,
    /// `limits.preview_max_size`: a preview's longer edge, at most.
    pub preview_max_size: u32,
    /// img2img / inpainting; `None`: text to image.
    pub image: Option<WorkerImageInput>,
}

/// A request's image inputs on their way to the worker: the caller's PNG
/// bytes as they came (the broker checked their structure and size from
/// the header; the sandboxed worker decodes them, see docs/SANDBOX.md).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerImageInput {
    pub init_png: Vec<u8>,
    pub mask_png: Option<Vec<u8>>,
    /// In (0, 1], the default applied.
    pub strength: f32,
}

// Lengths only: a Debug of a job must not dump a caller's image.
impl fmt::Debug for WorkerImageInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerImageInput")
            .field("init_png_len", &self.init_png.len())
            .field("mask_png_len", &self.mask_png.as_ref().map(Vec::len))
            .field("strength", &self.strength)
            .finish()
    }
}

impl WorkerGenerateParams {
    /// Denoising steps each image runs, the `total` of every `Progress`:
    /// `steps`, or with an init image diffusers' `int(steps × strength)`.
    pub fn steps_to_run(&self) -> u32 {
        match &self.image {
            Some(image) => crate::image::steps_run(self.steps, image.strength),
            None => self.steps,
        }
    }

    /// Bytes of one RGB8 image of these dimensions, `None` on overflow.
    pub fn image_len(&self) -> Option<usize> {
        usize::try_from(self.width)
            .ok()?
            .checked_mul(usize::try_from(self.height).ok()?)?
            .checked_mul(3)
    }
}

/// Messages from the broker to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Load the model with this ID from the bootstrap's table (unloading any
    /// other first). Answered by `Loaded` or `Failed`.
    Load { model_id: String },
    /// Drop the loaded model. Answered by `Unloaded`.
    Unload,
    /// Run one generation on the loaded model. Answered by `Progress` per
    /// step, `Image` per batch entry, then `Finished` or `Failed`.
    Generate {
        job_id: u64,
        params: WorkerGenerateParams,
    },
    /// Stop `job_id` at the next step boundary (answered by its `Failed`
    /// with `Cancelled`). Ignored when that job is not running.
    Cancel { job_id: u64 },
    /// Switch both directions to new keys. The worker reads this message
    /// under the current key, then switches its reader and its writer, and
    /// sends `RekeyAck` as the first message under the new keys. The broker
    /// switches its writer right after sending `Rekey` and its reader right
    /// before reading `RekeyAck`. Only sent while no job runs.
    Rekey {
        to_worker: DirectionKey,
        to_broker: DirectionKey,
    },
    /// Exit cleanly.
    Shutdown,
}

impl ToWorker {
    /// Message kind bound into the slot's AAD.
    pub fn kind(&self) -> u16 {
        match self {
            ToWorker::Load { .. } => 1,
            ToWorker::Unload => 2,
            ToWorker::Generate { .. } => 3,
            ToWorker::Cancel { .. } => 4,
            ToWorker::Rekey { .. } => 5,
            ToWorker::Shutdown => 6,
        }
    }
}

/// Why the worker could not do what it was asked. Never carries a file path:
/// reasons may reach logs that callers can read about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerFailure {
    /// The model ID is not in the bootstrap's table.
    UnknownModel,
    /// `Generate` without a loaded model, or for another model than loaded.
    NotLoaded,
    LoadFailed {
        reason: String,
    },
    /// The model's files do not hash to its `sha256` pin (checked on the
    /// bytes the loader would have parsed; none of them was used).
    PinMismatch,
    Cancelled,
    EngineError {
        reason: String,
    },
    /// The parameters are outside what the engine supports for this model.
    Unsupported {
        reason: String,
    },
    /// A prompt takes more 75-token chunks than `max_prompt_chunks` (only
    /// the tokenizer, in the worker, can count them).
    PromptTooLong {
        field: PromptField,
        chunks: u32,
    },
    /// An image input did not decode (the broker's header check passed).
    BadImage {
        field: crate::image::ImageField,
        problem: crate::image::ImageProblem,
    },
    /// The loaded model's engine does not build image inputs for its
    /// family or UNet yet (the engine's `NotBuilt`).
    ImageNotBuilt {
        reason: String,
    },
    /// A LoRA of the job could not be used (unreadable, not safetensors, a
    /// tensor that fits no layer); the model is left as loaded. `reason`
    /// names tensors, never the file.
    LoraFailed {
        id: String,
        reason: String,
    },
    /// A LoRA file does not hash to its `sha256` pin.
    LoraPinMismatch {
        id: String,
    },
}

/// What the sandbox achieved, as the worker reads it back from the kernel
/// right before `Ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// Landlock: `FullyEnforced`, `PartiallyEnforced`, `NotEnforced`.
    pub landlock: String,
    /// Landlock ABI version the kernel offers, 0 when unavailable.
    pub landlock_abi: u32,
    /// `Seccomp:` from /proc/self/status (2 = filter).
    pub seccomp_mode: u8,
    /// Seccomp traps or logs instead of killing (tracing only).
    pub seccomp_debug: bool,
    pub no_new_privs: bool,
    /// The effective, permitted, inheritable and ambient sets are empty (the
    /// bounding set is not counted: user mode cannot clear it).
    pub capabilities_empty: bool,
    /// Every layer fully enforced (what `allow_degraded_sandbox = false`
    /// demands).
    pub fully_enforced: bool,
}

/// Messages from the worker to the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Sent once, after seccomp is on and before the worker reads anything.
    Ready {
        sandbox: SandboxReport,
        /// Where the worker's libtorch runs the models: the configured device,
        /// with `auto` resolved (`cuda:0` when libtorch saw a CUDA device,
        /// else `cpu`); never `auto`.
        device: Device,
    },
    Loaded {
        model_id: String,
        memory_bytes: u64,
        load_ms: u64,
    },
    Unloaded,
    Progress {
        job_id: u64,
        step: u32,
        total: u32,
    },
    /// One finished image of the batch: raw RGB8, row-major, no padding.
    Image {
        job_id: u64,
        index: u32,
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    },
    Finished {
        job_id: u64,
    },
    /// `job_id` is `None` for a failed `Load`.
    Failed {
        job_id: Option<u64>,
        failure: WorkerFailure,
    },
    RekeyAck,
    /// Sent instead of `Ready` when the worker cannot set itself up (its
    /// sandbox, libtorch, the configured device), just before it exits:
    /// what went wrong, in words for an administrator. Untrusted text: the
    /// broker bounds and escapes it and shows it only to admins.
    StartFailed {
        reason: String,
    },
    /// A preview of image `index` after `step` of its `total` steps: raw
    /// RGB8 like `Image`, at most `preview_max_size` on its longer edge.
    /// Only when the job asked for previews; the broker checks every field
    /// and PNG-encodes it.
    Preview {
        job_id: u64,
        index: u32,
        step: u32,
        total: u32,
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    },
}

impl FromWorker {
    /// Message kind bound into the slot's AAD.
    pub fn kind(&self) -> u16 {
        match self {
            FromWorker::Ready { .. } => 1,
            FromWorker::Loaded { .. } => 2,
            FromWorker::Unloaded => 3,
            FromWorker::Progress { .. } => 4,
            FromWorker::Image { .. } => 5,
            FromWorker::Finished { .. } => 6,
            FromWorker::Failed { .. } => 7,
            FromWorker::RekeyAck => 8,
            FromWorker::StartFailed { .. } => 9,
            FromWorker::Preview { .. } => 10,
        }
    }
}

/// Errors encoding or decoding a worker-channel message or the bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum WorkerProtoError {
    #[error(
        "worker message does not decode ({0}); broker and worker must come from the same build"
    )]
    Decode(postcard::Error),
    #[error(
        "worker message has {0} trailing bytes; broker and worker must come from the same build"
    )]
    TrailingBytes(usize),
    #[error("message kind {declared} in the slot does not match the body (kind {actual})")]
    KindMismatch { declared: u16, actual: u16 },
    #[error("message does not encode: {0}")]
    Encode(postcard::Error),
    #[error("bootstrap is {len} bytes, more than the {MAX_BOOTSTRAP_LEN} allowed")]
    BootstrapTooLarge { len: usize },
    #[error(
        "bootstrap protocol version {got}, this worker speaks {WORKER_PROTOCOL_VERSION}; \
         install weave-broker and weave-worker from the same build"
    )]
    VersionMismatch { got: u32 },
}

fn decode_exact<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, WorkerProtoError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(WorkerProtoError::Decode)?;
    if !rest.is_empty() {
        return Err(WorkerProtoError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a broker → worker message body.
pub fn encode_to_worker(msg: &ToWorker) -> Result<Vec<u8>, WorkerProtoError> {
    postcard::to_stdvec(msg).map_err(WorkerProtoError::Encode)
}

/// Encodes a worker → broker message body.
pub fn encode_from_worker(msg: &FromWorker) -> Result<Vec<u8>, WorkerProtoError> {
    postcard::to_stdvec(msg).map_err(WorkerProtoError::Encode)
}

/// Decodes a broker → worker body and checks it against the slot's kind.
pub fn decode_to_worker(kind: u16, body: &[u8]) -> Result<ToWorker, WorkerProtoError> {
    let msg: ToWorker = decode_exact(body)?;
    if msg.kind() != kind {
        return Err(WorkerProtoError::KindMismatch {
            declared: kind,
            actual: msg.kind(),
        });
    }
    Ok(msg)
}

/// Decodes a worker → broker body and checks it against the slot's kind.
pub fn decode_from_worker(kind: u16, body: &[u8]) -> Result<FromWorker, WorkerProtoError> {
    let msg: FromWorker = decode_exact(body)?;
    if msg.kind() != kind {
        return Err(WorkerProtoError::KindMismatch {
            declared: kind,
            actual: msg.kind(),
        });
    }
    Ok(msg)
}

/// Encodes the bootstrap for the pipe on fd 7.
pub fn encode_bootstrap(bootstrap: &WorkerBootstrap) -> Result<Vec<u8>, WorkerProtoError> {
    let bytes = postcard::to_stdvec(bootstrap).map_err(WorkerProtoError::Encode)?;
    if bytes.len() > MAX_BOOTSTRAP_LEN {
        return Err(WorkerProtoError::BootstrapTooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes the bootstrap read from fd 7 and checks its version.
pub fn decode_bootstrap(bytes: &[u8]) -> Result<WorkerBootstrap, WorkerProtoError> {
    if bytes.len() > MAX_BOOTSTRAP_LEN {
        return Err(WorkerProtoError::BootstrapTooLarge { len: bytes.len() });
    }
    let bootstrap: WorkerBootstrap = decode_exact(bytes)?;
    if bootstrap.protocol_version != WORKER_PROTOCOL_VERSION {
        return Err(WorkerProtoError::VersionMismatch {
            got: bootstrap.protocol_version,
        });
    }
    Ok(bootstrap)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample_bootstrap() -> WorkerBootstrap {
        WorkerBootstrap {
            protocol_version: WORKER_PROTOCOL_VERSION,
            to_worker: SegmentGeometry {
                segment_id: 1,
                slot_count: 4,
                slot_size: 512,
            },
            to_broker: SegmentGeometry {
                segment_id: 2,
                slot_count: 4,
                slot_size: 1024,
            },
            to_worker_key: DirectionKey {
                key: KeyBytes([7; 32]),
                generation: 0,
            },
            to_broker_key: DirectionKey {
                key: KeyBytes([9; 32]),
                generation: 0,
            },
            models: vec![ModelEntry {
                id: "digits".into(),
                kind: ModelKind::Sd1,
                path: "/srv/models/digits".into(),
                sha256: None,
            }],
            device: Device::Cpu,
            gpu: None,
            torch_threads: Some(2),
            allow_degraded_sandbox: false,
            seccomp_debug: false,
            seccomp_exec_mappings: false,
            library_dirs: vec!["/opt/libtorch/lib".into()],
            loras: vec![LoraEntry {
                id: "bold".into(),
                path: "/l/bold.safetensors".into(),
                sha256: None,
            }],
        }
    }

    #[test]
    fn bootstrap_round_trips() {
        let b = sample_bootstrap();
        let bytes = encode_bootstrap(&b).unwrap();
        assert_eq!(decode_bootstrap(&bytes).unwrap(), b);
        let gpu = WorkerBootstrap {
            device: Device::Auto,
            gpu: Some(3),
            ..sample_bootstrap()
        };
        let bytes = encode_bootstrap(&gpu).unwrap();
        assert_eq!(decode_bootstrap(&bytes).unwrap(), gpu);
    }

    #[test]
    fn bootstrap_with_other_version_is_refused() {
        let mut b = sample_bootstrap();
        b.protocol_version = WORKER_PROTOCOL_VERSION + 1;
        let bytes = postcard::to_stdvec(&b).unwrap();
        assert!(matches!(
            decode_bootstrap(&bytes),
            Err(WorkerProtoError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_bootstrap(&sample_bootstrap()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode_bootstrap(&bytes),
            Err(WorkerProtoError::TrailingBytes(1))
        ));
        let mut body = encode_from_worker(&FromWorker::Unloaded).unwrap();
        body.push(1);
        assert!(matches!(
            decode_from_worker(FromWorker::Unloaded.kind(), &body),
            Err(WorkerProtoError::TrailingBytes(1))
        ));
    }

    #[test]
    fn kind_must_match_body() {
        let msg = FromWorker::Finished { job_id: 3 };
        let body = encode_from_worker(&msg).unwrap();
        assert_eq!(decode_from_worker(msg.kind(), &body).unwrap(), msg);
        assert!(matches!(
            decode_from_worker(FromWorker::Unloaded.kind(), &body),
            Err(WorkerProtoError::KindMismatch { .. })
        ));
        let cancel = ToWorker::Cancel { job_id: 9 };
        let body = encode_to_worker(&cancel).unwrap();
        assert_eq!(decode_to_worker(cancel.kind(), &body).unwrap(), cancel);
        assert!(decode_to_worker(ToWorker::Shutdown.kind(), &body).is_err());
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        let msg = FromWorker::Image {
            job_id: 1,
            index: 0,
            width: 2,
            height: 2,
            rgb: vec![1; 12],
        };
        let body = encode_from_worker(&msg).unwrap();
        for cut in 0..body.len() {
            assert!(decode_from_worker(msg.kind(), &body[..cut]).is_err());
        }
    }

    #[test]
    fn keys_are_not_printed() {
        let k = DirectionKey {
            key: KeyBytes([0xAB; 32]),
            generation: 5,
        };
        let shown = format!("{k:?}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn image_len_checks_overflow() {
        let mut p = WorkerGenerateParams {
            model_id: "m".into(),
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 64,
            height: 32,
            steps: 1,
            guidance: 1.0,
            seed: 0,
            scheduler: Scheduler::Ddim,
            batch: 1,
            max_prompt_chunks: 8,
            image: None,
            preview_every: 0,
            preview_max_size: 256,
            loras: Vec::new(),
        };
        assert_eq!(p.image_len(), Some(64 * 32 * 3));
        p.width = u32::MAX;
        p.height = u32::MAX;
        assert_eq!(p.image_len(), None);
    }
}
