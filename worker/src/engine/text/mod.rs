//! Text conditioning shared by every family: the CLIP BPE tokenizer and the
//! CLIP text encoders (with and without projection). A T5 encoder for a
//! transformer family would be a sibling module here.
#![forbid(unsafe_code)]

pub mod clip;
pub mod prompt_encoding;
pub mod tokenizer;
