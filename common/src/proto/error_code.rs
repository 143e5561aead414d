//! Typed errors a caller can receive in `Response::Error`.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::PROTOCOL_VERSION;

/// Why a request failed. Stable: the numeric [`ErrorCode::code`] is the wire
/// variant index and never changes meaning; new codes are appended.
///
/// Messages tell the caller what to do next and never contain internal
/// identifiers (file paths, segment names, keys). Only fields a caller sent
/// (a model id, a verb name) or fixed strings appear in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    /// Code 0. `field` is the request field; `allowed` describes the accepted
    /// values, e.g. `a multiple of 8 from 64 to 1024`. Never the value sent.
    #[error("invalid {field}: must be {allowed}; fix the request and send it again")]
    InvalidParameter { field: String, allowed: String },
    /// Code 1.
    #[error("unknown model {model_id:?}; list the configured models and use one of their ids")]
    UnknownModel { model_id: String },
    /// Code 2. A queue is full; nothing was queued.
    #[error("the broker's queue is full; retry in {retry_after_ms} ms")]
    Busy { retry_after_ms: u32 },
    /// Code 3. The caller's uid exceeded its request rate.
    #[error("too many requests from this user; retry in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u32 },
    /// Code 4.
    #[error("the job was cancelled")]
    Cancelled,
    /// Code 5. Queue deadline or per-job wall-clock limit.
    #[error("the job ran out of time; retry with fewer steps, a smaller image or a smaller batch")]
    TimedOut,
    /// Code 6.
    #[error(
        "the generation worker failed during this job and was restarted; retry, \
         and if it keeps failing ask an administrator to check the broker log"
    )]
    WorkerCrashed,
    /// Code 7.
    #[error("{verb:?} needs the admin role; ask an administrator to run it")]
    NotPermitted { verb: String },
    /// Code 8.
    #[error(
        "this model is quarantined after repeated worker crashes; use another model, \
         or ask an administrator to check the broker log and clear the quarantine"
    )]
    ModelQuarantined,
    /// Code 9. The connection is closed after this error.
    #[error(
        "protocol error: {reason}; use a client that speaks weave protocol version {}",
        PROTOCOL_VERSION
    )]
    ProtocolError { reason: String },
    /// Code 10. Draining or stopping: no new jobs are accepted.
    #[error("the broker is not accepting new jobs (draining or shutting down); retry later")]
    ShuttingDown,
    /// Code 11. Details are only in the broker's log.
    #[error("internal error in the broker; an administrator can find the details in its log")]
    Internal,
    /// Code 12. The model's files cannot be used (missing, unreadable, not
    /// a model the engine recognizes, or refused at load); nothing was
    /// queued. Admins see the reason in `ListModels`. Added in protocol
    /// version 2.
    #[error(
        "this model is not available on this daemon right now; use another model, or ask an \
         administrator to look at `sshmctl models`, which says why"
    )]
    ModelUnavailable,
}

impl ErrorCode {
    /// The stable numeric code, equal to the wire variant index.
    pub fn code(&self) -> u16 {
        match self {
            ErrorCode::InvalidParameter { .. } => 0,
            ErrorCode::UnknownModel { .. } => 1,
            ErrorCode::Busy { .. } => 2,
            ErrorCode::RateLimited { .. } => 3,
            ErrorCode::Cancelled => 4,
            ErrorCode::TimedOut => 5,
            ErrorCode::WorkerCrashed => 6,
            ErrorCode::NotPermitted { .. } => 7,
            ErrorCode::ModelQuarantined => 8,
            ErrorCode::ProtocolError { .. } => 9,
            ErrorCode::ShuttingDown => 10,
            ErrorCode::Internal => 11,
            ErrorCode::ModelUnavailable => 12,
        }
    }

    /// Stable snake_case name, for logs, audit records and CLI output.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorCode::InvalidParameter { .. } => "invalid_parameter",
            ErrorCode::UnknownModel { .. } => "unknown_model",
            ErrorCode::Busy { .. } => "busy",
            ErrorCode::RateLimited { .. } => "rate_limited",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::WorkerCrashed => "worker_crashed",
            ErrorCode::NotPermitted { .. } => "not_permitted",
            ErrorCode::ModelQuarantined => "model_quarantined",
            ErrorCode::ProtocolError { .. } => "protocol_error",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::ModelUnavailable => "model_unavailable",
        }
    }

    /// Whether sending the same request again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::Busy { .. }
                | ErrorCode::RateLimited { .. }
                | ErrorCode::WorkerCrashed
                | ErrorCode::ShuttingDown
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn every_code() -> Vec<ErrorCode> {
        vec![
            ErrorCode::InvalidParameter {
                field: "width".into(),
                allowed: "a multiple of 8 from 64 to 1024".into(),
            },
            ErrorCode::UnknownModel {
                model_id: "sd15".into(),
            },
            ErrorCode::Busy {
                retry_after_ms: 500,
            },
            ErrorCode::RateLimited {
                retry_after_ms: 1000,
            },
            ErrorCode::Cancelled,
            ErrorCode::TimedOut,
            ErrorCode::WorkerCrashed,
            ErrorCode::NotPermitted {
                verb: "load".into(),
            },
            ErrorCode::ModelQuarantined,
            ErrorCode::ProtocolError {
                reason: "expected Hello".into(),
            },
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
            ErrorCode::ModelUnavailable,
        ]
    }

    #[test]
    fn numeric_code_is_the_wire_variant_index() {
        let codes = every_code();
        for (index, code) in codes.iter().enumerate() {
            let bytes = postcard::to_stdvec(code).unwrap();
            // All indices are < 128, so the varint is the byte itself.
            assert_eq!(usize::from(bytes[0]), index, "{code:?}");
            assert_eq!(usize::from(code.code()), index, "{code:?}");
        }
        let mut names: Vec<_> = codes.iter().map(ErrorCode::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), codes.len(), "names must be unique");
    }

    #[test]
    fn messages_name_the_next_step_and_no_paths() {
        for code in every_code() {
            let message = code.to_string();
            assert!(!message.contains('/'), "{message}");
            assert!(message.len() > 15, "{message}");
        }
        let invalid = ErrorCode::InvalidParameter {
            field: "steps".into(),
            allowed: "from 1 to 150".into(),
        };
        assert_eq!(
            invalid.to_string(),
            "invalid steps: must be from 1 to 150; fix the request and send it again"
        );
    }

    #[test]
    fn caller_supplied_text_is_escaped_in_messages() {
        let code = ErrorCode::UnknownModel {
            model_id: "evil\n\u{1b}[31m".into(),
        };
        let message = code.to_string();
        assert!(!message.contains('\n'));
        assert!(!message.contains('\u{1b}'));
    }
}
