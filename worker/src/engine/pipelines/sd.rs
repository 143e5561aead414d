//! SD 1.x/2.x text conditioning, as diffusers' `StableDiffusionPipeline`
//! encodes prompts: one CLIP encoder, its last hidden state after the final
//! layer norm (or layer `n - clip_skip`), the negative prompt encoded as
//! text (empty = `""`).
#![forbid(unsafe_code)]

use tch::Device;

use super::{Conditioner, PromptEmbeds, PromptInput};
use crate::engine::text::clip::ClipTextModel;
use crate::engine::text::prompt_encoding;
use crate::engine::text::tokenizer::ClipTokenizer;
use crate::engine::EngineError;

pub struct SdText {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
}

impl Conditioner for SdText {
    fn encode(
        &self,
        prompt: &PromptInput<'_>,
        device: Device,
    ) -> Result<PromptEmbeds, EngineError> {
        let chunks = prompt_encoding::prompt_chunks(
            &self.tokenizer,
            prompt.text,
            prompt.field,
            prompt.max_chunks(),
        )?;
        let skip = prompt.clip_skip as usize;
        let context = prompt_encoding::encode_chunks(&chunks, device, &mut |ids| {
            Ok(self.encoder.forward(ids, skip)?)
        })?;
        Ok(PromptEmbeds {
            context,
            pooled: None,
        })
    }

    fn negative(
        &self,
        prompt: &PromptInput<'_>,
        device: Device,
        _positive: &PromptEmbeds,
    ) -> Result<PromptEmbeds, EngineError> {
        self.encode(prompt, device)
    }

    fn time_ids(&self, _width: u32, _height: u32) -> Option<[f32; 6]> {
        None
    }

    fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    fn text_encoder(&self) -> &ClipTextModel {
        &self.encoder
    }
}
