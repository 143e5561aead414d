//! Image-to-image and inpainting, step for step as diffusers'
//! `StableDiffusionImg2ImgPipeline` / `StableDiffusionInpaintPipeline` (SD
//! 1.x/2.x) and `StableDiffusionXLImg2ImgPipeline` /
//! `StableDiffusionXLInpaintPipeline` (SDXL base: no aesthetic score, the
//! same added time ids as text-to-image, the VAE encoding in fp32 when
//! `force_upcast`, no `denoising_start`). The init image is encoded by the
//! VAE, noised to the strength's first step and denoised from there.
//!
//! Inpainting comes in two kinds, told apart by the UNet's `in_channels`:
//! a 4-channel UNet masks in latent space (the region outside the mask is
//! replaced after every step by the original latents noised to that step);
//! a 9-channel inpainting UNet sees `[latents, mask, masked-image latents]`
//! on every call. Either way the original pixels are pasted back outside
//! the mask after decoding, so they are kept exactly.
#![forbid(unsafe_code)]

use std::ops::ControlFlow;

use tch::{Device, Tensor};

use super::image_input::{image_tensor, strength_schedule};
use super::{global_rng_lock, GenerateParams, ImageInput, Pipeline};
use crate::engine::denoisers::{Conditioning, Denoiser};
use crate::engine::schedulers::{Scheduler, SchedulerError};
use crate::engine::EngineError;

/// An intermediate tensor of an image-conditioned run, for checking each
/// stage against diffusers (`Pipeline::generate_latents_traced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// SDXL's added time ids, batched as the UNet gets them `[b, 6]`.
    TimeIds,
    /// SDXL's pooled text embeddings, batched `[b, P]`.
    TextEmbeds,
    /// The scaled VAE sample of the init image (absent for a 9-channel UNet
    /// at strength 1, which diffusers does not encode).
    ImageLatents,
    /// The initial noise `[1, 4, h/8, w/8]`.
    Noise,
    /// The mask at latent size `[1, 1, h/8, w/8]`, 1 = repaint.
    MaskLatents,
    /// The init image with the repainted region zeroed, `[1, 3, H, W]` in
    /// [-1, 1] (9-channel UNets only).
    MaskedImage,
    /// Its scaled VAE sample (9-channel UNets only).
    MaskedImageLatents,
    /// The UNet's input at step `n` of those that run (0-based): with
    /// guidance both halves, with a 9-channel UNet all 9 channels.
    UnetInput(usize),
    /// The UNet's raw output at step `n`.
    UnetOutput(usize),
    /// The latents after step `n` (and after latent masking).
    Latents(usize),
}

/// How the UNet takes the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnetInputs {
    /// Latents only (every text-to-image UNet).
    Latents,
    /// `[latents, mask, masked-image latents]` (an inpainting UNet).
    Inpainting,
}

impl Pipeline {
    fn unet_inputs(&self) -> Result<UnetInputs, EngineError> {
        let latent = self.vae.config().latent_channels;
        match self.unet.in_channels() {
            n if n == latent => Ok(UnetInputs::Latents),
            n if n == 2 * latent + 1 => Ok(UnetInputs::Inpainting),
            n => Err(EngineError::NotBuilt(format!(
                "a UNet with {n} input channels (e.g. InstructPix2Pix's 8): only {latent} (text-to-image) and {} (inpainting) are built for this VAE",
                2 * latent + 1
            ))),
        }
    }

    /// Refuses text-to-image with an inpainting UNet, which diffusers' text
    /// pipelines cannot run either: its extra channels need an image.
    pub(super) fn check_text_to_image(&self) -> Result<(), EngineError> {
        match self.unet_inputs()? {
            UnetInputs::Latents => Ok(()),
            UnetInputs::Inpainting => Err(EngineError::InvalidParams(
                "this model has an inpainting UNet (9 input channels: latents, mask, masked image): send init_image and mask with the request".into(),
            )),
        }
    }

    /// The VAE's sample of `image`'s latents, scaled (diffusers'
    /// `retrieve_latents(vae.encode(x), generator)`, cast to the compute
    /// dtype, times `scaling_factor`); draws from the global generator, so
    /// the caller holds the RNG lock.
    fn encode_sample(&self, image: &Tensor) -> Result<Tensor, EngineError> {
        let encoder = self.vae_encoder.as_ref().ok_or_else(|| {
            EngineError::InvalidParams(
                "init_image: this model's VAE has no encoder weights (no vae/encoder.* or first_stage_model.encoder.* keys), which img2img and inpainting need; use a checkpoint or diffusers folder that includes the full VAE".into(),
            )
        })?;
        let c = self.vae.config();
        let mut z = encoder.encode(image)?.sample()?.f_to_kind(self.kind)?;
        if let Some(shift) = c.shift_factor {
            z = z.f_sub_scalar(shift)?;
        }
        Ok(z.f_mul_scalar(c.scaling_factor)?)
    }

