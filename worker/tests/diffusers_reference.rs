//! Our engine against reference tensors recorded with Python diffusers and
//! transformers (`tools/fixtures/make_fixtures.py`, files in
//! `worker/tests/fixtures/`, layout in its README): token ids exactly, every
//! float tensor within 1e-4 (max abs) in fp32.
//!
//! `tiny-sd1`: SD 1.5 block pattern, fp32, text encoder keys with
//! `text_model.`, also as a single-file checkpoint with the original key
//! names. `tiny-sd2`: v-prediction, linear projections, per-block heads, pad
//! token `!`, text encoder keys without the prefix stored in fp16 and VAE in
//! bf16 (upcast on load).
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;

use common::{assert_close, TOLERANCE};
use tch::{Device, Kind, Tensor};
use weave_common::prompt::PromptField;
use weave_worker::engine::schedulers::{Scheduler, SchedulerError};
use weave_worker::engine::weights::safetensors::SafetensorsFile;
use weave_worker::engine::{
    global_rng_lock, DeviceChoice, GenerateParams, ModelKind, ModelSpec, Pipeline, Precision,
    SchedulerKind,
};

fn fixtures() -> Option<PathBuf> {
    common::reference_fixtures("tiny-sd1-ref.safetensors")
}

struct Reference {
    file: SafetensorsFile,
    params: serde_json::Value,
}

impl Reference {
    fn open(dir: &std::path::Path, name: &str) -> Self {
        let file = SafetensorsFile::open(&dir.join(format!("{name}-ref.safetensors"))).unwrap();
        let text = std::fs::read(dir.join(format!("{name}-ref.json"))).unwrap();
        let params =
            serde_json::from_slice(&weave_worker::engine::loader::python_json_to_strict(&text))
                .unwrap();
        Self { file, params }
    }

    fn get(&self, name: &str) -> Tensor {
        self.file.read_as(name, Kind::Float, Device::Cpu).unwrap()
    }

    fn raw(&self, name: &str) -> Tensor {
        self.file.read(name).unwrap()
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensors().contains_key(name)
    }
}

fn load(dir: &std::path::Path, name: &str) -> Pipeline {
    Pipeline::load(
        &ModelSpec::new(dir.join(name)),
        DeviceChoice::Cpu,
        Precision::F32,
    )
    .unwrap()
}

const SCHEDULERS: [(&str, SchedulerKind); 5] = [
    ("ddim", SchedulerKind::Ddim),
    ("euler", SchedulerKind::Euler),
    ("euler_a", SchedulerKind::EulerAncestral),
    ("dpmpp_2m", SchedulerKind::DpmPlusPlus2M),
    ("dpmpp_2m_karras", SchedulerKind::DpmPlusPlus2MKarras),
];

fn check_components(pipe: &Pipeline, r: &Reference, label: &str) {
    let _no_grad = tch::no_grad_guard();
    // Token ids, exactly.
    let prompts: Vec<String> = serde_json::from_value(r.params["token_prompts"].clone()).unwrap();
    let ids = r.raw("token_ids");
    for (i, prompt) in prompts.iter().enumerate() {
        let theirs: Vec<i64> = Vec::try_from(ids.get(i as i64)).unwrap();
        assert_eq!(
            pipe.tokenizer().encode(prompt),
            theirs,
            "{label}: token ids of {prompt:?}"
        );
    }
    // Text embeddings, with and without clip skip.
    let emb = pipe.text_encoder().forward(&ids, 0).unwrap();
    assert_close(
        &format!("{label} text_embeddings"),
        &emb,
        &r.get("text_embeddings"),
    );
    let skip = pipe.text_encoder().forward(&ids, 1).unwrap();
    assert_close(
        &format!("{label} text_embeddings_clip_skip2"),
        &skip,
        &r.get("text_embeddings_clip_skip2"),
    );
    // UNet at a fixed sample and timestep.
    let t = r.raw("unet_timestep").int64_value(&[]) as f64;
    let out = pipe
        .unet()
        .forward(
            &r.get("unet_sample"),
            t,
            &r.get("unet_encoder_hidden_states"),
        )
        .unwrap();
    assert_close(&format!("{label} unet_out"), &out, &r.get("unet_out"));
    // VAE decoder.
    let dec = pipe.decode(&r.get("vae_latents")).unwrap();
    assert_close(&format!("{label} vae_decoded"), &dec, &r.get("vae_decoded"));
}

fn check_initial_noise(pipe: &Pipeline, r: &Reference, label: &str) {
    let mut p = GenerateParams {
        seed: 42,
        width: 64,
        height: 64,
        batch: 1,
        ..Default::default()
    };
    let ours = pipe.initial_latents(&p).unwrap();
    assert_close(
        &format!("{label} init_noise_seed42"),
        &ours,
        &r.get("init_noise_seed42"),
    );
    p.batch = 2;
    let ours = pipe.initial_latents(&p).unwrap();
    assert_close(
        &format!("{label} init_noise_seed42_batch2"),
        &ours,
        &r.get("init_noise_seed42_batch2"),
    );
}

