//! The worker process's life: start and handshake, waiting for its
//! messages while watching it, killing it, restarting it with backoff.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use weave_common::config::Device;
use weave_common::worker_proto::channel::BrokerEndpoint;
use weave_common::worker_proto::{FromWorker, SegmentGeometry, ToWorker};

use super::error::{classify_channel_error, describe_exit, worker_text};
use super::{
    spawn, CrashCause, RunningWorker, SupervisorError, WaitFailure, WorkerState, WorkerSupervisor,
    LIVENESS_TICK,
};

/// Slots per direction. Broker → worker messages are small but for a
/// `Generate` with image inputs; worker → broker carries one image per
/// message.
const SLOTS_TO_WORKER: u32 = 8;
const SLOTS_TO_BROKER: u32 = 4;
/// Largest broker → worker message without image inputs (prompts are
/// bounded far below this); an image request's PNG bytes come on top.
const MAX_TO_WORKER_MESSAGE: usize = 64 * 1024;
/// Room for the non-pixel fields of `FromWorker::Image`.
const IMAGE_MESSAGE_OVERHEAD: usize = 256;

impl WorkerSupervisor {
    /// Starts the worker if none runs (or the one there has exited),
    /// waiting out the restart backoff.
    pub fn ensure_running(&mut self) -> Result<(), SupervisorError> {
        if self.shut_down {
            return Err(SupervisorError::ShutDown);
        }
        self.reap_exited_worker();
        if self.worker.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if self.not_before > now {
            std::thread::sleep(self.not_before - now);
        }
        self.update(|s| s.state = WorkerState::Starting);
        let started = self.start_worker();
        if let Err(e) = &started {
            eprintln!("weave-broker: worker start failed: {e}");
            self.schedule_restart();
            let why = match e {
                SupervisorError::WorkerStart { reason } => reason.clone(),
                other => other.to_string(),
            };
            self.update(|s| {
                s.state = WorkerState::Restarting;
                s.start_error = Some(why);
            });
        }
        started
    }

    pub(super) fn schedule_restart(&mut self) {
        self.not_before = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
    }

    pub(super) fn slot_size_for(max_message: usize) -> Result<u32, SupervisorError> {
        weave_common::shm::RingGeometry::for_max_message(2, max_message)
            .map(|g| g.slot_size)
            .map_err(|e| SupervisorError::Spawn(format!("channel geometry: {e}")))
    }

    pub(super) fn start_worker(&mut self) -> Result<(), SupervisorError> {
        let image_bytes = self.config.max_image_pixels.saturating_mul(3);
        let to_worker = SegmentGeometry {
            segment_id: self.starts * 2 + 1,
            slot_count: SLOTS_TO_WORKER,
            // A whole image request fits one slot: its PNG bytes are at
            // most the request's body, which is at most this bound. Pages
            // of the memfd are only backed once written.
            slot_size: Self::slot_size_for(
                MAX_TO_WORKER_MESSAGE.saturating_add(self.config.max_image_request_bytes),
            )?,
        };
        let to_broker = SegmentGeometry {
            segment_id: self.starts * 2 + 2,
            slot_count: SLOTS_TO_BROKER,
            slot_size: Self::slot_size_for(image_bytes.saturating_add(IMAGE_MESSAGE_OVERHEAD))?,
        };
        self.key_generation += 1;
        let generation = self.key_generation;
        let first_start = self.starts == 0;
        self.starts += 1;
        let channel = BrokerEndpoint::create(to_worker, to_broker, generation)
            .map_err(|e| SupervisorError::Spawn(format!("channel setup: {e}")))?;
        // The worker's own rule (a path that does not exist is left out of
        // its sandbox), seen from here.
        self.missing_at_start = self
            .config
            .models
            .iter()
            .filter(|m| std::fs::symlink_metadata(&m.path).is_err())
            .map(|m| m.id.clone())
            .collect();
        let spawner = self
            .spawner
            .as_ref()
            .map_err(|e| SupervisorError::Spawn(e.clone()))?;
        let child = spawn::spawn_worker(spawner, &self.config, &channel)?;
        let pid = child.id();
        self.worker = Some(RunningWorker { child, channel });
        self.loaded = None;
        self.update(|s| {
            s.worker_pid = Some(pid);
            s.loaded = None;
            s.sandbox = None;
            s.device = None;
            if !first_start {
                s.restarts += 1;
            }
        });
        let deadline = Instant::now() + self.config.handshake_timeout;
        let (sandbox, device) = match self.wait_message(deadline) {
            Ok(FromWorker::Ready { sandbox, device }) => (sandbox, device),
            Ok(FromWorker::StartFailed { reason }) => {
                let reason = worker_text(reason);
                self.kill_worker(CrashCause::Died(format!("could not start: {reason}")));
                return Err(SupervisorError::WorkerStart { reason });
            }
            Ok(other) => {
                let cause = CrashCause::ProtocolViolation(format!(
                    "expected Ready, got message kind {}",
                    other.kind()
                ));
                return Err(SupervisorError::Handshake(
                    self.kill_worker(cause).to_string(),
                ));
            }
            Err(WaitFailure::Deadline) => {
                let cause =
                    CrashCause::Unresponsive("no Ready within the handshake timeout".into());
                return Err(SupervisorError::Handshake(
                    self.kill_worker(cause).to_string(),
                ));
            }
            Err(WaitFailure::Crash(cause)) => {
                return Err(SupervisorError::Handshake(
                    self.kill_worker(cause).to_string(),
                ));
            }
        };
        if !sandbox.fully_enforced && !self.config.allow_degraded_sandbox {
            let cause = CrashCause::ProtocolViolation(format!(
                "worker reported a degraded sandbox: {sandbox:?}"
            ));
            return Err(SupervisorError::Handshake(
                self.kill_worker(cause).to_string(),
            ));
        }
        if !reported_device_fits(self.config.device, self.config.gpu, device) {
            let cause = CrashCause::ProtocolViolation(format!(
                "worker reported device {device}, configured {}",
                self.config.device
            ));
            return Err(SupervisorError::Handshake(
                self.kill_worker(cause).to_string(),
            ));
        }
        self.update(|s| {
            s.state = WorkerState::Ready;
            s.sandbox = Some(sandbox);
            s.device = Some(device);
            s.start_error = None;
        });
        self.refresh_channel_stats();
        Ok(())
    }

