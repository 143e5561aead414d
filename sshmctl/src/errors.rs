//! sshmctl's failures, and the daemon's errors restated in the words of the
//! command line the user typed (`--cfg`, not `guidance`; the model ids that
//! exist; a queue expiry is not a slow job).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use weave_common::proto::{ErrorCode, Request, Response};

use crate::cli::{Cli, Command};
use crate::client::{ClientError, Connection, SocketEnv};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{} exists; add --force to overwrite it, or choose another -o", path.display())]
    OutputExists { path: PathBuf },
    #[error(
        "cannot create {}: {source}; nothing was sent to the daemon. Choose a folder you can \
         write to with -o",
        path.display()
    )]
    OutputUnwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    WriteImage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// An image file named by `flag` could not be read; nothing was sent.
    #[error("cannot read {flag} {}: {source}; nothing was sent to the daemon", path.display())]
    ReadInput {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{flag} {} is {len} bytes, more than a request can carry ({max}); use a smaller \
         PNG (fewer pixels, or stripped metadata)",
        path.display()
    )]
    InputTooLarge {
        flag: &'static str,
        path: PathBuf,
        len: u64,
        max: u32,
    },
    #[error("{0}")]
    Hash(weave_common::pin::PinError),
    /// An `InvalidParameter` about a field the user set with `flag`.
    #[error("invalid {flag}: must be {allowed}; change {flag} and run again")]
    BadFlag {
        flag: &'static str,
        field: String,
        allowed: String,
    },
    #[error("unknown model {given:?}{}; {}",
        suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default(),
        if ids.is_empty() {
            "the daemon has no models configured".to_owned()
        } else {
            format!("the daemon's models: {} (see `sshmctl models`)", ids.join(", "))
        })]
    UnknownModel {
        given: String,
        suggestion: Option<String>,
        ids: Vec<String>,
    },
    #[error(
        "{} waited in the queue past the daemon's queue deadline and was dropped before it \
         started: the daemon is busy. Retry later; an administrator can see the queue with \
         `sshmctl jobs --all` (limits.queue_deadline_s sets the deadline)",
        job_id.map_or("the job".to_owned(), |id| format!("job {id}"))
    )]
    QueueExpired { job_id: Option<u64> },
    #[error(
        "the daemon's generation worker could not start (it is {state}){}, so the job never \
         ran; retrying will not help until that is fixed. An administrator finds the cause in \
         `sshmctl status` and the broker log (a `[worker] device` the machine does not have is \
         a common one; `sshmctl config check` checks the rest of the config)",
        why.as_deref().map_or(String::new(), |why| format!(": {why}"))
    )]
    WorkerDown {
        state: &'static str,
        why: Option<String>,
    },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Client(e) => e.exit_code(),
            CliError::Usage(_)
            | CliError::OutputExists { .. }
            | CliError::OutputUnwritable { .. } => 2,
            CliError::WriteImage { .. } | CliError::Output(_) | CliError::Hash(_) => 1,
            CliError::ReadInput { .. } | CliError::InputTooLarge { .. } => 2,
            CliError::BadFlag { .. } | CliError::UnknownModel { .. } => 5,
            CliError::QueueExpired { .. } | CliError::WorkerDown { .. } => 6,
        }
    }

    /// Stable snake_case kind for `--json` output.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Client(e) => match e {
                ClientError::NotRunning { .. } => "not_running",
                ClientError::PermissionDenied { .. } => "permission_denied",
                ClientError::Connect { .. } => "connect_failed",
                ClientError::Rejected { .. } => "rejected",
                ClientError::Daemon(code) => code.name(),
                ClientError::Frame(_) => "connection_lost",
                ClientError::Unexpected(_) => "unexpected_answer",
            },
            CliError::Usage(_) => "usage",
            CliError::OutputExists { .. } => "output_exists",
            CliError::OutputUnwritable { .. } => "output_unwritable",
            CliError::WriteImage { .. } | CliError::Output(_) => "write_failed",
            CliError::ReadInput { .. } => "read_failed",
            CliError::InputTooLarge { .. } => "input_too_large",
            CliError::BadFlag { .. } => "invalid_parameter",
            CliError::UnknownModel { .. } => "unknown_model",
            CliError::QueueExpired { .. } => "queue_expired",
            CliError::WorkerDown { .. } => "worker_down",
            CliError::Hash(_) => "hash_failed",
        }
    }
}

