//! End-to-end tests of the engine on tiny random-weight models written in
//! the diffusers layout: loading, every scheduler, seeding, batching,
//! cancellation, and the loader's refusals.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;

use common::{write_tiny_model, TinyOptions};
use tch::{Device, Kind, Tensor};
use weave_common::prompt::PromptField;
use weave_worker::engine::{
    DeviceChoice, EngineError, GenerateParams, LoaderError, ModelError, ModelSpec, Pipeline,
    Precision, SafetensorsError, SchedulerKind,
};

fn load(dir: &std::path::Path) -> Result<Pipeline, EngineError> {
    Pipeline::load(&ModelSpec::new(dir), DeviceChoice::Cpu, Precision::F32)
}

fn params(scheduler: SchedulerKind, seed: u64) -> GenerateParams {
    GenerateParams {
        prompt: "the cat".into(),
        negative_prompt: String::new(),
        width: 16,
        height: 16,
        steps: 4,
        guidance: 5.0,
        seed,
        scheduler,
        batch: 2,
        clip_skip: 0,
        max_prompt_chunks: 8,
        image: None,
    }
}

fn go(_: usize, _: usize) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[test]
fn every_scheduler_generates_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    assert!(pipe.memory_bytes() > 100_000);
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPlusPlus2M,
        SchedulerKind::DpmPlusPlus2MKarras,
    ] {
        let mut steps = Vec::new();
        let a = pipe
            .generate(&params(kind, 42), &mut |s, t| {
                steps.push((s, t));
                ControlFlow::Continue(())
            })
            .unwrap();
        // Each image of the batch of 2 runs its own 4 steps; progress is
        // the share of the whole batch, in steps of 4.
        assert_eq!(
            steps,
            vec![
                (1, 4),
                (1, 4),
                (2, 4),
                (2, 4),
                (3, 4),
                (3, 4),
                (4, 4),
                (4, 4)
            ],
            "{kind:?}"
        );
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].width, a[0].height, a[0].pixels.len()),
            (16, 16, 16 * 16 * 3)
        );
        let b = pipe.generate(&params(kind, 42), &mut go).unwrap();
        assert_eq!(a, b, "{kind:?}: same seed, same images");
        let c = pipe.generate(&params(kind, 43), &mut go).unwrap();
        assert_ne!(a, c, "{kind:?}: another seed, other images");
        // The two images of a batch come from different noise.
        assert_ne!(a[0], a[1], "{kind:?}");
    }
}

#[test]
fn initial_latents_are_torch_randn_after_manual_seed() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    let latents = pipe
        .initial_latents(&params(SchedulerKind::Ddim, 1234))
        .unwrap();
    assert_eq!(latents.size(), vec![2, 4, 8, 8]);
    let _rng = weave_worker::engine::global_rng_lock();
    tch::manual_seed(1234);
    let expected = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    assert!(latents.equal(&expected));
}

#[test]
fn cancel_stops_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    let mut calls = 0;
    let err = pipe
        .generate(&params(SchedulerKind::Euler, 1), &mut |step, _| {
            calls += 1;
            if step == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    // Batch of 2: batch step 2 of 4 is image 0's third step.
    assert_eq!(calls, 3);
}

/// Image i of a batch is the single image of seed + i (the PNG text and
/// `--json` say so), for every scheduler, the ancestral one (which draws
/// noise at every step) included, and across the u64 wrap.
#[test]
fn batch_image_i_is_the_single_image_of_seed_plus_i() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    for (kind, seed) in [
        (SchedulerKind::Ddim, 42),
        (SchedulerKind::EulerAncestral, 42),
        (SchedulerKind::DpmPlusPlus2M, u64::MAX - 1),
    ] {
        let mut batch = params(kind, seed);
        batch.batch = 3;
        let images = pipe.generate(&batch, &mut go).unwrap();
        assert_eq!(images.len(), 3);
        for (i, image) in images.iter().enumerate() {
            let mut single = params(kind, seed.wrapping_add(i as u64));
            single.batch = 1;
            let alone = pipe.generate(&single, &mut go).unwrap();
            assert_eq!(alone.len(), 1);
            assert!(
                *image == alone[0],
                "{kind:?}: batch image {i} of seed {seed} differs from the single run of seed {}",
                seed.wrapping_add(i as u64)
            );
        }
    }
}

