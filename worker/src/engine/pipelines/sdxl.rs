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

use super::{Conditioner, PromptEmbeds, PromptInput};
use crate::engine::text::clip::ClipTextModel;
use crate::engine::text::prompt_encoding;
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
    /// Both encoders see the same chunks (the tokenizers share the
    /// vocabulary and differ only in padding); the pooled embedding is the
    /// first chunk's, as A1111 takes it.
    fn encode(
        &self,
        prompt: &PromptInput<'_>,
        device: Device,
    ) -> Result<PromptEmbeds, EngineError> {
        let skip = prompt.clip_skip as usize;
        let chunks = |tokenizer| {
            prompt_encoding::prompt_chunks(
                tokenizer,
                prompt.text,
                prompt.field,
                prompt.max_chunks(),
            )
        };
        let one = prompt_encoding::encode_chunks(&chunks(&self.tokenizer)?, device, &mut |ids| {
            Ok(self.encoder.hidden_and_pooled(ids, skip)?.hidden)
        })?;
        let mut pooled = None;
        let two =
            prompt_encoding::encode_chunks(&chunks(&self.tokenizer_2)?, device, &mut |ids| {
                let out = self.encoder_2.hidden_and_pooled(ids, skip)?;
                if pooled.is_none() {
                    pooled = Some(out.pooled.ok_or_else(|| {
                        EngineError::InvalidParams(
                            "SDXL's second text encoder has no projection".into(),
                        )
                    })?);
                }
                Ok(out.hidden)
            })?;
        let pooled = pooled
            .ok_or_else(|| EngineError::InvalidParams("the prompt gave no chunk to pool".into()))?;
        if one.size()[1] != two.size()[1] {
            return Err(EngineError::InvalidParams(
                "SDXL's two tokenizers split the prompt into different numbers of chunks".into(),
            ));
        }
        Ok(PromptEmbeds {
            context: Tensor::f_cat(&[one, two], -1)?,
            pooled: Some(pooled),
        })
    }

    fn negative(
        &self,
        prompt: &PromptInput<'_>,
        device: Device,
        positive: &PromptEmbeds,
    ) -> Result<PromptEmbeds, EngineError> {
        if prompt.text.is_empty() && self.force_zeros_for_empty_prompt {
            return Ok(PromptEmbeds {
                context: positive.context.f_zeros_like()?,
                pooled: positive
                    .pooled
                    .as_ref()
                    .map(|p| p.f_zeros_like())
                    .transpose()?,
            });
        }
        self.encode(
            &PromptInput {
                clip_skip: 0,
                ..*prompt
            },
            device,
        )
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
