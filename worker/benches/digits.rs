//! Seconds per image of our pipeline on the demo model (`make bench`).
//!
//! `WEAVE_BENCH_MODEL` overrides the model folder (default `models/digits`),
//! `WEAVE_BENCH_DEVICE` the device (`auto`, `cpu`, `cuda`, `cuda:N`),
//! `WEAVE_BENCH_THREADS` libtorch's intra-op thread count. The comparison
//! with diffusers in the same run is `engine_vs_diffusers`
//! (docs/PERFORMANCE.md).
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use weave_worker::engine::{GenerateParams, ModelSpec, Pipeline, Precision, SchedulerKind};

fn main() {
    let model = std::env::var_os("WEAVE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/digits"));
    if !model.join("model_index.json").exists() {
        eprintln!("bench: no model at {}; nothing to measure", model.display());
        return;
    }
    let device = std::env::var("WEAVE_BENCH_DEVICE")
        .ok()
        .map(|d| {
            let device = d
                .parse()
                .unwrap_or_else(|e| panic!("WEAVE_BENCH_DEVICE {e}"));
            weave_worker::to_engine::device(device)
        })
        .unwrap_or_default();
    if let Some(n) = std::env::var("WEAVE_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        tch::set_num_threads(n);
    }
    let load_start = Instant::now();
    let pipe = Pipeline::load(&ModelSpec::new(&model), device, Precision::Auto).unwrap();
    println!(
        "model {} on {:?} ({:?}): loaded in {:.2} s, {:.1} MB of weights, torch threads {}",
        model.display(),
        pipe.device(),
        pipe.kind(),
        load_start.elapsed().as_secs_f64(),
        pipe.memory_bytes() as f64 / 1e6,
        tch::get_num_threads()
    );
    let size = pipe.default_size();
    for (scheduler, batch) in [
        (SchedulerKind::Ddim, 1),
        (SchedulerKind::Euler, 1),
        (SchedulerKind::Ddim, 8),
    ] {
        let params = GenerateParams {
            prompt: "a handwritten digit seven".into(),
            width: size,
            height: size,
            steps: 20,
            guidance: 5.0,
            seed: 7,
            scheduler,
            batch,
            ..Default::default()
        };
        // Warm-up (first-call allocations and kernel selection).
        pipe.generate(&params, &mut |_, _| ControlFlow::Continue(()))
            .unwrap();
        let runs = 5;
        let start = Instant::now();
        for seed in 0..runs {
            let p = GenerateParams {
                seed,
                ..params.clone()
            };
            pipe.generate(&p, &mut |_, _| ControlFlow::Continue(()))
                .unwrap();
        }
        let per_image = start.elapsed().as_secs_f64() / (runs * batch as u64) as f64;
        println!(
            "{:>6} {size}x{size} 20 steps cfg 5.0 batch {batch}: {per_image:.4} s/image",
            scheduler.name()
        );
    }
}