    /// Waits for the next worker message until `deadline`, watching the
    /// process. Channel and decode errors are protocol violations.
    pub(super) fn wait_message(&mut self, deadline: Instant) -> Result<FromWorker, WaitFailure> {
        let Some(worker) = self.worker.as_mut() else {
            return Err(WaitFailure::Crash(CrashCause::Died("no worker".into())));
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitFailure::Deadline);
            }
            match worker.channel.recv(LIVENESS_TICK.min(deadline - now)) {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => return Err(WaitFailure::Crash(classify_channel_error(e))),
            }
            match worker.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(WaitFailure::Crash(CrashCause::Died(describe_exit(status))))
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(WaitFailure::Crash(CrashCause::Died(format!(
                        "waitpid failed: {e}"
                    ))))
                }
            }
        }
    }

    /// SIGKILL + reap, record the crash, count it against the loaded model,
    /// schedule the restart. Returns the cause for the error.
    pub(super) fn kill_worker(&mut self, cause: CrashCause) -> CrashCause {
        let Some(mut worker) = self.worker.take() else {
            return cause;
        };
        // Kill first even if it already exited: kill on a reaped-but-unwaited
        // child is harmless, and a live one must not outlive this call.
        let _ = worker.child.kill();
        let exit = match worker.child.wait() {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be reaped: {e}"),
        };
        let crashed_model = self.loaded.take();
        eprintln!(
            "weave-broker: worker (pid {}) stopped: {cause}; {exit}",
            worker.child.id()
        );
        self.schedule_restart();
        let quarantine_after = self.config.quarantine_after;
        let stats = worker.channel.stats();
        self.update(|s| {
            s.state = WorkerState::Restarting;
            s.worker_pid = None;
            s.loaded = None;
            s.last_exit = Some(exit);
            s.last_crash = Some(cause.clone());
            s.channel = Some(stats);
            s.running_job = None;
            if let Some(model) = crashed_model {
                let streak = s.crash_streaks.entry(model.clone()).or_insert(0);
                *streak += 1;
                if *streak >= quarantine_after {
                    eprintln!("weave-broker: model {model:?} quarantined after {streak} consecutive worker crashes");
                    s.quarantined.insert(model);
                }
            }
        });
        cause
    }

    pub(super) fn crash(&mut self, cause: CrashCause) -> SupervisorError {
        SupervisorError::WorkerCrashed(self.kill_worker(cause))
    }

    pub(super) fn wait_failure(
        &mut self,
        failure: WaitFailure,
        on_deadline: SupervisorError,
    ) -> SupervisorError {
        match failure {
            WaitFailure::Deadline => {
                self.kill_worker(CrashCause::Unresponsive("deadline passed".into()));
                on_deadline
            }
            WaitFailure::Crash(cause) => self.crash(cause),
        }
    }

    pub(super) fn send(&mut self, msg: &ToWorker) -> Result<(), SupervisorError> {
        let result = match self.worker.as_mut() {
            Some(w) => w.channel.send(msg),
            None => return Err(self.crash(CrashCause::Died("no worker".into()))),
        };
        result.map_err(|e| {
            self.crash(CrashCause::ProtocolViolation(format!(
                "sending to the worker: {e}"
            )))
        })
    }

    /// Asks the worker to exit, kills it if it does not within the reply
    /// timeout, and refuses further work.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        self.stop_worker();
    }

    /// Stops the worker in order (no crash is counted); the next operation
    /// starts a fresh one.
    pub(super) fn stop_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.channel.send(&ToWorker::Shutdown);
            let deadline = Instant::now() + self.config.reply_timeout.min(Duration::from_secs(5));
            loop {
                match worker.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(LIVENESS_TICK),
                    _ => {
                        let _ = worker.child.kill();
                        let _ = worker.child.wait();
                        break;
                    }
                }
            }
        }
        self.loaded = None;
        self.update(|s| {
            s.state = WorkerState::Down;
            s.worker_pid = None;
            s.loaded = None;
        });
    }
}

