//! The batched text conditioning a denoising loop gets, from the family's
//! [`Conditioner`](super::Conditioner): both guidance halves lengthened to
//! the same number of chunks, repeated per image, with SDXL's pooled text
//! and added time ids.
#![forbid(unsafe_code)]

use tch::Tensor;
use weave_common::prompt::PromptField;

use super::{GenerateParams, Pipeline, PromptEmbeds, PromptInput};
use crate::engine::denoisers::{Conditioning, TextTime};
use crate::engine::text::prompt_encoding;
use crate::engine::EngineError;

impl Pipeline {
    /// The batched conditioning for `p`: `[negative, positive]` under
    /// guidance, each repeated `batch` times, with SDXL's pooled text and
    /// time ids alongside.
    pub(super) fn conditioning(
        &self,
        p: &GenerateParams,
        cfg: bool,
    ) -> Result<Conditioning, EngineError> {
        let batch = p.batch as i64;
        let c = &self.conditioner;
        let input = |text, field| PromptInput {
            text,
            field,
            clip_skip: p.clip_skip,
            max_chunks: p.max_prompt_chunks,
        };
        let mut pos = c.encode(&input(&p.prompt, PromptField::Prompt), self.device)?;
        let mut neg = if cfg {
            let negative = input(&p.negative_prompt, PromptField::NegativePrompt);
            Some(c.negative(&negative, self.device, &pos)?)
        } else {
            None
        };
        // Guidance batches both sides: the shorter one is lengthened with
        // the empty prompt's chunk, as A1111 does (docs/PROMPTS.md).
        if let Some(n) = neg.as_mut() {
            if n.context.size()[1] != pos.context.size()[1] {
                let empty = c.encode(
                    &PromptInput {
                        max_chunks: 1,
                        ..input("", PromptField::NegativePrompt)
                    },
                    self.device,
                )?;
                let (a, b) = prompt_encoding::same_length(
                    n.context.shallow_clone(),
                    pos.context.shallow_clone(),
                    &empty.context,
                )?;
                n.context = a;
                pos.context = b;
            }
        }
        let stack = |pick: &dyn Fn(&PromptEmbeds) -> Option<&Tensor>| -> Result<Option<Tensor>, EngineError> {
            let Some(positive) = pick(&pos) else {
                return Ok(None);
            };
            let mut parts = Vec::new();
            if let Some(neg) = &neg {
                parts.push(pick(neg).ok_or_else(|| {
                    EngineError::InvalidParams("the negative conditioning lacks a part".into())
                })?);
            }
            parts.push(positive);
            let rank = positive.dim();
            let mut reps = vec![1i64; rank];
            reps[0] = batch;
            let repeated = parts
                .iter()
                .map(|t| t.f_repeat(&reps))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Tensor::f_cat(&repeated, 0)?))
        };
        let context = stack(&|e| Some(&e.context))?.ok_or_else(|| {
            EngineError::InvalidParams("the text encoder produced no context".into())
        })?;
        let pooled = stack(&|e| e.pooled.as_ref())?;
        let text_time = match (pooled, c.time_ids(p.width, p.height)) {
            (Some(text_embeds), Some(ids)) => {
                let rows = text_embeds.size()[0];
                let time_ids = Tensor::from_slice(&ids)
                    .f_view([1, 6])?
                    .f_repeat([rows, 1])?
                    .f_to_kind(self.kind)?
                    .f_to_device(self.device)?;
                Some(TextTime {
                    text_embeds,
                    time_ids,
                })
            }
            (None, None) => None,
            _ => {
                return Err(EngineError::InvalidParams(
                    "pooled text embeddings and time ids come together (SDXL) or not at all".into(),
                ))
            }
        };
        Ok(Conditioning { context, text_time })
    }
}
