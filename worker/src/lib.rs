//! The diffusion engine and the worker channel loop.

pub mod engine;
