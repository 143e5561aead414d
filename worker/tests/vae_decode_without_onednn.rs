//! The VAE decoder with oneDNN off (the sandboxed worker's default), where
//! its 3×3 layers of ≥ 128² pixels run through `engine::conv3x3` (NNPACK,
//! by bands of rows), against the same decoder with oneDNN on (libtorch's
//! own convolution), on the `tiny-sd1` reference fixture. oneDNN is a
//! process-wide switch, so this is the only test in its binary.
#![allow(clippy::unwrap_used)]

mod common;

use tch::{Device, Kind, Tensor};
use weave_worker::engine::conv3x3::LARGE_MIN_PIXELS;
use weave_worker::engine::{DeviceChoice, ModelSpec, Pipeline, Precision};

/// The largest difference allowed between the two decodes. Each NNPACK
/// layer agrees to ≈ 2e-5 of its largest value (conv3x3.rs's unit tests
/// bound it by 1e-4); through the random tiny decoder the differences come
/// to 1.1e-5 at 128², 4.5e-5 at 256² and 2.8e-5 at 512² (measured; the
/// nine-products fallback measured 9e-6, 4–5e-5 and 2.8e-4). A wrong band
/// edge, tap or bias is off by the size of the values themselves (≈ 1–5
/// here).
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
    assert!(
        weave_worker::engine::conv3x3::nnpack_ready(),
        "libtorch's NNPACK did not start: this decode would test the fallback"
    );
    tch::manual_seed(11);
    // Image 256²: its top two levels (128², 256²) take conv3x3; 256 rows
    // are three NNPACK bands.
    let latents = Tensor::randn([2, 4, 32, 32], (Kind::Float, Device::Cpu));
    assert!(weave_worker::onednn::set_enabled(true));
    let library = pipe.decode(&latents).unwrap();
    assert!(weave_worker::onednn::set_enabled(false));
    let without = pipe.decode(&latents).unwrap();
    assert!(weave_worker::onednn::set_enabled(true));
    let size = library.size();
    assert!(
        size[2] * size[3] >= LARGE_MIN_PIXELS,
        "decoded {size:?}: below the size where conv3x3 is used"
    );
    assert_eq!(without.size(), size);
    let diff = (&without - &library).abs().max().double_value(&[]);
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