#[test]
fn guidance_off_and_clip_skip_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    let base = pipe
        .generate(&params(SchedulerKind::Ddim, 5), &mut go)
        .unwrap();
    let mut p = params(SchedulerKind::Ddim, 5);
    p.guidance = 1.0;
    assert_ne!(pipe.generate(&p, &mut go).unwrap(), base);
    let mut p = params(SchedulerKind::Ddim, 5);
    p.clip_skip = 1;
    assert_ne!(pipe.generate(&p, &mut go).unwrap(), base);
    let mut p = params(SchedulerKind::Ddim, 5);
    p.negative_prompt = "blurry".into();
    assert_ne!(pipe.generate(&p, &mut go).unwrap(), base);
}

#[test]
fn text_model_prefix_is_optional() {
    let plain = tempfile::tempdir().unwrap();
    let prefixed = tempfile::tempdir().unwrap();
    write_tiny_model(plain.path(), &TinyOptions::default());
    write_tiny_model(
        prefixed.path(),
        &TinyOptions {
            text_model_prefix: true,
            ..Default::default()
        },
    );
    let a = load(plain.path())
        .unwrap()
        .encode_text("the cat", PromptField::Prompt, 0, 1)
        .unwrap();
    let b = load(prefixed.path())
        .unwrap()
        .encode_text("the cat", PromptField::Prompt, 0, 1)
        .unwrap();
    assert!(a.equal(&b));
}

#[test]
fn sd2_style_v_prediction_with_linear_projection_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(
        dir.path(),
        &TinyOptions {
            prediction: "v_prediction",
            linear_projection: true,
            ..Default::default()
        },
    );
    let pipe = load(dir.path()).unwrap();
    let imgs = pipe
        .generate(&params(SchedulerKind::DpmPlusPlus2M, 3), &mut go)
        .unwrap();
    assert_eq!(imgs.len(), 2);
}

#[test]
fn invalid_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    for (w, h, batch) in [(15, 16, 1), (0, 16, 1), (16, 16, 0), (8192, 16, 1)] {
        let mut p = params(SchedulerKind::Ddim, 1);
        (p.width, p.height, p.batch) = (w, h, batch);
        let err = pipe.generate(&p, &mut go).unwrap_err();
        assert!(matches!(err, EngineError::InvalidParams(_)), "{err}");
    }
    let mut p = params(SchedulerKind::Ddim, 1);
    p.steps = 0;
    assert!(matches!(
        pipe.generate(&p, &mut go).unwrap_err(),
        EngineError::Scheduler(_)
    ));
}

#[test]
fn pickled_weights_are_refused_by_content() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    // A torch.save zip under the safetensors name: refused by its bytes.
    std::fs::write(
        dir.path().join("unet/diffusion_pytorch_model.safetensors"),
        b"PK\x03\x04\x14\x00\x00\x00archive/data.pkl",
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::Loader(LoaderError::File(SafetensorsError::PickleCheckpoint { .. }))
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("pickle checkpoints are not supported"),
        "{err}"
    );
    // Only a .bin present: chosen as the candidate, refused by content.
    std::fs::remove_file(dir.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("unet/diffusion_pytorch_model.bin"),
        b"\x80\x02}q\x00.",
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(err.to_string().contains("pickle"), "{err}");
}

#[test]
fn weights_that_disagree_with_the_config_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let cfg = dir.path().join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48"),
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(
        matches!(err, EngineError::Model(ModelError::Shape { .. })),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let cfg = dir.path().join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"layers_per_block\": 1", "\"layers_per_block\": 2"),
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(
        matches!(err, EngineError::Model(ModelError::MissingWeight { .. })),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    std::fs::write(dir.path().join("vae/config.json"), "{not json").unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(
        matches!(err, EngineError::Loader(LoaderError::BadConfig { .. })),
        "{err}"
    );
}

#[test]
fn missing_parts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    std::fs::remove_file(dir.path().join("model_index.json")).unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(err.to_string().contains("model_index.json"), "{err}");
    let err = load(&dir.path().join("nope")).err().unwrap();
    assert!(
        matches!(err, EngineError::Loader(LoaderError::UnknownLayout { .. })),
        "{err}"
    );
}

