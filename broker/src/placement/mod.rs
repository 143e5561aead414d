//! Which worker of a pool runs which queued job: a pure policy over a
//! snapshot of the workers, with no threads and no I/O, so that every rule
//! is unit-tested here and the same code drives the scheduling simulation
//! ([`simulation`]) that shows the policy at many devices.
//!
//! For one job the rules are, in order:
//! 1. an idle worker that already holds the job's model runs it, with no
//!    load: one whose last job had the same LoRA set first (the worker keeps
//!    a set merged until a job asks for another);
//! 2. a model holds at most its `max_workers` workers: at that count the job
//!    waits for one of them rather than loading the model once more;
//! 3. otherwise the idle worker whose eviction costs least loads the model:
//!    a worker holding nothing first, then the one idle longest. A worker
//!    pinned to another model, or whose device has too little memory for
//!    the model, is never chosen. While a busy worker already holds the
//!    model, a worker whose own model is *fresh* (used more recently than it
//!    takes to load) is not evicted for a second copy either: the job waits
//!    for the warm worker instead, so two models used in turn on two workers
//!    stay put. After its load time idle the fresh model may go, so a
//!    popular model still spreads (the ski-rental rule: the wait never costs
//!    more than the reload it saves);
//! 4. otherwise the job waits; where no worker could ever run it (every
//!    device too small, or pinned to other models) the wait is final and
//!    the caller should be told so.
//!
//! Which job goes next ([`next_dispatch`]) follows the admission queue's
//! fair order (round-robin across owners) with one bounded exception: a
//! job that would run warm may pass the jobs ahead of it within the first
//! `lookahead` places, so that an idle worker is not made to evict a model
//! that the next few jobs need (the simulation shows loads falling from 359
//! to 32 for 480 mixed jobs on one GPU). Passing is bounded: a job passed
//! `lookahead` times goes first at the next dispatch, loading its model if
//! it must, so no job starves behind a popular model. A job that must wait
//! (its model at `max_workers`) keeps its place and does not hold back the
//! ones behind it. The queue position a caller is told stays its place in
//! the fair order: the jobs ahead of it, which a warm job may overtake by
//! at most `lookahead` places.
#![forbid(unsafe_code)]

pub mod simulation;

/// What the policy needs to know about one worker of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot<'a> {
    /// Running or loading for a job.
    pub busy: bool,
    /// The model the worker holds, if any.
    pub loaded: Option<&'a str>,
    /// The LoRA set merged into it (as [`Demand::loras`] spells it).
    pub loras: &'a str,
    /// When the worker last finished work, on any monotonic clock: the
    /// smaller, the longer it has been idle.
    pub idle_since: u64,
    /// Pinned by an administrator: the worker keeps this model and runs no
    /// other.
    pub pinned: Option<&'a str>,
    /// Memory of the worker's device in bytes; `None` when it does not limit
    /// placement (a CPU worker, or not known yet).
    pub device_memory: Option<u64>,
    /// Its model was used more recently than that model takes to load (see
    /// rule 3 in the module docs).
    pub fresh: bool,
}

/// What one job asks of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand<'a> {
    /// The model, as [`WorkerSlot::loaded`] spells it.
    pub model: &'a str,
    /// Its LoRA set in one string (ids and weights in request order; empty:
    /// none).
    pub loras: &'a str,
    /// Bytes the model takes on a device; `None` when not known yet.
    pub memory: Option<u64>,
    /// The model's `max_workers`; `None`: no limit but the pool's size.
    pub max_workers: Option<usize>,
}

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On this worker, which already holds the model.
    Warm { worker: usize },
    /// On this worker after it loads the model; `evicts`: it drops another
    /// model for it.
    Cold { worker: usize, evicts: bool },
}

impl Placement {
    /// The worker chosen.
    pub fn worker(self) -> usize {
        match self {
            Placement::Warm { worker } | Placement::Cold { worker, .. } => worker,
        }
    }
}

/// Why a job cannot be placed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Wait {
    #[error("every worker that can run this job is busy")]
    Busy,
    #[error("the model already runs on its max_workers workers, all busy")]
    AtMaxWorkers,
    #[error(
        "no worker of the pool can run this model: every device is too small for it or \
         pinned to another model; unpin a worker or give the model a larger device"
    )]
    NoWorkerFits,
}

