//! diffusers' `UNet2DConditionModel` for SD 1.x/2.x, driven by `config.json`,
//! with diffusers' parameter names (`down_blocks.0.resnets.0.conv1.weight`, ...).
#![forbid(unsafe_code)]

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::engine::nn::{attention, Conv2d, GroupNorm, LayerNorm, Linear, ModelError, Scope};

/// A config value that diffusers allows as one number or one per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(i64),
    Each(Vec<i64>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Result<i64, ModelError> {
        match self {
            Self::One(v) => Ok(*v),
            Self::Each(v) => v
                .get(i)
                .copied()
                .ok_or_else(|| ModelError::Config(format!("a per-block list has no entry {i}"))),
        }
    }
    fn last(&self) -> Result<i64, ModelError> {
        match self {
            Self::One(v) => Ok(*v),
            Self::Each(v) => v
                .last()
                .copied()
                .ok_or_else(|| ModelError::Config("an empty per-block list".into())),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_sample_size")]
    pub sample_size: i64,
    #[serde(default = "d_four")]
    pub in_channels: i64,
    #[serde(default = "d_four")]
    pub out_channels: i64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "d_layers")]
    pub layers_per_block: i64,
    #[serde(default = "d_one")]
    pub downsample_padding: i64,
    #[serde(default = "d_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock,
    #[serde(default = "d_per_block_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default = "d_time_shift")]
    pub resnet_time_scale_shift: String,
}

fn d_sample_size() -> i64 {
    64
}
fn d_four() -> i64 {
    4
}
fn d_true() -> bool {
    true
}
fn d_layers() -> i64 {
    2
}
fn d_one() -> i64 {
    1
}
fn d_groups() -> i64 {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_per_block_one() -> PerBlock {
    PerBlock::One(1)
}
fn d_head_dim() -> PerBlock {
    PerBlock::One(8)
}
fn d_act() -> String {
    "silu".into()
}
fn d_time_shift() -> String {
    "default".into()
}

impl UNetConfig {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::Config(format!("unet/config.json: {e}")))?;
        let unsupported =
            |what: String| Err(ModelError::Config(format!("unet/config.json: {what}")));
        if c.block_out_channels.is_empty()
            || c.down_block_types.len() != c.block_out_channels.len()
            || c.up_block_types.len() != c.block_out_channels.len()
        {
            return unsupported("block_out_channels, down_block_types and up_block_types must have the same, non-zero length".into());
        }
        if c.class_embed_type.is_some()
            || c.addition_embed_type.is_some()
            || c.time_cond_proj_dim.is_some()
        {
            return unsupported(
                "class/addition embeddings (SDXL, LCM) are not supported yet".into(),
            );
        }
        if c.act_fn != "silu" || c.resnet_time_scale_shift != "default" {
            return unsupported(format!(
                "act_fn {:?} / resnet_time_scale_shift {:?} (supported: silu / default)",
                c.act_fn, c.resnet_time_scale_shift
            ));
        }
        if c.only_cross_attention.as_bool() == Some(true) {
            return unsupported("only_cross_attention".into());
        }
        if c.layers_per_block < 1 || c.layers_per_block > 16 {
            return unsupported(format!("layers_per_block {}", c.layers_per_block));
        }
        Ok(c)
    }

    /// Heads per block: diffusers reads `attention_head_dim` as the number of
    /// heads when `num_attention_heads` is absent (a historical misnomer).
    fn heads(&self) -> &PerBlock {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// SD 1.x (v1-inference.yaml) for single-file checkpoints.
    pub fn sd1() -> Self {
        Self::standard(PerBlock::One(8), 768, false)
    }

    /// SD 2.x (v2-inference.yaml) for single-file checkpoints.
    pub fn sd2() -> Self {
        Self::standard(PerBlock::Each(vec![5, 10, 20, 20]), 1024, true)
    }

    fn standard(heads: PerBlock, cross: i64, linear: bool) -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: if cross == 768 { 64 } else { 96 },
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            downsample_padding: 1,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(cross),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: heads,
            num_attention_heads: None,
            use_linear_projection: linear,
            center_input_sample: false,
            class_embed_type: None,
            addition_embed_type: None,
            time_cond_proj_dim: None,
            act_fn: "silu".into(),
            only_cross_attention: serde_json::Value::Null,
            resnet_time_scale_shift: "default".into(),
        }
    }
}

/// diffusers' `ResnetBlock2D` (GroupNorm → SiLU → conv, twice, with the
/// time embedding added in between and a 1×1 shortcut when channels change).
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub(crate) fn new(
        s: &Scope,
        input: i64,
        output: i64,
        temb: Option<i64>,
        groups: i64,
        eps: f64,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            norm1: GroupNorm::new(&s.sub("norm1"), groups, input, eps)?,
            conv1: Conv2d::new(&s.sub("conv1"), input, output, 3, 1, 1)?,
            time_emb_proj: temb
                .map(|t| Linear::new(&s.sub("time_emb_proj"), t, output, true))
                .transpose()?,
            norm2: GroupNorm::new(&s.sub("norm2"), groups, output, eps)?,
            conv2: Conv2d::new(&s.sub("conv2"), output, output, 3, 1, 1)?,
            conv_shortcut: if input != output {
                Some(Conv2d::new(
                    &s.sub("conv_shortcut"),
                    input,
                    output,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let mut h = self.conv1.forward(&self.norm1.forward(x)?.f_silu()?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj
                .forward(&temb.f_silu()?)?
                .f_unsqueeze(-1)?
                .f_unsqueeze(-1)?;
            h = h.f_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h)?.f_silu()?)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.shallow_clone(),
        };
        Ok(shortcut.f_add(&h)?)
    }
}

