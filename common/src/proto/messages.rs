//! The messages themselves. Field and variant order is the wire format:
//! append only (see the module docs of [`crate::proto`]).
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ErrorCode, Named};
use crate::config::Device;
use crate::validate::ParamBounds;

/// What a caller sends. The first request on a connection must be `Hello`.
// `Generate` is much larger than the other verbs; a connection holds one
// request at a time, so the size is paid once per connection, and an
// unboxed variant keeps every construction and match site plain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Handshake; answered by `Response::Hello` or `Response::Error`.
    Hello {
        version: u16,
        client_name: String,
    },
    // Client verbs.
    ListModels,
    Status,
    Generate(GenerateRequest),
    /// Cancel a job the caller owns (admins: any job).
    Cancel {
        job_id: u64,
    },
    /// The caller's own jobs.
    Jobs,
    // Admin verbs.
    Load {
        model_id: String,
    },
    Unload,
    Pin {
        model_id: String,
    },
    Unpin {
        model_id: String,
    },
    Drain,
    Resume,
    RotateKeys,
    ChannelStats,
    AllJobs,
    QuarantineClear {
        model_id: String,
    },
}

impl Request {
    /// Stable lower-case name of the verb, for audit records and
    /// `ErrorCode::NotPermitted`.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::ListModels => "list_models",
            Request::Status => "status",
            Request::Generate(_) => "generate",
            Request::Cancel { .. } => "cancel",
            Request::Jobs => "jobs",
            Request::Load { .. } => "load",
            Request::Unload => "unload",
            Request::Pin { .. } => "pin",
            Request::Unpin { .. } => "unpin",
            Request::Drain => "drain",
            Request::Resume => "resume",
            Request::RotateKeys => "rotate_keys",
            Request::ChannelStats => "channel_stats",
            Request::AllJobs => "all_jobs",
            Request::QuarantineClear { .. } => "quarantine_clear",
        }
    }

    /// Whether only callers with `Role::Admin` may send this request.
    pub fn requires_admin(&self) -> bool {
        match self {
            Request::Hello { .. }
            | Request::ListModels
            | Request::Status
            | Request::Generate(_)
            | Request::Cancel { .. }
            | Request::Jobs => false,
            Request::Load { .. }
            | Request::Unload
            | Request::Pin { .. }
            | Request::Unpin { .. }
            | Request::Drain
            | Request::Resume
            | Request::RotateKeys
            | Request::ChannelStats
            | Request::AllJobs
            | Request::QuarantineClear { .. } => true,
        }
    }
}

/// Parameters of one generation job.
///
/// `None` in `width`, `height`, `steps`, `guidance` or `scheduler` means "the
/// model's default" (`ModelInfo::defaults`); `seed: None` means a random seed
/// that the broker picks and reports back in `Response::Started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model_id: String,
    pub prompt: String,
    /// Empty: none, or the model's default with `use_model_negative`.
    pub negative_prompt: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    /// Classifier-free guidance scale.
    pub guidance: Option<f32>,
    pub seed: Option<u64>,
    pub scheduler: Option<Scheduler>,
    /// Images to generate; image `i` uses seed `seed + i` (wrapping).
    pub batch: u32,
    /// End-user label from the web app (the broker knows only the uid).
    pub tag: Option<String>,
    /// `true`: an empty `negative_prompt` means the model's default negative
    /// prompt (`[model.defaults] negative_prompt`). `false`:
    /// `negative_prompt` is used as sent, and empty means none.
    pub use_model_negative: bool,
    /// img2img and inpainting: the starting image, as PNG bytes
    /// (docs/PROTOCOL.md, "Image inputs"). `None`: text to image. Added in
    /// protocol version 2.
    pub init_image: Option<Vec<u8>>,
    /// Inpainting: a PNG mask the size of `init_image`, white = repaint,
    /// black = keep. Needs `init_image`. Added in protocol version 2.
    pub mask: Option<Vec<u8>>,
    /// img2img denoising strength in (0, 1]: the share of the schedule that
    /// runs on the noised `init_image`. `None`: the broker's default. Only
    /// with `init_image`. Added in protocol version 2.
    pub strength: Option<f32>,
    /// LoRAs to apply, by `[[lora]]` id from the config (never a path), with
    /// their weights, in order. Empty: none. Added in protocol version 2.
    pub loras: Vec<LoraChoice>,
    /// Send a `Response::Preview` after every step that is a multiple of
    /// this (of each image's own steps); 0: no previews (the default).
    /// Otherwise from `limits.min_preview_every` to the job's steps.
    /// Added in protocol version 2.
    pub preview_every: u32,
}

