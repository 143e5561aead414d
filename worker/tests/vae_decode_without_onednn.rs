//! The VAE decoder with oneDNN off (the sandboxed worker's default), where
//! its 3×3 layers of ≥ 128² pixels run as `engine::conv3x3`'s nine matrix
//! products, against the same decoder with oneDNN on (libtorch's own
//! convolution), on the `tiny-sd1` reference fixture. oneDNN is a
//! process-wide switch, so this is the only test in its binary.
#![allow(clippy::unwrap_used)]

mod common;

use tch::{Device, Kind, Tensor};
use weave_worker::engine::conv3x3::SHIFTED_MIN_PIXELS;
use weave_worker::engine::{DeviceChoice, ModelSpec, Pipeline, Precision};

/// The largest difference allowed between the two decodes. Each layer
/// agrees to ≈ 4e-7 of its largest value (measured on the VAE's layer
/// shapes; conv3x3.rs's unit tests bound it by 1e-5);
/// through the random tiny decoder the differences compound to 9e-6 at
/// 128², 4–5e-5 at 256² and 2.8e-4 at 512² (measured; libtorch's own two
/// convolutions differ by 1–2e-5 there), in smooth patches inside the image,
/// not at its borders or in rows. A wrong tap, offset or bias is off by
/// the size of the values themselves (≈ 1–5 here).
const BOUND: f64 = 1e-3;

#[test]
fn the_decoder_without_onednn_matches_the_library_convolution() {
    let Some(dir) = common::reference_fixtures("tiny-sd1-ref.safetensors") else {
        return;
    };
    let pipe = Pipeline::load(
        &ModelSpec::new(dir.join("tiny-sd1")),
        DeviceChoice::Cpu,
        Precision::F32,
    )
    .unwrap();
    let _no_grad = tch::no_grad_guard();
    tch::manual_seed(11);
    // Image 256²: its top two levels (128², 256²) take conv3x3.
    let latents = Tensor::randn([2, 4, 32, 32], (Kind::Float, Device::Cpu));
    assert!(weave_worker::onednn::set_enabled(true));
    let library = pipe.decode(&latents).unwrap();
    assert!(weave_worker::onednn::set_enabled(false));
    let shifted = pipe.decode(&latents).unwrap();
    assert!(weave_worker::onednn::set_enabled(true));
    let size = library.size();
    assert!(
        size[2] * size[3] >= SHIFTED_MIN_PIXELS,
        "decoded {size:?}: below the size where conv3x3 is used"
    );
    assert_eq!(shifted.size(), size);
    let diff = (&shifted - &library).abs().max().double_value(&[]);
    let scale = library.abs().max().double_value(&[]);
    eprintln!(
        "vae decode {size:?}, oneDNN off vs on: max abs diff {diff:.3e} (max |value| {scale:.3})"
    );
    assert!(diff <= BOUND, "max abs difference {diff} > {BOUND}");
    assert!(
        scale > 100.0 * BOUND,
        "the decoded values are too small to tell"
    );
}
