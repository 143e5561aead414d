//! Image-to-image and inpainting, step for step as diffusers'
//! `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`
//! (4-channel UNets: latent masking). The init image is encoded by the VAE,
//! noised to the strength's first step and denoised from there; with a
//! mask, the region outside it is replaced after every step by the original
//! latents noised to that step, and after decoding the original pixels are
//! pasted back outside the mask so they are kept exactly.
#![forbid(unsafe_code)]

use std::ops::ControlFlow;

use tch::{Device, Kind, Tensor};

use super::{global_rng_lock, GenerateParams, Pipeline, RgbImage};
use crate::engine::denoisers::Denoiser;
use crate::engine::schedulers::{Scheduler, SchedulerError};
use crate::engine::EngineError;

/// Which pixels to repaint: one flag per pixel, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    /// `true` = repaint (a white mask pixel).
    pub repaint: Vec<bool>,
}

impl Mask {
    /// From 8-bit luma: diffusers binarizes `v / 255 ≥ 0.5`, i.e. v ≥ 128.
    pub fn from_luma(width: u32, height: u32, luma: &[u8]) -> Result<Self, EngineError> {
        if luma.len() != width as usize * height as usize {
            return Err(EngineError::InvalidParams(
                "mask: the pixel count does not match its size".into(),
            ));
        }
        Ok(Self {
            width,
            height,
            repaint: luma.iter().map(|&v| v >= 128).collect(),
        })
    }

    /// From RGB8, converted to luma as PIL's `convert("L")` does
    /// (ITU-R 601-2, fixed point) before binarizing.
    pub fn from_rgb(image: &RgbImage) -> Result<Self, EngineError> {
        let luma: Vec<u8> = image
            .pixels
            .chunks_exact(3)
            .map(|p| {
                let l = p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000;
                (l >> 16) as u8
            })
            .collect();
        Self::from_luma(image.width, image.height, &luma)
    }

    /// `[1, 1, h, w]`, 1.0 where repainted.
    fn tensor(&self, kind: Kind, device: Device) -> Result<Tensor, EngineError> {
        let v: Vec<f32> = self
            .repaint
            .iter()
            .map(|&r| if r { 1.0 } else { 0.0 })
            .collect();
        Ok(Tensor::from_slice(&v)
            .f_view([1, 1, self.height as i64, self.width as i64])?
            .f_to_kind(kind)?
            .f_to_device(device)?)
    }
}

/// What an image-conditioned request adds to text-to-image.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// The image to start from; the same size as the request.
    pub init: RgbImage,
    /// Inpainting: which pixels to repaint.
    pub mask: Option<Mask>,
    /// In (0, 1]: the share of the schedule that runs.
    pub strength: f64,
}

impl ImageInput {
    fn validate(&self, width: u32, height: u32) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidParams(m));
        if (self.init.width, self.init.height) != (width, height) {
            return bad(format!(
                "init_image is {}×{} but the request is {width}×{height}; send an image of the requested size",
                self.init.width, self.init.height
            ));
        }
        if self.init.pixels.len() != width as usize * height as usize * 3 {
            return bad("init_image: the pixel count does not match its size".into());
        }
        if let Some(m) = &self.mask {
            if (m.width, m.height) != (width, height)
                || m.repaint.len() != self.init.pixels.len() / 3
            {
                return bad(format!(
                    "mask is {}×{} but the request is {width}×{height}; send a mask of the requested size",
                    m.width, m.height
                ));
            }
        }
        Ok(())
    }

    /// Puts the init image's pixels back wherever the mask keeps them.
    pub fn keep_unmasked(&self, images: &mut [RgbImage]) {
        let Some(mask) = &self.mask else {
            return;
        };
        for image in images {
            for (i, &repaint) in mask.repaint.iter().enumerate() {
                if !repaint {
                    image.pixels[3 * i..3 * i + 3]
                        .copy_from_slice(&self.init.pixels[3 * i..3 * i + 3]);
                }
            }
        }
    }
}

/// diffusers' `get_timesteps`: `init = min(int(steps · strength), steps)`
/// steps run, starting at step `steps - init`. Returns `(start, run)`.
pub fn strength_schedule(steps: usize, strength: f64) -> Result<(usize, usize), EngineError> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(EngineError::InvalidParams(format!(
            "strength must be in (0, 1], got {strength}"
        )));
    }
    // `as` truncates toward zero, as Python's int() does.
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(EngineError::InvalidParams(format!(
            "strength {strength} with {steps} steps runs no step (int(steps × strength) = 0); raise the strength or the steps"
        )));
    }
    Ok((steps - run, run))
}

/// RGB8 → `[1, 3, h, w]` in [-1, 1], as diffusers' `VaeImageProcessor`.
fn image_tensor(image: &RgbImage, kind: Kind, device: Device) -> Result<Tensor, EngineError> {
    Ok(Tensor::from_slice(&image.pixels)
        .f_view([1, image.height as i64, image.width as i64, 3])?
        .f_permute([0, 3, 1, 2])?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?
        .f_to_kind(kind)?
        .f_to_device(device)?
        .f_contiguous()?)
}

