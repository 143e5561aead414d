//! LoRAs: read a LoRA file (safetensors, same header limits as models),
//! map its tensors onto the loaded model ([`keys`], libtorch-free and
//! fuzzed), and merge `W += weight · alpha/rank · up @ down` into the
//! weights in place.
//!
//! Every weight a merge touches is first copied aside, once; switching to
//! another set of LoRAs (or none) copies those originals back, so a request
//! without LoRAs after one with them computes with exactly the bytes it
//! had before (bit-identical images, tested across processes).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::engine::weights::safetensors::{SafetensorsError, SafetensorsFile};

pub mod keys;

pub use keys::{LoraKeyError, ModelLayers, Part};

/// Largest LoRA file read (they are read whole, to check a pin on exactly
/// the bytes used): SDXL LoRAs at high rank reach ~1.7 GB.
pub const MAX_LORA_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read LoRA file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("LoRA file {path} is {len} bytes, more than the {MAX_LORA_BYTES}-byte limit")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("the LoRA file does not match its sha256 pin; if the change is intended, set `sha256` to what `sshmctl hash PATH` prints")]
    PinMismatch,
    #[error(transparent)]
    File(#[from] SafetensorsError),
    #[error(transparent)]
    Keys(#[from] LoraKeyError),
    #[error("LoRA tensor {0:?} is not floating point")]
    NotFloat(String),
    #[error("LoRA alpha {0:?} is not a finite number")]
    BadAlpha(String),
    #[error("libtorch failed merging a LoRA: {0}")]
    Torch(#[from] tch::TchError),
}

/// A LoRA file read and header-checked (tensors are read at merge time).
pub struct LoraFile {
    file: SafetensorsFile,
}

impl LoraFile {
    /// Reads `path` whole (bounded), checks the `sha256` pin (lower-case hex)
    /// on those bytes, and validates the safetensors header.
    pub fn open(path: &Path, sha256: Option<&str>) -> Result<Self, LoraError> {
        let io = |source| LoraError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_LORA_BYTES {
            return Err(LoraError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        if let Some(expected) = sha256 {
            if weave_common::pin::digest_hex(&bytes) != expected {
                return Err(LoraError::PinMismatch);
            }
        }
        Ok(Self {
            file: SafetensorsFile::from_bytes(path, Arc::new(bytes))?,
        })
    }

    /// Tensor names and shapes, for [`keys::plan`].
    pub fn shapes(&self) -> BTreeMap<String, Vec<i64>> {
        self.file
            .tensors()
            .iter()
            .map(|(name, info)| (name.clone(), info.shape.clone()))
            .collect()
    }

    fn float(&self, name: &str, device: tch::Device) -> Result<Tensor, LoraError> {
        let info = self
            .file
            .tensors()
            .get(name)
            .ok_or_else(|| LoraError::NotFloat(name.to_string()))?;
        if !info.dtype.is_float() {
            return Err(LoraError::NotFloat(name.to_string()));
        }
        Ok(self.file.read_as(name, Kind::Float, device)?)
    }
}

/// One LoRA to merge and its weight.
pub struct LoraUse<'a> {
    pub file: &'a LoraFile,
    pub weight: f32,
}

/// The weights of a loaded model by part and name (shallow handles onto
/// the very tensors the modules compute with), and the originals of those
/// a merge changed.
#[derive(Default)]
pub struct MergeState {
    params: HashMap<Part, HashMap<String, Tensor>>,
    originals: HashMap<(Part, String), Tensor>,
    layers_per_block: i64,
}

impl MergeState {
    pub fn new(params: HashMap<Part, HashMap<String, Tensor>>, layers_per_block: i64) -> Self {
        Self {
            params,
            originals: HashMap::new(),
            layers_per_block,
        }
    }

    /// What [`keys::plan`] maps onto: every weight's name and shape.
    pub fn layers(&self) -> ModelLayers {
        ModelLayers {
            parts: self
                .params
                .iter()
                .map(|(&part, weights)| {
                    (
                        part,
                        weights
                            .iter()
                            .map(|(name, t)| (name.clone(), t.size()))
                            .collect(),
                    )
                })
                .collect(),
            ldm_unet: Some(crate::engine::loader::map_ldm_unet_name),
            layers_per_block: self.layers_per_block,
        }
    }

    /// Whether any weight differs from what was loaded.
    pub fn is_merged(&self) -> bool {
        !self.originals.is_empty()
    }

    /// Copies every changed weight back from its original.
    pub fn restore(&mut self) -> Result<(), LoraError> {
        for ((part, name), original) in self.originals.drain() {
            if let Some(t) = self.params.get_mut(&part).and_then(|w| w.get_mut(&name)) {
                t.f_copy_(&original)?;
            }
        }
        Ok(())
    }

    /// Restores the loaded weights, then merges `loras` (weight 0: checked
    /// but not merged, so the weights stay bit-identical). On an error the
    /// loaded weights are restored and nothing stays merged.
    pub fn apply(&mut self, loras: &[LoraUse<'_>]) -> Result<(), LoraError> {
        let _no_grad = tch::no_grad_guard();
        self.restore()?;
        let layers = self.layers();
        let mut plans = Vec::with_capacity(loras.len());
        for lora in loras {
            plans.push(keys::plan(&lora.file.shapes(), &layers)?);
        }
        let result = loras
            .iter()
            .zip(&plans)
            .filter(|(lora, _)| lora.weight != 0.0)
            .try_for_each(|(lora, plan)| self.merge(lora, plan));
        if result.is_err() {
            self.restore()?;
        }
        result
    }

    fn merge(&mut self, lora: &LoraUse<'_>, plan: &[keys::LayerPlan]) -> Result<(), LoraError> {
        for layer in plan {
            let key = (layer.part, layer.weight.clone());
            let Some(target) = self
                .params
                .get_mut(&layer.part)
                .and_then(|w| w.get_mut(&layer.weight))
            else {
                continue;
            };
            let device = target.device();
            let down = lora.file.float(&layer.down, device)?;
            let up = lora.file.float(&layer.up, device)?;
            let alpha = match &layer.alpha {
                Some(name) => {
                    // Shape [] or [1] (checked by the plan).
                    let value = lora
                        .file
                        .float(name, tch::Device::Cpu)?
                        .f_reshape([-1])?
                        .f_double_value(&[0])?;
                    if !value.is_finite() {
                        return Err(LoraError::BadAlpha(name.clone()));
                    }
                    value
                }
                None => layer.rank as f64,
            };
            let scale = f64::from(lora.weight) * alpha / layer.rank as f64;
            let delta = up
                .f_flatten(1, -1)?
                .f_mm(&down.f_flatten(1, -1)?)?
                .f_reshape(target.size())?
                .f_mul_scalar(scale)?
                .f_to_kind(target.kind())?;
            if let std::collections::hash_map::Entry::Vacant(slot) = self.originals.entry(key) {
                let mut original = target.f_zeros_like()?;
                original.f_copy_(target)?;
                slot.insert(original);
            }
            let _ = target.f_add_(&delta)?;
        }
        Ok(())
    }
}
