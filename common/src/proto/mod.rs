//! Client ↔ broker wire protocol: the messages, their framing and the typed
//! error codes a caller can receive.
//!
//! Every message is a postcard body behind a `u32` little-endian length
//! prefix. The normative description, with byte-exact examples that a test
//! checks against this code, is `docs/PROTOCOL.md`.
//!
//! Compatibility rule: postcard encodes an enum variant by its index and a
//! struct by its field order, with no names on the wire. Variants and fields
//! are therefore **append-only**: never reorder, remove or retype one; add new
//! ones at the end and bump [`PROTOCOL_VERSION`].
#![forbid(unsafe_code)]

mod error_code;
mod frame;
mod messages;
mod named;

pub use error_code::ErrorCode;
pub use frame::{
    decode_request, decode_request_bounded, decode_response, encode_request, encode_response,
    read_request, read_request_bounded, read_response, write_request, write_response, FrameError,
    DEFAULT_MAX_IMAGE_REQUEST_FRAME, DEFAULT_MAX_RESPONSE_FRAME, FRAME_PREFIX_LEN,
    MAX_IMAGE_REQUEST_FRAME, MAX_REQUEST_FRAME,
};
pub use messages::{
    ChannelDirection, ChannelStatsReport, GenerateRequest, GenerationDefaults, JobInfo, JobState,
    LoadedModel, LoraChoice, Mode, ModelInfo, ParseSchedulerError, Request, Response, Role,
    Scheduler, SegmentStats, StatusReport, WorkerChannelStats, WorkerMemory, WorkerReport,
    WorkerState, JOB_HISTORY,
};
pub use named::Named;

/// Version of this protocol, exchanged in the `Hello` handshake. The broker
/// accepts only its own version.
pub const PROTOCOL_VERSION: u16 = 2;
