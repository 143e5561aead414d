//! img2img and inpainting checked against diffusers on the tiny SD 1.x
//! fixture (`tools/fixtures/img2img_fixtures.py`): the VAE encoder's
//! posterior and its seeded sample, and the final latents of one
//! `StableDiffusionImg2ImgPipeline` and one `StableDiffusionInpaintPipeline`
//! run with Euler ancestral (so every random draw's order counts), all to
//! 1e-4 in fp32; the inpainted image keeps every unmasked pixel exactly.
#![allow(clippy::unwrap_used)]
mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;

use common::assert_close;
use tch::{Device, Kind, Tensor};
use weave_worker::engine::weights::safetensors::SafetensorsFile;
use weave_worker::engine::{
    global_rng_lock, DeviceChoice, EngineError, GenerateParams, ImageInput, Mask, ModelKind,
    ModelSpec, Pipeline, Precision, RgbImage, SchedulerKind,
};

const SIDE: u32 = 64;

fn fixtures() -> Option<PathBuf> {
    common::reference_fixtures("tiny-sd1-img2img-ref.safetensors")
}

struct Case {
    pipe: Pipeline,
    refs: SafetensorsFile,
    init: RgbImage,
    mask: Mask,
}

impl Case {
    fn load(dir: &std::path::Path) -> Self {
        let refs = SafetensorsFile::open(&dir.join("tiny-sd1-img2img-ref.safetensors")).unwrap();
        let pipe = Pipeline::load(
            &ModelSpec::new(dir.join("tiny-sd1")),
            DeviceChoice::Cpu,
            Precision::F32,
        )
        .unwrap();
        let bytes = |name: &str| {
            let t = refs.read(name).unwrap();
            let n = t.numel();
            let mut v = vec![0u8; n];
            t.copy_data_u8(&mut v, n);
            v
        };
        let init = RgbImage {
            width: SIDE,
            height: SIDE,
            pixels: bytes("init_image"),
        };
        let mask = Mask::from_luma(SIDE, SIDE, &bytes("mask")).unwrap();
        Self {
            pipe,
            refs,
            init,
            mask,
        }
    }

    fn get(&self, name: &str) -> Tensor {
        self.refs.read_as(name, Kind::Float, Device::Cpu).unwrap()
    }

    fn params(&self, steps: u32, strength: f64, mask: bool) -> GenerateParams {
        GenerateParams {
            prompt: "a photo of a cat".into(),
            negative_prompt: "blurry, low quality".into(),
            width: SIDE,
            height: SIDE,
            steps,
            guidance: 7.5,
            seed: 42,
            scheduler: SchedulerKind::EulerAncestral,
            image: Some(ImageInput {
                init: self.init.clone(),
                mask: mask.then(|| self.mask.clone()),
                strength,
            }),
            ..Default::default()
        }
    }
}

fn go() -> impl FnMut(usize, usize) -> ControlFlow<()> {
    |_, _| ControlFlow::Continue(())
}

#[test]
fn tiny_sd1_img2img_and_inpaint_match_diffusers() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    let encoder = case
        .pipe
        .vae_encoder()
        .expect("the folder's VAE has an encoder");
    let x = case.get("preprocessed_image");
    let posterior = encoder.encode(&x).unwrap();
    assert_close(
        "vae encoder mean",
        &posterior.mean,
        &case.get("vae_encoder_mean"),
    );
    assert_close(
        "vae encoder logvar",
        &posterior.logvar,
        &case.get("vae_encoder_logvar"),
    );
    {
        let _rng = global_rng_lock();
        tch::manual_seed(42);
        let sample = posterior.sample().unwrap();
        assert_close(
            "vae encoder sample",
            &sample,
            &case.get("vae_encoder_sample"),
        );
    }

    // img2img: 5 steps at strength 0.6 run 3 (diffusers' get_timesteps).
    let p = case.params(5, 0.6, false);
    let mut seen = Vec::new();
    let lat = case
        .pipe
        .generate_latents(&p, &mut |s, t| {
            seen.push((s, t));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
    assert_close("img2img latents", &lat, &case.get("img2img_latents_final"));
    let image = case.pipe.decode(&lat).unwrap().f_div_scalar(2.0).unwrap() + 0.5;
    assert_close(
        "img2img image",
        &image.clamp(0.0, 1.0),
        &case.get("img2img_image"),
    );

    // Inpainting with latent masking: 4 steps at strength 0.75.
    let p = case.params(4, 0.75, true);
    let lat = case.pipe.generate_latents(&p, &mut go()).unwrap();
    assert_close("inpaint latents", &lat, &case.get("inpaint_latents_final"));

    // The output keeps every pixel outside the mask exactly and changes
    // pixels inside it.
    let out = case.pipe.generate(&p, &mut go()).unwrap();
    assert_eq!(out.len(), 1);
    let (mut kept, mut changed) = (0, 0);
    for (i, &repaint) in case.mask.repaint.iter().enumerate() {
        let (a, b) = (
            &out[0].pixels[3 * i..3 * i + 3],
            &case.init.pixels[3 * i..3 * i + 3],
        );
        if repaint {
            changed += usize::from(a != b);
        } else {
            assert_eq!(a, b, "unmasked pixel {i} changed");
            kept += 1;
        }
    }
    assert!(kept > 0 && changed > 0, "kept {kept}, changed {changed}");
}

/// Each other scheduler's `add_noise` and start index, img2img and inpaint.
#[test]
fn every_scheduler_starts_where_diffusers_does() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    for (name, kind) in [
        ("ddim", SchedulerKind::Ddim),
        ("euler", SchedulerKind::Euler),
        ("dpmpp_2m", SchedulerKind::DpmPlusPlus2M),
        ("dpmpp_2m_karras", SchedulerKind::DpmPlusPlus2MKarras),
    ] {
        for (what, steps, strength, mask) in
            [("img2img", 5, 0.6, false), ("inpaint", 4, 0.75, true)]
        {
            let p = GenerateParams {
                scheduler: kind,
                ..case.params(steps, strength, mask)
            };
            let lat = case.pipe.generate_latents(&p, &mut go()).unwrap();
            let key = format!("{what}_{name}_latents_final");
            assert_close(&key, &lat, &case.get(&key));
        }
    }
}

