//! Running one job: its model loaded, the worker's events streamed to the
//! caller, the images checked and PNG-encoded, every failure typed.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::time::Instant;

use weave_common::proto::{ErrorCode, Response};

use super::{Broker, LoadedState, PendingJob};
use crate::audit::{AuditRecord, Severity};
use crate::job_runner::JobRunner;
use crate::output;
use crate::supervisor::{JobEvent, Preview, SupervisorError};

impl Broker {
    /// Makes `model_id` the model of worker `index` (lane `index`'s thread
    /// only).
    pub(super) fn ensure_loaded(
        &self,
        index: usize,
        runner: &mut dyn JobRunner,
        model_id: &str,
    ) -> Result<(), ErrorCode> {
        if self.status.is_quarantined(model_id) {
            return Err(ErrorCode::ModelQuarantined);
        }
        let resident = self
            .lock()
            .lanes
            .get(index)
            .and_then(|lane| lane.loaded.as_ref())
            .is_some_and(|loaded| loaded.model_id == model_id)
            && self.status.state(index).loaded_model() == Some(model_id);
        if resident {
            return Ok(());
        }
        // The lane keeps naming the model while it loads (the dispatcher set
        // it), so placement counts this worker for `max_workers` already.
        let info = runner.load(model_id).map_err(|error| {
            self.set_loaded(index, None);
            if let SupervisorError::PinMismatch { model_id } = &error {
                // By id, never its path, in the log (below) and the audit.
                self.audit.record(
                    Severity::Warning,
                    &AuditRecord::new("model_refused")
                        .field("model", model_id)
                        .field("reason", "sha256_mismatch"),
                );
            }
            failure_code("load", &error)
        })?;
        let now = Instant::now();
        if let Some(lane) = self.lock().lanes.get_mut(index) {
            lane.loads += 1;
        }
        self.set_loaded(
            index,
            Some(LoadedState {
                model_id: model_id.to_owned(),
                since: now,
                last_use: now,
                load_time: std::time::Duration::from_millis(info.load_ms),
            }),
        );
        Ok(())
    }

    /// What worker `index` holds, as the scheduler keeps it.
    pub(super) fn set_loaded(&self, index: usize, loaded: Option<LoadedState>) {
        if let Some(lane) = self.lock().lanes.get_mut(index) {
            lane.loaded = loaded;
        }
    }

    /// Runs one job to its end; the error is what its caller received.
    pub(super) fn run_one(
        &self,
        index: usize,
        runner: &mut dyn JobRunner,
        pending: &PendingJob,
    ) -> Result<(), ErrorCode> {
        let (job_id, params) = (pending.job_id, &pending.params);
        let send = |response: Response| {
            let _ = pending.events.send(response);
        };
        let fail = |code: ErrorCode| {
            send(Response::Error(code.clone()));
            Err(code)
        };
        if pending.cancel.load(Ordering::SeqCst) {
            return fail(ErrorCode::Cancelled);
        }
        if let Err(code) = self.ensure_loaded(index, runner, &params.model_id) {
            return fail(code);
        }
        self.with_running(index, |running| running.started = Some(Instant::now()));
        send(Response::Started {
            job_id,
            seed: params.seed,
        });
        let deadline = Instant::now() + self.settings.limits.job_timeout();
        let mut on_event = |event: JobEvent| match event {
            JobEvent::Progress { step, total } => {
                self.with_running(index, |running| {
                    running.step = step;
                    running.total = total;
                });
                send(Response::Progress {
                    job_id,
                    step,
                    total,
                });
            }
            JobEvent::Preview(preview) => self.forward_preview(pending, preview),
            JobEvent::ModelLoaded(_) | JobEvent::Image { .. } => {}
        };
        let images = match runner.run_job(job_id, params, deadline, &pending.cancel, &mut on_event)
        {
            Ok(images) => images,
            Err(SupervisorError::Cancelled) if self.is_shutting_down() => {
                return fail(ErrorCode::ShuttingDown)
            }
            Err(error) => {
                let code = failure_code("job", &error);
                if matches!(code, ErrorCode::WorkerCrashed) {
                    // The worker restarted without the model.
                    self.set_loaded(index, None);
                }
                return fail(code);
            }
        };
        if let Err(error) = output::check_images(params, &images) {
            eprintln!("weave-broker: job {job_id} rejected worker output: {error}");
            self.set_loaded(index, None);
            runner.unload().ok();
            return fail(ErrorCode::WorkerCrashed);
        }
        let with_parameters = self.settings.output.png_parameters;
        let lora_hashes = if with_parameters {
            self.lora_hashes.of(params, &self.settings)
        } else {
            Vec::new()
        };
        for (index, image) in (0u32..).zip(&images) {
            let seed = params.seed.wrapping_add(u64::from(index));
            match output::encode_png(params, image, seed, with_parameters, &lora_hashes) {
                Ok(png) => send(Response::Image {
                    job_id,
                    index,
                    seed,
                    width: image.width,
                    height: image.height,
                    png,
                }),
                Err(error) => {
                    eprintln!("weave-broker: job {job_id}: {error}");
                    return fail(ErrorCode::Internal);
                }
            }
        }
        send(Response::Finished { job_id });
        Ok(())
    }

    /// PNG-encodes a checked preview and queues it for the caller, unless
    /// the caller has not read the earlier ones yet (then it is dropped,
    /// and counted: see `previews.rs`).
    fn forward_preview(&self, pending: &PendingJob, preview: Preview) {
        if !pending.previews.admit() {
            return;
        }
        let png = match output::encode_preview_png(&preview) {
            Ok(png) => png,
            Err(error) => {
                eprintln!("weave-broker: job {}: preview: {error}", pending.job_id);
                pending.previews.withdraw();
                return;
            }
        };
        let sent = pending.events.send(Response::Preview {
            job_id: pending.job_id,
            index: preview.index,
            step: preview.step,
            total: preview.total,
            width: preview.width,
            height: preview.height,
            png,
        });
        if sent.is_err() {
            pending.previews.withdraw();
        }
    }

    /// Updates worker `index`'s running job (what `Jobs` shows of it).
    fn with_running(&self, index: usize, update: impl FnOnce(&mut super::RunningJob)) {
        let mut state = self.lock();
        if let Some(running) = state.lanes.get_mut(index).and_then(|l| l.running.as_mut()) {
            update(running);
        }
    }
}

/// The caller's code for a failed worker operation; the broker's log
/// (stderr / journal) gets the detail, callers only the typed code.
pub(super) fn failure_code(what: &str, error: &SupervisorError) -> ErrorCode {
    if !matches!(error, SupervisorError::Cancelled) {
        eprintln!("weave-broker: worker {what} failed: {error}");
    }
    error.error_code()
}
