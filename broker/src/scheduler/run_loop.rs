//! The dispatcher thread: expires overdue jobs, places queued jobs on idle
//! workers (the pure policy of [`crate::placement`]), hands idle models to
//! their lanes to unload, and sleeps until there is work. It never waits on
//! a worker: each runs on its own lane thread ([`super::lane`]).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, Response};

use super::pool::{self, LaneTask};
use super::{send_position_changes, Broker, EndedJob, LoadedState, RunningJob, State};
use crate::job_runner::JobRunner;
use crate::placement::{self, Candidate, Demand, Placement, Wait};

/// The longest the dispatcher sleeps without news (a submit, a lane that
/// finished, a command all wake it at once).
const TICK: Duration = Duration::from_millis(200);

impl Broker {
    /// The dispatcher's body, with one lane thread per runner (the pool's
    /// workers, in the order given to [`Broker::new`]); returns after
    /// `begin_shutdown`, with every worker stopped.
    pub fn run_scheduler(&self, runners: Vec<Box<dyn JobRunner>>) {
        std::thread::scope(|scope| {
            for (index, mut runner) in runners.into_iter().enumerate() {
                let Some(tasks) = self.status.take_receiver(index) else {
                    eprintln!("weave-broker: worker {index} has no lane; it is not started");
                    continue;
                };
                let spawned = std::thread::Builder::new()
                    .name(format!("worker-{index}"))
                    .spawn_scoped(scope, move || {
                        self.run_lane(index, runner.as_mut(), &tasks);
                    });
                if let Err(error) = spawned {
                    eprintln!("weave-broker: cannot start the thread of worker {index}: {error}");
                }
            }
            self.dispatch();
        });
    }

    fn dispatch(&self) {
        let idle = self.settings.limits.idle_unload();
        let deadline = self.settings.limits.queue_deadline();
        let epoch = self.started;
        let lookahead = placement::default_lookahead(self.status.len());
        let mut state = self.lock();
        loop {
            if state.shutting_down {
                for lane in &mut state.lanes {
                    lane.hand(LaneTask::Stop);
                }
                break;
            }
            let now = Instant::now();
            for entry in state.queue.expire(now, deadline) {
                let _ = entry.item.events.send(Response::Error(ErrorCode::TimedOut));
                self.record_outcome(&entry.item, &entry.owner, "queue_deadline", None, None);
                state.remember(EndedJob::never_ran(
                    entry.id,
                    &entry.owner,
                    &entry.item,
                    ErrorCode::TimedOut,
                ));
                send_position_changes(&mut state);
            }
            while self.place_one(&mut state, epoch, lookahead) {}
            // Idle unload, per worker: never while it has work and never a
            // pinned model.
            let mut wait = TICK;
            let pinned = state.pinned.clone();
            for lane in &mut state.lanes {
                let Some(loaded) = lane.loaded.clone() else {
                    continue;
                };
                if !lane.is_idle() || pinned.contains(&loaded.model_id) {
                    continue;
                }
                let idle_for = now.saturating_duration_since(loaded.last_use);
                if idle_for >= idle {
                    lane.hand(LaneTask::IdleUnload(loaded.model_id.clone()));
                } else {
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
    }

    /// Places one queued job on a worker, if one can run now; whether it
    /// did. A job no worker could ever run fails here with a typed error
    /// rather than wait out its deadline.
    fn place_one(&self, state: &mut State, epoch: Instant, lookahead: usize) -> bool {
        if state.queue.is_empty() || !state.lanes.iter().any(|lane| lane.is_idle()) {
            return false;
        }
        let order = state.queue.service_order();
        let mut jobs = Vec::with_capacity(order.len());
        for id in &order {
            if let Some(entry) = state.queue.iter().find(|e| e.id == *id) {
                let model = entry.item.params.model_id.as_str();
                let max_workers = self
                    .settings
                    .model(model)
                    .and_then(|m| m.max_workers)
                    .and_then(|max| usize::try_from(max).ok());
                let loras = pool::lora_key(&entry.item.params.loras);
                jobs.push((
                    entry.id,
                    model.to_owned(),
                    loras,
                    entry.item.passed,
                    max_workers,
                ));
            }
        }
        let slots = pool::slots(&state.lanes, &state.pinned, epoch);
        let candidates: Vec<Candidate<'_, u64>> = jobs
            .iter()
            .map(|(id, model, loras, passed, max_workers)| Candidate {
                job: *id,
                demand: Demand {
                    model,
                    loras,
                    memory: None,
                    max_workers: *max_workers,
                },
                passed: *passed,
            })
            .collect();
        let never = candidates
            .iter()
            .find(|c| placement::place(&c.demand, &slots) == Err(Wait::NoWorkerFits))
            .map(|c| c.job);
        let chosen = placement::next_dispatch(&candidates, &slots, lookahead);
        drop(candidates);
        drop(slots);
        if let Some(job_id) = never {
            if let Some(entry) = state.queue.remove(job_id) {
                eprintln!("weave-broker: job {job_id}: {}", Wait::NoWorkerFits);
                let _ = entry
                    .item
                    .events
                    .send(Response::Error(ErrorCode::ModelUnavailable));
                self.record_outcome(&entry.item, &entry.owner, "no_worker_fits", None, None);
                state.remember(EndedJob::never_ran(
                    entry.id,
                    &entry.owner,
                    &entry.item,
                    ErrorCode::ModelUnavailable,
                ));
                send_position_changes(state);
            }
            return true;
        }
        let Some((job_id, placement)) = chosen else {
            return false;
        };
        for id in order.iter().take_while(|id| **id != job_id) {
            if let Some(ahead) = state.queue.find_mut(*id) {
                ahead.item.passed += 1;
            }
        }
        let Some(entry) = state.queue.take(job_id) else {
            return false;
        };
        send_position_changes(state);
        let Some(lane) = state.lanes.get_mut(placement.worker()) else {
            return false;
        };
        if let Placement::Cold { .. } = placement {
            // Named at once: the load happens on the lane's thread, and the
            // next placement must already count this worker as holding it.
            let now = Instant::now();
            lane.loaded = Some(LoadedState {
                model_id: entry.item.params.model_id.clone(),
                since: now,
                last_use: now,
                load_time: Duration::ZERO,
            });
        }
        lane.running = Some(RunningJob::of(&entry));
        lane.hand(LaneTask::Run(Box::new(entry)));
        true
    }
}

/// Whole milliseconds, saturating.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
