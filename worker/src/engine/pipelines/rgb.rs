//! The pipeline's output as 8-bit RGB, rounded as diffusers rounds it.
#![forbid(unsafe_code)]

use tch::{Device, Kind, Tensor};

use crate::engine::EngineError;

/// An 8-bit RGB image, rows top to bottom, `width × height × 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// `[b, 3, h, w]` in [-1, 1] → RGB8, rounding as diffusers' `numpy_to_pil`.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>, EngineError> {
    let (b, c, h, w) = images.size4()?;
    if c != 3 {
        return Err(EngineError::InvalidParams(format!(
            "the VAE produced {c} channels, not 3"
        )));
    }
    let bytes = images
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(2.0)?
        .f_add_scalar(0.5)?
        .f_clamp(0.0, 1.0)?
        .f_permute([0, 2, 3, 1])?
        .f_mul_scalar(255.0)?
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_contiguous()?;
    let per = (h * w * 3) as usize;
    let mut all = vec![0u8; per * b as usize];
    bytes.f_copy_data_u8(&mut all, per * b as usize)?;
    Ok(all
        .chunks(per)
        .map(|px| RgbImage {
            width: w as u32,
            height: h as u32,
            pixels: px.to_vec(),
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rgb8_rounds_like_diffusers() {
        // -1 → 0, 1 → 255, 0 → 127.5 → 128 (round half to even gives 128).
        let x = Tensor::from_slice(&[-1.0f32, 1.0, 0.0, 2.0, -3.0, 0.5]).reshape([1, 3, 1, 2]);
        let img = to_rgb8(&x).unwrap();
        assert_eq!((img[0].width, img[0].height), (2, 1));
        // HWC order: pixel 0 = channels (x[0], x[2], x[4]), pixel 1 = (x[1], x[3], x[5]).
        assert_eq!(img[0].pixels, vec![0, 128, 0, 255, 255, 191]);
    }
}
