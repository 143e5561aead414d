//! Weighted prompt tokens laid out in CLIP-sized chunks, as A1111 does for
//! prompts longer than the text encoder's 77 positions.
//!
//! Each chunk is `[BOS] + up to 75 tokens + [EOS]`, padded to 77 with the
//! tokenizer's pad id; a chunk of a short prompt is therefore exactly what
//! transformers' tokenizer gives with `padding="max_length"`. The text
//! encoder runs once per chunk and the hidden states are concatenated along
//! the sequence axis. When a chunk fills up, the tokens after its last comma
//! (if that comma is among the last [`COMMA_BACKTRACK`] tokens) move to the
//! next chunk, so a phrase is not cut in half (A1111's
//! `comma_padding_backtrack`, default 20).
#![forbid(unsafe_code)]

/// Prompt tokens per chunk (77 positions minus BOS and EOS).
pub const CHUNK_TOKENS: usize = 75;
/// Positions of one encoded chunk.
pub const CHUNK_POSITIONS: usize = CHUNK_TOKENS + 2;
/// How far back from a full chunk a comma may be to move the rest along.
pub const COMMA_BACKTRACK: usize = 20;

/// What one tokenized piece of a prompt is.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenPiece {
    Tokens { ids: Vec<i64>, weight: f64 },
    Break,
}

/// The special ids of the tokenizer the chunks are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    /// The id of `,` as a word of its own (`,</w>`), if the vocabulary has it.
    pub comma: Option<i64>,
}

/// One chunk: [`CHUNK_POSITIONS`] ids and the weight of each position (1
/// for BOS, EOS and padding).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    pub ids: Vec<i64>,
    pub weights: Vec<f64>,
}

impl PromptChunk {
    /// Whether every weight is 1 (the encoding then needs no reweighting).
    pub fn is_unweighted(&self) -> bool {
        self.weights.iter().all(|&w| w == 1.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("the prompt is {chunks} chunks of 75 tokens long; this daemon allows {max} (`max_prompt_chunks` in [bounds]); shorten it or use fewer BREAKs")]
    TooManyChunks { chunks: usize, max: usize },
}

/// Lays `pieces` out in chunks; at least one chunk, at most `max_chunks`.
pub fn chunk_tokens(
    pieces: &[TokenPiece],
    special: SpecialIds,
    max_chunks: usize,
) -> Result<Vec<PromptChunk>, ChunkError> {
    let mut builder = Builder {
        special,
        chunks: Vec::new(),
        ids: Vec::new(),
        weights: Vec::new(),
        last_comma: None,
    };
    for piece in pieces {
        match piece {
            TokenPiece::Break => builder.close_chunk(),
            TokenPiece::Tokens { ids, weight } => {
                for &id in ids {
                    builder.push(id, *weight);
                }
            }
        }
    }
    if !builder.ids.is_empty() || builder.chunks.is_empty() {
        builder.close_chunk();
    }
    if builder.chunks.len() > max_chunks {
        return Err(ChunkError::TooManyChunks {
            chunks: builder.chunks.len(),
            max: max_chunks,
        });
    }
    Ok(builder.chunks)
}

struct Builder {
    special: SpecialIds,
    chunks: Vec<PromptChunk>,
    ids: Vec<i64>,
    weights: Vec<f64>,
    /// Index in `ids` of the last comma of the open chunk.
    last_comma: Option<usize>,
}

impl Builder {
    fn push(&mut self, id: i64, weight: f64) {
        if Some(id) == self.special.comma {
            self.last_comma = Some(self.ids.len());
        } else if self.ids.len() == CHUNK_TOKENS {
            if let Some(comma) = self
                .last_comma
                .filter(|&comma| CHUNK_TOKENS - comma <= COMMA_BACKTRACK)
            {
                let moved_ids = self.ids.split_off(comma + 1);
                let moved_weights = self.weights.split_off(comma + 1);
                self.close_chunk();
                self.ids = moved_ids;
                self.weights = moved_weights;
            }
        }
        if self.ids.len() == CHUNK_TOKENS {
            self.close_chunk();
        }
        self.ids.push(id);
        self.weights.push(weight);
    }

