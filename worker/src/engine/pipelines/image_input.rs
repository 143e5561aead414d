//! What an image-conditioned request brings: the init image, the mask
//! and the strength, validated against the request, and the tensors
//! diffusers' `VaeImageProcessor` makes of them.
#![forbid(unsafe_code)]

use tch::{Device, Kind, Tensor};
use weave_common::strength::{strength_steps, StrengthSteps};

use super::RgbImage;
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
    pub(super) fn tensor(&self, kind: Kind, device: Device) -> Result<Tensor, EngineError> {
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
    pub(super) fn validate(&self, width: u32, height: u32) -> Result<(), EngineError> {
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

/// diffusers' `get_timesteps` (`weave_common::strength`, which the broker
/// shares for its Progress totals): `(start, run)`.
pub fn strength_schedule(steps: usize, strength: f64) -> Result<(usize, usize), EngineError> {
    let steps = u32::try_from(steps)
        .map_err(|_| EngineError::InvalidParams(format!("steps {steps} is too many")))?;
    let StrengthSteps { start, run } =
        strength_steps(steps, strength).map_err(|e| EngineError::InvalidParams(e.to_string()))?;
    Ok((start as usize, run as usize))
}

/// RGB8 → `[1, 3, h, w]` in [-1, 1], as diffusers' `VaeImageProcessor`.
pub(super) fn image_tensor(
    image: &RgbImage,
    kind: Kind,
    device: Device,
) -> Result<Tensor, EngineError> {
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
