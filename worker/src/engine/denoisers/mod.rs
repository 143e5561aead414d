//! The denoising networks. Each family's network is a folder (`unet/` for
//! SD 1.x/2.x/XL); an MMDiT for a transformer family (SD3, Flux) would be a
//! sibling folder implementing [`Denoiser`] with its own conditioning.
#![forbid(unsafe_code)]

use tch::Tensor;

use crate::engine::nn::ModelError;

pub mod unet;

/// SDXL's added conditioning, batched like the context.
pub struct TextTime {
    /// The pooled, projected text embedding of the second encoder `[b, P]`.
    pub text_embeds: Tensor,
    /// `[original h, w, crop top, left, target h, w]` per image `[b, 6]`.
    pub time_ids: Tensor,
}

/// What the text side hands the denoiser, batched (`[negative, positive]`
/// under classifier-free guidance).
pub struct Conditioning {
    /// `[b, tokens, width]`: cross-attention keys and values.
    pub context: Tensor,
    /// SDXL only.
    pub text_time: Option<TextTime>,
}

/// A network that predicts noise (or v) from a noisy latent.
pub trait Denoiser: Send {
    fn predict(
        &self,
        sample: &Tensor,
        timestep: f64,
        cond: &Conditioning,
    ) -> Result<Tensor, ModelError>;
    /// Latent channels it takes.
    fn in_channels(&self) -> i64;
    /// The latent side it was trained at (the default image size / 8).
    fn sample_size(&self) -> i64;
}
