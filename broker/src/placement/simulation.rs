//! A discrete-event model of a worker pool driven by the real policy: the
//! admission queue's fair order ([`AdmissionQueue`]) and [`next_dispatch`].
//! Devices, models (memory, load and run times) and jobs are inputs; the
//! report gives throughput, model loads (thrash) and fairness, so the
//! policy can be shown at 8 GPUs and hundreds of queued jobs without them
//! (`cargo bench -p weave-broker --bench placement`, docs/PERFORMANCE.md).
//!
//! Time is in seconds as `f64`; nothing here reads a clock, so a scenario
//! gives the same report every run.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{next_dispatch, Candidate, Demand, Placement, WorkerSlot};
use crate::admission::{AdmissionQueue, Owner};

/// One model of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct SimModel {
    pub name: String,
    /// Bytes on a device.
    pub memory: u64,
    pub load_s: f64,
    /// Seconds one job of this model runs once loaded.
    pub run_s: f64,
    pub max_workers: Option<usize>,
}

/// One job: who sends it, for which model (index into the models), when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimJob {
    pub owner: u32,
    pub model: usize,
    pub arrives_s: f64,
}

/// A pool and its work.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// One entry per worker: its device's memory (`None`: not limiting).
    pub devices: Vec<Option<u64>>,
    pub models: Vec<SimModel>,
    pub jobs: Vec<SimJob>,
    /// [`next_dispatch`]'s lookahead.
    pub lookahead: usize,
}

/// What a scenario gave.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub done: usize,
    /// Jobs no worker could ever run (left in the queue at the end).
    pub never_placed: usize,
    /// When the last job finished.
    pub makespan_s: f64,
    pub jobs_per_s: f64,
    /// Model loads, the first load of each worker included.
    pub loads: usize,
    /// Loads that dropped another model.
    pub evictions: usize,
    /// Share of worker time spent loading or running, over the makespan.
    pub utilization: f64,
    /// Mean seconds from arrival to start, per owner, by owner id.
    pub mean_wait_s: Vec<(u32, f64)>,
    /// Jain's index (1 = equal) of the worker-seconds each owner received
    /// while every owner still had work to dispatch.
    pub fairness: f64,
    /// The most workers that held each model at once, by model index.
    pub max_holders: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct SimWorker {
    loaded: Option<usize>,
    busy_until: f64,
    idle_since: f64,
}

