//! diffusers' `UNet2DConditionModel` for SD 1.x/2.x/XL, driven by `config.json`,
//! with diffusers' parameter names (`down_blocks.0.resnets.0.conv1.weight`, ...).
#![forbid(unsafe_code)]

use tch::{Kind, Tensor};

use super::{Conditioning, Denoiser, TextTime};
use crate::engine::blocks::{ResnetBlock, Upsample};
use crate::engine::nn::{Conv2d, GroupNorm, Linear, ModelError, Scope};

mod config;
mod transformer;

pub use config::{PerBlock, UNetConfig};
use transformer::SpatialTransformer;

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    downsample: Option<Conv2d>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    upsample: Option<Upsample>,
}

struct MidBlock {
    resnet0: ResnetBlock,
    attention: SpatialTransformer,
    resnet1: ResnetBlock,
}

/// SDXL's `text_time` added conditioning: `add_time_proj` (sinusoidal, per
/// time id) and `add_embedding` (linear, SiLU, linear) added to the time
/// embedding.
struct TextTimeEmbedding {
    time_dim: i64,
    linear_1: Linear,
    linear_2: Linear,
}

pub struct UNet {
    config: UNetConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
    add_embedding: Option<TextTimeEmbedding>,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    pub fn new(s: &Scope, c: &UNetConfig) -> Result<Self, ModelError> {
        let boc = &c.block_out_channels;
        let n = boc.len();
        let c0 = boc[0];
        let temb = c0 * 4;
        let groups = c.norm_num_groups;
        let eps = c.norm_eps;
        let heads = c.heads();

        let mut down = Vec::with_capacity(n);
        let mut output = c0;
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let input = output;
            output = boc[i];
            let final_block = i == n - 1;
            let bs = s.sub("down_blocks").sub(i);
            let with_attention = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => {
                    return Err(ModelError::Config(format!(
                        "down block type {other:?} (supported: CrossAttnDownBlock2D, DownBlock2D)"
                    )))
                }
            };
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                let rin = if j == 0 { input } else { output };
                resnets.push(ResnetBlock::new(
                    &bs.sub("resnets").sub(j),
                    rin,
                    output,
                    Some(temb),
                    groups,
                    eps,
                )?);
                if with_attention {
                    attentions.push(SpatialTransformer::new(
                        &bs.sub("attentions").sub(j),
                        output,
                        heads.get(i)?,
                        c.transformer_layers_per_block.get(i)?,
                        c.cross_attention_dim.get(i)?,
                        groups,
                        c.use_linear_projection,
                    )?);
                }
            }
            let downsample = if final_block {
                None
            } else {
                Some(Conv2d::new(
                    &bs.sub("downsamplers").sub(0).sub("conv"),
                    output,
                    output,
                    3,
                    2,
                    c.downsample_padding,
                )?)
            };
            down.push(DownBlock {
                resnets,
                attentions,
                downsample,
            });
        }

        match c.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "mid block type {other:?} (supported: UNetMidBlock2DCrossAttn)"
                )))
            }
        }
        let ms = s.sub("mid_block");
        let last = boc[n - 1];
        let mid = MidBlock {
            resnet0: ResnetBlock::new(
                &ms.sub("resnets").sub(0),
                last,
                last,
                Some(temb),
                groups,
                eps,
            )?,
            attention: SpatialTransformer::new(
                &ms.sub("attentions").sub(0),
                last,
                heads.last()?,
                c.transformer_layers_per_block.last()?,
                c.cross_attention_dim.last()?,
                groups,
                c.use_linear_projection,
            )?,
            resnet1: ResnetBlock::new(
                &ms.sub("resnets").sub(1),
                last,
                last,
                Some(temb),
                groups,
                eps,
            )?,
        };

        let rev: Vec<i64> = boc.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut output = rev[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let prev_output = output;
            output = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let final_block = i == n - 1;
            let block_index = n - 1 - i; // per-block settings are listed in down order
            let bs = s.sub("up_blocks").sub(i);
            let with_attention = match kind.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => {
                    return Err(ModelError::Config(format!(
                        "up block type {other:?} (supported: CrossAttnUpBlock2D, UpBlock2D)"
                    )))
                }
            };
            let layers = c.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { input } else { output };
                let rin = if j == 0 { prev_output } else { output };
                resnets.push(ResnetBlock::new(
                    &bs.sub("resnets").sub(j),
                    rin + skip,
                    output,
                    Some(temb),
                    groups,
                    eps,
                )?);
                if with_attention {
                    attentions.push(SpatialTransformer::new(
                        &bs.sub("attentions").sub(j),
                        output,
                        heads.get(block_index)?,
                        c.transformer_layers_per_block.get(block_index)?,
                        c.cross_attention_dim.get(block_index)?,
                        groups,
                        c.use_linear_projection,
                    )?);
                }
            }
            let upsample = if final_block {
                None
            } else {
                Some(Upsample::new(&bs.sub("upsamplers").sub(0), output)?)
            };
            up.push(UpBlock {
                resnets,
                attentions,
                upsample,
            });
        }

        let add_embedding = match (
            c.addition_time_embed_dim,
            c.projection_class_embeddings_input_dim,
        ) {
            (Some(time_dim), Some(input)) if c.addition_embed_type.is_some() => {
                let a = s.sub("add_embedding");
                Some(TextTimeEmbedding {
                    time_dim,
                    linear_1: Linear::new(&a.sub("linear_1"), input, temb, true)?,
                    linear_2: Linear::new(&a.sub("linear_2"), temb, temb, true)?,
                })
            }
            _ => None,
        };
        Ok(Self {
            add_embedding,
            config: c.clone(),
            time_linear_1: Linear::new(&s.sub("time_embedding").sub("linear_1"), c0, temb, true)?,
            time_linear_2: Linear::new(&s.sub("time_embedding").sub("linear_2"), temb, temb, true)?,
            conv_in: Conv2d::new(&s.sub("conv_in"), c.in_channels, c0, 3, 1, 1)?,
            down,
            mid,
            up,
            conv_norm_out: GroupNorm::new(&s.sub("conv_norm_out"), groups, c0, eps)?,
            conv_out: Conv2d::new(&s.sub("conv_out"), c0, c.out_channels, 3, 1, 1)?,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Whether the UNet takes SDXL's pooled text and time ids.
    pub fn takes_text_time(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Predicts the noise (or v) for `sample` `[b, c, h, w]` at `timestep`,
    /// conditioned on `context` `[b, tokens, cross_attention_dim]` (SD
    /// 1.x/2.x: a UNet without added conditioning).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor, ModelError> {
        self.forward_with(sample, timestep, context, None)
    }

    /// The time embedding (`time_embedding(time_proj(t))`) for a batch of `b`.
    pub fn time_embedding(
        &self,
        b: i64,
        timestep: f64,
        device: tch::Device,
        dtype: Kind,
    ) -> Result<Tensor, ModelError> {
        let t = Tensor::f_full([b], timestep, (Kind::Float, device))?;
        let t_emb = timestep_embedding(
            &t,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .f_to_kind(dtype)?;
        self.time_linear_2
            .forward(&self.time_linear_1.forward(&t_emb)?.f_silu()?)
    }

    /// SDXL's `aug_emb`: `add_embedding(cat[text_embeds,
    /// add_time_proj(time_ids).flatten]`.
    pub fn text_time_embedding(&self, added: &TextTime) -> Result<Tensor, ModelError> {
        let Some(add) = &self.add_embedding else {
            return Err(ModelError::Config(
                "this UNet has no text_time added conditioning".into(),
            ));
        };
        let (b, ids) = added.time_ids.size2()?;
        let dtype = added.text_embeds.kind();
        let time_embeds = timestep_embedding(
            &added.time_ids.f_flatten(0, -1)?,
            add.time_dim,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .f_reshape([b, ids * add.time_dim])?
        .f_to_kind(dtype)?;
        let input = Tensor::f_cat(&[&added.text_embeds, &time_embeds], -1)?;
        add.linear_2
            .forward(&add.linear_1.forward(&input)?.f_silu()?)
    }

    /// [`Self::forward`] with SDXL's added conditioning, which a
    /// `text_time` UNet requires and any other refuses.
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&TextTime>,
    ) -> Result<Tensor, ModelError> {
        let (b, _, _, _) = sample.size4()?;
        let mut emb = self.time_embedding(b, timestep, sample.device(), sample.kind())?;
        match (added, self.takes_text_time()) {
            (Some(added), true) => emb = emb.f_add(&self.text_time_embedding(added)?)?,
            (None, false) => {}
            (None, true) => {
                return Err(ModelError::Config(
                    "this UNet needs SDXL's pooled text embeddings and time ids (addition_embed_type \"text_time\"); load it as an SDXL pipeline".into(),
                ))
            }
            (Some(_), false) => {
                return Err(ModelError::Config(
                    "added text_time conditioning given to a UNet without addition_embed_type".into(),
                ))
            }
        }

        let sample = if self.config.center_input_sample {
            sample.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?
        } else {
            sample.shallow_clone()
        };
        let mut x = self.conv_in.forward(&sample)?;
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(&x, Some(&emb))?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context)?;
                }
                skips.push(x.shallow_clone());
            }
            if let Some(ds) = &block.downsample {
                x = ds.forward(&x)?;
                skips.push(x.shallow_clone());
            }
        }

        x = self.mid.resnet0.forward(&x, Some(&emb))?;
        x = self.mid.attention.forward(&x, context)?;
        x = self.mid.resnet1.forward(&x, Some(&emb))?;

        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    ModelError::Config("the UNet's skip connections do not balance".into())
                })?;
                x = Tensor::f_cat(&[&x, &skip], 1)?;
                x = resnet.forward(&x, Some(&emb))?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context)?;
                }
            }
            if let Some(us) = &block.upsample {
                // Upsample to the size of the skip it is concatenated with
                // next, so sizes that are not multiples of 2^n still work.
                let size = skips.last().map(|s| {
                    let sz = s.size();
                    (sz[2], sz[3])
                });
                x = us.forward(&x, size)?;
            }
        }
        let x = self.conv_norm_out.forward(&x)?.f_silu()?;
        self.conv_out.forward(&x)
    }
}

