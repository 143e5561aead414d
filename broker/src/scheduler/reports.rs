//! What callers may see: their jobs (admins: all), the models, the daemon's
//! status and the channel counters. Reads only; never waits on the worker.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use weave_common::proto::{
    ChannelStatsReport, JobInfo, JobState, LoadedModel, ModelInfo, StatusReport,
    WorkerChannelStats, WorkerReport,
};

use super::run_loop::millis;
use super::Broker;
use crate::proc_status;
use crate::supervisor::SupervisorStatus;

impl Broker {
    /// Jobs the caller may see: its own, or all for `all`; the running and
    /// queued ones, then the recent history, newest first.
    pub fn jobs(&self, uid: u32, all: bool) -> Vec<JobInfo> {
        let devices: Vec<_> = (0..self.status.len())
            .map(|index| self.status.state(index).device)
            .collect();
        let state = self.lock();
        let now = Instant::now();
        let order = state.queue.service_order();
        let mut list = Vec::new();
        for (index, lane) in state.lanes.iter().enumerate() {
            let Some(running) = lane.running.as_ref().filter(|r| all || r.owner.uid == uid) else {
                continue;
            };
            let device = devices.get(index).copied().flatten();
            list.push(JobInfo {
                job_id: running.job_id,
                owner_uid: running.owner.uid,
                tag: running.owner.tag.clone(),
                model_id: running.model_id.clone(),
                state: if running.cancel.load(Ordering::SeqCst) {
                    JobState::Cancelling
                } else {
                    JobState::Running
                },
                position: None,
                submitted_s_ago: now.saturating_duration_since(running.submitted).as_secs(),
                step: running.step,
                total: running.total,
                device: running.started.and(device),
                run_ms: running
                    .started
                    .map(|at| millis(now.saturating_duration_since(at))),
                error: None,
                worker: u32::try_from(index).ok(),
            });
        }
        let by_id: HashMap<u64, _> = state.queue.iter().map(|e| (e.id, e)).collect();
        for (position, id) in order.iter().enumerate() {
            let Some(entry) = by_id.get(id) else { continue };
            if !all && entry.owner.uid != uid {
                continue;
            }
            list.push(JobInfo {
                job_id: entry.id,
                owner_uid: entry.owner.uid,
                tag: entry.owner.tag.clone(),
                model_id: entry.item.params.model_id.clone(),
                state: JobState::Queued,
                position: Some(u32::try_from(position).unwrap_or(u32::MAX)),
                submitted_s_ago: now
                    .saturating_duration_since(entry.item.submitted)
                    .as_secs(),
                step: 0,
                total: 0,
                device: None,
                run_ms: None,
                error: None,
                worker: None,
            });
        }
        for ended in state
            .history
            .iter()
            .rev()
            .filter(|ended| all || ended.owner.uid == uid)
        {
            list.push(JobInfo {
                job_id: ended.job_id,
                owner_uid: ended.owner.uid,
                tag: ended.owner.tag.clone(),
                model_id: ended.model_id.clone(),
                state: if ended.error.is_some() {
                    JobState::Failed
                } else {
                    JobState::Finished
                },
                position: None,
                submitted_s_ago: now.saturating_duration_since(ended.submitted).as_secs(),
                step: ended.step,
                total: ended.total,
                device: ended.device,
                run_ms: ended.run_ms,
                error: ended.error.clone(),
                worker: ended.worker,
            });
        }
        list
    }

    /// The configured models with their current state. `with_reasons`
    /// (admins): why an unavailable model is, which may name a file.
    pub fn models(&self, with_reasons: bool) -> Vec<ModelInfo> {
        let state = self.lock();
        self.settings
            .models
            .iter()
            .map(|model| {
                let quarantined = self.status.is_quarantined(&model.id);
                let reason = if quarantined {
                    Some(QUARANTINE_REASON.to_owned())
                } else {
                    self.status.unavailable_reason(&model.id)
                };
                ModelInfo {
                    id: model.id.clone(),
                    kind: model.kind.to_string(),
                    loaded: state
                        .lanes
                        .iter()
                        .any(|lane| lane.loaded.as_ref().is_some_and(|l| l.model_id == model.id)),
                    pinned: state.pinned.contains(&model.id),
                    quarantined,
                    defaults: model.defaults(),
                    bounds: self.settings.bounds.clone(),
                    available: reason.is_none(),
                    reason: reason.filter(|_| with_reasons),
                }
            })
            .collect()
    }