/// Runs `scenario` to the end.
pub fn simulate(scenario: &Scenario) -> SimReport {
    let base = Instant::now();
    let mut arrivals: Vec<usize> = (0..scenario.jobs.len()).collect();
    arrivals.sort_by(|a, b| {
        scenario.jobs[*a]
            .arrives_s
            .total_cmp(&scenario.jobs[*b].arrives_s)
    });
    let mut arrivals = arrivals.into_iter().peekable();
    let mut queue: AdmissionQueue<usize> = AdmissionQueue::new(u32::MAX, u32::MAX);
    let mut workers = vec![
        SimWorker {
            loaded: None,
            busy_until: 0.0,
            idle_since: 0.0,
        };
        scenario.devices.len()
    ];
    let mut report = SimReport {
        done: 0,
        never_placed: 0,
        makespan_s: 0.0,
        jobs_per_s: 0.0,
        loads: 0,
        evictions: 0,
        utilization: 0.0,
        mean_wait_s: Vec::new(),
        fairness: 1.0,
        max_holders: vec![0; scenario.models.len()],
    };
    let mut waits: HashMap<u32, (f64, usize)> = HashMap::new();
    // (dispatch time, owner, worker-seconds) of every dispatch.
    let mut dispatches: Vec<(f64, u32, f64)> = Vec::new();
    let mut busy_seconds = 0.0;
    let mut passed = vec![0usize; scenario.jobs.len()];
    let mut now = 0.0_f64;
    loop {
        while let Some(&job) = arrivals.peek() {
            if scenario.jobs[job].arrives_s > now {
                break;
            }
            arrivals.next();
            let owner = Owner {
                uid: scenario.jobs[job].owner,
                tag: None,
            };
            let at = base + Duration::from_secs_f64(scenario.jobs[job].arrives_s.max(0.0));
            queue.push(job as u64, owner, at, job);
        }
        for worker in &mut workers {
            if worker.busy_until <= now && worker.idle_since < worker.busy_until {
                worker.idle_since = worker.busy_until;
            }
        }
        while let Some((job, placement)) = dispatch_one(scenario, &queue, &passed, &workers, now) {
            for ahead in queue.service_order() {
                if ahead == job as u64 {
                    break;
                }
                passed[ahead as usize] += 1;
            }
            queue.take(job as u64);
            let spec = scenario.jobs[job];
            let model = &scenario.models[spec.model];
            let worker = &mut workers[placement.worker()];
            let mut seconds = model.run_s;
            if let Placement::Cold { evicts, .. } = placement {
                seconds += model.load_s;
                report.loads += 1;
                report.evictions += usize::from(evicts);
            }
            worker.loaded = Some(spec.model);
            worker.busy_until = now + seconds;
            busy_seconds += seconds;
            report.done += 1;
            report.makespan_s = report.makespan_s.max(worker.busy_until);
            let entry = waits.entry(spec.owner).or_insert((0.0, 0));
            entry.0 += now - spec.arrives_s;
            entry.1 += 1;
            dispatches.push((now, spec.owner, seconds));
            let holders = workers
                .iter()
                .filter(|w| w.loaded == Some(spec.model))
                .count();
            report.max_holders[spec.model] = report.max_holders[spec.model].max(holders);
        }
        let next_arrival = arrivals.peek().map(|&job| scenario.jobs[job].arrives_s);
        let next_free = workers
            .iter()
            .map(|w| w.busy_until)
            .filter(|&t| t > now)
            .min_by(f64::total_cmp);
        match (next_arrival, next_free) {
            (None, None) => break,
            (Some(a), Some(f)) => now = a.min(f),
            (Some(t), None) | (None, Some(t)) => now = t,
        }
    }
    report.never_placed = queue.len();
    if report.makespan_s > 0.0 {
        report.jobs_per_s = report.done as f64 / report.makespan_s;
        report.utilization = busy_seconds / (report.makespan_s * workers.len().max(1) as f64);
    }
    let mut mean_wait: Vec<(u32, f64)> = waits
        .into_iter()
        .map(|(owner, (sum, count))| (owner, sum / count as f64))
        .collect();
    mean_wait.sort_by_key(|(owner, _)| *owner);
    report.mean_wait_s = mean_wait;
    report.fairness = contested_fairness(&dispatches);
    report
}

/// The next job and its worker at `now`, following [`next_dispatch`].
fn dispatch_one(
    scenario: &Scenario,
    queue: &AdmissionQueue<usize>,
    passed: &[usize],
    workers: &[SimWorker],
    now: f64,
) -> Option<(usize, Placement)> {
    let order: Vec<Candidate<'_, usize>> = queue
        .service_order()
        .into_iter()
        .map(|id| {
            let job = id as usize;
            let model = &scenario.models[scenario.jobs[job].model];
            let demand = Demand {
                model: &model.name,
                loras: "",
                memory: Some(model.memory),
                max_workers: model.max_workers,
            };
            Candidate {
                job,
                demand,
                passed: passed[job],
            }
        })
        .collect();
    let slots: Vec<WorkerSlot<'_>> = workers
        .iter()
        .zip(&scenario.devices)
        .map(|(worker, device)| WorkerSlot {
            busy: worker.busy_until > now,
            loaded: worker.loaded.map(|m| scenario.models[m].name.as_str()),
            loras: "",
            // Microseconds keep the order of idle times.
            idle_since: (worker.idle_since * 1e6) as u64,
            pinned: None,
            device_memory: *device,
            fresh: worker.loaded.is_some_and(|m| {
                worker.busy_until <= now && now - worker.idle_since < scenario.models[m].load_s
            }),
        })
        .collect();
    next_dispatch(&order, &slots, scenario.lookahead)
}