/// Nearest-neighbour ×2 (or to `size`) then a 3×3 conv.
pub(crate) struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub(crate) fn new(s: &Scope, channels: i64) -> Result<Self, ModelError> {
        Ok(Self {
            conv: Conv2d::new(&s.sub("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        size: Option<(i64, i64)>,
    ) -> Result<Tensor, ModelError> {
        let (_, _, h, w) = x.size4()?;
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        // Upsample in fp32 like diffusers does for bf16, harmless elsewhere.
        let kind = x.kind();
        let up = if kind == Kind::BFloat16 {
            x.f_to_kind(Kind::Float)?
                .f_upsample_nearest2d([oh, ow], None, None)?
                .f_to_kind(kind)?
        } else {
            x.f_upsample_nearest2d([oh, ow], None, None)?
        };
        self.conv.forward(&up)
    }
}

struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl CrossAttention {
    fn new(
        s: &Scope,
        query_dim: i64,
        context_dim: i64,
        heads: i64,
        head_dim: i64,
    ) -> Result<Self, ModelError> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::new(&s.sub("to_q"), query_dim, inner, false)?,
            to_k: Linear::new(&s.sub("to_k"), context_dim, inner, false)?,
            to_v: Linear::new(&s.sub("to_v"), context_dim, inner, false)?,
            to_out: Linear::new(&s.sub("to_out").sub(0), inner, query_dim, true)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out
            .forward(&attention(&q, &k, &v, self.heads, false)?)
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(
        s: &Scope,
        dim: i64,
        heads: i64,
        head_dim: i64,
        context_dim: i64,
    ) -> Result<Self, ModelError> {
        let ff = s.sub("ff").sub("net");
        Ok(Self {
            norm1: LayerNorm::new(&s.sub("norm1"), dim, 1e-5)?,
            attn1: CrossAttention::new(&s.sub("attn1"), dim, dim, heads, head_dim)?,
            norm2: LayerNorm::new(&s.sub("norm2"), dim, 1e-5)?,
            attn2: CrossAttention::new(&s.sub("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: LayerNorm::new(&s.sub("norm3"), dim, 1e-5)?,
            ff_in: Linear::new(&ff.sub(0).sub("proj"), dim, dim * 8, true)?,
            ff_out: Linear::new(&ff.sub(2), dim * 4, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
        let x = self
            .attn1
            .forward(&self.norm1.forward(x)?, None)?
            .f_add(x)?;
        let x = self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            .f_add(&x)?;
        // GEGLU: value · gelu(gate).
        let proj = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let halves = proj.f_chunk(2, -1)?;
        let (value, gate) = match halves.as_slice() {
            [v, g] => (v, g),
            _ => {
                return Err(ModelError::Config(
                    "GEGLU projection has an odd width".into(),
                ))
            }
        };
        let h = value.f_mul(&gate.f_gelu("none")?)?;
        Ok(self.ff_out.forward(&h)?.f_add(&x)?)
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` with continuous input.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    #[allow(clippy::too_many_arguments)]
    fn new(
        s: &Scope,
        channels: i64,
        heads: i64,
        layers: i64,
        context_dim: i64,
        groups: i64,
        linear: bool,
    ) -> Result<Self, ModelError> {
        if heads <= 0 || channels % heads != 0 {
            return Err(ModelError::Config(format!(
                "{channels} channels cannot be split into {heads} attention heads"
            )));
        }
        let head_dim = channels / heads;
        let inner = heads * head_dim;
        let proj = |name: &str, i: i64, o: i64| -> Result<Projection, ModelError> {
            Ok(if linear {
                Projection::Linear(Linear::new(&s.sub(name), i, o, true)?)
            } else {
                Projection::Conv(Conv2d::new(&s.sub(name), i, o, 1, 1, 0)?)
            })
        };
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::new(
                    &s.sub("transformer_blocks").sub(i),
                    inner,
                    heads,
                    head_dim,
                    context_dim,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            norm: GroupNorm::new(&s.sub("norm"), groups, channels, 1e-6)?,
            proj_in: proj("proj_in", channels, inner)?,
            blocks,
            proj_out: proj("proj_out", inner, channels)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
        let (b, c, h, w) = x.size4()?;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor, ModelError> {
            let ch = t.size()[1];
            Ok(t.f_permute([0, 2, 3, 1])?.f_reshape([b, h * w, ch])?)
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let inner = tokens.size()[2];
        let to_image = |t: &Tensor, ch: i64| -> Result<Tensor, ModelError> {
            Ok(t.f_reshape([b, h, w, ch])?
                .f_permute([0, 3, 1, 2])?
                .f_contiguous()?)
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens, inner)?)?,
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)?, c)?,
        };
        Ok(out.f_add(x)?)
    }
}

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

pub struct UNet {
    config: UNetConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
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

        Ok(Self {
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

    /// Predicts the noise (or v) for `sample` `[b, c, h, w]` at `timestep`,
    /// conditioned on `context` `[b, tokens, cross_attention_dim]`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let (b, _, _, _) = sample.size4()?;
        let dtype = sample.kind();
        let t = Tensor::f_full([b], timestep, (Kind::Float, sample.device()))?;
        let t_emb = timestep_embedding(
            &t,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .f_to_kind(dtype)?;
        let emb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t_emb)?.f_silu()?)?;

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