impl Pipeline {
    /// The VAE's sample of `image`'s latents, scaled (diffusers'
    /// `retrieve_latents(vae.encode(x), generator) * scaling_factor`); draws
    /// from the global generator, so the caller holds the RNG lock.
    fn encode_sample(&self, image: &Tensor) -> Result<Tensor, EngineError> {
        let encoder = self.vae_encoder.as_ref().ok_or_else(|| {
            EngineError::NotBuilt(
                "img2img and inpainting with a single-file checkpoint (its VAE encoder keys are not mapped yet); use a diffusers folder".into(),
            )
        })?;
        let c = self.vae.config();
        let mut z = encoder.encode(image)?.sample()?;
        if let Some(shift) = c.shift_factor {
            z = z.f_sub_scalar(shift)?;
        }
        Ok(z.f_mul_scalar(c.scaling_factor)?.f_to_kind(self.kind)?)
    }

    /// img2img / inpainting latents for one image (batch 1).
    pub(super) fn image_latents(
        &self,
        p: &GenerateParams,
        input: &ImageInput,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
        tap: &mut super::StepTap<'_>,
    ) -> Result<Tensor, EngineError> {
        let _no_grad = tch::no_grad_guard();
        self.validate(p)?;
        input.validate(p.width, p.height)?;
        if p.batch != 1 {
            return Err(EngineError::InvalidParams(
                "image inputs are denoised one image at a time (batch 1 per call)".into(),
            ));
        }
        if self.is_sdxl() {
            return Err(EngineError::NotBuilt(
                "image inputs with SDXL models (StableDiffusionXLImg2ImgPipeline is not checked against diffusers yet)".into(),
            ));
        }
        if self.unet.in_channels() != 4 {
            return Err(EngineError::NotBuilt(format!(
                "image inputs with a {}-channel UNet (inpainting UNets with mask and masked-image channels are not built yet)",
                self.unet.in_channels()
            )));
        }
        let (start, run) = strength_schedule(p.steps as usize, input.strength)?;
        let cfg = p.guidance > 1.0;
        let cond = self.conditioning(p, cfg)?;
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
        let _rng = global_rng_lock();
        tch::manual_seed(p.seed as i64);
        // The random draws in diffusers' order: the encoder's posterior
        // sample, the initial noise, (inpainting) the masked image's
        // posterior sample, then the sampler's ancestral noise.
        let image_latents = self.encode_sample(&image)?;
        let noise = Tensor::f_randn(shape, (kind, Device::Cpu))?.f_to_device(device)?;
        let mask = match &input.mask {
            None => None,
            Some(m) => {
                // diffusers encodes the masked image even for a 4-channel
                // UNet, which only uses the draw: draw the same ε.
                let _masked_image_draw = Tensor::f_randn(shape, (self.vae_kind, Device::Cpu))?;
                let full = m.tensor(kind, device)?;
                Some(full.f_upsample_nearest2d([shape[2], shape[3]], None, None)?)
            }
        };
        let mut latents = if mask.is_some() && input.strength == 1.0 {
            noise.f_mul_scalar(scheduler.init_noise_sigma())?
        } else {
            scheduler.add_noise(&image_latents, &noise, start)?
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
            let model_input = scheduler.scale_model_input(&model_input)?;
            let noise_pred = self.unet.predict(&model_input, t, &cond)?;
            let noise_pred = if cfg {
                let halves = noise_pred.f_chunk(2, 0)?;
                let (uncond, text) = (&halves[0], &halves[1]);
                uncond.f_add(&text.f_sub(uncond)?.f_mul_scalar(p.guidance)?)?
            } else {
                noise_pred
            };
            latents = scheduler.step(&noise_pred, &latents, &mut draw_noise)?;
            if let Some(m) = &mask {
                let kept = if index + 1 < total {
                    scheduler.add_noise(&image_latents, &noise, index + 1)?
                } else {
                    image_latents.shallow_clone()
                };
                let keep = m.f_neg()?.f_add_scalar(1.0)?;
                latents = keep.f_mul(&kept)?.f_add(&m.f_mul(&latents)?)?;
            }
            tap(
                done + 1,
                run,
                &latents,
                super::preview_sigma(&scheduler, index + 1),
            )?;
            if progress(done + 1, run).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(latents)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strength_counts_steps_as_diffusers() {
        assert_eq!(strength_schedule(10, 0.5).unwrap(), (5, 5));
        assert_eq!(strength_schedule(10, 1.0).unwrap(), (0, 10));
        // int(20 × 0.33) = 6
        assert_eq!(strength_schedule(20, 0.33).unwrap(), (14, 6));
        assert!(strength_schedule(10, 0.05).is_err());
        assert!(strength_schedule(10, 0.0).is_err());
        assert!(strength_schedule(10, 1.5).is_err());
        assert!(strength_schedule(10, f64::NAN).is_err());
    }

    #[test]
    fn mask_binarizes_at_half() {
        let m = Mask::from_luma(4, 1, &[0, 127, 128, 255]).unwrap();
        assert_eq!(m.repaint, vec![false, false, true, true]);
        let rgb = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![255, 255, 255, 10, 20, 30],
        };
        assert_eq!(Mask::from_rgb(&rgb).unwrap().repaint, vec![true, false]);
        assert!(Mask::from_luma(2, 2, &[0; 3]).is_err());
    }

    #[test]
    fn paste_keeps_unmasked_pixels() {
        let init = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        let input = ImageInput {
            init,
            mask: Some(Mask::from_luma(2, 1, &[0, 255]).unwrap()),
            strength: 1.0,
        };
        let mut out = vec![RgbImage {
            width: 2,
            height: 1,
            pixels: vec![9; 6],
        }];
        input.keep_unmasked(&mut out);
        assert_eq!(out[0].pixels, vec![1, 2, 3, 9, 9, 9]);
    }
}
