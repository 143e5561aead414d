//! SDXL against reference tensors recorded with Python diffusers'
//! `StableDiffusionXLPipeline` (`tools/fixtures/sdxl_fixtures.py`, files
//! `worker/tests/fixtures/tiny-sdxl*`): token ids of both tokenizers
//! exactly, every float tensor within 1e-4 (max abs) in fp32 — both
//! encoders' penultimate states (and clip skip 1), the pooled projection,
//! the time and text-time embeddings, the UNet, the VAE, every scheduler
//! step on SDXL's config and on SDXL-Turbo's (Euler ancestral, trailing),
//! and whole pipeline runs: five schedulers with a negative prompt, the
//! zeroed empty negative, and Turbo at guidance 0 — and the same model as
//! one SGM-named single file (`tiny-sdxl.safetensors`).
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::{assert_close, TOLERANCE};
use tch::{Device, Kind, Tensor};
use weave_common::prompt::PromptField;
use weave_worker::engine::denoisers::TextTime;
use weave_worker::engine::schedulers::{Scheduler, SchedulerConfig, SchedulerError};
use weave_worker::engine::weights::safetensors::SafetensorsFile;
use weave_worker::engine::PromptInput;
use weave_worker::engine::{
    global_rng_lock, DeviceChoice, EngineError, GenerateParams, LoaderError, ModelKind, ModelSpec,
    Pipeline, Precision, SchedulerKind,
};

fn fixtures() -> Option<PathBuf> {
    common::reference_fixtures("tiny-sdxl-ref.safetensors")
}

struct Reference {
    file: SafetensorsFile,
    params: serde_json::Value,
}

