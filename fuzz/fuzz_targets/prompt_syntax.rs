//! The A1111 prompt parser and the chunk layout on any prompt text.
//!
//! Never panics; every piece of text keeps a finite weight; the chunks are
//! always 77 positions with BOS first, and a prompt whose tokens are its
//! bytes never loses or reorders one of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_common::prompt::{chunk_tokens, parse_prompt, PromptPiece, SpecialIds, TokenPiece};

const SPECIAL: SpecialIds = SpecialIds {
    bos: 1000,
    eos: 1001,
    pad: 1002,
    comma: Some(b',' as i64),
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pieces) = parse_prompt(text) else {
        return;
    };
    let mut expected = Vec::new();
    let tokens: Vec<TokenPiece> = pieces
        .iter()
        .map(|piece| match piece {
            PromptPiece::Text { text, weight } => {
                assert!(weight.is_finite(), "{text:?} has weight {weight}");
                let ids: Vec<i64> = text.bytes().map(i64::from).collect();
                expected.extend(ids.iter().copied());
                TokenPiece::Tokens { ids, weight: *weight }
            }
            PromptPiece::Break => TokenPiece::Break,
        })
        .collect();
    let chunks = chunk_tokens(&tokens, SPECIAL, usize::MAX).expect("no chunk limit");
    let mut seen = Vec::new();
    for chunk in &chunks {
        assert_eq!(chunk.ids.len(), 77);
        assert_eq!(chunk.weights.len(), 77);
        assert_eq!(chunk.ids[0], SPECIAL.bos);
        let end = chunk.ids.iter().rposition(|&id| id == SPECIAL.eos).expect("an EOS");
        seen.extend(chunk.ids[1..end].iter().copied());
    }
    assert_eq!(seen, expected);
});
