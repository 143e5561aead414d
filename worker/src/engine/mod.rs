//! The diffusion engine: loaders, tokenizer, models, schedulers and the
//! text-to-image pipeline, with no sandbox or IPC concerns so it can be
//! tested and benchmarked on its own. See docs/ENGINE.md.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use weave_worker::engine::{DeviceChoice, GenerateParams, ModelSpec, Pipeline, Precision, SchedulerKind};
//! let pipe = Pipeline::load(&ModelSpec::new("models/digits"), DeviceChoice::Auto, Precision::Auto)?;
//! let params = GenerateParams {
//!     prompt: "a handwritten digit seven".into(),
//!     width: 32, height: 32, steps: 20, guidance: 3.0, seed: 7,
//!     scheduler: SchedulerKind::Ddim, ..Default::default()
//! };
//! let images = pipe.generate(&params, &mut |_step, _total| ControlFlow::Continue(()))?;
//! # Ok::<(), weave_worker::engine::EngineError>(())
//! ```
#![forbid(unsafe_code)]

pub mod blocks;
pub mod conv3x3;
pub mod denoisers;
pub mod loader;
pub mod lora;
pub mod nn;
pub mod pipelines;
pub mod preview;
pub mod schedulers;
pub mod text;
pub mod vae;
pub mod vae_encoder;
pub mod weights;

pub use loader::{LoaderError, ModelKind, ModelSpec};
pub use nn::ModelError;
pub use pipelines::{
    global_rng_lock, DeviceChoice, GenerateParams, ImageInput, Mask, Pipeline, Precision,
    PromptInput, RgbImage, Stage,
};
pub use preview::{LatentRgb, Preview, PreviewRequest};
pub use schedulers::{SchedulerError, SchedulerKind};
pub use text::tokenizer::TokenizerError;
pub use weights::safetensors::SafetensorsError;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("invalid generation parameters: {0}")]
    InvalidParams(String),
    #[error("device unavailable: {0}")]
    Device(String),
    #[error("not built yet: {0}")]
    NotBuilt(String),
    #[error("generation cancelled")]
    Cancelled,
    #[error("the {} is {chunks} chunks of 75 tokens, more than allowed", field.field_name())]
    PromptTooLong {
        field: weave_common::prompt::PromptField,
        chunks: u32,
    },
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    /// A LoRA that could not be read or does not fit; the weights are the
    /// model's own again.
    #[error(transparent)]
    Lora(#[from] lora::LoraError),
}
