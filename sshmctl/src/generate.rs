//! `sshmctl generate`: check the outputs, submit, follow the event stream
//! with a progress bar, write the PNGs. Ctrl-C cancels the job on the daemon.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use signal_hook::consts::SIGINT;
use weave_common::proto::{
    ErrorCode, GenerateRequest, Request, Response, WorkerState, MAX_IMAGE_REQUEST_FRAME,
};

use crate::cli::GenerateArgs;
use crate::client::{ClientError, Connection};
use crate::output_files::Outputs;
use crate::previews::PreviewFiles;
use crate::render::Renderer;
use crate::CliError;

/// Reads an image file named on the command line, refusing one larger
/// than any request may carry before reading it.
fn read_input(flag: &'static str, path: Option<&Path>) -> Result<Option<Vec<u8>>, CliError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let failed = |source| CliError::ReadInput {
        flag,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let len = file.metadata().map_err(failed)?.len();
    let max = MAX_IMAGE_REQUEST_FRAME;
    if len > u64::from(max) {
        return Err(CliError::InputTooLarge {
            flag,
            path: path.to_owned(),
            len,
            max,
        });
    }
    let mut bytes = Vec::new();
    file.take(u64::from(max) + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    Ok(Some(bytes))
}

/// Width and height from a PNG's IHDR, if the bytes start like a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const HEAD: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR";
    if !bytes.starts_with(HEAD) {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    Some((be(16)?, be(20)?))
}

/// No job id yet: Ctrl-C before `Queued` just closes the connection, which
/// the broker treats as a cancel.
const NO_JOB: u64 = u64::MAX;

pub fn run(
    conn: &mut Connection,
    args: &GenerateArgs,
    out: &Renderer,
    debug: bool,
) -> Result<u8, CliError> {
    let init_image = read_input("--init-image", args.init_image.as_deref())?;
    let mask = read_input("--mask", args.mask.as_deref())?;
    // Without --width/--height an init image sets the size (its IHDR); the
    // daemon checks it either way.
    let png_size = init_image.as_deref().and_then(png_size);
    let mut outputs = Outputs::prepare(&args.output, args.batch, args.force, out.is_json())?;
    let to_stdout = matches!(outputs, Outputs::Stdout);
    let previews = match args.preview {
        Some(every) if every > 0 => {
            Some(PreviewFiles::prepare(&args.output, args.batch, args.force)?)
        }
        _ => None,
    };
    let mut preview_noted = false;
    let request = GenerateRequest {
        model_id: args.model.clone(),
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone().unwrap_or_default(),
        width: args.width.or(png_size.map(|(w, _)| w)),
        height: args.height.or(png_size.map(|(_, h)| h)),
        steps: args.steps,
        guidance: args.cfg,
        seed: args.seed,
        scheduler: args.scheduler,
        batch: args.batch,
        tag: args.tag.clone(),
        use_model_negative: args.negative.is_none(),
        init_image,
        mask,
        strength: args.strength,
        loras: args.loras.clone(),
        preview_every: args.preview.unwrap_or(0),
    };

    let job = Arc::new(AtomicU64::new(NO_JOB));
    spawn_interrupt_watcher(
        conn.path().to_owned(),
        Arc::clone(&job),
        outputs.part_paths(),
        debug,
    );

    // Whether the worker will have to load the model first: said between
    // "queued" and "started", which can otherwise be a long silence.
    let needs_load = match conn.call(&Request::ListModels)? {
        Response::Models(models) => models
            .iter()
            .find(|m| m.id == args.model)
            .is_some_and(|m| !m.loaded),
        other => return Err(ClientError::Unexpected(crate::client::response_name(&other)).into()),
    };
    conn.send(&Request::Generate(request))?;
    // The bar and the notes go to stderr; stdout carries results (and the
    // PNG itself with `-o -`).
    let interactive = std::io::stderr().is_terminal() && !out.is_json();
    let mut bar: Option<ProgressBar> = None;
    let mut seed = None;
    let mut job_id_seen = None;
    let mut started = false;
    let mut written = Vec::new();
    loop {
        let event = match conn.next() {
            Ok(event) => event,
            Err(ClientError::Daemon(ErrorCode::Cancelled)) => {
                if let Some(bar) = &bar {
                    bar.abandon_with_message("cancelled");
                }
                out.done("job cancelled");
                return Ok(130);
            }
            Err(ClientError::Daemon(ErrorCode::TimedOut)) if !started => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(CliError::QueueExpired {
                    job_id: job_id_seen,
                });
            }
            Err(ClientError::Daemon(ErrorCode::WorkerCrashed)) if !started => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(worker_failure(conn.path()));
            }
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(e.into());
            }
        };
        match event {
            Response::Queued { job_id, position } => {
                job.store(job_id, Ordering::SeqCst);
                job_id_seen = Some(job_id);
                if out.is_json() {
                    out.json_line(
                        &json!({"event": "queued", "job_id": job_id, "position": position}),
                    );
                } else {
                    eprintln!("job {job_id} queued (position {position})");
                    if needs_load && position == 0 {
                        eprintln!("loading model {} (first use)…", args.model);
                    }
                }
            }
            Response::Position { job_id, position } => {
                if out.is_json() {
                    out.json_line(
                        &json!({"event": "position", "job_id": job_id, "position": position}),
                    );
                } else if !interactive {
                    eprintln!("job {job_id}: position {position}");
                }
            }
            Response::Started { job_id, seed: s } => {
                seed = Some(s);
                started = true;
                if out.is_json() {
                    out.json_line(&json!({"event": "started", "job_id": job_id, "seed": s}));
                } else {
                    eprintln!("job {job_id} started (seed {s})");
                }
            }
            Response::Progress {
                job_id,
                step,
                total,
            } => {
                if out.is_json() {
                    out.json_line(&json!({"event": "progress", "job_id": job_id, "step": step, "total": total}));
                } else if interactive {
                    let bar = bar.get_or_insert_with(|| new_bar(total));
                    bar.set_position(u64::from(step));
                } else if to_stdout {
                    eprintln!("step {step}/{total}");
                } else {
                    println!("step {step}/{total}");
                }
            }
            Response::Image {
                job_id,
                index,
                seed: image_seed,
                width,
                height,
                png,
            } => {
                let path = outputs.write(index, &png)?;
                if let Some(previews) = &previews {
                    previews.finish(index);
                }
                if out.is_json() {
                    out.json_line(&json!({
                        "event": "image", "job_id": job_id, "index": index, "seed": image_seed,
                        "width": width, "height": height, "path": path, "bytes": png.len(),
                    }));
                }
                written.push((path, image_seed));
            }
            Response::Preview {
                job_id,
                index,
                step,
                total,
                width,
                height,
                png,
            } => {
                // Asked for only with `previews` set; a daemon sending
                // one anyway gets it ignored.
                let Some(previews) = &previews else { continue };
                let path = previews.write(index, &png)?;
                if out.is_json() {
                    out.json_line(&json!({
                        "event": "preview", "job_id": job_id, "index": index, "step": step,
                        "total": total, "width": width, "height": height, "path": path,
                        "bytes": png.len(),
                    }));
                } else if !preview_noted {
                    preview_noted = true;
                    let note = format!(
                        "live preview: {} (until the image is written)",
                        path.display()
                    );
                    match &bar {
                        Some(bar) => bar.println(note),
                        None => eprintln!("{note}"),
                    }
                }
            }
            Response::Finished { job_id } => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                if out.is_json() {
                    out.json_line(&json!({"event": "finished", "job_id": job_id, "seed": seed}));
                } else {
                    for (path, image_seed) in &written {
                        match path {
                            Some(path) => println!("wrote {} (seed {image_seed})", path.display()),
                            None => eprintln!("wrote the PNG to stdout (seed {image_seed})"),
                        }
                    }
                }
                return Ok(0);
            }
            other => {
                return Err(ClientError::Unexpected(crate::client::response_name(&other)).into())
            }
        }
    }
}