/// One LoRA a request asks for: a configured id and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraChoice {
    /// The `[[lora]] id` from the config.
    pub id: String,
    /// How strongly it is applied; the config bounds it.
    pub weight: f32,
}

/// Sampling schedulers the engine implements. On the wire a variant is its
/// index; configs, the command line and `sshmctl --json` use
/// [`Named::name`] (`ddim`, `euler_a`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scheduler {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPp2m,
    DpmPp2mKarras,
}

impl Scheduler {
    /// Every scheduler, in wire order.
    pub const ALL: [Scheduler; 5] = [
        Scheduler::Ddim,
        Scheduler::Euler,
        Scheduler::EulerAncestral,
        Scheduler::DpmPp2m,
        Scheduler::DpmPp2mKarras,
    ];

    /// Short name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Ddim => "ddim",
            Scheduler::Euler => "euler",
            Scheduler::EulerAncestral => "euler_a",
            Scheduler::DpmPp2m => "dpmpp_2m",
            Scheduler::DpmPp2mKarras => "dpmpp_2m_karras",
        }
    }

    /// The name AUTOMATIC1111 writes in a PNG `parameters` chunk.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Scheduler::Ddim => "DDIM",
            Scheduler::Euler => "Euler",
            Scheduler::EulerAncestral => "Euler a",
            Scheduler::DpmPp2m => "DPM++ 2M",
            Scheduler::DpmPp2mKarras => "DPM++ 2M Karras",
        }
    }
}

impl Named for Scheduler {
    const ALL: &'static [Self] = &Scheduler::ALL;
    const NAMES: &'static [&'static str] =
        &["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"];
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scheduler name that is not one of [`Scheduler::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler; use one of: ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras")]
pub struct ParseSchedulerError;

impl FromStr for Scheduler {
    type Err = ParseSchedulerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scheduler::from_name(name).ok_or(ParseSchedulerError)
    }
}

/// What the broker sends: one response per request, except `Generate`, which
/// is answered by a stream of events ending in `Finished` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u16,
        server_version: String,
        role: Role,
        mode: Mode,
    },
    Models(Vec<ModelInfo>),
    Status(StatusReport),
    /// The job was admitted; `position` 0 means next to run.
    Queued {
        job_id: u64,
        position: u32,
    },
    /// The job moved up the queue.
    Position {
        job_id: u64,
        position: u32,
    },
    /// The worker began the job; `seed` is the seed of image 0.
    Started {
        job_id: u64,
        seed: u64,
    },
    /// `step` of `total` denoising steps done (1-based).
    Progress {
        job_id: u64,
        step: u32,
        total: u32,
    },
    /// One finished image, PNG-encoded by the broker.
    Image {
        job_id: u64,
        index: u32,
        seed: u64,
        width: u32,
        height: u32,
        png: Vec<u8>,
    },
    /// All images of the job were sent.
    Finished {
        job_id: u64,
    },
    Jobs(Vec<JobInfo>),
    ChannelStats(ChannelStatsReport),
    Ok,
    Error(ErrorCode),
    /// A small, approximate look at image `index` after `step` of its
    /// `total` denoising steps (`GenerateRequest::preview_every`), as a PNG
    /// at most `limits.preview_max_size` pixels on its longer edge. Sent
    /// before that image's `Image`; may be dropped when the caller reads
    /// slowly (never `Image` or `Finished`). Added in protocol version 2.
    Preview {
        job_id: u64,
        index: u32,
        step: u32,
        total: u32,
        width: u32,
        height: u32,
        png: Vec<u8>,
    },
}

impl Response {
    /// Whether this event ends a `Generate` stream.
    pub fn ends_generate_stream(&self) -> bool {
        matches!(self, Response::Finished { .. } | Response::Error(_))
    }
}

/// What the broker granted the connection, from its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Client,
    Admin,
}

/// How the daemon runs (see DESIGN.md, "Modes"). The broker's `--user` /
/// `--system` flag wins over the config's `mode` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Runs as the installing user; only that uid may connect.
    User,
    /// Starts as root, drops to `daemon.user`; groups decide who may connect.
    System,
}

impl Named for Mode {
    const ALL: &'static [Self] = &[Mode::User, Mode::System];
    const NAMES: &'static [&'static str] = &["user", "system"];
    fn name(self) -> &'static str {
        match self {
            Mode::User => "user",
            Mode::System => "system",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Mode::from_name(text)
            .ok_or_else(|| format!("`{text}` is not a mode: use \"user\" or \"system\""))
    }
}

/// Defaults applied to the `None` fields of a `GenerateRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    pub scheduler: Scheduler,
}

