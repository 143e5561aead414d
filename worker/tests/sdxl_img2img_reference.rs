//! SDXL img2img and inpainting checked against diffusers'
//! `StableDiffusionXLImg2ImgPipeline` and `StableDiffusionXLInpaintPipeline`
//! on the tiny SDXL fixture (`tools/fixtures/sdxl_img2img_fixtures.py`;
//! base model: no aesthetic score, `force_upcast` VAE, no
//! `denoising_start`), stage by stage to 1e-4 in fp32 with Euler ancestral
//! (every random draw's order counts): the init image's latents, the added
//! time ids and pooled text, the first UNet call's input and output, the
//! latents after every step and the decoded image; then the final latents
//! of the other schedulers and of inpainting at strength 1. The image is
//! 48×64, so a swapped (height, width) would show.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use common::assert_close;
use tch::{Device, Kind, Tensor};
use weave_worker::engine::weights::safetensors::SafetensorsFile;
use weave_worker::engine::{
    DeviceChoice, GenerateParams, ImageInput, Mask, ModelSpec, Pipeline, Precision, RgbImage,
    SchedulerKind, Stage,
};

const WIDTH: u32 = 48;
const HEIGHT: u32 = 64;

fn fixtures() -> Option<PathBuf> {
    common::reference_fixtures("tiny-sdxl-img2img-ref.safetensors")
}

struct Case {
    pipe: Pipeline,
    refs: SafetensorsFile,
    init: RgbImage,
    mask: Mask,
}

impl Case {
    fn load() -> Option<Self> {
        let dir = fixtures()?;
        let refs = SafetensorsFile::open(&dir.join("tiny-sdxl-img2img-ref.safetensors")).unwrap();
        let pipe = Pipeline::load(
            &ModelSpec::new(dir.join("tiny-sdxl")),
            DeviceChoice::Cpu,
            Precision::F32,
        )
        .unwrap();
        assert!(pipe.is_sdxl());
        let bytes = |name: &str| {
            let t = refs.read(name).unwrap();
            let n = t.numel();
            let mut v = vec![0u8; n];
            t.copy_data_u8(&mut v, n);
            v
        };
        let init = RgbImage {
            width: WIDTH,
            height: HEIGHT,
            pixels: bytes("init_image"),
        };
        let mask = Mask::from_luma(WIDTH, HEIGHT, &bytes("mask")).unwrap();
        Some(Self {
            pipe,
            refs,
            init,
            mask,
        })
    }

    fn get(&self, name: &str) -> Tensor {
        self.refs.read_as(name, Kind::Float, Device::Cpu).unwrap()
    }