/// Where `demand` runs now, or why it waits.
pub fn place(demand: &Demand<'_>, workers: &[WorkerSlot<'_>]) -> Result<Placement, Wait> {
    let warm = |w: &WorkerSlot<'_>| !w.busy && w.loaded == Some(demand.model);
    if let Some(worker) = workers
        .iter()
        .position(|w| warm(w) && w.loras == demand.loras)
        .or_else(|| workers.iter().position(warm))
    {
        return Ok(Placement::Warm { worker });
    }
    let could_ever = |w: &WorkerSlot<'_>| {
        w.pinned.is_none_or(|pinned| pinned == demand.model)
            && match (w.device_memory, demand.memory) {
                (Some(device), Some(need)) => need <= device,
                _ => true,
            }
    };
    if !workers.iter().any(could_ever) {
        return Err(Wait::NoWorkerFits);
    }
    let holding = workers
        .iter()
        .filter(|w| w.loaded == Some(demand.model))
        .count();
    if demand.max_workers.is_some_and(|max| holding >= max) {
        return Err(Wait::AtMaxWorkers);
    }
    let warm_busy = holding > 0;
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.busy && could_ever(w))
        .filter(|(_, w)| !(warm_busy && w.fresh && w.loaded.is_some()))
        // Empty workers first, then the longest idle; ties by index.
        .min_by_key(|(index, w)| (w.loaded.is_some(), w.idle_since, *index))
        .map(|(worker, w)| Placement::Cold {
            worker,
            evicts: w.loaded.is_some(),
        })
        .ok_or(Wait::Busy)
}

/// One queued job as [`next_dispatch`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a, J> {
    pub job: J,
    pub demand: Demand<'a>,
    /// How many jobs behind it were dispatched before it so far.
    pub passed: usize,
}

/// The default lookahead for a pool of `workers`: four places per worker,
/// at least 8 (docs/PERFORMANCE.md has the simulation's sweep).
pub fn default_lookahead(workers: usize) -> usize {
    workers.saturating_mul(4).max(8)
}

