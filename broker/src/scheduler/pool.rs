//! The pool of workers as the scheduler sees it: one [`Lane`] per worker
//! (what it runs, what it holds, the tasks handed to its thread), the
//! snapshot view over every worker's supervisor ([`PoolHandles`]), and the
//! placement snapshot the pure policy decides on.
#![forbid(unsafe_code)]

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weave_common::config::Device;
use weave_common::proto::ErrorCode;

use super::{Command, LoadedState, PendingJob, RunningJob};
use crate::admission::Queued;
use crate::placement::WorkerSlot;
use crate::supervisor::{SupervisorHandle, SupervisorStatus};

/// One worker of the pool as the broker is given it: the device it was
/// configured for and its supervisor's status view.
#[derive(Debug, Clone)]
pub struct PoolWorker {
    pub device: Device,
    pub handle: SupervisorHandle,
}

/// What a lane's thread is asked to do, in the order asked.
pub(super) enum LaneTask {
    Run(Box<Queued<PendingJob>>),
    /// An admin command; its result goes to the gather.
    Command(Command, Arc<Gather>),
    /// Unload the model, idle past `limits.idle_unload_s`.
    IdleUnload(String),
    /// Stop the worker for good (shutdown).
    Stop,
}

/// One worker of the pool, as the scheduler's state keeps it.
pub(super) struct Lane {
    /// The device configured for it.
    pub device: Device,
    pub running: Option<RunningJob>,
    pub loaded: Option<LoadedState>,
    /// The LoRA set its last job merged ([`lora_key`]); empty: none.
    pub loras: String,
    /// Tasks handed to its thread and not finished; the dispatcher gives a
    /// job only to a lane with none.
    pub outstanding: usize,
    /// When it last finished a task (placement evicts the longest idle).
    pub idle_since: Instant,
    /// Model loads since the daemon started.
    pub loads: u64,
    pub tasks: Sender<LaneTask>,
}

impl Lane {
    pub fn is_idle(&self) -> bool {
        self.outstanding == 0 && self.running.is_none()
    }

    /// Hands `task` to the lane's thread (counted in `outstanding`). A lane
    /// whose thread has ended (shutdown) drops it; its reply channels close,
    /// which their waiters read as an error.
    pub fn hand(&mut self, task: LaneTask) {
        self.outstanding += 1;
        if self.tasks.send(task).is_err() {
            self.outstanding -= 1;
        }
    }
}

/// The lanes for `workers` and their status views; the receivers go to the
/// lane threads ([`super::Broker::run_scheduler`]).
pub(super) fn lanes(workers: Vec<PoolWorker>) -> (Vec<Lane>, PoolHandles) {
    let now = Instant::now();
    let mut lanes = Vec::with_capacity(workers.len());
    let mut handles = Vec::with_capacity(workers.len());
    let mut receivers = Vec::with_capacity(workers.len());
    for worker in workers {
        let (tasks, receiver) = std::sync::mpsc::channel();
        lanes.push(Lane {
            device: worker.device,
            running: None,
            loaded: None,
            loras: String::new(),
            outstanding: 0,
            idle_since: now,
            loads: 0,
            tasks,
        });
        handles.push(worker.handle);
        receivers.push(Some(receiver));
    }
    (
        lanes,
        PoolHandles {
            handles,
            receivers: Mutex::new(receivers),
        },
    )
}

/// Every worker's supervisor status, in index order. Quarantine and
/// unavailability are per model, for the whole pool: a model quarantined by
/// one worker's crashes is refused on all of them.
pub struct PoolHandles {
    handles: Vec<SupervisorHandle>,
    /// Each lane's task receiver until its thread takes it.
    receivers: Mutex<Vec<Option<Receiver<LaneTask>>>>,
}

impl PoolHandles {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Worker `index`'s snapshot (a fresh, `Down` one for an index outside
    /// the pool).
    pub fn state(&self, index: usize) -> SupervisorStatus {
        match self.handles.get(index) {
            Some(handle) => handle.state(),
            None => SupervisorStatus::down(),
        }
    }

