//! The supervisor's snapshot, which status readers get without waiting on
//! the worker.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use weave_common::config::Device;
use weave_common::proto::{ChannelDirection, ChannelStatsReport, SegmentStats, WorkerState};
use weave_common::worker_proto::channel::EndpointStats;
use weave_common::worker_proto::SandboxReport;

use super::CrashCause;

/// A loaded model as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadInfo {
    pub model_id: String,
    pub memory_bytes: u64,
    pub load_ms: u64,
    pub since: SystemTime,
}

/// Why a model cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// For admins (it may name a file).
    pub reason: String,
    /// Whether new jobs on it are refused at once: its files failed the
    /// check or its pin, which stays so until the files change (an admin's
    /// `Load` checks again). A load the worker failed for another reason
    /// is tried again by the next job.
    pub refuse_jobs: bool,
}

/// A snapshot of the supervisor; cheap to clone, never waits on the worker.
#[derive(Debug, Clone)]
pub struct SupervisorStatus {
    pub state: WorkerState,
    /// Worker starts after the first.
    pub restarts: u32,
    pub worker_pid: Option<u32>,
    pub loaded: Option<LoadInfo>,
    pub sandbox: Option<SandboxReport>,
    /// The device the running worker reported in `Ready` (`auto` resolved).
    pub device: Option<Device>,
    /// How the last worker ended, e.g. `killed by signal 31 (SIGSYS)`.
    pub last_exit: Option<String>,
    pub last_crash: Option<CrashCause>,
    pub quarantined: BTreeSet<String>,
    /// Consecutive crashes per model since its last success.
    pub crash_streaks: BTreeMap<String, u32>,
    pub channel: Option<EndpointStats>,
    /// Job being run, if any.
    pub running_job: Option<u64>,
    /// Models that cannot be used now: their files failed the broker's
    /// checks (at start-up, or at a load), or the worker refused them at
    /// load. A successful check and load clears the entry.
    pub unavailable: BTreeMap<String, Unavailable>,
    /// Why the last worker start failed, until one succeeds.
    pub start_error: Option<String>,
}

impl SupervisorStatus {
    /// The snapshot of a worker not started yet.
    pub fn down() -> Self {
        Self::new()
    }

    pub(super) fn new() -> Self {
        Self {
            state: WorkerState::Down,
            restarts: 0,
            worker_pid: None,
            loaded: None,
            sandbox: None,
            device: None,
            last_exit: None,
            last_crash: None,
            quarantined: BTreeSet::new(),
            crash_streaks: BTreeMap::new(),
            channel: None,
            running_job: None,
            unavailable: BTreeMap::new(),
            start_error: None,
        }
    }
}

impl SupervisorStatus {
    /// The channel counters in the client protocol's shape (admin
    /// `segments` verb); no segments before the first worker start. The
    /// worker's side of each ring (what it consumed, what it published) is
    /// its own counter in shared memory: shown, not trusted.
    pub fn channel_report(&self) -> ChannelStatsReport {
        let Some(c) = self.channel else {
            return ChannelStatsReport {
                key_generation: 0,
                segments: Vec::new(),
                workers: Vec::new(),
            };
        };
        ChannelStatsReport {
            key_generation: c.key_generation,
            segments: vec![
                SegmentStats {
                    direction: ChannelDirection::BrokerToWorker,
                    slots: c.slots_out,
                    slot_size: c.slot_size_out,
                    write_seq: c.next_send_seq,
                    read_seq: c.peer_consumed,
                    crc_failures: c.sent.crc_failures,
                    tag_failures: c.sent.tag_failures,
                    replays_rejected: c.sent.replays_rejected,
                },
                SegmentStats {
                    direction: ChannelDirection::WorkerToBroker,
                    slots: c.slots_in,
                    slot_size: c.slot_size_in,
                    write_seq: c.peer_published,
                    read_seq: c.next_recv_seq,
                    crc_failures: c.received.crc_failures,
                    tag_failures: c.received.tag_failures,
                    replays_rejected: c.received.replays_rejected,
                },
            ],
            workers: Vec::new(),
        }
    }

    /// One line for `status`, e.g. `landlock FullyEnforced (abi 5) +
    /// seccomp mode 2, enforced`.
    pub fn sandbox_summary(&self) -> String {
        match &self.sandbox {
            Some(report) => format!(
                "landlock {} (abi {}) + seccomp mode {}{}{}",
                report.landlock,
                report.landlock_abi,
                report.seccomp_mode,
                if report.seccomp_debug { " (debug)" } else { "" },
                if report.fully_enforced {
                    ", enforced"
                } else {
                    ", DEGRADED"
                }
            ),
            None => "not started".to_owned(),
        }
    }

    /// The model the worker has loaded, if any.
    pub fn loaded_model(&self) -> Option<&str> {
        self.loaded.as_ref().map(|info| info.model_id.as_str())
    }
}

/// A thread-safe view of the supervisor for status and admin verbs.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    pub(super) status: Arc<Mutex<SupervisorStatus>>,
}

pub(super) fn lock(status: &Mutex<SupervisorStatus>) -> MutexGuard<'_, SupervisorStatus> {
    // A panic while holding the lock leaves a consistent snapshot (every
    // update is a plain field store), so poisoning is ignored.
    status.lock().unwrap_or_else(|p| p.into_inner())
}

impl SupervisorHandle {
    /// A handle on no supervisor (worker `Down`), for unit tests of the
    /// modules that read status.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self {
            status: Arc::new(Mutex::new(SupervisorStatus::new())),
        }
    }

    pub fn state(&self) -> SupervisorStatus {
        lock(&self.status).clone()
    }

    /// Sets what the worker holds (a scripted runner's load, in unit tests
    /// of the modules that read status).
    #[cfg(test)]
    pub(crate) fn set_loaded_for_test(&self, loaded: Option<LoadInfo>) {
        let mut status = lock(&self.status);
        status.state = WorkerState::Ready;
        status.loaded = loaded;
    }

    pub fn is_quarantined(&self, model_id: &str) -> bool {
        lock(&self.status).quarantined.contains(model_id)
    }

    /// Whether new jobs on `model_id` are refused at once
    /// ([`Unavailable::refuse_jobs`]).
    pub fn refuses_jobs(&self, model_id: &str) -> bool {
        lock(&self.status)
            .unavailable
            .get(model_id)
            .is_some_and(|u| u.refuse_jobs)
    }

    /// Why `model_id` cannot be used now, if it cannot (for admins: it may
    /// name a file).
    pub fn unavailable_reason(&self, model_id: &str) -> Option<String> {
        lock(&self.status)
            .unavailable
            .get(model_id)
            .map(|u| u.reason.clone())
    }

    /// Lifts a quarantine (admin verb); returns whether the model was
    /// quarantined. Its crash count starts again from zero.
    pub fn clear_quarantine(&self, model_id: &str) -> bool {
        let mut s = lock(&self.status);
        s.crash_streaks.remove(model_id);
        s.quarantined.remove(model_id)
    }
}