fn check_schedulers(pipe: &Pipeline, r: &Reference, label: &str) {
    let steps = r.params["sched_steps"].as_u64().unwrap() as usize;
    let ancestral_seed = r.params["ancestral_seed"].as_i64().unwrap();
    let sample0 = r.get("sched_sample0");
    let outputs = r.get("sched_model_outputs");
    for (name, kind) in SCHEDULERS {
        let what = format!("{label} {name}");
        let mut s = Scheduler::new(kind, pipe.scheduler_config(), steps).unwrap();
        let ts = Tensor::from_slice(s.timesteps()).to_kind(Kind::Float);
        assert_close(
            &format!("{what} timesteps"),
            &ts,
            &r.get(&format!("sched_{name}_timesteps")),
        );
        let sigma_key = format!("sched_{name}_sigmas");
        if r.has(&sigma_key) {
            let sig = Tensor::from_slice(s.sigmas()).to_kind(Kind::Float);
            assert_close(&format!("{what} sigmas"), &sig, &r.get(&sigma_key));
        }
        let init = r
            .get(&format!("sched_{name}_init_noise_sigma"))
            .double_value(&[]);
        assert!(
            (s.init_noise_sigma() - init).abs() <= TOLERANCE,
            "{what}: init_noise_sigma {} vs {init}",
            s.init_noise_sigma()
        );

        let scaled_ref = r.get(&format!("sched_{name}_scaled_inputs"));
        let samples_ref = r.get(&format!("sched_{name}_samples"));
        let _rng = global_rng_lock();
        tch::manual_seed(ancestral_seed);
        let mut noise = |like: &Tensor| -> Result<Tensor, SchedulerError> {
            Ok(Tensor::randn(like.size(), (Kind::Float, Device::Cpu)))
        };
        let mut x = sample0.shallow_clone();
        for i in 0..steps {
            let scaled = s.scale_model_input(&x).unwrap();
            assert_close(
                &format!("{what} scaled input {i}"),
                &scaled,
                &scaled_ref.get(i as i64),
            );
            x = s.step(&outputs.get(i as i64), &x, &mut noise).unwrap();
            assert_close(
                &format!("{what} sample {}", i + 1),
                &x,
                &samples_ref.get(i as i64 + 1),
            );
        }
    }
}

fn check_pipeline(pipe: &Pipeline, r: &Reference, label: &str) {
    let p = &r.params["pipeline"];
    let base = GenerateParams {
        prompt: p["prompt"].as_str().unwrap().into(),
        negative_prompt: p["negative_prompt"].as_str().unwrap().into(),
        width: p["width"].as_u64().unwrap() as u32,
        height: p["height"].as_u64().unwrap() as u32,
        steps: p["num_inference_steps"].as_u64().unwrap() as u32,
        guidance: p["guidance_scale"].as_f64().unwrap(),
        seed: p["seed"].as_u64().unwrap(),
        scheduler: SchedulerKind::Ddim,
        batch: 1,
        clip_skip: 0,
        max_prompt_chunks: 1,
        image: None,
    };
    let neg = pipe
        .encode_text(&base.negative_prompt, PromptField::NegativePrompt, 0, 1)
        .unwrap();
    let pos = pipe
        .encode_text(&base.prompt, PromptField::Prompt, 0, 1)
        .unwrap();
    assert_close(
        &format!("{label} pipeline_prompt_embeds"),
        &Tensor::cat(&[neg, pos], 0),
        &r.get("pipeline_prompt_embeds"),
    );
    for (name, kind) in SCHEDULERS {
        let params = GenerateParams {
            scheduler: kind,
            ..base.clone()
        };
        let latents = pipe
            .generate_latents(&params, &mut |_, _| ControlFlow::Continue(()))
            .unwrap();
        assert_close(
            &format!("{label} pipeline {name} final latents"),
            &latents,
            &r.get(&format!("pipeline_{name}_latents_final")),
        );
        let image = pipe.decode(&latents).unwrap().f_div_scalar(2.0).unwrap() + 0.5;
        assert_close(
            &format!("{label} pipeline {name} image"),
            &image.clamp(0.0, 1.0),
            &r.get(&format!("pipeline_{name}_image")),
        );
        // And the RGB8 output is that image, rounded.
        let rgb = pipe
            .generate(&params, &mut |_, _| ControlFlow::Continue(()))
            .unwrap();
        let expected = (r.get(&format!("pipeline_{name}_image")) * 255.0)
            .round()
            .permute([0, 2, 3, 1])
            .flatten(0, -1);
        let ours = Tensor::from_slice(&rgb[0].pixels).to_kind(Kind::Float);
        let off = (&ours - &expected).abs().max().double_value(&[]);
        assert!(off <= 1.0, "{label} {name}: RGB8 differs by {off} levels");
    }
}

#[test]
fn tiny_sd1_folder_matches_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir, "tiny-sd1");
    let pipe = load(&dir, "tiny-sd1");
    check_components(&pipe, &r, "sd1");
    check_initial_noise(&pipe, &r, "sd1");
    check_schedulers(&pipe, &r, "sd1");
    check_pipeline(&pipe, &r, "sd1");
}

#[test]
fn tiny_sd1_single_file_matches_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir, "tiny-sd1");
    let spec = ModelSpec {
        kind: ModelKind::Sd1,
        path: dir.join("tiny-sd1.safetensors"),
        config: Some(dir.join("tiny-sd1")),
        sha256: None,
    };
    let pipe = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap();
    check_components(&pipe, &r, "sd1 single file");
}

#[test]
fn tiny_sd2_folder_matches_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir, "tiny-sd2");
    let pipe = load(&dir, "tiny-sd2");
    check_components(&pipe, &r, "sd2");
    check_initial_noise(&pipe, &r, "sd2");
    check_schedulers(&pipe, &r, "sd2");
    check_pipeline(&pipe, &r, "sd2");
}
