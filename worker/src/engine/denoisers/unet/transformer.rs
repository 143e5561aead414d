//! diffusers' `Transformer2DModel` (continuous input) and its
//! `BasicTransformerBlock`: self-attention, cross-attention on the text,
//! GEGLU feed-forward.
#![forbid(unsafe_code)]

use tch::Tensor;

use crate::engine::nn::{attention, Conv2d, GroupNorm, LayerNorm, Linear, ModelError, Scope};

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
pub(super) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
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

    pub(super) fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
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
