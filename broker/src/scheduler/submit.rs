//! Admission: a caller's request becomes a queued job (or a typed refusal
//! with nothing queued), queued jobs are cancelled, shutdown fails them.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use weave_common::proto::{ErrorCode, GenerateRequest, Response};

use super::{send_position_changes, Admission, Broker, EndedJob, PendingJob};
use crate::admission::{AdmissionError, Owner};
use crate::validation;

impl Broker {
    /// Validates and admits a job. Nothing is queued on error.
    pub fn submit(&self, uid: u32, request: &GenerateRequest) -> Result<Admission, ErrorCode> {
        weave_common::validate::validate_generate(request, &self.settings.bounds)?;
        let model =
            self.settings
                .model(&request.model_id)
                .ok_or_else(|| ErrorCode::UnknownModel {
                    model_id: request.model_id.clone(),
                })?;
        let settings = &self.settings;
        weave_common::validate::validate_loras(&request.loras, settings.limits.max_loras, |id| {
            settings
                .lora(id)
                .map(|lora| weave_common::validate::LoraBounds {
                    fits: lora.fits(&model.id),
                    min_weight: lora.min_weight,
                    max_weight: lora.max_weight,
                })
        })?;
        let mut state = self.lock();
        let job_id = state.next_job_id;
        let mut params = validation::resolve(
            request,
            model,
            &self.settings.bounds,
            self.settings.limits.max_prompt_chunks,
            random_seed(),
        )?;
        validation::resolve_previews(request, &self.settings.limits, &mut params)?;
        if state.shutting_down || state.draining {
            return Err(ErrorCode::ShuttingDown);
        }
        let owner = Owner {
            uid,
            tag: request.tag.clone(),
        };
        if self.status.is_quarantined(&model.id) {
            return Err(ErrorCode::ModelQuarantined);
        }
        // Its files failed the check or its pin: refused at once until an
        // admin's `Load` finds them fixed.
        if self.status.refuses_jobs(&model.id) {
            return Err(ErrorCode::ModelUnavailable);
        }
        let running = state.running_uids();
        if let Err(error) = state.queue.check_room(uid, &running) {
            let queued = u32::try_from(state.queue.len()).unwrap_or(u32::MAX);
            // A place frees up about every job length over the workers.
            let workers = u32::try_from(state.lanes.len()).unwrap_or(1).max(1);
            let per_job = (state.recent_job_ms / workers).max(100);
            let retry_after_ms = match error {
                AdmissionError::QueueFull => per_job,
                AdmissionError::OwnerQueueFull => per_job.saturating_mul(queued.clamp(1, 8)),
            };
            return Err(ErrorCode::Busy { retry_after_ms });
        }
        let now = Instant::now();
        state
            .rate
            .try_take(uid, now)
            .map_err(|retry_after_ms| ErrorCode::RateLimited { retry_after_ms })?;
        let (sender, receiver) = mpsc::channel();
        let previews = Arc::new(super::previews::PreviewGate::default());
        let pending = PendingJob {
            job_id,
            params,
            events: sender,
            cancel: Arc::new(AtomicBool::new(false)),
            submitted: now,
            previews: Arc::clone(&previews),
            passed: 0,
        };
        let position = state.queue.push(job_id, owner, now, pending);
        state.next_job_id += 1;
        drop(state);
        self.wake.notify_all();
        Ok(Admission {
            job_id,
            position,
            events: receiver,
            previews,
        })
    }

    /// Cancels a queued or running job the caller may see. `Ok(false)`: no
    /// such job (or not the caller's): the answer does not reveal which.
    pub fn cancel(&self, uid: u32, is_admin: bool, job_id: u64) -> bool {
        let mut state = self.lock();
        let may = |owner: &Owner| is_admin || owner.uid == uid;
        let running = state
            .lanes
            .iter()
            .filter_map(|lane| lane.running.as_ref())
            .find(|r| r.job_id == job_id);
        if let Some(running) = running {
            if !may(&running.owner) {
                return false;
            }
            running.cancel.store(true, Ordering::SeqCst);
            return true;
        }
        let owned = state
            .queue
            .iter()
            .any(|entry| entry.id == job_id && may(&entry.owner));
        if !owned {
            return false;
        }
        if let Some(entry) = state.queue.remove(job_id) {
            let _ = entry
                .item
                .events
                .send(Response::Error(ErrorCode::Cancelled));
            self.record_outcome(&entry.item, &entry.owner, "cancelled", None, None);
            state.remember(EndedJob::never_ran(
                entry.id,
                &entry.owner,
                &entry.item,
                ErrorCode::Cancelled,
            ));
            send_position_changes(&mut state);
        }
        true
    }

    /// Stops accepting, fails every queued job with `ShuttingDown` and asks
    /// the running jobs to stop.
    pub fn begin_shutdown(&self) {
        let mut state = self.lock();
        state.shutting_down = true;
        for entry in state.queue.drain_all() {
            let _ = entry
                .item
                .events
                .send(Response::Error(ErrorCode::ShuttingDown));
            self.record_outcome(&entry.item, &entry.owner, "shutting_down", None, None);
        }
        for running in state.lanes.iter().filter_map(|lane| lane.running.as_ref()) {
            running.cancel.store(true, Ordering::SeqCst);
        }
        drop(state);
        self.wake.notify_all();
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS RNG failing leaves a fixed seed; generation still works and the
    // seed is reported back, so this is not a security property.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}
