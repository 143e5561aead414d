//! The scheduler thread: expires overdue jobs, runs admin commands, pops
//! jobs in fair order, unloads an idle model, sleeps until there is work.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, Response};

use super::{send_position_changes, Broker, EndedJob, RunningJob};
use crate::audit::{AuditRecord, Severity};
use crate::job_runner::JobRunner;

/// How often the idle scheduler checks that the worker is alive (a
/// non-blocking `waitpid`).
const IDLE_CHECK: Duration = Duration::from_millis(200);

impl Broker {
    /// The scheduler thread's body; returns after `begin_shutdown`, with the
    /// worker stopped.
    pub fn run_scheduler(&self, runner: &mut dyn JobRunner) {
        let idle = self.settings.limits.idle_unload();
        let deadline = self.settings.limits.queue_deadline();
        let mut state = self.lock();
        loop {
            if state.shutting_down {
                break;
            }
            let now = Instant::now();
            for entry in state.queue.expire(now, deadline) {
                let _ = entry.item.events.send(Response::Error(ErrorCode::TimedOut));
                self.record_outcome(&entry.item, &entry.owner, "queue_deadline", None);
                state.remember(EndedJob::never_ran(
                    entry.id,
                    &entry.owner,
                    &entry.item,
                    ErrorCode::TimedOut,
                ));
                send_position_changes(&mut state);
            }
            if !state.commands.is_empty() {
                let (command, reply) = state.commands.remove(0);
                drop(state);
                let result = self.execute(runner, &command);
                let _ = reply.send(result);
                state = self.lock();
                continue;
            }
            if let Some(entry) = state.queue.pop() {
                send_position_changes(&mut state);
                state.running = Some(RunningJob {
                    job_id: entry.id,
                    owner: entry.owner.clone(),
                    model_id: entry.item.params.model_id.clone(),
                    submitted: entry.item.submitted,
                    cancel: entry.item.cancel.clone(),
                    started: None,
                    step: 0,
                    total: 0,
                });
                drop(state);
                let started = Instant::now();
                let result = self.run_one(runner, &entry.item);
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
                );
                let device = self.status.state().device;
                state = self.lock();
                if let Some(ran) = state.running.take() {
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
                    };
                    state.remember(ended);
                }
                state.recent_job_ms = u32::try_from(elapsed.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(100);
                if let Some(loaded) = state.loaded.as_mut() {
                    loaded.last_use = Instant::now();
                }
                continue;
            }
            // Idle: a worker that died between jobs (an operator's kill, the
            // OOM killer) is noticed here within IDLE_CHECK and replaced, so
            // status is right and no job is charged for it.
            drop(state);
            let model_lost = runner.check_idle();
            state = self.lock();
            if model_lost {
                state.loaded = None;
            }
            if state.shutting_down || !state.commands.is_empty() || !state.queue.is_empty() {
                continue;
            }
            // Idle unload: never while a job runs (none does here) and never
            // a pinned model.
            let mut wait = IDLE_CHECK;
            if let Some(loaded) = state.loaded.clone() {
                if !state.pinned.contains(&loaded.model_id) {
                    let idle_for = now.saturating_duration_since(loaded.last_use);
                    if idle_for >= idle {
                        drop(state);
                        let result = runner.unload();
                        self.audit.record(
                            Severity::Info,
                            &AuditRecord::new("idle_unload")
                                .field("model", &loaded.model_id)
                                .field("ok", result.is_ok()),
                        );
                        state = self.lock();
                        state.loaded = None;
                        continue;
                    }
                    wait = wait.min(idle - idle_for);
                }
            }
            if let Some(oldest) = state.queue.oldest() {
                let due = (oldest + deadline).saturating_duration_since(now);
                wait = wait.min(due.max(Duration::from_millis(1)));
            }
            state.rate.forget_full(now);
            state = match self.wake.wait_timeout(state, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(state);
        runner.shutdown();
    }
}

/// Whole milliseconds, saturating.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