#[test]
fn bad_image_inputs_get_typed_errors() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    // int(10 × 0.05) = 0 steps would run.
    let err = case.pipe.generate(&case.params(10, 0.05, false), &mut go());
    assert!(
        matches!(err, Err(EngineError::InvalidParams(ref m)) if m.contains("strength")),
        "{err:?}"
    );
    let mut p = case.params(4, 0.5, false);
    p.width = 32;
    let err = case.pipe.generate(&p, &mut go());
    assert!(
        matches!(err, Err(EngineError::InvalidParams(ref m)) if m.contains("init_image")),
        "{err:?}"
    );
    let mut p = case.params(4, 0.5, true);
    if let Some(input) = p.image.as_mut() {
        input.mask = Some(Mask::from_luma(32, 32, &[0; 32 * 32]).unwrap());
    }
    let err = case.pipe.generate(&p, &mut go());
    assert!(
        matches!(err, Err(EngineError::InvalidParams(ref m)) if m.contains("mask")),
        "{err:?}"
    );
}

/// A single-file (LDM) checkpoint's VAE encoder (`first_stage_model.encoder.*`,
/// `quant_conv`) maps onto the folder's: the same posterior, and img2img and
/// inpainting give the folder's latents.
#[test]
fn single_file_vae_encoder_matches_the_folder() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    let spec = ModelSpec {
        kind: ModelKind::Sd1,
        path: dir.join("tiny-sd1.safetensors"),
        config: Some(dir.join("tiny-sd1")),
        sha256: None,
    };
    let single = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap();
    let encoder = single
        .vae_encoder()
        .expect("the single file's VAE encoder is mapped");
    let posterior = encoder.encode(&case.get("preprocessed_image")).unwrap();
    assert_close(
        "single-file vae encoder mean",
        &posterior.mean,
        &case.get("vae_encoder_mean"),
    );
    assert_close(
        "single-file vae encoder logvar",
        &posterior.logvar,
        &case.get("vae_encoder_logvar"),
    );
    let lat = single
        .generate_latents(&case.params(5, 0.6, false), &mut go())
        .unwrap();
    assert_close(
        "single-file img2img latents",
        &lat,
        &case.get("img2img_latents_final"),
    );
    let lat = single
        .generate_latents(&case.params(4, 0.75, true), &mut go())
        .unwrap();
    assert_close(
        "single-file inpaint latents",
        &lat,
        &case.get("inpaint_latents_final"),
    );
}

/// A VAE without encoder weights loads (text-to-image needs only the
/// decoder) but refuses image inputs by name, not running without them.
#[test]
fn decoder_only_vae_refuses_image_inputs() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    let model = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    let sd1 = dir.join("tiny-sd1");
    for entry in walk(&sd1) {
        let rel = entry.strip_prefix(&sd1).unwrap();
        if rel != std::path::Path::new("vae/diffusion_pytorch_model.safetensors") {
            copy(&entry, &model.path().join(rel));
        }
    }
    let vae =
        Tensor::read_safetensors(sd1.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let decoder: Vec<(String, Tensor)> = vae
        .into_iter()
        .filter(|(k, _)| !k.starts_with("encoder.") && !k.starts_with("quant_conv."))
        .collect();
    Tensor::write_safetensors(
        &decoder,
        model.path().join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let pipe = Pipeline::load(
        &ModelSpec::new(model.path()),
        DeviceChoice::Cpu,
        Precision::F32,
    )
    .unwrap();
    assert!(pipe.vae_encoder().is_none());
    let err = pipe.generate(&case.params(4, 0.5, false), &mut go());
    assert!(
        matches!(err, Err(EngineError::InvalidParams(ref m)) if m.contains("init_image") && m.contains("no encoder")),
        "{err:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