impl Denoiser for UNet {
    fn predict(
        &self,
        sample: &Tensor,
        timestep: f64,
        cond: &Conditioning,
    ) -> Result<Tensor, ModelError> {
        self.forward_with(sample, timestep, &cond.context, cond.text_time.as_ref())
    }

    fn in_channels(&self) -> i64 {
        self.config.in_channels
    }

    fn sample_size(&self) -> i64 {
        self.config.sample_size
    }
}

/// Sinusoidal timestep embedding, computed in fp32 exactly as diffusers'
/// `get_timestep_embedding` does.
pub fn timestep_embedding(
    t: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Result<Tensor, ModelError> {
    let half = dim / 2;
    let exponent = Tensor::f_arange(half, (Kind::Float, t.device()))?
        .f_mul_scalar(-(10000f64.ln()))?
        .f_div_scalar(half as f64 - shift)?;
    let freqs = exponent.f_exp()?;
    let args = t
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?
        .f_mul(&freqs.f_unsqueeze(0)?)?;
    let (sin, cos) = (args.f_sin()?, args.f_cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::f_cat(&[cos, sin], -1)?
    } else {
        Tensor::f_cat(&[sin, cos], -1)?
    };
    Ok(if dim % 2 == 1 {
        emb.f_constant_pad_nd([0, 1, 0, 0])?
    } else {
        emb
    })
}