/// One configured model as a caller sees it (no file paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    /// Model family as configured (`ModelKind`'s name): `sd1`, `sd2`, `sdxl`.
    pub kind: String,
    pub loaded: bool,
    pub pinned: bool,
    pub quarantined: bool,
    pub defaults: GenerationDefaults,
    /// The bounds the broker enforces for this model.
    pub bounds: ParamBounds,
    /// Whether a job on this model can run: its files passed the broker's
    /// checks (at start-up and at each load) and it is not quarantined.
    /// Added in protocol version 2.
    pub available: bool,
    /// Why not, when `available` is false: to admins only (it may name a
    /// file); `None` for clients and for available models. Added in
    /// protocol version 2.
    pub reason: Option<String>,
}

/// The daemon's state, answered to `Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon_version: String,
    pub mode: Mode,
    pub uptime_s: u64,
    pub loaded: Option<LoadedModel>,
    /// Jobs waiting, not counting the running one.
    pub queue_depth: u32,
    pub draining: bool,
    pub worker: WorkerState,
    pub worker_restarts: u32,
    /// One-line summary of the worker's confinement, e.g.
    /// `landlock abi 5 + seccomp (enforced)`.
    pub sandbox: String,
    /// The device the worker runs the models on (`device = "auto"`
    /// resolved by the worker's libtorch); `None` until a worker has started.
    pub device: Option<Device>,
    /// Why the last worker start failed (e.g. a `device` the machine does
    /// not have), until a start succeeds: to admins only; `None` for
    /// clients. Added in protocol version 2.
    pub worker_error: Option<String>,
    /// The worker process's memory, read by the broker from
    /// `/proc/PID/status`; `None` while no worker runs. Added in protocol
    /// version 2.
    pub worker_memory: Option<WorkerMemory>,
    /// Every worker of the pool (`[worker] count` / `devices`), in index
    /// order; the fields above describe worker 0 (`queue_depth`, `draining`
    /// and `uptime_s` the daemon). Added in protocol version 2.
    pub workers: Vec<WorkerReport>,
}

/// One worker of the pool, as `Status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Its index in the pool, from 0; audit records and `JobInfo::worker`
    /// name workers by it.
    pub index: u32,
    /// The device it runs on: what the worker reported in `Ready` (`auto`
    /// resolved), else the configured one.
    pub device: Device,
    pub state: WorkerState,
    /// Starts after its first.
    pub restarts: u32,
    /// The model it holds, if any.
    pub loaded: Option<LoadedModel>,
    /// The job it runs (or loads a model for), if any.
    pub job_id: Option<u64>,
    /// Model loads it made since the daemon started (how much the pool
    /// thrashes).
    pub loads: u64,
    /// Its process's memory (`/proc/PID/status`); `None` while it is down.
    pub memory: Option<WorkerMemory>,
    /// Its confinement, as `StatusReport::sandbox`.
    pub sandbox: String,
}

/// A process's memory as the kernel counts it (`VmRSS`, `VmHWM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMemory {
    /// Resident now.
    pub resident_bytes: u64,
    /// The most it has ever had resident (high-water mark).
    pub peak_bytes: u64,
}

/// The model resident in the worker. Times are ages in seconds, so that
/// client and broker clocks need not agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedModel {
    pub model_id: String,
    pub loaded_for_s: u64,
    /// Seconds since the last job on this model finished (or since the load).
    pub idle_for_s: u64,
    pub memory_bytes: u64,
}

/// Lifecycle of the worker process (the broker's supervisor keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerState {
    /// Spawned, waiting for its `Ready`.
    Starting,
    Ready,
    /// Died or was killed; the next operation respawns it after the backoff.
    Restarting,
    /// Not started yet, or shut down.
    Down,
}

/// One job as listed by `Jobs` / `AllJobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job_id: u64,
    pub owner_uid: u32,
    pub tag: Option<String>,
    pub model_id: String,
    pub state: JobState,
    /// Queue position while `Queued` (0 = next), otherwise `None`.
    pub position: Option<u32>,
    pub submitted_s_ago: u64,
    /// Denoising steps done and in all (of the whole batch), once the job
    /// runs; `0` of `0` before. Added in protocol version 2.
    pub step: u32,
    pub total: u32,
    /// Where the job runs or ran; `None` while queued. Added in protocol
    /// version 2.
    pub device: Option<Device>,
    /// Milliseconds since the job started (`Running`, `Cancelling`), or the
    /// whole run (`Finished`, `Failed`); `None` while queued. Added in
    /// protocol version 2.
    pub run_ms: Option<u64>,
    /// Why a `Failed` job failed (what its caller received); `None`
    /// otherwise. Added in protocol version 2.
    pub error: Option<ErrorCode>,
    /// The index of the worker it runs or ran on ([`WorkerReport::index`]);
    /// `None` while queued or when it never reached a worker. Added in
    /// protocol version 2.
    pub worker: Option<u32>,
}