/// Jain's index over the worker-seconds dispatched to each owner before the
/// first owner ran out of work to dispatch.
fn contested_fairness(dispatches: &[(f64, u32, f64)]) -> f64 {
    let mut last_dispatch: HashMap<u32, f64> = HashMap::new();
    for &(at, owner, _) in dispatches {
        last_dispatch.insert(owner, at);
    }
    let Some(end) = last_dispatch.values().copied().min_by(f64::total_cmp) else {
        return 1.0;
    };
    let mut service: HashMap<u32, f64> = last_dispatch.keys().map(|&o| (o, 0.0)).collect();
    for &(at, owner, seconds) in dispatches {
        if at <= end {
            *service.entry(owner).or_default() += seconds;
        }
    }
    jain(&service.into_values().collect::<Vec<_>>())
}

/// Jain's fairness index: (Σx)² / (n·Σx²), 1 when all are equal.
pub fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (values.len() as f64 * squares)
}

/// A shared GPU box as the bench shows it: `devices` 80 GB GPUs, a few SD 1.5
/// and SDXL models (one SDXL model with a LoRA set, a separate key),
/// `owners` owners each sending `jobs_per_owner` jobs with a skewed model
/// popularity, all queued at start. Deterministic in `seed`.
pub fn shared_box(devices: usize, owners: u32, jobs_per_owner: usize, seed: u64) -> Scenario {
    const GB: u64 = 1 << 30;
    let model = |name: &str, memory_gb: u64, load_s: f64, run_s: f64| SimModel {
        name: name.to_owned(),
        memory: memory_gb * GB,
        load_s,
        run_s,
        max_workers: None,
    };
    let models = vec![
        model("sdxl", 10, 9.0, 6.0),
        model("sd15", 4, 3.0, 2.0),
        model("sdxl+lora:bold", 10, 10.0, 6.5),
        model("sd21", 5, 3.5, 2.5),
        model("sdxl-turbo", 10, 9.0, 1.0),
    ];
    // Popularity: sdxl 40 %, sd15 25 %, the LoRA set 15 %, sd21 10 %, turbo 10 %.
    let cumulative = [40, 65, 80, 90, 100];
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: a fixed, dependency-free generator.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut jobs = Vec::new();
    for round in 0..jobs_per_owner {
        for owner in 0..owners {
            let roll = next() % 100;
            let model = cumulative.iter().position(|&c| roll < c).unwrap_or(0);
            jobs.push(SimJob {
                owner,
                model,
                arrives_s: round as f64 * 1e-3,
            });
        }
    }
    Scenario {
        devices: vec![Some(80 * GB); devices],
        models,
        jobs,
        lookahead: super::default_lookahead(devices),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_model(devices: usize, jobs: usize) -> Scenario {
        Scenario {
            devices: vec![None; devices],
            models: vec![SimModel {
                name: "a".into(),
                memory: 1,
                load_s: 3.0,
                run_s: 2.0,
                max_workers: None,
            }],
            jobs: (0..jobs)
                .map(|i| SimJob {
                    owner: i as u32 % 2,
                    model: 0,
                    arrives_s: 0.0,
                })
                .collect(),
            lookahead: devices,
        }
    }

    #[test]
    fn one_worker_loads_once_and_runs_jobs_back_to_back() {
        let report = simulate(&one_model(1, 10));
        assert_eq!((report.done, report.loads, report.evictions), (10, 1, 0));
        assert!((report.makespan_s - 23.0).abs() < 1e-9, "{report:?}");
    }

    #[test]
    fn eight_workers_run_eight_times_as_many_jobs() {
        let one = simulate(&one_model(1, 80));
        let eight = simulate(&one_model(8, 80));
        assert_eq!(eight.loads, 8);
        let speedup = eight.jobs_per_s / one.jobs_per_s;
        assert!(speedup > 7.0 && speedup <= 8.0, "{speedup}");
    }

    #[test]
    fn two_models_on_two_workers_do_not_thrash() {
        let mut scenario = one_model(2, 0);
        scenario.models.push(SimModel {
            name: "b".into(),
            ..scenario.models[0].clone()
        });
        scenario.jobs = (0..40)
            .map(|i| SimJob {
                owner: i % 4,
                model: (i % 2) as usize,
                arrives_s: 0.0,
            })
            .collect();
        let report = simulate(&scenario);
        assert_eq!((report.done, report.loads, report.evictions), (40, 2, 0));
    }

    #[test]
    fn the_lookahead_saves_loads_on_a_mixed_queue() {
        let mut scenario = shared_box(8, 12, 30, 7);
        let with = simulate(&scenario);
        scenario.lookahead = 1;
        let without = simulate(&scenario);
        assert_eq!(with.done, without.done);
        assert!(
            with.loads < without.loads,
            "lookahead {} loads, none {} loads",
            with.loads,
            without.loads
        );
    }

    #[test]
    fn owners_with_equal_demand_get_equal_service() {
        let report = simulate(&shared_box(8, 12, 30, 3));
        assert_eq!(report.done, 360);
        assert!(report.fairness > 0.9, "{report:?}");
    }

    #[test]
    fn a_light_owner_is_not_stuck_behind_a_heavy_one() {
        let mut scenario = one_model(2, 0);
        scenario.jobs = (0..100)
            .map(|_| SimJob {
                owner: 1,
                model: 0,
                arrives_s: 0.0,
            })
            .chain((0..5).map(|_| SimJob {
                owner: 2,
                model: 0,
                arrives_s: 0.0,
            }))
            .collect();
        let report = simulate(&scenario);
        let wait = |owner| {
            report
                .mean_wait_s
                .iter()
                .find(|(o, _)| *o == owner)
                .map(|(_, w)| *w)
                .unwrap_or(f64::NAN)
        };
        assert!(wait(2) * 5.0 < wait(1), "{:?}", report.mean_wait_s);
    }

    #[test]
    fn max_workers_caps_the_workers_a_model_holds() {
        let mut scenario = shared_box(8, 12, 30, 5);
        scenario.models[0].max_workers = Some(2);
        let report = simulate(&scenario);
        assert_eq!(report.max_holders[0], 2);
        assert_eq!(report.done, 360);
    }

    #[test]
    fn a_model_no_device_can_hold_is_never_placed() {
        let mut scenario = one_model(2, 4);
        scenario.devices = vec![Some(4 << 30); 2];
        scenario.models[0].memory = 10 << 30;
        let report = simulate(&scenario);
        assert_eq!((report.done, report.never_placed), (0, 4));
    }

    #[test]
    fn a_job_for_a_cold_model_is_passed_at_most_lookahead_times() {
        let mut scenario = one_model(1, 0);
        scenario.models.push(SimModel {
            name: "rare".into(),
            ..scenario.models[0].clone()
        });
        scenario.lookahead = 8;
        // 1 rare job queued behind the first popular one, 60 popular after.
        scenario.jobs = std::iter::once(SimJob {
            owner: 1,
            model: 0,
            arrives_s: 0.0,
        })
        .chain(std::iter::once(SimJob {
            owner: 2,
            model: 1,
            arrives_s: 0.0,
        }))
        .chain((0..60).map(|i| SimJob {
            owner: 3 + i % 3,
            model: 0,
            arrives_s: 0.0,
        }))
        .collect();
        let report = simulate(&scenario);
        let rare_wait = report
            .mean_wait_s
            .iter()
            .find(|(owner, _)| *owner == 2)
            .map(|(_, wait)| *wait)
            .unwrap_or(f64::NAN);
        // Load (3 s) + the first job (2 s) + at most 8 passes (2 s each).
        assert!(rare_wait <= 5.0 + 8.0 * 2.0 + 1e-9, "{rare_wait}");
        assert_eq!(report.loads, 3, "a, rare, a again");
    }

    #[test]
    fn jain_is_one_for_equal_shares_and_one_over_n_for_one_taker() {
        assert!((jain(&[2.0, 2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[5.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }
}
