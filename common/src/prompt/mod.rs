//! Prompts as AUTOMATIC1111 users write them: the attention syntax
//! ([`syntax`]) and the 75-token chunks long prompts are encoded in
//! ([`chunks`]). Pure and libtorch-free; the worker's text encoders use it.
#![forbid(unsafe_code)]

pub mod chunks;
pub mod syntax;

/// `limits.max_prompt_chunks` when the config does not set it: 600 tokens.
pub const DEFAULT_MAX_PROMPT_CHUNKS: u32 = 8;

pub use chunks::{chunk_tokens, ChunkError, PromptChunk, SpecialIds, TokenPiece};
pub use syntax::{parse_prompt, PromptPiece, PromptSyntaxError};

/// Which of a request's two prompts something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PromptField {
    Prompt,
    NegativePrompt,
}

impl PromptField {
    /// The request field's name, as errors and docs/PROTOCOL.md spell it.
    pub fn field_name(self) -> &'static str {
        match self {
            PromptField::Prompt => "prompt",
            PromptField::NegativePrompt => "negative_prompt",
        }
    }
}