/// The flag or argument of `command` that sets request field `field`.
pub fn flag_for_field(command: &Command, field: &str) -> Option<&'static str> {
    match command {
        Command::Generate(_) => match field {
            "model_id" => Some("--model"),
            "prompt" => Some("--prompt"),
            "negative_prompt" => Some("--negative"),
            "width" => Some("--width"),
            "height" => Some("--height"),
            "steps" => Some("--steps"),
            "guidance" => Some("--cfg"),
            "seed" => Some("--seed"),
            "scheduler" => Some("--scheduler"),
            "batch" => Some("--batch"),
            "tag" => Some("--tag"),
            "init_image" => Some("--init-image"),
            "mask" => Some("--mask"),
            "strength" => Some("--strength"),
            _ => None,
        },
        Command::Cancel { .. } => (field == "job_id").then_some("JOB"),
        Command::Load { .. }
        | Command::Pin { .. }
        | Command::Unpin { .. }
        | Command::Quarantine { .. } => (field == "model_id").then_some("MODEL"),
        _ => None,
    }
}

/// Restates a daemon error in the command line's words where it can.
pub fn in_cli_words(err: CliError, cli: &Cli) -> CliError {
    match err {
        CliError::Client(ClientError::Daemon(ErrorCode::InvalidParameter { field, allowed })) => {
            match flag_for_field(&cli.command, &field) {
                Some(flag) => CliError::BadFlag {
                    flag,
                    field,
                    allowed,
                },
                None => ClientError::Daemon(ErrorCode::InvalidParameter { field, allowed }).into(),
            }
        }
        CliError::Client(ClientError::Daemon(ErrorCode::UnknownModel { model_id })) => {
            let ids = configured_ids(cli).unwrap_or_default();
            CliError::UnknownModel {
                suggestion: closest(&model_id, &ids).map(str::to_owned),
                given: model_id,
                ids,
            }
        }
        other => other,
    }
}

/// The daemon's model ids, asked over a fresh connection.
fn configured_ids(cli: &Cli) -> Option<Vec<String>> {
    let choice = match &cli.socket {
        Some(path) => crate::client::SocketChoice {
            path: path.clone(),
            tried: crate::client::Tried::default(),
        },
        None => crate::client::default_socket(&SocketEnv::from_process(), |p| p.exists()),
    };
    match Connection::open_choice(&choice)
        .ok()?
        .call(&Request::ListModels)
        .ok()?
    {
        Response::Models(models) => Some(models.into_iter().map(|m| m.id).collect()),
        _ => None,
    }
}

/// The id nearest to `given` by edit distance, if near enough to be a typo.
pub fn closest<'a>(given: &str, ids: &'a [String]) -> Option<&'a str> {
    ids.iter()
        .map(|id| (edit_distance(given, id), id.as_str()))
        .filter(|(distance, id)| *distance <= (id.chars().count() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, id)| id)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn typos_find_their_model_and_strangers_do_not() {
        let ids = vec!["digits".to_owned(), "sd15".to_owned()];
        assert_eq!(closest("digit", &ids), Some("digits"));
        assert_eq!(closest("sd-15", &ids), Some("sd15"));
        assert_eq!(closest("photoreal", &ids), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn request_fields_map_to_the_flags_that_set_them() {
        let cli = Cli::parse_from(["sshmctl", "generate", "-m", "d", "-p", "x", "--cfg", "100"]);
        assert_eq!(flag_for_field(&cli.command, "guidance"), Some("--cfg"));
        assert_eq!(
            flag_for_field(&cli.command, "negative_prompt"),
            Some("--negative")
        );
        let err = in_cli_words(
            ClientError::Daemon(ErrorCode::InvalidParameter {
                field: "guidance".into(),
                allowed: "from 0 to 30".into(),
            })
            .into(),
            &cli,
        );
        assert_eq!(
            err.to_string(),
            "invalid --cfg: must be from 0 to 30; change --cfg and run again"
        );
        assert_eq!(err.exit_code(), 5);
        assert_eq!(err.kind(), "invalid_parameter");
    }
}
