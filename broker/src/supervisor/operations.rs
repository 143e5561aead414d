//! What the scheduler asks of the worker: load, unload, run a job, re-key.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use weave_common::worker_proto::{FromWorker, ToWorker, WorkerFailure, WorkerGenerateParams};

use super::error::worker_text;
use super::job_check::{Checked, JobCheck};
use super::status::lock;
use super::{
    CrashCause, Image, JobEvent, LoadInfo, SupervisorError, WaitFailure, WorkerSupervisor,
    LIVENESS_TICK,
};

impl WorkerSupervisor {
    fn note_success(&mut self, model_id: &str) {
        self.backoff = self.config.backoff_initial;
        self.update(|s| {
            s.crash_streaks.remove(model_id);
        });
    }

    fn check_model(&self, model_id: &str) -> Result<(), SupervisorError> {
        if !self.models.contains_key(model_id) {
            return Err(SupervisorError::UnknownModel {
                model_id: model_id.to_owned(),
            });
        }
        if lock(&self.status).quarantined.contains(model_id) {
            return Err(SupervisorError::Quarantined {
                model_id: model_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Records that `model_id` cannot be used, and why (for admins);
    /// `refuse_jobs`: see [`super::Unavailable::refuse_jobs`].
    fn mark_unavailable(
        &self,
        model_id: &str,
        reason: String,
        refuse_jobs: bool,
    ) -> SupervisorError {
        eprintln!("weave-broker: model {model_id:?} is unavailable: {reason}");
        self.update(|s| {
            let entry = super::Unavailable {
                reason: reason.clone(),
                refuse_jobs,
            };
            s.unavailable.insert(model_id.to_owned(), entry);
        });
        SupervisorError::Unavailable {
            model_id: model_id.to_owned(),
            reason,
        }
    }

    /// The load-time check of the model's files (the same cheap checks as
    /// at start-up): a model that fails is marked unavailable, one that
    /// passes loses an earlier mark and is tried again.
    fn check_files(&mut self, model_id: &str) -> Result<(), SupervisorError> {
        let Some(entry) = self.models.get(model_id) else {
            return Err(SupervisorError::UnknownModel {
                model_id: model_id.to_owned(),
            });
        };
        if let Some(reason) = super::files_problem(entry) {
            return Err(self.mark_unavailable(model_id, reason, true));
        }
        self.update(|s| {
            s.unavailable.remove(model_id);
        });
        if self.missing_at_start.contains(model_id) {
            // There now, but outside the live worker's sandbox.
            eprintln!(
                "weave-broker: model {model_id:?} appeared after the worker started; starting a \
                 fresh worker that may read it"
            );
            self.stop_worker();
        }
        Ok(())
    }

    /// Loads `model_id` (unloading any other model first).
    pub fn load(&mut self, model_id: &str) -> Result<LoadInfo, SupervisorError> {
        self.check_model(model_id)?;
        self.check_files(model_id)?;
        self.ensure_running()?;
        self.send(&ToWorker::Load {
            model_id: model_id.to_owned(),
        })?;
        // Counted against the model from now on: a crash while loading is
        // the model's doing as much as one while generating.
        self.loaded = Some(model_id.to_owned());
        self.update(|s| s.loaded = None);
        let deadline = Instant::now() + self.config.load_timeout;
        let reply = match self.wait_message(deadline) {
            Ok(m) => m,
            Err(f) => return Err(self.wait_failure(f, SupervisorError::TimedOut)),
        };
        match reply {
            FromWorker::Loaded {
                model_id: id,
                memory_bytes,
                load_ms,
            } if id == model_id => {
                let info = LoadInfo {
                    model_id: id,
                    memory_bytes,
                    load_ms,
                    since: SystemTime::now(),
                };
                self.update(|s| s.loaded = Some(info.clone()));
                self.refresh_channel_stats();
                Ok(info)
            }
            FromWorker::Failed {
                job_id: None,
                failure,
            } => {
                self.loaded = None;
                self.refresh_channel_stats();
                match failure {
                    WorkerFailure::UnknownModel => Err(SupervisorError::UnknownModel {
                        model_id: model_id.to_owned(),
                    }),
                    WorkerFailure::LoadFailed { reason } => {
                        let reason = worker_text(reason);
                        self.mark_unavailable(
                            model_id,
                            format!("loading failed: {reason}; the next job tries again"),
                            false,
                        );
                        Err(SupervisorError::LoadFailed {
                            model_id: model_id.to_owned(),
                            reason,
                        })
                    }
                    WorkerFailure::PinMismatch => {
                        self.mark_unavailable(
                            model_id,
                            "its files do not match its sha256 pin and were refused; if they \
                             changed on purpose, set `sha256` to what `sshmctl hash PATH` prints, \
                             then `sshmctl load ID`"
                                .into(),
                            true,
                        );
                        Err(SupervisorError::PinMismatch {
                            model_id: model_id.to_owned(),
                        })
                    }
                    other => Err(self.crash(CrashCause::ProtocolViolation(format!(
                        "unexpected failure {other:?} for a load"
                    )))),
                }
            }
            other => Err(self.crash(CrashCause::ProtocolViolation(format!(
                "expected Loaded for the requested model, got message kind {}",
                other.kind()
            )))),
        }
    }

    /// Unloads the model. Without a running worker there is nothing to do.
    pub fn unload(&mut self) -> Result<(), SupervisorError> {
        if self.worker.is_none() {
            self.loaded = None;
            self.update(|s| s.loaded = None);
            return Ok(());
        }
        self.send(&ToWorker::Unload)?;
        let deadline = Instant::now() + self.config.reply_timeout;
        match self.wait_message(deadline) {
            Ok(FromWorker::Unloaded) => {
                self.loaded = None;
                self.update(|s| s.loaded = None);
                self.refresh_channel_stats();
                Ok(())
            }
            Ok(other) => Err(self.crash(CrashCause::ProtocolViolation(format!(
                "expected Unloaded, got message kind {}",
                other.kind()
            )))),
            Err(f) => Err(self.wait_failure(f, SupervisorError::TimedOut)),
        }
    }

    /// Runs one job to completion, loading its model first if needed.
    /// `on_event` sees progress per step and each finished image; `cancel`
    /// is polled while waiting (the worker stops at the next step). Any
    /// mismatch between the output and `params` kills the worker.
    pub fn run_job(
        &mut self,
        job_id: u64,
        params: &WorkerGenerateParams,
        deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError> {
        self.check_model(&params.model_id)?;
        let image_len = params
            .image_len()
            .filter(|len| *len <= self.config.max_image_pixels.saturating_mul(3))
            .ok_or_else(|| SupervisorError::Unsupported {
                reason: "image larger than the configured maximum".into(),
            })?;
        if cancel.load(Ordering::Relaxed) {
            return Err(SupervisorError::Cancelled);
        }
        self.ensure_running()?;
        if self.loaded.as_deref() != Some(params.model_id.as_str()) {
            let info = self.load(&params.model_id)?;
            on_event(JobEvent::ModelLoaded(info));
        }
        self.send(&ToWorker::Generate {
            job_id,
            params: params.clone(),
        })?;
        self.update(|s| s.running_job = Some(job_id));
        let result = self.collect_job(job_id, params, image_len, deadline, cancel, on_event);
        self.update(|s| s.running_job = None);
        self.refresh_channel_stats();
        if result.is_ok() {
            self.note_success(&params.model_id);
        }
        result
    }

    fn collect_job(
        &mut self,
        job_id: u64,
        params: &WorkerGenerateParams,
        image_len: usize,
        deadline: Instant,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(JobEvent),
    ) -> Result<Vec<Image>, SupervisorError> {
        let mut check = JobCheck::new(job_id, params, image_len);
        let mut cancel_deadline: Option<Instant> = None;
        loop {
            if cancel_deadline.is_none() && cancel.load(Ordering::Relaxed) {
                self.send(&ToWorker::Cancel { job_id })?;
                cancel_deadline = Some(Instant::now() + self.config.reply_timeout);
            }
            // Poll in short slices so a cancel is forwarded promptly.
            let slice_end = (Instant::now() + LIVENESS_TICK * 5).min(deadline);
            let until = cancel_deadline.map_or(slice_end, |c| c.min(slice_end));
            let msg = match self.wait_message(until) {
                Ok(m) => m,
                Err(WaitFailure::Deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(
                            self.wait_failure(WaitFailure::Deadline, SupervisorError::TimedOut)
                        );
                    }
                    if cancel_deadline.is_some_and(|c| now >= c) {
                        return Err(
                            self.wait_failure(WaitFailure::Deadline, SupervisorError::Cancelled)
                        );
                    }
                    continue;
                }
                Err(f) => return Err(self.wait_failure(f, SupervisorError::TimedOut)),
            };
            match check.accept(msg) {
                Ok(Checked::Event(event)) => on_event(event),
                Ok(Checked::Finished(images)) => return Ok(images),
                Ok(Checked::Failed(error)) => return Err(error),
                Err(cause) => return Err(self.crash(cause)),
            }
        }
    }

    /// Re-keys the channel (fresh OS-random keys, generation + 1) without
    /// restarting the worker; call between jobs. Without a running worker
    /// the next start uses fresh keys anyway.
    pub fn rotate_keys(&mut self) -> Result<u64, SupervisorError> {
        let rotated = match self.worker.as_mut() {
            None => return Ok(self.key_generation),
            Some(w) => w.channel.rotate_keys(),
        };
        let generation = match rotated {
            Ok(g) => {
                self.key_generation = g;
                g
            }
            Err(e) => {
                return Err(self.crash(CrashCause::ProtocolViolation(format!("sending Rekey: {e}"))))
            }
        };
        let deadline = Instant::now() + self.config.reply_timeout;
        match self.wait_message(deadline) {
            Ok(FromWorker::RekeyAck) => {
                self.refresh_channel_stats();
                Ok(generation)
            }
            Ok(other) => Err(self.crash(CrashCause::ProtocolViolation(format!(
                "expected RekeyAck, got message kind {}",
                other.kind()
            )))),
            Err(f) => Err(self.wait_failure(f, SupervisorError::TimedOut)),
        }
    }
}