impl Reference {
    fn open(dir: &Path) -> Self {
        let file = SafetensorsFile::open(&dir.join("tiny-sdxl-ref.safetensors")).unwrap();
        let text = std::fs::read(dir.join("tiny-sdxl-ref.json")).unwrap();
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
}

fn load(dir: &Path) -> Pipeline {
    let mut spec = ModelSpec::new(dir);
    spec.kind = ModelKind::Sdxl;
    Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap()
}

const SCHEDULERS: [(&str, SchedulerKind); 5] = [
    ("ddim", SchedulerKind::Ddim),
    ("euler", SchedulerKind::Euler),
    ("euler_a", SchedulerKind::EulerAncestral),
    ("dpmpp_2m", SchedulerKind::DpmPlusPlus2M),
    ("dpmpp_2m_karras", SchedulerKind::DpmPlusPlus2MKarras),
];

fn turbo_config(base: &SchedulerConfig) -> SchedulerConfig {
    let mut c = base.clone();
    c.timestep_spacing = Some("trailing".into());
    c
}

#[test]
fn tiny_sdxl_text_unet_vae_match_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir);
    let pipe = load(&dir.join("tiny-sdxl"));
    assert!(pipe.is_sdxl());
    let _no_grad = tch::no_grad_guard();
    let prompts: Vec<String> = serde_json::from_value(r.params["token_prompts"].clone()).unwrap();
    let (tok2, enc2) = pipe.second_text().unwrap();
    for (suffix, tokenizer, encoder) in [
        ("", pipe.tokenizer(), pipe.text_encoder()),
        ("_2", tok2, enc2),
    ] {
        let ids = r.raw(&format!("token_ids{suffix}"));
        for (i, prompt) in prompts.iter().enumerate() {
            let theirs: Vec<i64> = Vec::try_from(ids.get(i as i64)).unwrap();
            assert_eq!(
                tokenizer.encode(prompt),
                theirs,
                "token ids{suffix} of {prompt:?}"
            );
        }
        let out = encoder.hidden_and_pooled(&ids, 0).unwrap();
        assert_close(
            &format!("penultimate{suffix}"),
            &out.hidden,
            &r.get(&format!("penultimate{suffix}")),
        );
        let skip = encoder.hidden_and_pooled(&ids, 1).unwrap();
        assert_close(
            &format!("clip_skip1{suffix}"),
            &skip.hidden,
            &r.get(&format!("clip_skip1{suffix}")),
        );
        match (suffix, out.pooled) {
            ("_2", Some(pooled)) => assert_close("pooled_2", &pooled, &r.get("pooled_2")),
            ("", None) => {}
            (s, p) => panic!("encoder{s}: pooled output present = {}", p.is_some()),
        }
    }
    // The pipeline's prompt encoding is the concatenation.
    let embeds = pipe
        .encode_prompt(&PromptInput {
            text: &prompts[0],
            field: PromptField::Prompt,
            clip_skip: 0,
            max_chunks: 1,
        })
        .unwrap();
    let both = Tensor::cat(&[r.get("penultimate"), r.get("penultimate_2")], -1);
    assert_close("prompt_embeds", &embeds.context, &both.narrow(0, 0, 1));
    assert_close(
        "pooled_prompt_embeds",
        &embeds.pooled.unwrap(),
        &r.get("pooled_2").narrow(0, 0, 1),
    );

    let unet = pipe.unet();
    let t = r.raw("unet_timestep").int64_value(&[]) as f64;
    let added = TextTime {
        text_embeds: r.get("unet_text_embeds"),
        time_ids: r.get("unet_time_ids"),
    };
    let t_emb = unet.time_embedding(2, t, Device::Cpu, Kind::Float).unwrap();
    assert_close("time embedding", &t_emb, &r.get("unet_time_emb"));
    let aug = unet.text_time_embedding(&added).unwrap();
    assert_close("text_time add embedding", &aug, &r.get("unet_add_emb"));
    let out = unet
        .forward_with(
            &r.get("unet_sample"),
            t,
            &r.get("unet_encoder_hidden_states"),
            Some(&added),
        )
        .unwrap();
    assert_close("unet_out", &out, &r.get("unet_out"));
    // A text_time UNet refuses to run without its added conditioning.
    assert!(unet
        .forward(
            &r.get("unet_sample"),
            t,
            &r.get("unet_encoder_hidden_states")
        )
        .is_err());

    let dec = pipe.decode(&r.get("vae_latents")).unwrap();
    assert_close(
        "vae_decoded (scaling_factor 0.13025)",
        &dec,
        &r.get("vae_decoded"),
    );
}

#[test]
fn tiny_sdxl_schedulers_match_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir);
    let pipe = load(&dir.join("tiny-sdxl"));
    let steps = r.params["sched_steps"].as_u64().unwrap() as usize;
    let ancestral_seed = r.params["ancestral_seed"].as_i64().unwrap();
    let (sample0, outputs) = (r.get("sched_sample0"), r.get("sched_model_outputs"));
    let turbo = turbo_config(pipe.scheduler_config());
    let mut cases: Vec<(&str, SchedulerKind, &SchedulerConfig)> = SCHEDULERS
        .iter()
        .map(|&(n, k)| (n, k, pipe.scheduler_config()))
        .collect();
    cases.push(("turbo", SchedulerKind::EulerAncestral, &turbo));
    for (name, kind, config) in cases {
        let mut s = Scheduler::new(kind, config, steps).unwrap();
        let ts = Tensor::from_slice(s.timesteps()).to_kind(Kind::Float);
        assert_close(
            &format!("{name} timesteps"),
            &ts,
            &r.get(&format!("sched_{name}_timesteps")),
        );
        let init = r
            .get(&format!("sched_{name}_init_noise_sigma"))
            .double_value(&[]);
        assert!(
            (s.init_noise_sigma() - init).abs() <= TOLERANCE,
            "{name}: init_noise_sigma {} vs {init}",
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
                &format!("{name} scaled input {i}"),
                &scaled,
                &scaled_ref.get(i as i64),
            );
            x = s.step(&outputs.get(i as i64), &x, &mut noise).unwrap();
            assert_close(
                &format!("{name} sample {}", i + 1),
                &x,
                &samples_ref.get(i as i64 + 1),
            );
        }
    }
}