    fn params(&self, steps: u32, strength: f64, mask: bool) -> GenerateParams {
        GenerateParams {
            prompt: "a photo of a cat".into(),
            negative_prompt: "blurry, low quality".into(),
            width: WIDTH,
            height: HEIGHT,
            steps,
            guidance: 5.0,
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

    /// One traced run, compared stage by stage with `{prefix}_*`.
    fn check_stages(&self, prefix: &str, p: &GenerateParams, runs: usize) {
        let mut stages: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut seen = Vec::new();
        let latents = self
            .pipe
            .generate_latents_traced(
                p,
                &mut |s, t| {
                    seen.push((s, t));
                    ControlFlow::Continue(())
                },
                &mut |stage, t| {
                    let name = match stage {
                        Stage::ImageLatents => "image_latents".to_string(),
                        Stage::TimeIds => "time_ids".into(),
                        Stage::TextEmbeds => "text_embeds".into(),
                        Stage::UnetInput(0) => "unet_input_0".into(),
                        Stage::UnetOutput(0) => "unet_output_0".into(),
                        Stage::Latents(n) => format!("latents_step_{n}"),
                        Stage::Noise
                        | Stage::MaskLatents
                        | Stage::MaskedImage
                        | Stage::MaskedImageLatents
                        | Stage::UnetInput(_)
                        | Stage::UnetOutput(_) => return,
                    };
                    stages.insert(name, t.shallow_clone());
                },
            )
            .unwrap();
        let expected: Vec<(usize, usize)> = (1..=runs).map(|s| (s, runs)).collect();
        assert_eq!(seen, expected, "{prefix}: progress");
        assert_eq!(
            self.get(&format!("{prefix}_unet_calls")).int64_value(&[0]),
            runs as i64,
            "{prefix}: diffusers' UNet calls"
        );
        let mut names = vec![
            "time_ids".to_string(),
            "text_embeds".into(),
            "unet_input_0".into(),
            "unet_output_0".into(),
        ];
        names.extend((0..runs).map(|n| format!("latents_step_{n}")));
        for name in names {
            let ours = stages
                .get(&name)
                .unwrap_or_else(|| panic!("{prefix}: no {name} traced"));
            assert_close(
                &format!("{prefix} {name}"),
                ours,
                &self.get(&format!("{prefix}_{name}")),
            );
        }
        assert_close(
            &format!("{prefix} latents final"),
            &latents,
            &self.get(&format!("{prefix}_latents_final")),
        );
        let image = self
            .pipe
            .decode(&latents)
            .unwrap()
            .f_div_scalar(2.0)
            .unwrap()
            + 0.5;
        assert_close(
            &format!("{prefix} image"),
            &image.clamp(0.0, 1.0),
            &self.get(&format!("{prefix}_image")),
        );
        if prefix == "img2img" {
            assert_close(
                "img2img image latents",
                &stages["image_latents"],
                &self.get("img2img_image_latents"),
            );
        }
    }
}

fn go() -> impl FnMut(usize, usize) -> ControlFlow<()> {
    |_, _| ControlFlow::Continue(())
}

#[test]
fn sdxl_img2img_matches_diffusers_stage_by_stage() {
    let Some(case) = Case::load() else { return };
    // 5 steps at strength 0.6 run 3.
    case.check_stages("img2img", &case.params(5, 0.6, false), 3);
}

#[test]
fn sdxl_inpaint_matches_diffusers_stage_by_stage() {
    let Some(case) = Case::load() else { return };
    // 4 steps at strength 0.75 run 3.
    let p = case.params(4, 0.75, true);
    case.check_stages("inpaint", &p, 3);
    let lat = case
        .pipe
        .generate_latents(&case.params(4, 1.0, true), &mut go())
        .unwrap();
    assert_close(
        "inpaint strength 1",
        &lat,
        &case.get("inpaint_strength1_latents_final"),
    );
    // The output keeps every unmasked pixel exactly.
    let out = case.pipe.generate(&p, &mut go()).unwrap();
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
fn sdxl_every_scheduler_matches_diffusers() {
    let Some(case) = Case::load() else { return };
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

/// An SDXL UNet with 9 input channels (an SDXL inpainting model) is refused
/// with `NotBuilt`, not run as if it were the base model: the tiny SDXL
/// model with its `conv_in` widened to 9 channels.
#[test]
fn sdxl_nine_channel_unet_is_refused() {
    let Some(case) = Case::load() else { return };
    let dir = fixtures().unwrap().join("tiny-sdxl");
    let model = tempfile::tempdir().unwrap();
    for entry in walk(&dir) {
        let rel = entry.strip_prefix(&dir).unwrap();
        let to = model.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let unet_file = model
        .path()
        .join("unet/diffusion_pytorch_model.safetensors");
    let widened: Vec<(String, Tensor)> = Tensor::read_safetensors(&unet_file)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            if k == "conv_in.weight" {
                let (o, _, h, w) = t.size4().unwrap();
                (k, Tensor::zeros([o, 9, h, w], (t.kind(), Device::Cpu)))
            } else {
                (k, t)
            }
        })
        .collect();
    Tensor::write_safetensors(&widened, &unet_file).unwrap();
    let config_path = model.path().join("unet/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["in_channels"] = 9.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let pipe = Pipeline::load(
        &ModelSpec::new(model.path()),
        DeviceChoice::Cpu,
        Precision::F32,
    )
    .unwrap();
    let err = pipe.generate(&case.params(4, 0.75, true), &mut go());
    assert!(
        matches!(err, Err(weave_worker::engine::EngineError::NotBuilt(ref m)) if m.contains("SDXL inpainting UNets")),
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