/// The job to dispatch next from `queue` (in the admission queue's service
/// order) and where it runs; `None` when none of them can run now. The
/// caller adds one to `passed` of every job ahead of the one dispatched.
/// See the module docs.
pub fn next_dispatch<J: Copy>(
    queue: &[Candidate<'_, J>],
    workers: &[WorkerSlot<'_>],
    lookahead: usize,
) -> Option<(J, Placement)> {
    let lookahead = lookahead.max(1);
    let window = &queue[..queue.len().min(lookahead)];
    let placed = |c: &Candidate<'_, J>| place(&c.demand, workers).ok().map(|p| (c.job, p));
    // A job passed often enough goes first, warm or not.
    if let Some(due) = window
        .iter()
        .filter(|c| c.passed >= lookahead)
        .find_map(placed)
    {
        return Some(due);
    }
    let warm = window.iter().find_map(|c| match placed(c) {
        Some((job, placement @ Placement::Warm { .. })) => Some((job, placement)),
        _ => None,
    });
    warm.or_else(|| queue.iter().find_map(placed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(loaded: Option<&str>, idle_since: u64) -> WorkerSlot<'_> {
        WorkerSlot {
            busy: false,
            loaded,
            loras: "",
            idle_since,
            pinned: None,
            device_memory: None,
            fresh: false,
        }
    }

    fn busy(loaded: Option<&str>) -> WorkerSlot<'_> {
        WorkerSlot {
            busy: true,
            ..idle(loaded, 0)
        }
    }

    fn demand(model: &str) -> Demand<'_> {
        Demand {
            model,
            loras: "",
            memory: None,
            max_workers: None,
        }
    }

    #[test]
    fn a_warm_worker_with_the_same_lora_set_is_preferred() {
        let mut bold = idle(Some("a"), 0);
        bold.loras = "bold:0.8";
        let workers = [idle(Some("a"), 0), bold];
        let with_bold = Demand {
            loras: "bold:0.8",
            ..demand("a")
        };
        assert_eq!(
            place(&with_bold, &workers),
            Ok(Placement::Warm { worker: 1 })
        );
        assert_eq!(
            place(&demand("a"), &workers),
            Ok(Placement::Warm { worker: 0 })
        );
        // Another set on the only warm worker still runs warm (a merge is
        // cheaper than a load).
        assert_eq!(
            place(&with_bold, &workers[..1]),
            Ok(Placement::Warm { worker: 0 })
        );
    }

    #[test]
    fn an_idle_worker_holding_the_model_runs_it_warm() {
        let workers = [idle(None, 0), idle(Some("b"), 5), idle(Some("a"), 9)];
        assert_eq!(
            place(&demand("a"), &workers),
            Ok(Placement::Warm { worker: 2 })
        );
    }

    #[test]
    fn an_empty_worker_is_loaded_before_anything_is_evicted() {
        let workers = [idle(Some("b"), 0), idle(None, 7)];
        assert_eq!(
            place(&demand("a"), &workers),
            Ok(Placement::Cold {
                worker: 1,
                evicts: false
            })
        );
    }

    #[test]
    fn the_longest_idle_worker_is_evicted() {
        let workers = [idle(Some("b"), 30), idle(Some("c"), 10), busy(None)];
        assert_eq!(
            place(&demand("a"), &workers),
            Ok(Placement::Cold {
                worker: 1,
                evicts: true
            })
        );
    }

    #[test]
    fn a_fresh_model_is_not_evicted_for_a_second_copy() {
        let mut fresh = idle(Some("b"), 5);
        fresh.fresh = true;
        // a runs on a busy worker: the job waits for it rather than evict b.
        let workers = [busy(Some("a")), fresh.clone()];
        assert_eq!(place(&demand("a"), &workers), Err(Wait::Busy));
        // Stale, b may go.
        let stale = idle(Some("b"), 5);
        assert_eq!(
            place(&demand("a"), &[busy(Some("a")), stale]),
            Ok(Placement::Cold {
                worker: 1,
                evicts: true
            })
        );
        // With no warm worker, a fresh model is still evicted (waiting would
        // gain nothing), and an empty worker is always taken.
        assert!(place(&demand("c"), &[busy(Some("a")), fresh.clone()]).is_ok());
        assert!(place(&demand("a"), &[busy(Some("a")), fresh, idle(None, 0)]).is_ok());
    }

    #[test]
    fn a_busy_pool_makes_the_job_wait() {
        let workers = [busy(Some("a")), busy(None)];
        assert_eq!(place(&demand("a"), &workers), Err(Wait::Busy));
    }

    #[test]
    fn max_workers_stops_a_model_from_taking_more_workers() {
        let workers = [busy(Some("a")), busy(Some("a")), idle(None, 0)];
        let capped = Demand {
            max_workers: Some(2),
            ..demand("a")
        };
        assert_eq!(place(&capped, &workers), Err(Wait::AtMaxWorkers));
        let roomier = Demand {
            max_workers: Some(3),
            ..demand("a")
        };
        assert_eq!(
            place(&roomier, &workers),
            Ok(Placement::Cold {
                worker: 2,
                evicts: false
            })
        );
    }

    #[test]
    fn pinned_workers_take_only_their_model() {
        let mut pinned = idle(Some("b"), 0);
        pinned.pinned = Some("b");
        let workers = [pinned.clone(), busy(None)];
        assert_eq!(place(&demand("a"), &workers), Err(Wait::Busy));
        assert_eq!(
            place(&demand("b"), &workers),
            Ok(Placement::Warm { worker: 0 })
        );
        assert_eq!(place(&demand("a"), &[pinned]), Err(Wait::NoWorkerFits));
    }

    #[test]
    fn a_device_too_small_is_never_chosen() {
        let mut small = idle(None, 0);
        small.device_memory = Some(8 << 30);
        let mut large = busy(None);
        large.device_memory = Some(80 << 30);
        let big = Demand {
            memory: Some(20 << 30),
            ..demand("xl")
        };
        assert_eq!(place(&big, &[small.clone(), large]), Err(Wait::Busy));
        assert_eq!(place(&big, &[small.clone()]), Err(Wait::NoWorkerFits));
        // Unknown sizes do not limit placement.
        assert!(place(&demand("xl"), &[small]).is_ok());
    }

    fn queue<'a>(jobs: &[(u32, Demand<'a>)]) -> Vec<Candidate<'a, u32>> {
        jobs.iter()
            .map(|&(job, demand)| Candidate {
                job,
                demand,
                passed: 0,
            })
            .collect()
    }

    #[test]
    fn a_warm_job_may_pass_within_the_lookahead_only() {
        let workers = [idle(Some("b"), 0)];
        let mut queue = queue(&[(1, demand("a")), (2, demand("a")), (3, demand("b"))]);
        // Within 3 places: job 3 runs warm instead of evicting b for job 1.
        assert_eq!(
            next_dispatch(&queue, &workers, 3),
            Some((3, Placement::Warm { worker: 0 }))
        );
        // Outside a window of 2 the head of the queue goes first.
        assert_eq!(
            next_dispatch(&queue, &workers, 2),
            Some((
                1,
                Placement::Cold {
                    worker: 0,
                    evicts: true
                }
            ))
        );
        // Passed as often as the lookahead allows, the head goes first.
        queue[0].passed = 3;
        assert_eq!(
            next_dispatch(&queue, &workers, 3),
            Some((
                1,
                Placement::Cold {
                    worker: 0,
                    evicts: true
                }
            ))
        );
    }

    #[test]
    fn the_default_lookahead_grows_with_the_pool() {
        assert_eq!(default_lookahead(1), 8);
        assert_eq!(default_lookahead(8), 32);
    }

    #[test]
    fn a_job_that_must_wait_does_not_hold_back_the_others() {
        let workers = [busy(Some("a")), idle(None, 0)];
        let capped = Demand {
            max_workers: Some(1),
            ..demand("a")
        };
        let queue = queue(&[(1, capped), (2, demand("b"))]);
        assert_eq!(
            next_dispatch(&queue, &workers, 1),
            Some((
                2,
                Placement::Cold {
                    worker: 1,
                    evicts: false
                }
            ))
        );
        assert_eq!(next_dispatch(&queue[..1], &workers, 1), None);
    }
}
