//! The CLIP text encoder (transformers' `CLIPTextModel`), driven by its
//! `config.json`. Parameter names are transformers' without the
//! `text_model.` prefix (the loader strips it where a file has it).
#![forbid(unsafe_code)]

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::engine::nn::{attention, LayerNorm, Linear, ModelError, Scope};

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    #[serde(default = "default_hidden")]
    pub hidden_size: i64,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "default_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The pooled output's token: the first `eos_token_id`, or — for old
    /// configs that say 2 — the largest id (transformers' legacy rule).
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
    /// Width of `text_projection` (`CLIPTextModelWithProjection`).
    #[serde(default)]
    pub projection_dim: Option<i64>,
}

fn default_vocab() -> i64 {
    49408
}
fn default_hidden() -> i64 {
    512
}
fn default_intermediate() -> i64 {
    2048
}
fn default_layers() -> i64 {
    12
}
fn default_heads() -> i64 {
    8
}
fn default_positions() -> i64 {
    77
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> i64 {
    49407
}

impl ClipTextConfig {
    /// Parses a text encoder `config.json`; a full `CLIPConfig` with a
    /// nested `text_config` is accepted too.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ModelError> {
        let value = value.get("text_config").unwrap_or(value);
        serde_json::from_value(value.clone())
            .map_err(|e| ModelError::Config(format!("text encoder config.json: {e}")))
    }

    /// OpenAI CLIP ViT-L/14's text tower (SD 1.x).
    pub fn sd1() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: None,
        }
    }

    /// OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's
    /// second encoder).
    pub fn sdxl_bigg() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: Some(1280),
        }
    }

    /// OpenCLIP ViT-H/14's text tower less its last layer (SD 2.x).
    pub fn sd2() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    heads: i64,
    activation: Activation,
    max_positions: i64,
    eos_token_id: i64,
    /// `text_projection` of `CLIPTextModelWithProjection` (no bias).
    text_projection: Option<Linear>,
}

/// What SDXL takes from one encoder: the output of one layer (no final
/// layer norm) and, with a projection, the pooled text embedding.
pub struct HiddenAndPooled {
    pub hidden: Tensor,
    pub pooled: Option<Tensor>,
}

impl ClipTextModel {
    /// `CLIPTextModel`. Parameter names are without `text_model.`.
    pub fn new(s: &Scope, c: &ClipTextConfig) -> Result<Self, ModelError> {
        Self::build(s, c, None)
    }

    /// `CLIPTextModelWithProjection`: the encoder under `s` and
    /// `text_projection` under `projection` (transformers keeps it outside
    /// `text_model.`).
    pub fn with_projection(
        s: &Scope,
        projection: &Scope,
        c: &ClipTextConfig,
    ) -> Result<Self, ModelError> {
        let dim = c.projection_dim.ok_or_else(|| {
            ModelError::Config(
                "text_encoder_2/config.json has no projection_dim (SDXL's second encoder is a CLIPTextModelWithProjection)".into(),
            )
        })?;
        Self::build(
            s,
            c,
            Some(Linear::new(projection, c.hidden_size, dim, false)?),
        )
    }