/// The fixture folder with SDXL-Turbo's scheduler config (trailing).
fn turbo_folder(src: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(src, tmp.path());
    let path = tmp.path().join("scheduler/scheduler_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["timestep_spacing"] = "trailing".into();
    config["_class_name"] = "EulerAncestralDiscreteScheduler".into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn tiny_sdxl_pipeline_matches_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir);
    let pipe = load(&dir.join("tiny-sdxl"));
    let turbo_dir = turbo_folder(&dir.join("tiny-sdxl"));
    let turbo = load(turbo_dir.path());
    let mut runs: Vec<(&str, SchedulerKind, &Pipeline)> =
        SCHEDULERS.iter().map(|&(n, k)| (n, k, &pipe)).collect();
    runs.push(("euler_zero_negative", SchedulerKind::Euler, &pipe));
    runs.push(("turbo", SchedulerKind::EulerAncestral, &turbo));
    for (name, kind, pipe) in runs {
        let p = &r.params["pipeline"][name];
        let params = GenerateParams {
            prompt: p["prompt"].as_str().unwrap().into(),
            // diffusers' None: our empty negative prompt.
            negative_prompt: p["negative_prompt"].as_str().unwrap_or_default().into(),
            width: p["width"].as_u64().unwrap() as u32,
            height: p["height"].as_u64().unwrap() as u32,
            steps: p["num_inference_steps"].as_u64().unwrap() as u32,
            guidance: p["guidance_scale"].as_f64().unwrap(),
            seed: p["seed"].as_u64().unwrap(),
            scheduler: kind,
            batch: 1,
            clip_skip: 0,
            max_prompt_chunks: 1,
            image: None,
        };
        let mut seen = Vec::new();
        let latents = pipe
            .generate_latents(&params, &mut |step, _| {
                seen.push(step);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen.len(), params.steps as usize, "{name}: progress calls");
        assert_close(
            &format!("pipeline {name} final latents"),
            &latents,
            &r.get(&format!("pipeline_{name}_latents_final")),
        );
        let image = pipe.decode(&latents).unwrap() / 2.0 + 0.5;
        assert_close(
            &format!("pipeline {name} image"),
            &image.clamp(0.0, 1.0),
            &r.get(&format!("pipeline_{name}_image")),
        );
        let rgb = pipe
            .generate(&params, &mut |_, _| ControlFlow::Continue(()))
            .unwrap();
        let expected = (r.get(&format!("pipeline_{name}_image")) * 255.0)
            .round()
            .permute([0, 2, 3, 1])
            .flatten(0, -1);
        let ours = Tensor::from_slice(&rgb[0].pixels).to_kind(Kind::Float);
        let off = (&ours - &expected).abs().max().double_value(&[]);
        assert!(off <= 1.0, "{name}: RGB8 differs by {off} levels");
    }
}

/// The zeroed negative differs from an encoded empty prompt, so the
/// `force_zeros_for_empty_prompt` switch in model_index.json matters.
#[test]
fn force_zeros_for_empty_prompt_is_read_from_model_index() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("tiny-sdxl"), tmp.path());
    let index_path = tmp.path().join("model_index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["force_zeros_for_empty_prompt"] = false.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let params = GenerateParams {
        prompt: "a photo of a cat".into(),
        width: 48,
        height: 64,
        steps: 2,
        guidance: 5.0,
        seed: 3,
        scheduler: SchedulerKind::Euler,
        ..Default::default()
    };
    let run = |pipe: &Pipeline| {
        pipe.generate_latents(&params, &mut |_, _| ControlFlow::Continue(()))
            .unwrap()
    };
    let zeroed = run(&load(&dir.join("tiny-sdxl")));
    let encoded = run(&load(tmp.path()));
    let diff = (&zeroed - &encoded).abs().max().double_value(&[]);
    assert!(
        diff > 1e-3,
        "negative zeros vs encoded \"\" differ by only {diff}"
    );
}

