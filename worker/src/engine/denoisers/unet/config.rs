//! `unet/config.json` as diffusers' `UNet2DConditionModel` reads it, with the
//! standard SD 1.x / 2.x configs for single-file checkpoints.
#![forbid(unsafe_code)]

use serde::Deserialize;

use crate::engine::nn::ModelError;

/// A config value that diffusers allows as one number or one per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(i64),
    Each(Vec<i64>),
}

impl PerBlock {
    pub(crate) fn get(&self, i: usize) -> Result<i64, ModelError> {
        match self {
            Self::One(v) => Ok(*v),
            Self::Each(v) => v
                .get(i)
                .copied()
                .ok_or_else(|| ModelError::Config(format!("a per-block list has no entry {i}"))),
        }
    }
    pub(crate) fn last(&self) -> Result<i64, ModelError> {
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
    /// SDXL `text_time`: width of each added time id's sinusoidal embedding.
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    /// Per-layer up-block depths (SSD-1B-style distilled SDXL): refused.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// SDXL `text_time`: pooled text width + 6 × `addition_time_embed_dim`.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
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
        if c.class_embed_type.is_some() || c.time_cond_proj_dim.is_some() {
            return unsupported(
                "class embeddings and time_cond_proj_dim (LCM) are not supported".into(),
            );
        }
        match (
            c.addition_embed_type.as_deref(),
            c.addition_time_embed_dim,
            c.projection_class_embeddings_input_dim,
        ) {
            (None, _, _) => {}
            (Some("text_time"), Some(t), Some(p)) if t > 0 && t % 2 == 0 && p > 6 * t => {}
            (Some("text_time"), t, p) => {
                return unsupported(format!(
                    "addition_embed_type \"text_time\" needs an even addition_time_embed_dim > 0 and projection_class_embeddings_input_dim > 6 × it (got {t:?}, {p:?})"
                ))
            }
            (Some(other), _, _) => {
                return unsupported(format!(
                    "addition_embed_type {other:?} (supported: text_time)"
                ))
            }
        }
        if c.reverse_transformer_layers_per_block
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return unsupported(
                "reverse_transformer_layers_per_block (per-layer depths of distilled SDXL variants) is not supported".into(),
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
    pub(crate) fn heads(&self) -> &PerBlock {
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

    /// SDXL base (sd_xl_base.yaml) for single-file checkpoints.
    pub fn sdxl() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: 128,
            down_block_types: s(&[
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
            ]),
            up_block_types: s(&["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![320, 640, 1280],
            transformer_layers_per_block: PerBlock::Each(vec![1, 2, 10]),
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..Self::standard(PerBlock::Each(vec![5, 10, 20]), 2048, true)
        }
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
            addition_time_embed_dim: None,
            reverse_transformer_layers_per_block: None,
            projection_class_embeddings_input_dim: None,
            act_fn: "silu".into(),
            only_cross_attention: serde_json::Value::Null,
            resnet_time_scale_shift: "default".into(),
        }
    }
}
