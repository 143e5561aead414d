//! Builders shared by the engine's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use tch::{Device, Kind};
use weave_worker::engine::denoisers::unet::{UNet, UNetConfig};
use weave_worker::engine::nn::Weights;
use weave_worker::engine::text::clip::{ClipTextConfig, ClipTextModel};
use weave_worker::engine::vae::{VaeConfig, VaeDecoder};
use weave_worker::engine::weights::safetensors::serialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether CI demands that everything a test needs is present.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// How far the engine may be from diffusers' reference tensors (fp32).
pub const TOLERANCE: f64 = 1e-4;

/// `worker/tests/fixtures` when it holds `marker` (a reference file made by
/// tools/fixtures/); `None` and a printed skip when it does not, which fails
/// under CI.
pub fn reference_fixtures(marker: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if dir.join(marker).exists() {
        return Some(dir);
    }
    assert!(!ci(), "{} lacks {marker}", dir.display());
    eprintln!("skipping: no {marker} in {}", dir.display());
    None
}

/// `ours` has `theirs`' shape and is within [`TOLERANCE`] of it everywhere
/// (or 32 fp32 ulps of its largest value, where that is more).
#[track_caller]
pub fn assert_close(what: &str, ours: &tch::Tensor, theirs: &tch::Tensor) {
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let ours = ours.to_kind(Kind::Float).to_device(Device::Cpu);
    let diff = (&ours - theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]);
    eprintln!("{what}: max abs diff {diff:.3e} (max |ref| {scale:.3e})");
    // 1e-4, or 32 fp32 ulps of the largest reference value where that is
    // more: the Karras-schedule latents reach ~37, where 1e-4 is 27 ulps,
    // and the CPU's kernels (AVX-512 on one machine, AVX2 on another) sum
    // in different orders (1.1e-4 seen on an AMD EPYC, 2.8e-5 for the
    // same run's other samplers).
    let bound = TOLERANCE.max(scale * 32.0 * f64::from(f32::EPSILON));
    assert!(
        diff <= bound,
        "{what}: max abs difference {diff} > {bound} (max |ref| {scale})"
    );
}

/// A byte-level vocabulary (every byte symbol, with and without `</w>`),
/// a few merges and the two specials.
pub fn write_tiny_tokenizer(dir: &Path) -> i64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut printable: Vec<u32> = (0x21..=0x7e)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut extra = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            extra += 1;
            printable.push(255 + extra);
        }
    }
    let mut vocab: HashMap<String, i64> = HashMap::new();
    for suffix in ["", "</w>"] {
        for &c in &printable {
            let n = vocab.len() as i64;
            vocab.insert(format!("{}{suffix}", char::from_u32(c).unwrap()), n);
        }
    }
    for tok in ["th", "the</w>", "<|startoftext|>", "<|endoftext|>"] {
        let n = vocab.len() as i64;
        vocab.insert(tok.into(), n);
    }
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::to_string(&vocab).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\nt h\nth e</w>\n").unwrap();
    vocab.len() as i64
}

pub struct TinyOptions {
    pub prediction: &'static str,
    pub linear_projection: bool,
    pub text_model_prefix: bool,
    pub seed: i64,
}

impl Default for TinyOptions {
    fn default() -> Self {
        Self {
            prediction: "epsilon",
            linear_projection: false,
            text_model_prefix: false,
            seed: 1,
        }
    }
}

fn save(path: &Path, tensors: &[(String, tch::Tensor)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let refs: Vec<(&str, &tch::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    std::fs::write(path, serialize(&refs).unwrap()).unwrap();
}

fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Writes a tiny random-weight SD-1.x-shaped pipeline in the diffusers layout.
pub fn write_tiny_model(dir: &Path, o: &TinyOptions) {
    let _rng = weave_worker::engine::global_rng_lock();
    tch::manual_seed(o.seed);
    let vocab = write_tiny_tokenizer(&dir.join("tokenizer"));
    write_json(
        &dir.join("model_index.json"),
        &json!({"_class_name": "StableDiffusionPipeline"}),
    );
    let text = json!({"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5});
    let unet = json!({"sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 4,
        "norm_num_groups": 8, "use_linear_projection": o.linear_projection});
    let vae = json!({"block_out_channels": [16, 32], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
        "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]});
    let sched = json!({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": o.prediction, "set_alpha_to_one": false, "steps_offset": 1,
        "clip_sample": false, "timestep_spacing": "leading"});
    write_json(&dir.join("text_encoder/config.json"), &text);
    write_json(&dir.join("unet/config.json"), &unet);
    write_json(&dir.join("vae/config.json"), &vae);
    write_json(&dir.join("scheduler/scheduler_config.json"), &sched);

    let w = Weights::synthetic(Kind::Float, Device::Cpu);
    ClipTextModel::new(&w.root(), &ClipTextConfig::from_json(&text).unwrap()).unwrap();
    let mut te = w.take_made_up();
    if o.text_model_prefix {
        te = te
            .into_iter()
            .map(|(n, t)| (format!("text_model.{n}"), t))
            .collect();
    }
    save(&dir.join("text_encoder/model.safetensors"), &te);
    UNet::new(&w.root(), &UNetConfig::from_json(&unet).unwrap()).unwrap();
    save(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        &w.take_made_up(),
    );
    VaeDecoder::new(&w.root(), &VaeConfig::from_json(&vae).unwrap()).unwrap();
    save(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        &w.take_made_up(),
    );
}