    /// The daemon's state. `for_admin`: with why the worker last failed to
    /// start (worker text, which may name a file). The top-level worker
    /// fields are worker 0's; `workers` lists every one.
    pub fn status(&self, for_admin: bool) -> StatusReport {
        let snapshots: Vec<_> = (0..self.status.len())
            .map(|index| self.status.state(index))
            .collect();
        let memories: Vec<_> = snapshots
            .iter()
            .map(|s| s.worker_pid.and_then(proc_status::memory_of))
            .collect();
        let state = self.lock();
        let now = Instant::now();
        let workers: Vec<WorkerReport> = state
            .lanes
            .iter()
            .zip(&snapshots)
            .zip(&memories)
            .enumerate()
            .map(|(index, ((lane, snapshot), memory))| WorkerReport {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                device: snapshot.device.unwrap_or(lane.device),
                state: snapshot.state,
                restarts: snapshot.restarts,
                loaded: loaded_model(lane, snapshot, now),
                job_id: lane.running.as_ref().map(|r| r.job_id),
                loads: lane.loads,
                memory: *memory,
                sandbox: snapshot.sandbox_summary(),
            })
            .collect();
        let first = snapshots
            .first()
            .cloned()
            .unwrap_or_else(SupervisorStatus::down);
        StatusReport {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: self.mode,
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            loaded: workers.first().and_then(|w| w.loaded.clone()),
            queue_depth: u32::try_from(state.queue.len()).unwrap_or(u32::MAX),
            draining: state.draining,
            worker: first.state,
            worker_restarts: first.restarts,
            sandbox: first.sandbox_summary(),
            device: first.device,
            worker_error: snapshots
                .iter()
                .find_map(|s| s.start_error.clone())
                .filter(|_| for_admin),
            worker_memory: memories.first().copied().flatten(),
            workers,
        }
    }

    /// The channel counters for the admin `segments` verb: worker 0's at
    /// the top level, every worker's in `workers`.
    pub fn channel_report(&self) -> ChannelStatsReport {
        let workers: Vec<WorkerChannelStats> = (0..self.status.len())
            .map(|index| {
                let report = self.status.state(index).channel_report();
                WorkerChannelStats {
                    worker: u32::try_from(index).unwrap_or(u32::MAX),
                    key_generation: report.key_generation,
                    segments: report.segments,
                }
            })
            .collect();
        let (key_generation, segments) = workers
            .first()
            .map(|w| (w.key_generation, w.segments.clone()))
            .unwrap_or_default();
        ChannelStatsReport {
            key_generation,
            segments,
            workers,
        }
    }
}

/// The model `lane` holds, as status reports it.
fn loaded_model(
    lane: &super::pool::Lane,
    snapshot: &SupervisorStatus,
    now: Instant,
) -> Option<LoadedModel> {
    let loaded = lane.loaded.as_ref()?;
    Some(LoadedModel {
        model_id: loaded.model_id.clone(),
        loaded_for_s: now.saturating_duration_since(loaded.since).as_secs(),
        idle_for_s: if lane.running.is_some() {
            0
        } else {
            now.saturating_duration_since(loaded.last_use).as_secs()
        },
        memory_bytes: snapshot.loaded.as_ref().map_or(0, |info| info.memory_bytes),
    })
}

/// Why a quarantined model is unavailable, for admins.
const QUARANTINE_REASON: &str = "quarantined after repeated worker crashes; after looking at the \
                                 broker log, release it with `sshmctl quarantine clear ID`";