/// The same weights as one SGM-named checkpoint (`tiny-sdxl.safetensors`,
/// written by the fixture script and checked there with diffusers'
/// `from_single_file(config=folder)`): `conditioner.embedders.0/1`, OpenCLIP's
/// fused `in_proj` split into q/k/v, the transposed `text_projection`,
/// `label_emb` → `add_embedding`. Loaded with the folder's configs, as
/// `from_single_file(config=...)`, and `kind` inferred from the keys.
#[test]
fn tiny_sdxl_single_file_matches_diffusers() {
    let Some(dir) = fixtures() else { return };
    let r = Reference::open(&dir);
    let spec = ModelSpec {
        config: Some(dir.join("tiny-sdxl")),
        ..ModelSpec::new(dir.join("tiny-sdxl.safetensors"))
    };
    let pipe = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap();
    assert!(pipe.is_sdxl());
    let _no_grad = tch::no_grad_guard();
    let (_, enc2) = pipe.second_text().unwrap();
    let one = pipe
        .text_encoder()
        .hidden_and_pooled(&r.raw("token_ids"), 0)
        .unwrap();
    assert_close(
        "single file penultimate",
        &one.hidden,
        &r.get("penultimate"),
    );
    let two = enc2.hidden_and_pooled(&r.raw("token_ids_2"), 0).unwrap();
    assert_close(
        "single file penultimate_2",
        &two.hidden,
        &r.get("penultimate_2"),
    );
    assert_close(
        "single file pooled_2",
        &two.pooled.unwrap(),
        &r.get("pooled_2"),
    );
    let added = TextTime {
        text_embeds: r.get("unet_text_embeds"),
        time_ids: r.get("unet_time_ids"),
    };
    let t = r.raw("unet_timestep").int64_value(&[]) as f64;
    let out = pipe
        .unet()
        .forward_with(
            &r.get("unet_sample"),
            t,
            &r.get("unet_encoder_hidden_states"),
            Some(&added),
        )
        .unwrap();
    assert_close("single file unet_out", &out, &r.get("unet_out"));
    let dec = pipe.decode(&r.get("vae_latents")).unwrap();
    assert_close("single file vae_decoded", &dec, &r.get("vae_decoded"));
    let p = &r.params["pipeline"]["euler"];
    let params = GenerateParams {
        prompt: p["prompt"].as_str().unwrap().into(),
        negative_prompt: p["negative_prompt"].as_str().unwrap().into(),
        width: p["width"].as_u64().unwrap() as u32,
        height: p["height"].as_u64().unwrap() as u32,
        steps: p["num_inference_steps"].as_u64().unwrap() as u32,
        guidance: p["guidance_scale"].as_f64().unwrap(),
        seed: p["seed"].as_u64().unwrap(),
        scheduler: SchedulerKind::Euler,
        batch: 1,
        clip_skip: 0,
        max_prompt_chunks: 1,
        image: None,
    };
    let latents = pipe
        .generate_latents(&params, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    assert_close(
        "single file pipeline euler final latents",
        &latents,
        &r.get("pipeline_euler_latents_final"),
    );
}

/// An SGM checkpoint without the OpenCLIP bigG tower (a refiner, a
/// truncated file) is refused with a typed error, never a crash.
#[test]
fn an_incomplete_single_file_sdxl_is_refused_with_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sdxl.safetensors");
    let t = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[
            ("model.diffusion_model.input_blocks.0.0.weight", &t),
            (
                "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                &t,
            ),
        ],
        &path,
    )
    .unwrap();
    for kind in [ModelKind::Auto, ModelKind::Sdxl] {
        let mut spec = ModelSpec::new(&path);
        spec.kind = kind;
        match Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32) {
            Err(EngineError::Loader(LoaderError::SingleFile { reason, .. })) => {
                assert!(reason.contains("conditioner.embedders.1.model"), "{reason}")
            }
            Err(other) => panic!("{kind:?}: wrong error {other}"),
            Ok(_) => panic!("{kind:?}: an incomplete SDXL checkpoint loaded"),
        }
    }
}

