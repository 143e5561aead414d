//! Prompt text → text-encoder hidden states, the way AUTOMATIC1111 encodes
//! it: attention syntax parsed (`weave_common::prompt`), each piece
//! tokenized on its own, the tokens laid out in 77-position chunks, every
//! chunk encoded separately, its hidden states multiplied by the token
//! weights and rescaled so their mean is what it was before ("original"
//! emphasis), and the chunks concatenated along the sequence axis.
//!
//! A prompt without syntax and within 75 tokens is one unweighted chunk:
//! exactly the ids transformers' tokenizer gives, so the result is
//! bit-identical to diffusers' `encode_prompt`.
#![forbid(unsafe_code)]

use tch::{Kind, Tensor};
use weave_common::prompt::{
    chunk_tokens, parse_prompt, ChunkError, PromptChunk, PromptField, PromptPiece, SpecialIds,
    TokenPiece,
};

use super::tokenizer::ClipTokenizer;
use crate::engine::EngineError;

/// The chunks of `text` for `tokenizer`, at most `max_chunks` of them.
pub fn prompt_chunks(
    tokenizer: &ClipTokenizer,
    text: &str,
    field: PromptField,
    max_chunks: usize,
) -> Result<Vec<PromptChunk>, EngineError> {
    // The broker refused bad syntax already; a caller of the engine alone
    // gets the same refusal as a typed error.
    let pieces = parse_prompt(text)
        .map_err(|e| EngineError::InvalidParams(format!("{}: {e}", field.field_name())))?;
    let tokens: Vec<TokenPiece> = pieces
        .iter()
        .map(|piece| match piece {
            PromptPiece::Text { text, weight } => TokenPiece::Tokens {
                ids: tokenizer.encode_plain(text),
                weight: *weight,
            },
            PromptPiece::Break => TokenPiece::Break,
        })
        .collect();
    let special = SpecialIds {
        bos: tokenizer.bos_id(),
        eos: tokenizer.eos_id(),
        pad: tokenizer.pad_id(),
        comma: tokenizer.comma_id(),
    };
    chunk_tokens(&tokens, special, max_chunks).map_err(|e| match e {
        ChunkError::TooManyChunks { chunks, .. } => EngineError::PromptTooLong {
            field,
            chunks: u32::try_from(chunks).unwrap_or(u32::MAX),
        },
    })
}

/// Encodes every chunk with `encode` (ids `[1, 77]` → hidden states
/// `[1, 77, dim]`), applies the weights and concatenates: `[1, 77·n, dim]`.
pub fn encode_chunks(
    chunks: &[PromptChunk],
    device: tch::Device,
    encode: &mut dyn FnMut(&Tensor) -> Result<Tensor, EngineError>,
) -> Result<Tensor, EngineError> {
    let mut encoded = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let ids = Tensor::from_slice(&chunk.ids)
            .f_unsqueeze(0)?
            .f_to_device(device)?;
        let hidden = encode(&ids)?;
        encoded.push(if chunk.is_unweighted() {
            hidden
        } else {
            apply_weights(&hidden, &chunk.weights)?
        });
    }
    Ok(Tensor::f_cat(&encoded, 1)?)
}

/// A1111's "original" emphasis: `z · w`, rescaled so the mean over the
/// whole chunk is unchanged.
fn apply_weights(hidden: &Tensor, weights: &[f64]) -> Result<Tensor, EngineError> {
    let original_mean = hidden.f_mean(Kind::Float)?;
    let positions = i64::try_from(weights.len()).unwrap_or(i64::MAX);
    let w = Tensor::from_slice(weights)
        .f_to_kind(hidden.kind())?
        .f_to_device(hidden.device())?
        .f_view([1, positions, 1])?;
    let weighted = hidden.f_mul(&w)?;
    let new_mean = weighted.f_mean(Kind::Float)?;
    let scale = original_mean.f_div(&new_mean)?.f_to_kind(hidden.kind())?;
    Ok(weighted.f_mul(&scale)?)
}

/// Lengthens the shorter of `a` and `b` (`[1, 77·n, dim]`) with copies of
/// `empty` (the empty prompt's chunk) so classifier-free guidance can batch
/// them, as A1111 does.
pub fn same_length(a: Tensor, b: Tensor, empty: &Tensor) -> Result<(Tensor, Tensor), EngineError> {
    let (la, lb) = (a.size()[1], b.size()[1]);
    let pad = |t: Tensor, to: i64| -> Result<Tensor, EngineError> {
        let have = t.size()[1];
        if have >= to {
            return Ok(t);
        }
        let chunk = empty.size()[1].max(1);
        let copies = (to - have) / chunk;
        Ok(Tensor::f_cat(&[t, empty.f_repeat([1, copies, 1])?], 1)?)
    };
    Ok((pad(a, lb)?, pad(b, la)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> bool {
        a.allclose(b, 1e-6, 1e-6, false)
    }

    #[test]
    fn weights_scale_their_positions_and_keep_the_mean() {
        let hidden = Tensor::rand([1, 77, 8], (Kind::Float, tch::Device::Cpu))
            .f_add_scalar(0.5)
            .unwrap();
        let mut weights = vec![1.0; 77];
        weights[3] = 1.5;
        weights[4] = 0.5;
        let out = apply_weights(&hidden, &weights).unwrap();
        let mean = |t: &Tensor| t.mean(Kind::Float).double_value(&[]);
        assert!((mean(&out) - mean(&hidden)).abs() < 1e-6);
        // Every position is scaled by its weight times one common factor.
        let factor = out.get(0).get(0).get(0).double_value(&[])
            / hidden.get(0).get(0).get(0).double_value(&[]);
        let at = |t: &Tensor, p: i64| t.get(0).get(p);
        assert!(close(
            &at(&out, 3),
            &at(&hidden, 3).f_mul_scalar(1.5 * factor).unwrap()
        ));
        assert!(close(
            &at(&out, 4),
            &at(&hidden, 4).f_mul_scalar(0.5 * factor).unwrap()
        ));
        assert!(close(
            &at(&out, 10),
            &at(&hidden, 10).f_mul_scalar(factor).unwrap()
        ));
        assert!(
            (factor - 1.0).abs() > 1e-4,
            "the rescale did something: {factor}"
        );
    }

    #[test]
    fn the_shorter_side_is_padded_with_empty_chunks() {
        let opts = (Kind::Float, tch::Device::Cpu);
        let a = Tensor::ones([1, 77 * 3, 4], opts);
        let b = Tensor::zeros([1, 77, 4], opts);
        let empty = Tensor::full([1, 77, 4], 2.0, opts);
        let (a2, b2) = same_length(a.shallow_clone(), b, &empty).unwrap();
        assert_eq!(a2.size(), vec![1, 231, 4]);
        assert_eq!(b2.size(), vec![1, 231, 4]);
        assert!(close(&a2, &a));
        assert_eq!(b2.narrow(1, 77, 154).min().double_value(&[]), 2.0);
        assert_eq!(b2.narrow(1, 0, 77).max().double_value(&[]), 0.0);
    }
}