    fn build(
        s: &Scope,
        c: &ClipTextConfig,
        text_projection: Option<Linear>,
    ) -> Result<Self, ModelError> {
        let activation = match c.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(ModelError::Config(format!(
                    "text encoder activation {other:?} (supported: quick_gelu, gelu)"
                )))
            }
        };
        let d = c.hidden_size;
        if c.num_attention_heads <= 0 || d % c.num_attention_heads != 0 {
            return Err(ModelError::Config(format!(
                "hidden_size {d} is not divisible by num_attention_heads {}",
                c.num_attention_heads
            )));
        }
        let emb = s.sub("embeddings");
        let enc = s.sub("encoder").sub("layers");
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let l = enc.sub(i);
            let attn = l.sub("self_attn");
            let mlp = l.sub("mlp");
            layers.push(EncoderLayer {
                layer_norm1: LayerNorm::new(&l.sub("layer_norm1"), d, c.layer_norm_eps)?,
                q_proj: Linear::new(&attn.sub("q_proj"), d, d, true)?,
                k_proj: Linear::new(&attn.sub("k_proj"), d, d, true)?,
                v_proj: Linear::new(&attn.sub("v_proj"), d, d, true)?,
                out_proj: Linear::new(&attn.sub("out_proj"), d, d, true)?,
                layer_norm2: LayerNorm::new(&l.sub("layer_norm2"), d, c.layer_norm_eps)?,
                fc1: Linear::new(&mlp.sub("fc1"), d, c.intermediate_size, true)?,
                fc2: Linear::new(&mlp.sub("fc2"), c.intermediate_size, d, true)?,
            });
        }
        Ok(Self {
            token_embedding: emb
                .sub("token_embedding")
                .tensor("weight", &[c.vocab_size, d])?,
            position_embedding: emb
                .sub("position_embedding")
                .tensor("weight", &[c.max_position_embeddings, d])?,
            layers,
            final_layer_norm: LayerNorm::new(&s.sub("final_layer_norm"), d, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
            activation,
            max_positions: c.max_position_embeddings,
            eos_token_id: c.eos_token_id,
            text_projection,
        })
    }

    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// `input_ids` `[batch, seq]` → the hidden states diffusers conditions
    /// on: the last layer's output after `final_layer_norm`, or with
    /// `clip_skip = k` the output of layer `n - k`, also after
    /// `final_layer_norm` (as diffusers' `encode_prompt` does).
    pub fn forward(&self, input_ids: &Tensor, clip_skip: usize) -> Result<Tensor, ModelError> {
        let keep = self.layers.len().saturating_sub(clip_skip).max(1);
        let (h, _) = self.run(input_ids, keep, false)?;
        self.final_layer_norm.forward(&h)
    }

    /// SDXL's use of an encoder: `hidden_states[-(clip_skip + 2)]` (the
    /// output of layer `n - 1 - clip_skip`, no final layer norm) and, for an
    /// encoder with a projection, `text_embeds`: the final-layer-normed
    /// state at the end-of-text token through `text_projection`.
    pub fn hidden_and_pooled(
        &self,
        input_ids: &Tensor,
        clip_skip: usize,
    ) -> Result<HiddenAndPooled, ModelError> {
        let n = self.layers.len();
        let wanted = n.checked_sub(1 + clip_skip).ok_or_else(|| {
            ModelError::Config(format!(
                "clip_skip {clip_skip} leaves no layer of a {n}-layer text encoder"
            ))
        })?;
        let with_pooled = self.text_projection.is_some();
        let (last, hidden) = self.run(input_ids, if with_pooled { n } else { wanted }, true)?;
        let hidden = hidden.into_iter().nth(wanted).ok_or_else(|| {
            ModelError::Config("the text encoder produced fewer hidden states than layers".into())
        })?;
        let pooled = match &self.text_projection {
            None => None,
            Some(projection) => {
                let normed = self.final_layer_norm.forward(&last)?;
                let eos = self.eos_positions(input_ids)?;
                let (b, _, d) = normed.size3()?;
                let index = eos.f_view([b, 1, 1])?.f_expand([b, 1, d], false)?;
                let at_eos = normed.f_gather(1, &index, false)?.f_squeeze_dim(1)?;
                Some(projection.forward(&at_eos)?)
            }
        };
        Ok(HiddenAndPooled { hidden, pooled })
    }

    /// transformers' pooled-token rule: the first `eos_token_id`; configs
    /// with the legacy id 2 take the largest id instead.
    fn eos_positions(&self, input_ids: &Tensor) -> Result<Tensor, ModelError> {
        Ok(if self.eos_token_id == 2 {
            input_ids.f_argmax(-1, false)?
        } else {
            input_ids
                .f_eq(self.eos_token_id)?
                .f_to_kind(Kind::Int)?
                .f_argmax(-1, false)?
        })
    }

    /// Runs embeddings and the first `layers` layers; returns the last
    /// output and, when asked, every layer's output (`hidden_states[0]` is
    /// the embeddings, as transformers counts them).
    fn run(
        &self,
        input_ids: &Tensor,
        layers: usize,
        keep_all: bool,
    ) -> Result<(Tensor, Vec<Tensor>), ModelError> {
        let (_, seq) = input_ids.size2()?;
        if seq > self.max_positions {
            return Err(ModelError::Config(format!(
                "{seq} tokens exceed the encoder's {} positions",
                self.max_positions
            )));
        }
        let vocab = self.token_embedding.size()[0];
        let (min, max) = (
            input_ids.f_min()?.int64_value(&[]),
            input_ids.f_max()?.int64_value(&[]),
        );
        if min < 0 || max >= vocab {
            return Err(ModelError::Config(format!(
                "token id {max} is outside the encoder's vocabulary of {vocab}; the tokenizer does not match the text encoder"
            )));
        }
        let positions = Tensor::f_arange(seq, (Kind::Int64, input_ids.device()))?;
        let mut h =
            Tensor::f_embedding(&self.token_embedding, input_ids, -1, false, false)?.f_add(
                &Tensor::f_embedding(&self.position_embedding, &positions, -1, false, false)?,
            )?;
        let mut all = Vec::new();
        for layer in &self.layers[..layers.min(self.layers.len())] {
            if keep_all {
                all.push(h.shallow_clone());
            }
            let residual = h.shallow_clone();
            let x = layer.layer_norm1.forward(&h)?;
            let q = layer.q_proj.forward(&x)?;
            let k = layer.k_proj.forward(&x)?;
            let v = layer.v_proj.forward(&x)?;
            let a = attention(&q, &k, &v, self.heads, true)?;
            h = layer.out_proj.forward(&a)?.f_add(&residual)?;
            let residual = h.shallow_clone();
            let x = layer.fc1.forward(&layer.layer_norm2.forward(&h)?)?;
            let x = match self.activation {
                Activation::QuickGelu => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?)?,
                Activation::Gelu => x.f_gelu("none")?,
            };
            h = layer.fc2.forward(&x)?.f_add(&residual)?;
        }
        if keep_all {
            all.push(h.shallow_clone());
        }
        Ok((h, all))
    }
}
