//! One lane thread per worker: it owns that worker's supervisor and runs the
//! tasks the dispatcher and the admin commands hand it, one at a time; while
//! it has none it checks that its worker is alive. Nothing here waits on
//! another worker, so a crash or hang stays in its lane.
#![forbid(unsafe_code)]

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::pool::LaneTask;
use super::run_loop::millis;
use super::{Broker, EndedJob};
use crate::audit::{AuditRecord, Severity};
use crate::job_runner::JobRunner;

/// How often an idle lane checks that its worker is alive (a non-blocking
/// `waitpid`).
const IDLE_CHECK: Duration = Duration::from_millis(200);

impl Broker {
    /// Lane `index`'s thread body; returns after `LaneTask::Stop` (or when
    /// the dispatcher is gone), with its worker stopped.
    pub(super) fn run_lane(
        &self,
        index: usize,
        runner: &mut dyn JobRunner,
        tasks: &Receiver<LaneTask>,
    ) {
        loop {
            match tasks.recv_timeout(IDLE_CHECK) {
                Ok(LaneTask::Run(entry)) => self.lane_job(index, runner, *entry),
                Ok(LaneTask::Command(command, gather)) => {
                    let result = self.execute(index, runner, &command);
                    self.finish_task(index);
                    gather.done(result);
                }
                Ok(LaneTask::IdleUnload(model_id)) => {
                    let result = runner.unload();
                    self.audit.record(
                        Severity::Info,
                        &AuditRecord::new("idle_unload")
                            .field("model", &model_id)
                            .field("worker", index)
                            .field("ok", result.is_ok()),
                    );
                    if let Some(lane) = self.lock().lanes.get_mut(index) {
                        lane.loaded = None;
                    }
                    self.finish_task(index);
                }
                Ok(LaneTask::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // A worker that died between jobs (an operator's kill,
                    // the OOM killer) is noticed here within IDLE_CHECK and
                    // replaced, so status is right and no job is charged.
                    let idle = self.lock().lanes.get(index).is_some_and(|l| l.is_idle());
                    if idle && runner.check_idle() {
                        if let Some(lane) = self.lock().lanes.get_mut(index) {
                            lane.loaded = None;
                        }
                    }
                }
            }
        }
        runner.shutdown();
    }

    /// Runs one dispatched job on lane `index` and records its end.
    fn lane_job(
        &self,
        index: usize,
        runner: &mut dyn JobRunner,
        entry: crate::admission::Queued<super::PendingJob>,
    ) {
        let started = Instant::now();
        let result = self.run_one(index, runner, &entry.item);
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(()) => "finished",
            Err(code) => code.name(),
        };
        self.record_outcome(
            &entry.item,
            &entry.owner,
            outcome,
            Some(elapsed.as_millis()),
            Some(index),
        );
        let snapshot = self.status.state(index);
        let device = snapshot.device;
        let mut state = self.lock();
        let ran = state.lanes.get_mut(index).and_then(|lane| {
            let now = Instant::now();
            // What the worker holds, whatever the job's end: a job that
            // stopped before its load leaves the dispatcher's name behind.
            let holds = snapshot.loaded.as_ref();
            if lane.loaded.as_ref().map(|l| l.model_id.as_str()) != holds.map(|i| &*i.model_id) {
                lane.loaded = holds.map(|info| super::LoadedState {
                    model_id: info.model_id.clone(),
                    since: now,
                    last_use: now,
                    load_time: Duration::from_millis(info.load_ms),
                });
            }
            if let Some(loaded) = lane.loaded.as_mut() {
                loaded.last_use = now;
            }
            // The set the worker now has merged, as far as the broker
            // knows: a failed job may have stopped before or after its merge.
            lane.loras = match &result {
                Ok(()) => super::pool::lora_key(&entry.item.params.loras),
                Err(_) => String::from("?"),
            };
            lane.running.take()
        });
        if let Some(ran) = ran {
            let ended = EndedJob {
                job_id: ran.job_id,
                owner: ran.owner,
                model_id: ran.model_id,
                submitted: ran.submitted,
                run_ms: ran.started.map(|at| millis(at.elapsed())),
                device: ran.started.and(device),
                step: ran.step,
                total: ran.total,
                error: result.err(),
                worker: u32::try_from(index).ok(),
            };
            state.remember(ended);
        }
        state.recent_job_ms = u32::try_from(elapsed.as_millis())
            .unwrap_or(u32::MAX)
            .max(100);
        drop(state);
        self.finish_task(index);
    }

    /// Marks one task of lane `index` done and wakes the dispatcher.
    fn finish_task(&self, index: usize) {
        if let Some(lane) = self.lock().lanes.get_mut(index) {
            lane.outstanding = lane.outstanding.saturating_sub(1);
            lane.idle_since = Instant::now();
        }
        self.wake.notify_all();
    }
}
