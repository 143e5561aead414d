//! Live previews in the engine (issue 16, item 5): the latent → RGB map
//! fitted to each demo model's own VAE tracks the real decode, previews
//! come at the steps asked for and within the size asked for, and asking
//! for them changes no pixel of the final images.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;

use common::{ci, repo_root};
use tch::{Kind, Tensor};
use weave_worker::engine::{
    DeviceChoice, GenerateParams, ModelKind, ModelSpec, Pipeline, Precision, PreviewRequest,
    SchedulerKind,
};

fn load(rel: &str, kind: ModelKind) -> Option<Pipeline> {
    let model = repo_root().join(rel);
    if !model.join("model_index.json").exists() {
        assert!(!ci(), "{rel} is missing; it is part of the repository");
        eprintln!("skipping: {} has no model", model.display());
        return None;
    }
    tch::set_num_threads(1);
    let spec = ModelSpec {
        kind,
        ..ModelSpec::new(&model)
    };
    Some(Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap())
}

fn params(prompt: &str, seed: u64, steps: u32, batch: u32) -> GenerateParams {
    GenerateParams {
        prompt: prompt.into(),
        width: 32,
        height: 32,
        steps,
        guidance: 5.0,
        seed,
        scheduler: SchedulerKind::Ddim,
        batch,
        max_prompt_chunks: 1,
        ..Default::default()
    }
}

/// Pearson correlation of two equally long series.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    cov / (va.sqrt() * vb.sqrt())
}

/// Channel `c` of `[n, 3, h, w]`, flattened.
fn channel(t: &Tensor, c: i64) -> Vec<f64> {
    let flat = t
        .narrow(1, c, 1)
        .to_kind(Kind::Double)
        .contiguous()
        .view([-1]);
    Vec::<f64>::try_from(&flat).unwrap()
}

/// On finished latents of real prompts, each RGB channel of the map's
/// output correlates with the VAE's decode (averaged over the pixels each
/// latent pixel decodes to) by more than 0.8.
fn map_tracks_the_vae(rel: &str, kind: ModelKind) {
    let Some(pipe) = load(rel, kind) else { return };
    let scale = pipe.vae().config().scale_factor();
    let map = pipe.preview_map().unwrap();
    let (mut fitted, mut decoded) = (Vec::new(), Vec::new());
    for digit in 0..8u64 {
        let p = params(&format!("a handwritten digit {digit}"), 100 + digit, 12, 1);
        let latents = pipe
            .generate_latents(&p, &mut |_, _| ControlFlow::Continue(()))
            .unwrap();
        let image = pipe
            .decode(&latents)
            .unwrap()
            .to_kind(Kind::Double)
            .avg_pool2d(
                [scale, scale],
                [scale, scale],
                [0, 0],
                false,
                true,
                None::<i64>,
            );
        fitted.push(map.apply(&latents, 0.0).unwrap());
        decoded.push(image);
    }
    let fitted = Tensor::cat(&fitted, 0);
    let decoded = Tensor::cat(&decoded, 0);
    assert_eq!(fitted.size(), decoded.size());
    for c in 0..3 {
        let r = correlation(&channel(&fitted, c), &channel(&decoded, c));
        eprintln!("{rel}: channel {c}: correlation {r:.3}");
        assert!(r > 0.8, "{rel}: channel {c} correlates only {r:.3}");
    }
}

#[test]
fn the_fitted_map_tracks_the_digits_vae() {
    map_tracks_the_vae("models/digits", ModelKind::Sd1);
}

#[test]
fn the_fitted_map_tracks_the_digits_xl_vae() {
    map_tracks_the_vae("models/digits-xl", ModelKind::Sdxl);
}

#[test]
fn previews_come_every_k_steps_and_change_no_pixel() {
    let Some(pipe) = load("models/digits", ModelKind::Sd1) else {
        return;
    };
    let p = params("the digit 3", 42, 6, 2);
    let plain = pipe
        .generate(&p, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    for (max_size, side) in [(256, 16), (12, 8), (6, 6)] {
        let mut seen = Vec::new();
        let request = PreviewRequest { every: 2, max_size };
        let images = pipe
            .generate_with_previews(
                &p,
                request,
                &mut |_, _| ControlFlow::Continue(()),
                &mut |preview| {
                    assert_eq!((preview.image.width, preview.image.height), (side, side));
                    assert_eq!(preview.image.pixels.len(), (side * side * 3) as usize);
                    seen.push((preview.index, preview.step, preview.total));
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        assert_eq!(images, plain, "previews changed the images");
        let want: Vec<(u32, u32, u32)> =
            (0..2).flat_map(|i| [2, 4, 6].map(|s| (i, s, 6))).collect();
        assert_eq!(seen, want);
    }
    // Break from the preview sink cancels.
    let stopped = pipe.generate_with_previews(
        &p,
        PreviewRequest {
            every: 1,
            max_size: 64,
        },
        &mut |_, _| ControlFlow::Continue(()),
        &mut |_| ControlFlow::Break(()),
    );
    assert!(matches!(
        stopped,
        Err(weave_worker::engine::EngineError::Cancelled)
    ));
}
