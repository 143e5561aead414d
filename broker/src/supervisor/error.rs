//! What can go wrong with the worker, and what a caller is told about it.
#![forbid(unsafe_code)]

use std::process::ExitStatus;

use weave_common::image::{ImageField, ImageProblem};
use weave_common::prompt::PromptField;
use weave_common::proto::ErrorCode;
use weave_common::worker_proto::channel::ChannelError;

/// Why the worker was killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashCause {
    /// It exited or was killed by a signal (the text says which).
    Died(String),
    /// It broke the channel or message protocol.
    ProtocolViolation(String),
    /// Its output did not match the request.
    BadOutput(String),
    /// It did not answer in time outside a job (handshake, unload, rekey).
    Unresponsive(String),
}

impl std::fmt::Display for CrashCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashCause::Died(s) => write!(f, "worker died: {s}"),
            CrashCause::ProtocolViolation(s) => write!(f, "protocol violation: {s}"),
            CrashCause::BadOutput(s) => write!(f, "output does not match the request: {s}"),
            CrashCause::Unresponsive(s) => write!(f, "worker unresponsive: {s}"),
        }
    }
}

/// Errors of the supervisor's operations. [`SupervisorError::error_code`]
/// maps each to what the caller receives.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown model {model_id:?}")]
    UnknownModel { model_id: String },
    #[error("model {model_id:?} is quarantined after repeated worker crashes; clear it with `sshmctl quarantine-clear`")]
    Quarantined { model_id: String },
    /// Its files failed the broker's checks, or the worker refused them at
    /// load; `reason` is for admins (it may name a file).
    #[error("model {model_id:?} is unavailable: {reason}")]
    Unavailable { model_id: String, reason: String },
    /// The worker said why it could not set itself up (`StartFailed`).
    #[error("the worker could not start: {reason}")]
    WorkerStart { reason: String },
    #[error("loading model {model_id:?} failed: {reason}")]
    LoadFailed { model_id: String, reason: String },
    #[error("model {model_id:?} does not match its sha256 pin and was refused; if its files changed on purpose, set `sha256` to what `sshmctl hash PATH` prints")]
    PinMismatch { model_id: String },
    #[error("the worker was killed and will be restarted ({0})")]
    WorkerCrashed(CrashCause),
    #[error("the job ran past its deadline; the worker was killed and will be restarted")]
    TimedOut,
    #[error("the job was cancelled")]
    Cancelled,
    #[error("the engine failed: {reason}")]
    EngineError { reason: String },
    #[error("the engine does not support these parameters: {reason}")]
    Unsupported { reason: String },
    #[error("the {} takes more than {max} chunks of 75 tokens", field.field_name())]
    PromptTooLong { field: PromptField, max: u32 },
    /// An image input the worker's decode refused.
    #[error("{} could not be decoded: {problem}", field.name())]
    BadImage {
        field: ImageField,
        problem: ImageProblem,
    },
    /// The model cannot take image inputs in this engine (yet).
    #[error("this model cannot take image inputs: {reason}")]
    ImageNotBuilt { reason: String },
    /// A LoRA of the job could not be used; `reason` is for the log (it
    /// names tensors, never files).
    #[error("LoRA {id:?} could not be used: {reason}")]
    LoraFailed { id: String, reason: String },
    #[error("LoRA {id:?} does not match its sha256 pin and was refused; if the file changed on purpose, set `sha256` to what `sshmctl hash PATH` prints")]
    LoraPinMismatch { id: String },
    #[error("cannot start the worker ({0}); check worker_exe in the config and the broker log")]
    Spawn(String),
    #[error("the worker did not come up ({0}); see its stderr in the broker log")]
    Handshake(String),
    #[error("the supervisor is shut down")]
    ShutDown,
}