/// `Finished` and `Failed` are the broker's recent history (the last
/// [`JOB_HISTORY`] jobs that ended), listed after the live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running,
    Cancelling,
    /// Ended with its images delivered. Added in protocol version 2.
    Finished,
    /// Ended with an error (`JobInfo::error`), cancelled included. Added in
    /// protocol version 2.
    Failed,
}

/// How many ended jobs the broker remembers for `Jobs` / `AllJobs`.
pub const JOB_HISTORY: usize = 20;

/// Counters of the broker↔worker shared-memory channel (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatsReport {
    /// Increments at every key rotation and worker start.
    pub key_generation: u64,
    /// Worker 0's segments (as in `workers[0]`).
    pub segments: Vec<SegmentStats>,
    /// Every worker's own channel (each has its own keys and segments), in
    /// index order. Added in protocol version 2.
    pub workers: Vec<WorkerChannelStats>,
}

/// One worker's channel counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerChannelStats {
    /// [`WorkerReport::index`].
    pub worker: u32,
    pub key_generation: u64,
    pub segments: Vec<SegmentStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub direction: ChannelDirection,
    pub slots: u32,
    pub slot_size: u32,
    pub write_seq: u64,
    pub read_seq: u64,
    pub crc_failures: u64,
    pub tag_failures: u64,
    pub replays_rejected: u64,
}

/// Which way a segment carries data; each has exactly one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelDirection {
    BrokerToWorker,
    WorkerToBroker,
}

impl From<ErrorCode> for Response {
    fn from(code: ErrorCode) -> Self {
        Response::Error(code)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip() {
        for scheduler in Scheduler::ALL {
            assert_eq!(scheduler.as_str().parse::<Scheduler>(), Ok(scheduler));
        }
        assert_eq!("DDIM".parse::<Scheduler>(), Err(ParseSchedulerError));
        assert_eq!("".parse::<Scheduler>(), Err(ParseSchedulerError));
    }

    #[test]
    fn names_list_every_variant_in_order() {
        fn check<T: Named + std::fmt::Debug + PartialEq>() {
            assert_eq!(T::ALL.len(), T::NAMES.len());
            for (value, name) in T::ALL.iter().zip(T::NAMES) {
                assert_eq!(value.name(), *name);
                assert_eq!(T::from_name(name).as_ref(), Some(value));
            }
        }
        check::<Scheduler>();
        check::<Mode>();
        for mode in [Mode::User, Mode::System] {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert!("root".parse::<Mode>().is_err());
    }

    #[test]
    fn scheduler_all_is_in_wire_order() {
        for (index, scheduler) in Scheduler::ALL.into_iter().enumerate() {
            let bytes = postcard::to_stdvec(&scheduler).unwrap();
            assert_eq!(bytes, vec![u8::try_from(index).unwrap()]);
        }
    }

    #[test]
    fn admin_verbs_are_exactly_the_admin_list() {
        let admin = [
            Request::Load {
                model_id: "m".into(),
            },
            Request::Unload,
            Request::Pin {
                model_id: "m".into(),
            },
            Request::Unpin {
                model_id: "m".into(),
            },
            Request::Drain,
            Request::Resume,
            Request::RotateKeys,
            Request::ChannelStats,
            Request::AllJobs,
            Request::QuarantineClear {
                model_id: "m".into(),
            },
        ];
        let client = [
            Request::Hello {
                version: 1,
                client_name: "c".into(),
            },
            Request::ListModels,
            Request::Status,
            Request::Cancel { job_id: 1 },
            Request::Jobs,
        ];
        assert!(admin.iter().all(Request::requires_admin));
        assert!(!client.iter().any(Request::requires_admin));
    }

    #[test]
    fn only_finished_and_error_end_a_stream() {
        assert!(Response::Finished { job_id: 1 }.ends_generate_stream());
        assert!(Response::Error(ErrorCode::Cancelled).ends_generate_stream());
        assert!(!Response::Progress {
            job_id: 1,
            step: 1,
            total: 2
        }
        .ends_generate_stream());
        assert!(!Response::Ok.ends_generate_stream());
    }
}