    pub fn is_quarantined(&self, model_id: &str) -> bool {
        self.handles.iter().any(|h| h.is_quarantined(model_id))
    }

    pub fn refuses_jobs(&self, model_id: &str) -> bool {
        self.handles.iter().any(|h| h.refuses_jobs(model_id))
    }

    pub fn unavailable_reason(&self, model_id: &str) -> Option<String> {
        self.handles
            .iter()
            .find_map(|h| h.unavailable_reason(model_id))
    }

    /// Lifts the quarantine on every worker; whether any had it.
    pub fn clear_quarantine(&self, model_id: &str) -> bool {
        // Every handle, not the first that had it (no short circuit).
        let cleared: Vec<bool> = self
            .handles
            .iter()
            .map(|h| h.clear_quarantine(model_id))
            .collect();
        cleared.contains(&true)
    }

    pub(super) fn take_receiver(&self, index: usize) -> Option<Receiver<LaneTask>> {
        let mut receivers = match self.receivers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        receivers.get_mut(index).and_then(Option::take)
    }
}

/// Collects the results of one admin command sent to several lanes and
/// answers once, with the first error if any.
pub(super) struct Gather {
    left: Mutex<(usize, Result<(), ErrorCode>)>,
    reply: Mutex<Sender<Result<(), ErrorCode>>>,
}

impl Gather {
    pub fn new(lanes: usize, reply: Sender<Result<(), ErrorCode>>) -> Arc<Self> {
        Arc::new(Self {
            left: Mutex::new((lanes, Ok(()))),
            reply: Mutex::new(reply),
        })
    }

    pub fn done(&self, result: Result<(), ErrorCode>) {
        let mut left = match self.left.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if left.1.is_ok() {
            left.1 = result;
        }
        left.0 = left.0.saturating_sub(1);
        if left.0 == 0 {
            if let Ok(reply) = self.reply.lock() {
                let _ = reply.send(left.1.clone());
            }
        }
    }
}

/// A job's LoRA set in one string, as placement compares them: ids and
/// weights in request order (the order they are merged in).
pub(super) fn lora_key(loras: &[weave_common::worker_proto::WorkerLora]) -> String {
    loras
        .iter()
        .map(|lora| format!("{}:{}", lora.id, lora.weight))
        .collect::<Vec<_>>()
        .join(",")
}

/// The shortest a model counts as fresh after its last job (a load that
/// took less is still a process start, a file read and a handshake away).
const MIN_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The placement policy's view of the lanes. A lane holding a pinned model
/// keeps it for that model alone, unless the pool has one worker (then the
/// pin only stops the idle unload, so other models still run).
pub(super) fn slots<'a>(
    lanes: &'a [Lane],
    pinned: &std::collections::HashSet<String>,
    epoch: Instant,
) -> Vec<WorkerSlot<'a>> {
    let now = Instant::now();
    let strict_pins = lanes.len() > 1;
    lanes
        .iter()
        .map(|lane| {
            let loaded = lane.loaded.as_ref().map(|l| l.model_id.as_str());
            WorkerSlot {
                busy: !lane.is_idle(),
                loaded,
                loras: &lane.loras,
                idle_since: u64::try_from(
                    lane.idle_since.saturating_duration_since(epoch).as_millis(),
                )
                .unwrap_or(u64::MAX),
                pinned: loaded.filter(|model| strict_pins && pinned.contains(*model)),
                device_memory: None,
                fresh: lane.loaded.as_ref().is_some_and(|l| {
                    let idle_for = now.saturating_duration_since(l.last_use);
                    idle_for < l.load_time.max(MIN_FRESH)
                }),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_gather_answers_once_with_the_first_error() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let gather = Gather::new(3, sender);
        gather.done(Ok(()));
        assert!(receiver.try_recv().is_err());
        gather.done(Err(ErrorCode::WorkerCrashed));
        gather.done(Err(ErrorCode::Internal));
        assert_eq!(receiver.try_recv().unwrap(), Err(ErrorCode::WorkerCrashed));
        assert!(receiver.try_recv().is_err());
    }
}
