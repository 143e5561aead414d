//! The decoder half of diffusers' `AutoencoderKL` (latents → RGB in [-1, 1]);
//! the encoder half (img2img, inpainting) is in `vae_encoder.rs`.
#![forbid(unsafe_code)]

use serde::Deserialize;
use tch::Tensor;

use crate::engine::blocks::{ResnetBlock, Upsample};
use crate::engine::nn::{attention, Conv2d, GroupNorm, Linear, ModelError, Scope};

#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub out_channels: i64,
    #[serde(default = "d_four")]
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "d_layers")]
    pub layers_per_block: i64,
    #[serde(default = "d_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_three")]
    pub in_channels: i64,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// diffusers' SDXL pipeline runs an fp16 VAE in fp32 when this is set
    /// (SDXL's VAE overflows in fp16); absent means true, as in diffusers.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
}

fn d_three() -> i64 {
    3
}
fn d_four() -> i64 {
    4
}
fn d_layers() -> i64 {
    1
}
fn d_groups() -> i64 {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

impl VaeConfig {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::Config(format!("vae/config.json: {e}")))?;
        if c.block_out_channels.is_empty() || c.layers_per_block < 1 || c.layers_per_block > 16 {
            return Err(ModelError::Config(
                "vae/config.json: empty block_out_channels or bad layers_per_block".into(),
            ));
        }
        if let Some(t) = c
            .up_block_types
            .iter()
            .find(|t| t.as_str() != "UpDecoderBlock2D")
        {
            return Err(ModelError::Config(format!(
                "VAE up block type {t:?} (supported: UpDecoderBlock2D)"
            )));
        }
        if let Some(t) = c
            .down_block_types
            .iter()
            .find(|t| t.as_str() != "DownEncoderBlock2D")
        {
            return Err(ModelError::Config(format!(
                "VAE down block type {t:?} (supported: DownEncoderBlock2D)"
            )));
        }
        Ok(c)
    }

    /// The SD 1.x/2.x autoencoder, for single-file checkpoints.
    pub fn sd() -> Self {
        Self {
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_post_quant_conv: true,
            in_channels: 3,
            use_quant_conv: true,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            mid_block_add_attention: true,
            force_upcast: true,
        }
    }

    /// SDXL's autoencoder (same shape, `scaling_factor` 0.13025).
    pub fn sdxl() -> Self {
        Self {
            scaling_factor: 0.13025,
            ..Self::sd()
        }
    }

    /// Image pixels per latent pixel.
    pub fn scale_factor(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// The VAE's single-head self-attention over pixels, with its own GroupNorm
/// and a residual connection.
pub(crate) struct PixelAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl PixelAttention {
    pub(crate) fn new(s: &Scope, channels: i64, groups: i64) -> Result<Self, ModelError> {
        Ok(Self {
            group_norm: GroupNorm::new(&s.sub("group_norm"), groups, channels, 1e-6)?,
            to_q: Linear::new(&s.sub("to_q"), channels, channels, true)?,
            to_k: Linear::new(&s.sub("to_k"), channels, channels, true)?,
            to_v: Linear::new(&s.sub("to_v"), channels, channels, true)?,
            to_out: Linear::new(&s.sub("to_out").sub(0), channels, channels, true)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (b, c, h, w) = x.size4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .f_view([b, c, h * w])?
            .f_transpose(1, 2)?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let out = self.to_out.forward(&attention(&q, &k, &v, 1, false)?)?;
        let out = out.f_transpose(1, 2)?.f_reshape([b, c, h, w])?;
        Ok(out.f_add(x)?)
    }
}

struct DecoderUpBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Upsample>,
}

pub struct VaeDecoder {
    config: VaeConfig,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnet0: ResnetBlock,
    mid_attention: Option<PixelAttention>,
    mid_resnet1: ResnetBlock,
    up: Vec<DecoderUpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl VaeDecoder {
    /// `s` is the root of the VAE's weights (`decoder.*`, `post_quant_conv.*`).
    pub fn new(s: &Scope, c: &VaeConfig) -> Result<Self, ModelError> {
        let boc = &c.block_out_channels;
        let n = boc.len();
        let groups = c.norm_num_groups;
        let eps = 1e-6;
        let d = s.sub("decoder");
        let last = boc[n - 1];
        let mid = d.sub("mid_block");
        let rev: Vec<i64> = boc.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut output = rev[0];
        for (i, &channels) in rev.iter().enumerate() {
            let prev_output = output;
            output = channels;
            let bs = d.sub("up_blocks").sub(i);
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    let rin = if j == 0 { prev_output } else { output };
                    ResnetBlock::new(&bs.sub("resnets").sub(j), rin, output, None, groups, eps)
                })
                .collect::<Result<_, _>>()?;
            let upsample = if i == n - 1 {
                None
            } else {
                Some(Upsample::new(&bs.sub("upsamplers").sub(0), output)?)
            };
            up.push(DecoderUpBlock { resnets, upsample });
        }
        Ok(Self {
            config: c.clone(),
            post_quant_conv: if c.use_post_quant_conv {
                Some(Conv2d::new(
                    &s.sub("post_quant_conv"),
                    c.latent_channels,
                    c.latent_channels,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
            conv_in: Conv2d::new(&d.sub("conv_in"), c.latent_channels, last, 3, 1, 1)?,
            mid_resnet0: ResnetBlock::new(
                &mid.sub("resnets").sub(0),
                last,
                last,
                None,
                groups,
                eps,
            )?,
            mid_attention: if c.mid_block_add_attention {
                Some(PixelAttention::new(
                    &mid.sub("attentions").sub(0),
                    last,
                    groups,
                )?)
            } else {
                None
            },
            mid_resnet1: ResnetBlock::new(
                &mid.sub("resnets").sub(1),
                last,
                last,
                None,
                groups,
                eps,
            )?,
            up,
            conv_norm_out: GroupNorm::new(&d.sub("conv_norm_out"), groups, boc[0], eps)?,
            conv_out: Conv2d::new(&d.sub("conv_out"), boc[0], c.out_channels, 3, 1, 1)?,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Decodes *unscaled* latents (the pipeline divides by `scaling_factor`
    /// first, as diffusers does) to images in roughly [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        let mut x = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.shallow_clone(),
        };
        x = self.conv_in.forward(&x)?;
        x = self.mid_resnet0.forward(&x, None)?;
        if let Some(a) = &self.mid_attention {
            x = a.forward(&x)?;
        }
        x = self.mid_resnet1.forward(&x, None)?;
        for block in &self.up {
            for r in &block.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(u) = &block.upsample {
                x = u.forward(&x, None)?;
            }
        }
        let x = self.conv_norm_out.forward(&x)?.f_silu()?;
        self.conv_out.forward(&x)
    }
}