/// A job that failed before it started because of the worker: when the
/// daemon says its worker is not up, the worker could not start at all and
/// retrying will not help; otherwise the daemon's own "retry" stands.
fn worker_failure(socket: &std::path::Path) -> CliError {
    let report = Connection::open(socket)
        .and_then(|mut c| c.call(&Request::Status))
        .ok()
        .and_then(|response| match response {
            Response::Status(report) => Some(report),
            _ => None,
        });
    match report {
        None => ClientError::Daemon(ErrorCode::WorkerCrashed).into(),
        Some(report) if report.worker == WorkerState::Ready => {
            ClientError::Daemon(ErrorCode::WorkerCrashed).into()
        }
        Some(report) => CliError::WorkerDown {
            state: match report.worker {
                WorkerState::Starting => "starting",
                WorkerState::Restarting => "restarting",
                WorkerState::Down | WorkerState::Ready => "down",
            },
            // The broker's reason, to admins only.
            why: report.worker_error,
        },
    }
}

/// A bar that takes whatever width the terminal has left after the counts,
/// so it never wraps on a narrow terminal.
fn new_bar(total: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(total));
    let style = ProgressStyle::with_template("{wide_bar} {pos}/{len} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// On the first Ctrl-C, asks the daemon (over a second connection) to cancel
/// the job; the main loop then sees `Cancelled` and exits 130. A second
/// Ctrl-C exits at once (removing the output files not yet written).
fn spawn_interrupt_watcher(socket: PathBuf, job: Arc<AtomicU64>, parts: Vec<PathBuf>, debug: bool) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT]) else {
        return; // Without the handler Ctrl-C keeps its default: exit, and the
                // broker cancels the job when the connection drops.
    };
    std::thread::spawn(move || {
        let exit_now = || {
            for part in &parts {
                let _ = std::fs::remove_file(part);
            }
            std::process::exit(130);
        };
        let mut asked = false;
        for _ in signals.forever() {
            let job_id = job.load(Ordering::SeqCst);
            if asked || job_id == NO_JOB {
                exit_now();
            }
            asked = true;
            eprintln!("\ncancelling job {job_id}… (Ctrl-C again to quit at once)");
            let result =
                Connection::open(&socket).and_then(|mut c| c.call_ok(&Request::Cancel { job_id }));
            if let Err(e) = result {
                eprintln!("sshmctl: could not cancel job {job_id}: {e}");
                if debug {
                    eprintln!("debug: {e:?}");
                }
                exit_now();
            }
        }
    });
}
