//! The encoder half of diffusers' `AutoencoderKL` (RGB in [-1, 1] → the
//! posterior `DiagonalGaussianDistribution`), for img2img and inpainting.
#![forbid(unsafe_code)]

use tch::{Device, Tensor};

use crate::engine::blocks::ResnetBlock;
use crate::engine::nn::{Conv2d, GroupNorm, ModelError, Scope};
use crate::engine::vae::{PixelAttention, VaeConfig};

/// diffusers' `Downsample2D` as the VAE uses it: pad right and bottom by
/// one, then a stride-2 3×3 convolution without padding.
struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    fn new(s: &Scope, channels: i64) -> Result<Self, ModelError> {
        Ok(Self {
            conv: Conv2d::new(&s.sub("conv"), channels, channels, 3, 2, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let padded = x.f_constant_pad_nd([0, 1, 0, 1])?;
        self.conv.forward(&padded)
    }
}

struct EncoderDownBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Downsample>,
}

/// The posterior over latents: mean and log-variance, `[b, latent, h, w]`.
pub struct LatentPosterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl LatentPosterior {
    /// `latent_dist.sample(generator)`: `mean + std · ε`, with ε drawn from
    /// libtorch's global CPU generator in the posterior's dtype (the caller
    /// holds the RNG lock so the draw lands where diffusers makes it).
    pub fn sample(&self) -> Result<Tensor, ModelError> {
        let std = self.logvar.f_mul_scalar(0.5)?.f_exp()?;
        let eps = Tensor::f_randn(self.mean.size(), (self.mean.kind(), Device::Cpu))?
            .f_to_device(self.mean.device())?;
        Ok(self.mean.f_add(&std.f_mul(&eps)?)?)
    }
}

pub struct VaeEncoder {
    quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    down: Vec<EncoderDownBlock>,
    mid_resnet0: ResnetBlock,
    mid_attention: Option<PixelAttention>,
    mid_resnet1: ResnetBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl VaeEncoder {
    /// `s` is the root of the VAE's weights (`encoder.*`, `quant_conv.*`).
    pub fn new(s: &Scope, c: &VaeConfig) -> Result<Self, ModelError> {
        let boc = &c.block_out_channels;
        let n = boc.len();
        let groups = c.norm_num_groups;
        let eps = 1e-6;
        let e = s.sub("encoder");
        let last = boc[n - 1];
        let mid = e.sub("mid_block");
        let latent2 = 2 * c.latent_channels;
        let mut down = Vec::with_capacity(n);
        let mut output = boc[0];
        for (i, &channels) in boc.iter().enumerate() {
            let input = output;
            output = channels;
            let bs = e.sub("down_blocks").sub(i);
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    let rin = if j == 0 { input } else { output };
                    ResnetBlock::new(&bs.sub("resnets").sub(j), rin, output, None, groups, eps)
                })
                .collect::<Result<_, _>>()?;
            let downsample = if i == n - 1 {
                None
            } else {
                Some(Downsample::new(&bs.sub("downsamplers").sub(0), output)?)
            };
            down.push(EncoderDownBlock {
                resnets,
                downsample,
            });
        }
        let mid_resnet =
            |j: usize| ResnetBlock::new(&mid.sub("resnets").sub(j), last, last, None, groups, eps);
        Ok(Self {
            quant_conv: if c.use_quant_conv {
                Some(Conv2d::new(
                    &s.sub("quant_conv"),
                    latent2,
                    latent2,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
            conv_in: Conv2d::new(&e.sub("conv_in"), c.in_channels, boc[0], 3, 1, 1)?,
            down,
            mid_resnet0: mid_resnet(0)?,
            mid_attention: if c.mid_block_add_attention {
                Some(PixelAttention::new(
                    &mid.sub("attentions").sub(0),
                    last,
                    groups,
                )?)
            } else {
                None
            },
            mid_resnet1: mid_resnet(1)?,
            conv_norm_out: GroupNorm::new(&e.sub("conv_norm_out"), groups, last, eps)?,
            conv_out: Conv2d::new(&e.sub("conv_out"), last, latent2, 3, 1, 1)?,
        })
    }

    /// Images in [-1, 1], `[b, 3, h, w]` → the latent posterior (before
    /// `scaling_factor`), as diffusers' `vae.encode(x).latent_dist`.
    pub fn encode(&self, image: &Tensor) -> Result<LatentPosterior, ModelError> {
        let mut x = self.conv_in.forward(image)?;
        for block in &self.down {
            for r in &block.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(d) = &block.downsample {
                x = d.forward(&x)?;
            }
        }
        x = self.mid_resnet0.forward(&x, None)?;
        if let Some(a) = &self.mid_attention {
            x = a.forward(&x)?;
        }
        x = self.mid_resnet1.forward(&x, None)?;
        let x = self.conv_norm_out.forward(&x)?.f_silu()?;
        let mut moments = self.conv_out.forward(&x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let halves = moments.f_chunk(2, 1)?;
        Ok(LatentPosterior {
            mean: halves[0].shallow_clone(),
            logvar: halves[1].f_clamp(-30.0, 20.0)?,
        })
    }
}