impl SupervisorError {
    /// What a client sees: the one conversion from supervisor errors to the
    /// wire. Never carries paths, keys or internal ids.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            SupervisorError::UnknownModel { model_id } => ErrorCode::UnknownModel {
                model_id: model_id.clone(),
            },
            SupervisorError::Quarantined { .. } => ErrorCode::ModelQuarantined,
            // The model is now listed unavailable with the reason (admins).
            SupervisorError::Unavailable { .. }
            | SupervisorError::LoadFailed { .. }
            | SupervisorError::PinMismatch { .. } => ErrorCode::ModelUnavailable,
            // A worker that dies while it starts (before or during the
            // bootstrap) is a worker crash like any other: the restart is
            // scheduled and the caller may retry.
            SupervisorError::WorkerCrashed(_)
            | SupervisorError::Spawn(_)
            | SupervisorError::Handshake(_)
            | SupervisorError::WorkerStart { .. } => ErrorCode::WorkerCrashed,
            SupervisorError::TimedOut => ErrorCode::TimedOut,
            SupervisorError::Cancelled => ErrorCode::Cancelled,
            SupervisorError::ShutDown => ErrorCode::ShuttingDown,
            SupervisorError::PromptTooLong { field, max } => ErrorCode::InvalidParameter {
                field: field.field_name().to_owned(),
                allowed: format!(
                    "at most {max} chunks of 75 CLIP tokens after A1111 syntax and BREAK \
                     (limits.max_prompt_chunks); shorten it"
                ),
            },
            SupervisorError::BadImage { field, problem } => ErrorCode::InvalidParameter {
                field: field.name().to_owned(),
                allowed: problem.allowed(),
            },
            SupervisorError::ImageNotBuilt { reason } => ErrorCode::InvalidParameter {
                field: "init_image".to_owned(),
                allowed: format!(
                    "left out for this model: the engine does not build {reason}; send the \
                     request without init_image and mask, or use a model that takes them"
                ),
            },
            SupervisorError::EngineError { .. } | SupervisorError::Unsupported { .. } => {
                ErrorCode::Internal
            }
            // The caller chose the LoRA; what is wrong with its file is for
            // the admin (broker log), never a path to the caller.
            SupervisorError::LoraFailed { .. } | SupervisorError::LoraPinMismatch { .. } => {
                ErrorCode::InvalidParameter {
                    field: "loras.id".to_owned(),
                    allowed: "a LoRA whose file the daemon can use; this one was refused when                               it was read (the broker log says why), choose another or ask an                               admin"
                        .to_owned(),
                }
            }
        }
    }
}

/// Worker-supplied text for status and the model list: capped, one line,
/// control and format characters escaped (`\u{1b}`), so a compromised
/// worker cannot draw on an admin's terminal.
pub(super) fn worker_text(reason: String) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in bounded(reason).chars() {
        if c.is_control() || crate::audit::is_format_or_bidi(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Worker-supplied text is capped before it reaches logs.
pub(super) fn bounded(mut reason: String) -> String {
    const MAX: usize = 512;
    if reason.len() > MAX {
        let mut cut = MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

pub(super) fn classify_channel_error(e: ChannelError) -> CrashCause {
    CrashCause::ProtocolViolation(format!("channel: {e}"))
}

/// `exited with status 3` / `killed by signal 31 (SIGSYS)`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => format!("ended with {status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSYS => "SIGSYS, a seccomp violation",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "other signal",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_described_with_the_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        let sigsys = describe_exit(ExitStatus::from_raw(libc::SIGSYS));
        assert!(
            sigsys.contains("signal 31") && sigsys.contains("seccomp"),
            "{sigsys}"
        );
    }

    #[test]
    fn errors_map_to_client_codes_without_details() {
        let crash = SupervisorError::WorkerCrashed(CrashCause::BadOutput("12 bytes".into()));
        assert_eq!(crash.error_code(), ErrorCode::WorkerCrashed);
        assert_eq!(SupervisorError::TimedOut.error_code(), ErrorCode::TimedOut);
        assert_eq!(
            SupervisorError::Cancelled.error_code(),
            ErrorCode::Cancelled
        );
        assert_eq!(
            SupervisorError::Quarantined {
                model_id: "m".into()
            }
            .error_code(),
            ErrorCode::ModelQuarantined
        );
        let load = SupervisorError::LoadFailed {
            model_id: "m".into(),
            reason: "/secret/path".into(),
        };
        assert_eq!(load.error_code(), ErrorCode::ModelUnavailable);
        let pin = SupervisorError::PinMismatch {
            model_id: "m".into(),
        };
        assert_eq!(pin.error_code(), ErrorCode::ModelUnavailable);
        let unknown = SupervisorError::UnknownModel {
            model_id: "m".into(),
        };
        assert_eq!(
            unknown.error_code(),
            ErrorCode::UnknownModel {
                model_id: "m".into()
            }
        );
        let spawn = SupervisorError::Spawn("no such file".into());
        assert_eq!(spawn.error_code(), ErrorCode::WorkerCrashed);
        assert_eq!(
            SupervisorError::ShutDown.error_code(),
            ErrorCode::ShuttingDown
        );
    }

    #[test]
    fn worker_text_for_admins_is_one_line_without_escapes() {
        let shown = worker_text("bad\n\u{1b}[31mred\u{202e}".into());
        assert_eq!(shown, "bad\\u{a}\\u{1b}[31mred\\u{202e}");
    }

    #[test]
    fn worker_text_is_bounded() {
        let long = "é".repeat(1000);
        let b = bounded(long);
        assert!(b.len() <= 512 + '…'.len_utf8());
    }
}