    /// img2img / inpainting latents for one image (batch 1).
    pub(super) fn image_latents(
        &self,
        p: &GenerateParams,
        input: &ImageInput,
        cond: &Conditioning,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
        trace: &mut dyn FnMut(Stage, &Tensor),
    ) -> Result<Tensor, EngineError> {
        let _no_grad = tch::no_grad_guard();
        self.validate(p)?;
        input.validate(p.width, p.height)?;
        if p.batch != 1 {
            return Err(EngineError::InvalidParams(
                "image inputs are denoised one image at a time (batch 1 per call)".into(),
            ));
        }
        let unet_inputs = self.unet_inputs()?;
        if unet_inputs == UnetInputs::Inpainting {
            if self.is_sdxl() {
                return Err(EngineError::NotBuilt(
                    "SDXL inpainting UNets (9 input channels) are not checked against diffusers yet; use an SDXL base model, which inpaints by latent masking".into(),
                ));
            }
            if input.mask.is_none() {
                return Err(EngineError::InvalidParams(
                    "this model has an inpainting UNet (9 input channels): send a mask with init_image".into(),
                ));
            }
        }
        let (start, run) = strength_schedule(p.steps as usize, input.strength)?;
        let cfg = p.guidance > 1.0;
        if let Some(tt) = &cond.text_time {
            trace(Stage::TimeIds, &tt.time_ids);
            trace(Stage::TextEmbeds, &tt.text_embeds);
        }
        let mut scheduler = Scheduler::new(p.scheduler, &self.scheduler_config, p.steps as usize)?;
        scheduler.begin_at(start)?;
        let (kind, device) = (self.kind, self.device);
        let image = image_tensor(&input.init, self.vae_kind, device)?;
        let vsf = self.vae.config().scale_factor();
        let shape = [
            1,
            self.vae.config().latent_channels,
            p.height as i64 / vsf,
            p.width as i64 / vsf,
        ];
        let strength_max = input.strength == 1.0;
        let _rng = global_rng_lock();
        tch::manual_seed(p.seed as i64);
        // The random draws in diffusers' order: the init image's posterior
        // sample (skipped by an inpainting UNet at strength 1, which starts
        // from pure noise and never needs it), the initial noise,
        // (inpainting) the masked image's posterior sample, then the
        // sampler's ancestral noise.
        let image_latents = if unet_inputs == UnetInputs::Latents || !strength_max {
            let z = self.encode_sample(&image)?;
            trace(Stage::ImageLatents, &z);
            Some(z)
        } else {
            None
        };
        let noise = Tensor::f_randn(shape, (kind, Device::Cpu))?.f_to_device(device)?;
        trace(Stage::Noise, &noise);
        let mut mask = None;
        let mut extra = None;
        if let Some(m) = &input.mask {
            let full = m.tensor(self.vae_kind, device)?;
            // diffusers' `interpolate(mask, size=latent size)`: nearest.
            let small = full
                .f_upsample_nearest2d([shape[2], shape[3]], None, None)?
                .f_to_kind(kind)?;
            trace(Stage::MaskLatents, &small);
            match unet_inputs {
                UnetInputs::Latents => {
                    // diffusers encodes the masked image even for a
                    // 4-channel UNet, which only uses the draw: draw the
                    // same ε and skip the encoder.
                    let _masked_image_draw = Tensor::f_randn(shape, (self.vae_kind, Device::Cpu))?;
                }
                UnetInputs::Inpainting => {
                    // `init_image * (mask < 0.5)`: the repainted region is 0
                    // (mid grey) in [-1, 1].
                    let masked = image.f_mul(&full.f_neg()?.f_add_scalar(1.0)?)?;
                    trace(Stage::MaskedImage, &masked);
                    let masked_latents = self.encode_sample(&masked)?;
                    trace(Stage::MaskedImageLatents, &masked_latents);
                    extra = Some(if cfg {
                        let both = Tensor::f_cat(&[&small, &masked_latents], 1)?;
                        Tensor::f_cat(&[&both, &both], 0)?
                    } else {
                        Tensor::f_cat(&[&small, &masked_latents], 1)?
                    });
                }
            }
            mask = Some(small);
        }
        let mut latents = match (&image_latents, mask.is_some() && strength_max) {
            (_, true) => noise.f_mul_scalar(scheduler.init_noise_sigma())?,
            (Some(z), false) => scheduler.add_noise(z, &noise, start)?,
            (None, false) => {
                return Err(EngineError::InvalidParams(
                    "the init image was not encoded below strength 1".into(),
                ))
            }
        };
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len();
        let mut draw_noise = |like: &Tensor| -> Result<Tensor, SchedulerError> {
            Ok(Tensor::f_randn(like.size(), (kind, Device::Cpu))?.f_to_device(device)?)
        };
        for (done, index) in (start..total).enumerate() {
            let t = timesteps[index];
            let model_input = if cfg {
                Tensor::f_cat(&[&latents, &latents], 0)?
            } else {
                latents.shallow_clone()
            };
            let mut model_input = scheduler.scale_model_input(&model_input)?;
            if let Some(extra) = &extra {
                model_input = Tensor::f_cat(&[&model_input, extra], 1)?;
            }
            trace(Stage::UnetInput(done), &model_input);
            let noise_pred = self.unet.predict(&model_input, t, cond)?;
            trace(Stage::UnetOutput(done), &noise_pred);
            let noise_pred = if cfg {
                let halves = noise_pred.f_chunk(2, 0)?;
                let (uncond, text) = (&halves[0], &halves[1]);
                uncond.f_add(&text.f_sub(uncond)?.f_mul_scalar(p.guidance)?)?
            } else {
                noise_pred
            };
            latents = scheduler.step(&noise_pred, &latents, &mut draw_noise)?;
            if let (Some(m), Some(z), UnetInputs::Latents) = (&mask, &image_latents, unet_inputs) {
                let kept = if index + 1 < total {
                    scheduler.add_noise(z, &noise, index + 1)?
                } else {
                    z.shallow_clone()
                };
                let keep = m.f_neg()?.f_add_scalar(1.0)?;
                latents = keep.f_mul(&kept)?.f_add(&m.f_mul(&latents)?)?;
            }
            trace(Stage::Latents(done), &latents);
            if progress(done + 1, run).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(latents)
    }
}