#[test]
fn sdxl_long_prompts_weights_and_break_use_both_encoders() {
    let Some(dir) = fixtures() else { return };
    let pipe = load(&dir.join("tiny-sdxl"));
    let encode = |text: &str| {
        pipe.encode_prompt(&PromptInput {
            text,
            field: PromptField::Prompt,
            clip_skip: 0,
            max_chunks: 4,
        })
        .unwrap()
    };
    let plain = encode("a photo of a cat");
    assert!(encode("(a photo of a cat:1)").context.equal(&plain.context));
    let weighted = encode("a photo of a (cat:1.4)");
    assert!(!weighted.context.allclose(&plain.context, 1e-5, 1e-5, false));
    // Two chunks in both encoders; the pooled embedding is the first chunk's.
    let two = encode("a photo of a cat BREAK a dog");
    assert_eq!(two.context.size()[1], 154);
    assert_eq!(two.context.size()[2], plain.context.size()[2]);
    let pooled = |e: &weave_worker::engine::pipelines::PromptEmbeds| {
        e.pooled.as_ref().unwrap().shallow_clone()
    };
    assert!(pooled(&two).equal(&pooled(&plain)));
    // And the pipeline runs a 2-chunk prompt against a 1-chunk negative.
    let params = GenerateParams {
        prompt: "a photo of a cat BREAK a dog".into(),
        negative_prompt: "blurry".into(),
        width: 32,
        height: 32,
        steps: 2,
        guidance: 5.0,
        seed: 1,
        scheduler: SchedulerKind::Euler,
        batch: 1,
        clip_skip: 0,
        max_prompt_chunks: 4,
        image: None,
    };
    let images = pipe
        .generate(&params, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(images.len(), 1);
}

/// A pinned SDXL folder covers the second encoder and tokenizer: it loads
/// with its pin, and a changed byte in `text_encoder_2/` is refused.
#[test]
fn a_pinned_sdxl_folder_covers_text_encoder_2() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("tiny-sdxl"), tmp.path());
    let pin = weave_common::pin::pin_of(tmp.path()).unwrap();
    let spec = ModelSpec {
        sha256: Some(pin),
        ..ModelSpec::new(tmp.path())
    };
    let pipe = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap();
    assert!(pipe.is_sdxl());
    let config = tmp.path().join("text_encoder_2/config.json");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push(' ');
    std::fs::write(&config, text).unwrap();
    assert!(matches!(
        Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32),
        Err(EngineError::Loader(LoaderError::PinMismatch))
    ));
}

/// SDXL's VAE overflows in fp16, so with `force_upcast` (the fixture's
/// vae/config.json) an fp16 SDXL pipeline decodes in fp32, as diffusers'
/// SDXL pipeline does; the SD 1.x/2.x pipeline (which diffusers does not
/// upcast) keeps its VAE in the compute dtype.
#[test]
fn an_fp16_sdxl_pipeline_decodes_in_fp32() {
    let Some(dir) = fixtures() else { return };
    let mut spec = ModelSpec::new(dir.join("tiny-sdxl"));
    spec.kind = ModelKind::Sdxl;
    let half = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F16).unwrap();
    assert_eq!(half.vae_kind(), Kind::Float);
    assert_eq!(half.kind(), Kind::Half);
    let latents = Tensor::randn([1, 4, 8, 6], (Kind::Half, Device::Cpu));
    assert_eq!(half.decode(&latents).unwrap().kind(), Kind::Float);
    let sd = Pipeline::load(
        &ModelSpec::new(dir.join("tiny-sd2")),
        DeviceChoice::Cpu,
        Precision::F16,
    )
    .unwrap();
    assert_eq!(sd.vae_kind(), Kind::Half);
}
