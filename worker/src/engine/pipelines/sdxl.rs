//! SDXL text conditioning, as diffusers' `StableDiffusionXLPipeline`
//! encodes prompts: both tokenizers (the second pads with its own pad
//! token, `!` in SDXL), both encoders' `hidden_states[-(clip_skip + 2)]`
//! (no final layer norm) concatenated, the second encoder's pooled
//! projection, and the added time ids `(original size, crop top-left,
//! target size)` = `(h, w, 0, 0, h, w)`.
//!
//! The negative side: an empty negative prompt with
//! `force_zeros_for_empty_prompt` (model_index.json; diffusers' default
//! true) is all zeros, as diffusers does when no negative prompt is
//! given; otherwise the text is encoded, always from `hidden_states[-2]`
//! (diffusers applies `clip_skip` to the positive prompt only).
#![forbid(unsafe_code)]

use tch::{Device, Tensor};

use super::sd::token_tensor;
use super::{Conditioner, PromptEmbeds};
use crate::engine::text::clip::ClipTextModel;
use crate::engine::text::tokenizer::ClipTokenizer;
use crate::engine::EngineError;

pub struct SdxlText {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
    pub tokenizer_2: ClipTokenizer,
    /// `CLIPTextModelWithProjection`.
    pub encoder_2: ClipTextModel,
    pub force_zeros_for_empty_prompt: bool,
}

impl Conditioner for SdxlText {
    fn encode(
        &self,
        text: &str,
        clip_skip: u32,
        device: Device,
    ) -> Result<PromptEmbeds, EngineError> {
        let skip = clip_skip as usize;
        let one = self
            .encoder
            .hidden_and_pooled(&token_tensor(&self.tokenizer, text, device)?, skip)?;
        let two = self
            .encoder_2
            .hidden_and_pooled(&token_tensor(&self.tokenizer_2, text, device)?, skip)?;
        let pooled = two.pooled.ok_or_else(|| {
            EngineError::InvalidParams("SDXL's second text encoder has no projection".into())
        })?;
        Ok(PromptEmbeds {
            context: Tensor::f_cat(&[one.hidden, two.hidden], -1)?,
            pooled: Some(pooled),
        })
    }

    fn negative(
        &self,
        text: &str,
        _clip_skip: u32,
        device: Device,
        positive: &PromptEmbeds,
    ) -> Result<PromptEmbeds, EngineError> {
        if text.is_empty() && self.force_zeros_for_empty_prompt {
            return Ok(PromptEmbeds {
                context: positive.context.f_zeros_like()?,
                pooled: positive
                    .pooled
                    .as_ref()
                    .map(|p| p.f_zeros_like())
                    .transpose()?,
            });
        }
        self.encode(text, 0, device)
    }

    fn time_ids(&self, width: u32, height: u32) -> Option<[f32; 6]> {
        let (h, w) = (height as f32, width as f32);
        Some([h, w, 0.0, 0.0, h, w])
    }

    fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    fn text_encoder(&self) -> &ClipTextModel {
        &self.encoder
    }

    fn second(&self) -> Option<(&ClipTokenizer, &ClipTextModel)> {
        Some((&self.tokenizer_2, &self.encoder_2))
    }
}