    fn close_chunk(&mut self) {
        let mut ids = Vec::with_capacity(CHUNK_POSITIONS);
        let mut weights = Vec::with_capacity(CHUNK_POSITIONS);
        ids.push(self.special.bos);
        weights.push(1.0);
        ids.append(&mut self.ids);
        weights.append(&mut self.weights);
        ids.push(self.special.eos);
        weights.push(1.0);
        ids.resize(CHUNK_POSITIONS, self.special.pad);
        weights.resize(CHUNK_POSITIONS, 1.0);
        self.last_comma = None;
        self.chunks.push(PromptChunk { ids, weights });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SPECIAL: SpecialIds = SpecialIds {
        bos: 49406,
        eos: 49407,
        pad: 0,
        comma: Some(267),
    };

    fn tokens(ids: &[i64], weight: f64) -> TokenPiece {
        TokenPiece::Tokens {
            ids: ids.to_vec(),
            weight,
        }
    }

    #[test]
    fn a_short_prompt_is_one_transformers_style_chunk() {
        let chunks = chunk_tokens(&[tokens(&[10, 11], 1.0)], SPECIAL, 4).unwrap();
        assert_eq!(chunks.len(), 1);
        let mut want = vec![49406, 10, 11, 49407];
        want.resize(77, 0);
        assert_eq!(chunks[0].ids, want);
        assert!(chunks[0].is_unweighted());
    }

    #[test]
    fn an_empty_prompt_is_one_chunk() {
        let chunks = chunk_tokens(&[], SPECIAL, 1).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(&chunks[0].ids[..3], &[49406, 49407, 0]);
    }

    #[test]
    fn weights_follow_their_tokens() {
        let chunks = chunk_tokens(&[tokens(&[1], 1.0), tokens(&[2, 3], 1.5)], SPECIAL, 4).unwrap();
        assert_eq!(&chunks[0].weights[..5], &[1.0, 1.0, 1.5, 1.5, 1.0]);
        assert!(!chunks[0].is_unweighted());
    }

    #[test]
    fn exactly_75_tokens_fit_one_chunk_and_76_need_two() {
        let ids: Vec<i64> = (1..=75).collect();
        assert_eq!(
            chunk_tokens(&[tokens(&ids, 1.0)], SPECIAL, 4)
                .unwrap()
                .len(),
            1
        );
        let ids: Vec<i64> = (1..=76).collect();
        let chunks = chunk_tokens(&[tokens(&ids, 1.0)], SPECIAL, 4).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].ids[75], 75);
        assert_eq!(chunks[0].ids[76], 49407);
        assert_eq!(&chunks[1].ids[..3], &[49406, 76, 49407]);
    }

    #[test]
    fn a_full_chunk_moves_the_words_after_a_near_comma_along() {
        // 70 tokens, a comma at index 70, then 10 more: the chunk is full at
        // 75 with the comma 5 back, so the 4 tokens after it move.
        let mut ids: Vec<i64> = (1..=70).collect();
        ids.push(267);
        ids.extend(100..110);
        let chunks = chunk_tokens(&[tokens(&ids, 1.0)], SPECIAL, 4).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].ids[71], 267);
        assert_eq!(chunks[0].ids[72], 49407);
        assert_eq!(chunks[0].ids[73], 0);
        assert_eq!(&chunks[1].ids[1..11], &(100..110).collect::<Vec<i64>>()[..]);
    }

    #[test]
    fn a_far_comma_does_not_move_anything() {
        let mut ids: Vec<i64> = (1..=10).collect();
        ids.push(267);
        ids.extend(100..180);
        let chunks = chunk_tokens(&[tokens(&ids, 1.0)], SPECIAL, 4).unwrap();
        assert_eq!(chunks[0].ids[75], 100 + 75 - 12);
    }

    #[test]
    fn break_pads_the_chunk() {
        let chunks = chunk_tokens(
            &[tokens(&[1, 2], 1.0), TokenPiece::Break, tokens(&[3], 1.0)],
            SPECIAL,
            4,
        )
        .unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(&chunks[0].ids[..4], &[49406, 1, 2, 49407]);
        assert_eq!(&chunks[1].ids[..3], &[49406, 3, 49407]);
        // A trailing BREAK leaves no empty chunk behind.
        let chunks = chunk_tokens(&[tokens(&[1], 1.0), TokenPiece::Break], SPECIAL, 4).unwrap();
        assert_eq!(chunks.len(), 1);
    }

    #[test]
    fn the_chunk_limit_is_a_typed_error() {
        let ids: Vec<i64> = (1..=151).collect();
        assert_eq!(
            chunk_tokens(&[tokens(&ids, 1.0)], SPECIAL, 2),
            Err(ChunkError::TooManyChunks { chunks: 3, max: 2 })
        );
    }
}
