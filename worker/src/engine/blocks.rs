//! The convolutional blocks the UNet and the VAE share: diffusers'
//! `ResnetBlock2D` and `Upsample2D`.
#![forbid(unsafe_code)]

use tch::{Kind, Tensor};

use crate::engine::nn::{Conv2d, GroupNorm, Linear, ModelError, Scope};

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
