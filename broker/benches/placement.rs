//! The pool's placement policy at scale, in the simulation
//! (`weave_broker::placement::simulation`): a shared box with 1, 2 and 8
//! GPUs and 480 queued jobs from 12 owners over five models (one an SDXL
//! model with a LoRA set). Prints throughput, loads (thrash), utilization
//! and fairness; docs/PERFORMANCE.md records the figures. Deterministic:
//! the same numbers every run, on any machine.

use weave_broker::placement::simulation::{shared_box, simulate, Scenario};

fn row(label: &str, scenario: &Scenario) {
    let report = simulate(scenario);
    let worst_wait = report
        .mean_wait_s
        .iter()
        .map(|(_, w)| *w)
        .fold(0.0_f64, f64::max);
    println!(
        "{label:<34} {:>4} {:>9.1} {:>8.3} {:>6} {:>6} {:>6.1}% {:>8.3} {:>10.1}",
        scenario.devices.len(),
        report.makespan_s,
        report.jobs_per_s,
        report.loads,
        report.evictions,
        report.utilization * 100.0,
        report.fairness,
        worst_wait,
    );
}

fn main() {
    const OWNERS: u32 = 12;
    const JOBS_PER_OWNER: usize = 40;
    const SEED: u64 = 2026;
    println!(
        "{:<34} {:>4} {:>9} {:>8} {:>6} {:>6} {:>7} {:>8} {:>10}",
        "scenario",
        "gpus",
        "makespan",
        "jobs/s",
        "loads",
        "evict",
        "util",
        "fairness",
        "worst wait"
    );
    for devices in [1, 2, 8] {
        let scenario = shared_box(devices, OWNERS, JOBS_PER_OWNER, SEED);
        row(
            &format!("default policy (lookahead {})", scenario.lookahead),
            &scenario,
        );
    }
    for lookahead in [1, 8, 128] {
        let mut scenario = shared_box(8, OWNERS, JOBS_PER_OWNER, SEED);
        scenario.lookahead = lookahead;
        let label = match lookahead {
            1 => "strict fair order (lookahead 1)".to_owned(),
            n => format!("lookahead {n}"),
        };
        row(&label, &scenario);
    }
    let mut capped = shared_box(8, OWNERS, JOBS_PER_OWNER, SEED);
    capped.models[0].max_workers = Some(3);
    row("sdxl max_workers = 3", &capped);
}