/// The reduced-precision path (fp16/bf16 on CUDA) exercised on the CPU with
/// bf16: it runs and lands near the fp32 result.
#[test]
fn bf16_path_runs_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let full = load(dir.path()).unwrap();
    let half = Pipeline::load(
        &ModelSpec::new(dir.path()),
        DeviceChoice::Cpu,
        Precision::Bf16,
    )
    .unwrap();
    assert_eq!(half.kind(), Kind::BFloat16);
    assert_eq!(half.memory_bytes() * 2, full.memory_bytes());
    let mut p = params(SchedulerKind::Ddim, 9);
    p.batch = 1;
    let a = full
        .encode_text("the cat", PromptField::Prompt, 0, 1)
        .unwrap();
    let b = half
        .encode_text("the cat", PromptField::Prompt, 0, 1)
        .unwrap()
        .to_kind(Kind::Float);
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(diff < 0.1, "bf16 text embeddings differ by {diff}");
    let img = half.generate(&p, &mut go).unwrap();
    assert_eq!(img[0].pixels.len(), 16 * 16 * 3);
}

/// 80 one-letter words, one token each (every byte is a word of the CLIP
/// vocabulary): two chunks of 75 tokens.
fn long_prompt() -> String {
    (0..80)
        .map(|i| if i % 2 == 0 { "a" } else { "b" })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a1111_weights_change_the_embedding_and_weight_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    let encode = |text: &str| pipe.encode_text(text, PromptField::Prompt, 0, 8).unwrap();
    let plain = encode("the cat");
    assert_eq!(plain.size()[1], 77);
    assert!(
        encode("the (cat:1)").equal(&plain),
        "weight 1 is the plain prompt"
    );
    assert!(encode(r"the \(cat\)").size()[1] == 77);
    let weighted = encode("the (cat:1.5)");
    assert_eq!(weighted.size(), plain.size());
    assert!(
        !weighted.allclose(&plain, 1e-5, 1e-5, false),
        "the weight reached the embedding"
    );
    // A1111 keeps the mean of the chunk.
    let mean = |t: &Tensor| t.mean(Kind::Float).double_value(&[]);
    assert!((mean(&weighted) - mean(&plain)).abs() < 1e-5);
}

#[test]
fn long_prompts_and_break_take_more_chunks_and_still_generate() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    let long = long_prompt();
    assert_eq!(pipe.tokenizer().encode_plain(&long).len(), 80);
    assert_eq!(
        pipe.encode_text(&long, PromptField::Prompt, 0, 8)
            .unwrap()
            .size()[1],
        154
    );
    assert_eq!(
        pipe.encode_text("a cat BREAK a dog", PromptField::Prompt, 0, 8)
            .unwrap()
            .size()[1],
        154
    );
    // The first chunk of a long prompt is its first 75 tokens, as diffusers
    // would truncate it; the second chunk adds the rest.
    let first = pipe
        .encode_text(&long, PromptField::Prompt, 0, 8)
        .unwrap()
        .narrow(1, 0, 77);
    let truncated_text = long.split(' ').take(75).collect::<Vec<_>>().join(" ");
    let truncated = pipe
        .encode_text(&truncated_text, PromptField::Prompt, 0, 1)
        .unwrap();
    assert!(first.equal(&truncated));
    // Guidance batches a 2-chunk prompt with a 1-chunk negative prompt.
    let p = GenerateParams {
        prompt: long.clone(),
        batch: 1,
        ..params(SchedulerKind::Ddim, 3)
    };
    let long_images = pipe.generate(&p, &mut go).unwrap();
    let short = GenerateParams {
        prompt: truncated_text,
        ..p.clone()
    };
    let short_images = pipe.generate(&short, &mut go).unwrap();
    assert_ne!(
        long_images[0].pixels, short_images[0].pixels,
        "the second chunk took part"
    );
    let swapped = GenerateParams {
        prompt: String::new(),
        negative_prompt: long,
        ..p
    };
    pipe.generate(&swapped, &mut go).unwrap();
}

#[test]
fn a_prompt_over_the_chunk_limit_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pipe = load(dir.path()).unwrap();
    let p = GenerateParams {
        negative_prompt: "a BREAK b BREAK c".into(),
        max_prompt_chunks: 2,
        ..params(SchedulerKind::Ddim, 3)
    };
    match pipe.generate(&p, &mut go) {
        Err(EngineError::PromptTooLong { field, chunks }) => {
            assert_eq!(field, PromptField::NegativePrompt);
            assert_eq!(chunks, 3);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
