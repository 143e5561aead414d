//! Issue 3: seconds per image of our pipeline against diffusers on the same
//! model, device, steps, guidance, seed and thread count, in one run.
//!
//! The diffusers side (`tools/bench/diffusers_server.py`) runs in a child
//! Python process that this bench drives between its own generations:
//! rounds of diffusers / ours, each with oneDNN on and off, so machine load
//! hits all four alike. Each side times only its own pipeline call. Printed:
//! the medians and the ratios ours / diffusers.
//!
//! Environment: `WEAVE_BENCH_PYTHON` (a Python with torch + diffusers, which
//! `tools/bench/engine_vs_diffusers.sh` provides; without it only our side
//! is measured), `WEAVE_BENCH_DEVICE` (`cpu` default, `cuda`, `cuda:N`),
//! `WEAVE_BENCH_THREADS` (intra-op threads on both sides, default 1),
//! `WEAVE_BENCH_ROUNDS` (default 9), `WEAVE_BENCH_MODEL`.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use support::{env_count, median, set_onednn};
use weave_worker::engine::{GenerateParams, ModelSpec, Pipeline, Precision, SchedulerKind};

const STEPS: u32 = 20;
const GUIDANCE: f64 = 5.0;
const PROMPT: &str = "a handwritten digit seven";

/// The Python child and its pipes.
struct Diffusers {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Diffusers {
    fn start(python: &str, model: &str, device: &str, threads: usize, size: u32) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bench/diffusers_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .args([
                model,
                device,
                &threads.to_string(),
                &STEPS.to_string(),
                &GUIDANCE.to_string(),
                &size.to_string(),
                PROMPT,
            ])
            // Same OpenMP pool size as ours before torch.set_num_threads.
            .env("OMP_NUM_THREADS", threads.to_string())
            // A local folder: no hub look-ups, no progress bars.
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .env("DIFFUSERS_VERBOSITY", "error")
            .env("TRANSFORMERS_VERBOSITY", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(info) = line.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            panic!("diffusers side did not start: {line:?} (see its stderr above)");
        };
        println!("diffusers: {info}");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn generate(&mut self, seed: u64, onednn: bool) -> f64 {
        writeln!(self.stdin, "gen {seed} {}", u8::from(onednn)).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("diffusers side answered {line:?}"))
    }
}

impl Drop for Diffusers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ours(pipe: &Pipeline, params: &GenerateParams, seed: u64, onednn: bool) -> f64 {
    assert!(set_onednn(onednn), "could not switch oneDNN");
    let params = GenerateParams {
        seed,
        ..params.clone()
    };
    let start = Instant::now();
    let images = pipe
        .generate(&params, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(images.len(), 1);
    elapsed
}

fn main() {
    let model = std::env::var_os("WEAVE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/digits"));
    if !model.join("model_index.json").exists() {
        eprintln!("bench: no model at {}; nothing to measure", model.display());
        return;
    }
    let device_name = std::env::var("WEAVE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = weave_worker::to_engine::device(
        device_name
            .parse()
            .unwrap_or_else(|e| panic!("WEAVE_BENCH_DEVICE {e}")),
    );
    let threads = env_count("WEAVE_BENCH_THREADS", 1);
    let rounds = env_count("WEAVE_BENCH_ROUNDS", 9);
    tch::set_num_threads(i32::try_from(threads).unwrap());
    tch::set_num_interop_threads(1);

    let pipe = Pipeline::load(&ModelSpec::new(&model), device, Precision::Auto).unwrap();
    let size = pipe.default_size();
    println!(
        "ours: {} on {:?} ({:?}), torch threads {}; {size}x{size}, DDIM {STEPS} steps, \
         guidance {GUIDANCE}, batch 1",
        model.display(),
        pipe.device(),
        pipe.kind(),
        tch::get_num_threads()
    );
    let params = GenerateParams {
        prompt: PROMPT.into(),
        width: size,
        height: size,
        steps: STEPS,
        guidance: GUIDANCE,
        scheduler: SchedulerKind::Ddim,
        batch: 1,
        ..Default::default()
    };
    let mut diffusers = match std::env::var("WEAVE_BENCH_PYTHON") {
        Ok(python) => Some(Diffusers::start(
            &python,
            model.to_str().unwrap(),
            &device_name,
            threads,
            size,
        )),
        Err(_) => {
            println!(
                "diffusers side skipped: set WEAVE_BENCH_PYTHON (tools/bench/engine_vs_diffusers.sh does)"
            );
            None
        }
    };
    // Warm-up of both oneDNN settings (kernel selection, first allocations).
    ours(&pipe, &params, 0, true);
    ours(&pipe, &params, 0, false);

    // [ours on, ours off, diffusers on, diffusers off]
    let mut times: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        let seed = 1 + round as u64;
        // Alternate who goes first so neither always follows the other.
        let order: [usize; 4] = if round % 2 == 0 {
            [0, 2, 1, 3]
        } else {
            [3, 1, 2, 0]
        };
        for which in order {
            let onednn = which % 2 == 0;
            let seconds = if which < 2 {
                ours(&pipe, &params, seed, onednn)
            } else if let Some(d) = diffusers.as_mut() {
                d.generate(seed, onednn)
            } else {
                continue;
            };
            times[which].push(seconds);
        }
    }
    let m: Vec<f64> = times.iter().map(|t| median(t)).collect();
    println!("engine vs diffusers, seconds per image, median of {rounds} interleaved rounds:");
    println!("  oneDNN on : ours {:.4} s", m[0]);
    println!(
        "  oneDNN off: ours {:.4} s (the sandboxed worker's setting)",
        m[1]
    );
    if diffusers.is_some() {
        println!("  oneDNN on : diffusers {:.4} s", m[2]);
        println!("  oneDNN off: diffusers {:.4} s", m[3]);
        let per_round = |a: usize, b: usize| -> f64 {
            let ratios: Vec<f64> = times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect();
            median(&ratios)
        };
        println!(
            "  ratio ours/diffusers, oneDNN on both: {:.3}x (median of per-round ratios {:.3}x; target <= 1.0x)",
            m[0] / m[2],
            per_round(0, 2)
        );
        println!(
            "  ratio ours/diffusers, oneDNN off both: {:.3}x (median of per-round ratios {:.3}x; target <= 1.0x)",
            m[1] / m[3],
            per_round(1, 3)
        );
        println!(
            "  ratio ours (oneDNN off, as sandboxed) / diffusers (default, oneDNN on): {:.3}x",
            m[1] / m[2]
        );
    }
    println!("  cost of oneDNN off in ours: {:.3}x", m[1] / m[0]);
}
