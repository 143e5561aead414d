//! `sshmctl`: the admin and convenience CLI of weave-compute.
//!
//! Protocol code lives in `weave_common::proto`; this crate only renders
//! answers and maps failures to messages and exit codes.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod config_check;
mod errors;
mod generate;
mod manual;
mod output_files;
mod pool_view;
mod previews;
mod render;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use weave_common::proto::{JobState, Request, Response};

use crate::cli::{Cli, Command, ConfigAction, QuarantineAction};
use crate::client::{ClientError, Connection, SocketChoice, SocketEnv, Tried};
pub use crate::errors::CliError;
use crate::render::Renderer;

fn main() -> ExitCode {
    weave_common::syscall::default_sigpipe();
    let cli = Cli::parse();
    let renderer = Renderer::new(cli.json);
    match run(&cli, &renderer).map_err(|err| errors::in_cli_words(err, &cli)) {
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
            manual::completions(*shell, &mut std::io::stdout().lock()).map_err(CliError::Output)?;
            return Ok(0);
        }
        Command::Man { dir: None } => {
            let page = manual::top_page().map_err(CliError::Output)?;
            std::io::stdout()
                .write_all(&page)
                .map_err(CliError::Output)?;
            return Ok(0);
        }
        Command::Man { dir: Some(dir) } => {
            manual::write_pages(dir).map_err(CliError::Output)?;
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

    let socket = match &cli.socket {
        Some(path) => SocketChoice {
            path: path.clone(),
            tried: Tried::default(),
        },
        None => client::default_socket(&SocketEnv::from_process(), |p| p.exists()),
    };
    if let Command::ModelIds = &cli.command {
        // For shell completion: nothing at all when no daemon answers.
        if let Ok(Response::Models(models)) =
            Connection::open_choice(&socket).and_then(|mut c| c.call(&Request::ListModels))
        {
            for model in models {
                println!("{}", model.id);
            }
        }
        return Ok(0);
    }
    let mut conn = Connection::open_choice(&socket)?;
    if cli.command.waits_for_running_job() {
        say_if_waiting(&mut conn, out);
    }
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
        | Command::Hash { .. }
        | Command::ModelIds => {}
    }
    Ok(0)
}

/// Admin verbs that change the worker wait until its running job is done;
/// say so rather than look stuck. Listing jobs needs the admin role, which
/// these verbs need anyway: without it the verb's own error follows.
fn say_if_waiting(conn: &mut Connection, out: &Renderer) {
    let Ok(Response::Jobs(jobs)) = conn.call(&Request::AllJobs) else {
        return;
    };
    if let Some(job) = jobs.iter().find(|j| j.state == JobState::Running) {
        out.note(&format!(
            "waiting for the running job {} ({}) to finish first…",
            job.job_id, job.model_id
        ));
    }
}

fn unexpected(response: &Response) -> CliError {
    CliError::Client(ClientError::Unexpected(client::response_name(response)))
}
