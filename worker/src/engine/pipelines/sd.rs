//! SD 1.x/2.x text conditioning, as diffusers' `StableDiffusionPipeline`
//! encodes prompts: one CLIP encoder, its last hidden state after the final
//! layer norm (or layer `n - clip_skip`), the negative prompt encoded as
//! text (empty = `""`).
#![forbid(unsafe_code)]

use tch::{Device, Tensor};

use super::{Conditioner, PromptEmbeds};
use crate::engine::text::clip::ClipTextModel;
use crate::engine::text::tokenizer::ClipTokenizer;
use crate::engine::EngineError;

pub struct SdText {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
}

/// One prompt's token ids as a `[1, 77]` tensor on `device`.
pub(super) fn token_tensor(
    tokenizer: &ClipTokenizer,
    text: &str,
    device: Device,
) -> Result<Tensor, EngineError> {
    Ok(Tensor::from_slice(&tokenizer.encode(text))
        .f_unsqueeze(0)?
        .f_to_device(device)?)
}

impl Conditioner for SdText {
    fn encode(
        &self,
        text: &str,
        clip_skip: u32,
        device: Device,
    ) -> Result<PromptEmbeds, EngineError> {
        let ids = token_tensor(&self.tokenizer, text, device)?;
        Ok(PromptEmbeds {
            context: self.encoder.forward(&ids, clip_skip as usize)?,
            pooled: None,
        })
    }

    fn negative(
        &self,
        text: &str,
        clip_skip: u32,
        device: Device,
        _positive: &PromptEmbeds,
    ) -> Result<PromptEmbeds, EngineError> {
        self.encode(text, clip_skip, device)
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
