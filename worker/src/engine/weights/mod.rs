//! Where a model's numbers come from: our own safetensors reader (its header
//! parser is libtorch-free and fuzzed on its own) and the files the loader
//! reads, with the `sha256` pin enforced on exactly those bytes.
#![forbid(unsafe_code)]

pub mod files;
pub mod safetensors;
