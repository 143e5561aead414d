//! Bounds for every generation parameter, checked by the broker before a job
//! is queued. An error names the field and the allowed range, never the value.

use serde::{Deserialize, Serialize};

/// Allowed ranges for generation parameters; `[bounds]` in the config.
///
/// The defaults suit a single consumer GPU running SD 1.x-sized models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParamBounds {
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub max_steps: u32,
    pub min_guidance: f32,
    pub max_guidance: f32,
    /// In bytes of UTF-8.
    pub max_prompt_len: u32,
    pub max_negative_prompt_len: u32,
    pub max_batch: u32,
    pub max_tag_len: u32,
}

impl Default for ParamBounds {
    fn default() -> Self {
        Self {
            min_width: 32,
            max_width: 1024,
            min_height: 32,
            max_height: 1024,
            max_steps: 150,
            min_guidance: 0.0,
            max_guidance: 30.0,
            max_prompt_len: 2000,
            max_negative_prompt_len: 2000,
            max_batch: 4,
            max_tag_len: 64,
        }
    }
}
