//! `make bench` (cargo bench -p weave-worker --bench conv3x3): the VAE
//! decoder's 3×3 convolutions at a 512² image, four ways in one run,
//! interleaved round by round: libtorch's `conv2d` with oneDNN off (what
//! the sandboxed worker had first), `conv3x3_shifted` (the nine products,
//! the fallback), `conv3x3_nnpack` (what it runs now; both in
//! worker/src/engine/conv3x3.rs) and `conv2d` with oneDNN on (what
//! diffusers runs). Medians per layer shape and the sum over one SD VAE decoder's
//! layers. `WEAVE_BENCH_CONV_ROUNDS` (default 3) and
//! `WEAVE_BENCH_CONV_THREADS` (torch threads, default 1) size it.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use weave_worker::engine::conv3x3::{conv3x3_nnpack, conv3x3_shifted, nnpack_ready};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// (channels in, channels out, side, how many such layers an SD/SDXL VAE
/// decoder has at a 512² image: its resnet convolutions and upsamplers).
/// The layers at 64² latents (512 channels) are below
/// `LARGE_MIN_PIXELS` and keep libtorch's convolution.
const LAYERS: [(i64, i64, i64, usize); 8] = [
    (512, 512, 128, 7),
    (512, 512, 256, 1),
    (512, 256, 256, 1),
    (256, 256, 256, 5),
    (256, 256, 512, 1),
    (256, 128, 512, 1),
    (128, 128, 512, 5),
    (128, 3, 512, 1),
];

fn main() {
    let rounds = env_or("WEAVE_BENCH_CONV_ROUNDS", 3).max(1);
    let threads = env_or("WEAVE_BENCH_CONV_THREADS", 1).max(1);
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    assert!(
        nnpack_ready(),
        "libtorch's NNPACK did not start on this CPU"
    );
    let mut totals = [0.0f64; 4];
    for (inputs, outputs, side, count) in LAYERS {
        let x = Tensor::randn([1, inputs, side, side], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([outputs, inputs, 3, 3], (Kind::Float, Device::Cpu)) * 0.01;
        let b = Tensor::randn([outputs], (Kind::Float, Device::Cpu));
        let library = || x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1);
        let mut times: [Vec<f64>; 4] = Default::default();
        for round in 0..=rounds {
            for (way, slot) in times.iter_mut().enumerate() {
                weave_worker::onednn::set_enabled(way == 3);
                let started = Instant::now();
                let out = match way {
                    1 => conv3x3_shifted(&x, &w, &b).unwrap(),
                    2 => conv3x3_nnpack(&x, &w, &b).unwrap(),
                    _ => library(),
                };
                let seconds = started.elapsed().as_secs_f64();
                drop(out);
                // Round 0 warms each way up (oneDNN compiles its kernel).
                if round > 0 {
                    slot.push(seconds);
                }
            }
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        for (total, m) in totals.iter_mut().zip(&medians) {
            *total += m * count as f64;
        }
        println!(
            "conv3x3 {inputs}->{outputs} at {side}²: oneDNN off {:.0} ms, shifted {:.0} ms, NNPACK {:.0} ms, oneDNN on {:.0} ms; NNPACK / off {:.2}x, NNPACK / on {:.2}x, shifted / on {:.2}x",
            medians[0] * 1e3,
            medians[1] * 1e3,
            medians[2] * 1e3,
            medians[3] * 1e3,
            medians[2] / medians[0],
            medians[2] / medians[3],
            medians[1] / medians[3],
        );
    }
    weave_worker::onednn::set_enabled(true);
    println!(
        "conv3x3: a 512² VAE decoder's 3x3 layers ({threads} thread(s), {rounds} rounds, medians): oneDNN off {:.2} s, shifted {:.2} s, NNPACK {:.2} s, oneDNN on {:.2} s; NNPACK / off {:.2}x, NNPACK / on {:.2}x, shifted / on {:.2}x",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[2] / totals[0],
        totals[2] / totals[3],
        totals[1] / totals[3],
    );
}
