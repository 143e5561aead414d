//! `sshmctl`: the admin and convenience CLI of weave-compute.
//!
//! Protocol code lives in `weave_common::proto`; this crate only renders
//! answers and maps failures to messages and exit codes.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod config_check;
mod generate;
mod render;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use weave_common::proto::{Request, Response};

use crate::cli::{Cli, Command, ConfigAction, QuarantineAction};
use crate::client::{ClientError, Connection};
use crate::render::Renderer;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let renderer = Renderer::new(cli.json);
    match run(&cli, &renderer) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            renderer.error(&err, cli.debug);
            ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1))
        }
    }
}

/// Runs one command; `Ok` carries the exit code of a command that completed
/// but has something to report through it (config check, cancellation).
fn run(cli: &Cli, out: &Renderer) -> Result<u8, CliError> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "sshmctl", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man { dir: None } => {
            let page = clap_mangen::Man::new(Cli::command());
            let mut buf = Vec::new();
            page.render(&mut buf).map_err(CliError::Output)?;
            std::io::stdout()
                .write_all(&buf)
                .map_err(CliError::Output)?;
            return Ok(0);
        }
        Command::Man { dir: Some(dir) } => {
            // The top page refers to `sshmctl-<verb>(1)`; write those too.
            clap_mangen::generate_to(Cli::command(), dir).map_err(CliError::Output)?;
            return Ok(0);
        }
        Command::Config {
            action: ConfigAction::Check { path, system },
        } => return Ok(config_check::run(path.as_deref(), *system, out)),
        Command::Hash { path } => {
            let pin = weave_common::pin::pin_of(path).map_err(CliError::Hash)?;
            if out.is_json() {
                out.json_line(&serde_json::json!({ "path": path, "sha256": pin }));
            } else {
                println!("{pin}  {}", path.display());
            }
            return Ok(0);
        }
        _ => {}
    }

    let socket = cli.socket.clone().unwrap_or_else(client::default_socket);
    let mut conn = Connection::open(&socket)?;
    match &cli.command {
        Command::Status => match conn.call(&Request::Status)? {
            Response::Status(report) => out.status(&report, &conn),
            other => return Err(unexpected(&other)),
        },
        Command::Models => match conn.call(&Request::ListModels)? {
            Response::Models(models) => out.models(&models),
            other => return Err(unexpected(&other)),
        },
        Command::Generate(args) => return generate::run(&mut conn, args, out, cli.debug),
        Command::Jobs { all } => {
            let request = if *all {
                Request::AllJobs
            } else {
                Request::Jobs
            };
            match conn.call(&request)? {
                Response::Jobs(jobs) => out.jobs(&jobs),
                other => return Err(unexpected(&other)),
            }
        }
        Command::Cancel { job } => {
            conn.call_ok(&Request::Cancel { job_id: *job })?;
            out.done(&format!("cancelled job {job}"));
        }
        Command::Load { model } => {
            conn.call_ok(&Request::Load {
                model_id: model.clone(),
            })?;
            out.done(&format!("loaded {model}"));
        }
        Command::Unload => {
            conn.call_ok(&Request::Unload)?;
            out.done("unloaded");
        }
        Command::Pin { model } => {
            conn.call_ok(&Request::Pin {
                model_id: model.clone(),
            })?;
            out.done(&format!("pinned {model}"));
        }
        Command::Unpin { model } => {
            conn.call_ok(&Request::Unpin {
                model_id: model.clone(),
            })?;
            out.done(&format!("unpinned {model}"));
        }
        Command::Drain => {
            conn.call_ok(&Request::Drain)?;
            out.done("draining: new jobs are refused until `sshmctl resume`");
        }
        Command::Resume => {
            conn.call_ok(&Request::Resume)?;
            out.done("resumed: accepting jobs");
        }
        Command::RotateKeys => {
            conn.call_ok(&Request::RotateKeys)?;
            out.done("channel keys rotated");
        }
        Command::Segments => match conn.call(&Request::ChannelStats)? {
            Response::ChannelStats(stats) => out.segments(&stats),
            other => return Err(unexpected(&other)),
        },
        Command::Quarantine {
            action: QuarantineAction::Clear { model },
        } => {
            conn.call_ok(&Request::QuarantineClear {
                model_id: model.clone(),
            })?;
            out.done(&format!("{model} released from quarantine"));
        }
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Config { .. }
        | Command::Hash { .. } => {}
    }
    Ok(0)
}

fn unexpected(response: &Response) -> CliError {
    CliError::Client(ClientError::Unexpected(client::response_name(response)))
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write {path}: {source}")]
    WriteImage {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    Hash(weave_common::pin::PinError),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Client(e) => e.exit_code(),
            CliError::WriteImage { .. } | CliError::Output(_) | CliError::Hash(_) => 1,
        }
    }
}
