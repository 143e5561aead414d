//! `sshmctl generate`: submit, follow the event stream with a progress bar,
//! write the PNGs. Ctrl-C cancels the job on the daemon.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use signal_hook::consts::SIGINT;
use weave_common::proto::{ErrorCode, GenerateRequest, Request, Response};

use crate::cli::GenerateArgs;
use crate::client::{ClientError, Connection};
use crate::render::Renderer;
use crate::CliError;

/// No job id yet: Ctrl-C before `Queued` just closes the connection, which
/// the broker treats as a cancel.
const NO_JOB: u64 = u64::MAX;

pub fn run(
    conn: &mut Connection,
    args: &GenerateArgs,
    out: &Renderer,
    debug: bool,
) -> Result<u8, CliError> {
    let request = GenerateRequest {
        model_id: args.model.clone(),
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance: args.cfg,
        seed: args.seed,
        scheduler: args.scheduler,
        batch: args.batch,
        tag: args.tag.clone(),
    };

    let job = Arc::new(AtomicU64::new(NO_JOB));
    spawn_interrupt_watcher(conn.path().to_owned(), Arc::clone(&job), debug);

    conn.send(&Request::Generate(request))?;
    let interactive = std::io::stdout().is_terminal() && !out.is_json();
    let mut bar: Option<ProgressBar> = None;
    let mut seed = None;
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
                if out.is_json() {
                    out.json_line(
                        &json!({"event": "queued", "job_id": job_id, "position": position}),
                    );
                } else {
                    eprintln!("job {job_id} queued (position {position})");
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
                let path = output_path(&args.output, index, args.batch);
                std::fs::write(&path, &png).map_err(|source| CliError::WriteImage {
                    path: path.clone(),
                    source,
                })?;
                if out.is_json() {
                    out.json_line(&json!({
                        "event": "image", "job_id": job_id, "index": index, "seed": image_seed,
                        "width": width, "height": height, "path": path, "bytes": png.len(),
                    }));
                }
                written.push((path, image_seed));
            }
            Response::Finished { job_id } => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                if out.is_json() {
                    out.json_line(&json!({"event": "finished", "job_id": job_id, "seed": seed}));
                } else {
                    for (path, image_seed) in &written {
                        println!("wrote {} (seed {image_seed})", path.display());
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

fn new_bar(total: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(total));
    let style = ProgressStyle::with_template("{bar:40} step {pos}/{len}  eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `out.png` for one image; `out-0.png`, `out-1.png`, … for a batch.
fn output_path(base: &Path, index: u32, batch: u32) -> PathBuf {
    if batch <= 1 {
        return base.to_owned();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    base.with_file_name(name)
}

/// On the first Ctrl-C, asks the daemon (over a second connection) to cancel
/// the job; the main loop then sees `Cancelled` and exits 130. A second
/// Ctrl-C exits at once.
fn spawn_interrupt_watcher(socket: PathBuf, job: Arc<AtomicU64>, debug: bool) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT]) else {
        return; // Without the handler Ctrl-C keeps its default: exit, and the
                // broker cancels the job when the connection drops.
    };
    std::thread::spawn(move || {
        let mut asked = false;
        for _ in signals.forever() {
            let job_id = job.load(Ordering::SeqCst);
            if asked || job_id == NO_JOB {
                std::process::exit(130);
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
                std::process::exit(130);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_outputs_are_numbered_before_the_extension() {
        assert_eq!(
            output_path(Path::new("a/out.png"), 0, 1),
            Path::new("a/out.png")
        );
        assert_eq!(
            output_path(Path::new("a/out.png"), 2, 3),
            Path::new("a/out-2.png")
        );
        assert_eq!(output_path(Path::new("out"), 1, 2), Path::new("out-1"));
    }
}