/// Whether a worker configured for `configured`, given the GPU `gpu`, may
/// report `reported` in `Ready`: the same device, or for `auto` the CPU or
/// the GPU it was given (what the worker resolves it to). Anything else is a
/// lying or broken worker.
fn reported_device_fits(configured: Device, gpu: Option<u32>, reported: Device) -> bool {
    match (configured, reported) {
        (Device::Auto, Device::Cpu) => true,
        (Device::Auto, Device::Cuda(index)) => gpu == Some(index),
        (Device::Auto, Device::Auto) => false,
        (Device::Cpu | Device::Cuda(_), _) => reported == configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_device_must_be_the_configured_one_or_auto_resolved() {
        assert!(reported_device_fits(Device::Auto, None, Device::Cpu));
        assert!(reported_device_fits(Device::Auto, Some(0), Device::Cpu));
        assert!(reported_device_fits(Device::Auto, Some(0), Device::Cuda(0)));
        // The second auto worker of a two-GPU box was given /dev/nvidia1.
        assert!(reported_device_fits(Device::Auto, Some(1), Device::Cuda(1)));
        assert!(reported_device_fits(
            Device::Cuda(2),
            Some(2),
            Device::Cuda(2)
        ));
        assert!(reported_device_fits(Device::Cpu, None, Device::Cpu));
        for (configured, gpu, reported) in [
            (Device::Auto, None, Device::Auto),
            // Not the GPU it was given, or a GPU when it was given none.
            (Device::Auto, Some(1), Device::Cuda(0)),
            (Device::Auto, None, Device::Cuda(0)),
            (Device::Cpu, None, Device::Cuda(0)),
            (Device::Cuda(0), Some(0), Device::Cpu),
            (Device::Cuda(1), Some(1), Device::Cuda(0)),
        ] {
            assert!(
                !reported_device_fits(configured, gpu, reported),
                "{configured} -> {reported}"
            );
        }
    }

    #[test]
    fn the_largest_image_request_fits_one_broker_to_worker_slot() {
        use weave_common::proto::{MAX_IMAGE_REQUEST_FRAME, MAX_REQUEST_FRAME};
        // The request body bounds the PNG bytes; the rest of the message
        // is far below MAX_TO_WORKER_MESSAGE.
        assert!(MAX_TO_WORKER_MESSAGE >= MAX_REQUEST_FRAME as usize);
        let largest = MAX_TO_WORKER_MESSAGE + MAX_IMAGE_REQUEST_FRAME as usize;
        let slot = WorkerSupervisor::slot_size_for(largest).unwrap();
        assert!(slot as usize >= largest);
        let geometry = weave_common::shm::RingGeometry {
            slot_count: SLOTS_TO_WORKER,
            slot_size: slot,
        };
        assert!(geometry.validate().is_ok(), "{geometry:?}");
    }
}
