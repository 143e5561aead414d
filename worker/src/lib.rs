//! The diffusion engine and the mapping from `weave_common`'s types to it.

pub mod engine;
pub mod onednn;
pub mod tensor_bytes;
pub mod to_engine;
