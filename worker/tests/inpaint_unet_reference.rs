//! A 9-channel inpainting UNet (SD 1.5-inpainting style) checked against
//! diffusers' `StableDiffusionInpaintPipeline`
//! (`tools/fixtures/inpaint_fixtures.py`), stage by stage to 1e-4 in fp32:
//! the mask at latent size, the masked image and its latents, the first
//! UNet call's 9-channel input and its output, the latents after every
//! step, the decoded image; then the final latents at strength 1 (where
//! diffusers skips encoding the init image), without guidance and with
//! DDIM and DPM++ 2M. The model is tiny-sd1 with the inpainting UNet in
//! place of its own, assembled in a temporary folder.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::assert_close;
use tch::{Device, Kind, Tensor};
use weave_worker::engine::weights::safetensors::SafetensorsFile;
use weave_worker::engine::{
    DeviceChoice, EngineError, GenerateParams, ImageInput, Mask, ModelSpec, Pipeline, Precision,
    RgbImage, SchedulerKind, Stage,
};

const SIDE: u32 = 64;

fn fixtures() -> Option<PathBuf> {
    common::reference_fixtures("tiny-sd1-inpaint-ref.safetensors")
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

struct Case {
    _model: tempfile::TempDir,
    pipe: Pipeline,
    refs: SafetensorsFile,
    init: RgbImage,
    mask: Mask,
}

impl Case {
    fn load(dir: &Path) -> Self {
        let model = tempfile::tempdir().unwrap();
        let sd1 = dir.join("tiny-sd1");
        for part in ["scheduler", "text_encoder", "tokenizer", "vae"] {
            copy_dir(&sd1.join(part), &model.path().join(part));
        }
        std::fs::copy(
            sd1.join("model_index.json"),
            model.path().join("model_index.json"),
        )
        .unwrap();
        copy_dir(
            &dir.join("tiny-sd1-inpaint-unet"),
            &model.path().join("unet"),
        );
        let pipe = Pipeline::load(
            &ModelSpec::new(model.path()),
            DeviceChoice::Cpu,
            Precision::F32,
        )
        .unwrap();
        // The init image and mask are img2img_fixtures.py's.
        let images = SafetensorsFile::open(&dir.join("tiny-sd1-img2img-ref.safetensors")).unwrap();
        let bytes = |name: &str| {
            let t = images.read(name).unwrap();
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
        let refs = SafetensorsFile::open(&dir.join("tiny-sd1-inpaint-ref.safetensors")).unwrap();
        Self {
            _model: model,
            pipe,
            refs,
            init,
            mask,
        }
    }

    fn get(&self, name: &str) -> Tensor {
        self.refs.read_as(name, Kind::Float, Device::Cpu).unwrap()
    }

    fn params(&self, strength: f64) -> GenerateParams {
        GenerateParams {
            prompt: "a photo of a cat".into(),
            negative_prompt: "blurry, low quality".into(),
            width: SIDE,
            height: SIDE,
            steps: 4,
            guidance: 7.5,
            seed: 42,
            scheduler: SchedulerKind::EulerAncestral,
            image: Some(ImageInput {
                init: self.init.clone(),
                mask: Some(self.mask.clone()),
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
fn nine_channel_inpainting_matches_diffusers_stage_by_stage() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    assert_eq!(case.pipe.unet().config().in_channels, 9);
    let mut stages: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut seen = Vec::new();
    let latents = case
        .pipe
        .generate_latents_traced(
            &case.params(0.75),
            &mut |s, t| {
                seen.push((s, t));
                ControlFlow::Continue(())
            },
            &mut |stage, t| {
                let name = match stage {
                    Stage::MaskLatents => "mask_latents".to_string(),
                    Stage::MaskedImage => "masked_image".into(),
                    Stage::MaskedImageLatents => "masked_image_latents".into(),
                    Stage::UnetInput(0) => "unet_input_0".into(),
                    Stage::UnetOutput(0) => "unet_output_0".into(),
                    Stage::Latents(n) => format!("latents_step_{n}"),
                    Stage::ImageLatents
                    | Stage::TimeIds
                    | Stage::TextEmbeds
                    | Stage::Noise
                    | Stage::UnetInput(_)
                    | Stage::UnetOutput(_) => return,
                };
                stages.insert(name, t.shallow_clone());
            },
        )
        .unwrap();
    // int(4 × 0.75) = 3 steps run, one UNet call each (guidance batches).
    assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(case.get("unet_calls").int64_value(&[0]), 3);
    for name in [
        "mask_latents",
        "masked_image",
        "masked_image_latents",
        "unet_input_0",
        "unet_output_0",
        "latents_step_0",
        "latents_step_1",
        "latents_step_2",
    ] {
        let ours = stages
            .get(name)
            .unwrap_or_else(|| panic!("no {name} traced"));
        assert_close(name, ours, &case.get(name));
    }
    assert_close("latents final", &latents, &case.get("latents_final"));
    let image = case
        .pipe
        .decode(&latents)
        .unwrap()
        .f_div_scalar(2.0)
        .unwrap()
        + 0.5;
    assert_close("image", &image.clamp(0.0, 1.0), &case.get("image"));

    // generate() pastes the init image back outside the mask, exactly.
    let out = case.pipe.generate(&case.params(0.75), &mut go()).unwrap();
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

#[test]
fn nine_channel_variants_match_diffusers() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    let mut traced = Vec::new();
    let lat = case
        .pipe
        .generate_latents_traced(&case.params(1.0), &mut go(), &mut |s, _| traced.push(s))
        .unwrap();
    assert_close("strength 1", &lat, &case.get("strength1_latents_final"));
    // At strength 1 the init image is never encoded (nor is its draw made).
    assert!(!traced.contains(&Stage::ImageLatents), "{traced:?}");

    let p = GenerateParams {
        guidance: 1.0,
        ..case.params(0.75)
    };
    let lat = case.pipe.generate_latents(&p, &mut go()).unwrap();
    assert_close("no guidance", &lat, &case.get("noguidance_latents_final"));

    for (name, kind) in [
        ("ddim", SchedulerKind::Ddim),
        ("dpmpp_2m", SchedulerKind::DpmPlusPlus2M),
    ] {
        let p = GenerateParams {
            scheduler: kind,
            ..case.params(0.75)
        };
        let lat = case.pipe.generate_latents(&p, &mut go()).unwrap();
        assert_close(name, &lat, &case.get(&format!("{name}_latents_final")));
    }
}

#[test]
fn nine_channel_unet_refuses_requests_without_a_mask() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    let mut p = case.params(0.75);
    if let Some(input) = p.image.as_mut() {
        input.mask = None;
    }
    let err = case.pipe.generate(&p, &mut go());
    assert!(
        matches!(err, Err(EngineError::InvalidParams(ref m)) if m.contains("send a mask")),
        "{err:?}"
    );
    p.image = None;
    let err = case.pipe.generate(&p, &mut go());
    assert!(
        matches!(err, Err(EngineError::InvalidParams(ref m)) if m.contains("init_image and mask")),
        "{err:?}"
    );
}

/// A UNet taking neither 4 nor 9 channels (InstructPix2Pix's 8) is refused
/// with `NotBuilt` for every request, not run on a wrong-sized input.
#[test]
fn other_unet_channel_counts_are_refused() {
    let Some(dir) = fixtures() else { return };
    let case = Case::load(&dir);
    let model = case._model.path();
    let unet_file = model.join("unet/diffusion_pytorch_model.safetensors");
    let narrowed: Vec<(String, Tensor)> = Tensor::read_safetensors(&unet_file)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            if k == "conv_in.weight" {
                let (o, _, h, w) = t.size4().unwrap();
                (k, Tensor::zeros([o, 8, h, w], (t.kind(), Device::Cpu)))
            } else {
                (k, t)
            }
        })
        .collect();
    Tensor::write_safetensors(&narrowed, &unet_file).unwrap();
    let config_path = model.join("unet/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["in_channels"] = 8.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let pipe = Pipeline::load(&ModelSpec::new(model), DeviceChoice::Cpu, Precision::F32).unwrap();
    let mut p = case.params(0.75);
    let err = pipe.generate(&p, &mut go());
    assert!(
        matches!(err, Err(EngineError::NotBuilt(ref m)) if m.contains("8 input channels")),
        "{err:?}"
    );
    p.image = None;
    let err = pipe.generate(&p, &mut go());
    assert!(
        matches!(err, Err(EngineError::NotBuilt(ref m)) if m.contains("8 input channels")),
        "{err:?}"
    );
}
