//! Weights by diffusers parameter name, and the few layers the models use.
//!
//! Rather than allocate a randomly initialised `nn::VarStore` and copy the
//! file into it, a model asks a [`Weights`] scope for each parameter by its
//! diffusers name and the shape its config implies; the tensor is read from
//! the file (through a name map for single-file checkpoints), shape-checked
//! and converted to the compute dtype and device. A wrong or missing weight is
//! therefore a typed error at load time, and no forward pass can meet a weight
//! of an unexpected shape.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::engine::weights::safetensors::{SafetensorsError, SafetensorsFile};

/// Errors building or running a model (text encoder, UNet, VAE).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model weight {name:?} is missing; the file does not match its config (wrong model kind, or an unsupported variant)")]
    MissingWeight { name: String },
    #[error("model weight {name:?} has shape {found:?} but the config implies {expected:?}; the weights do not match config.json")]
    Shape {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("model config is unsupported: {0}")]
    Config(String),
    #[error(transparent)]
    File(#[from] SafetensorsError),
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
}

/// Where a diffusers-named weight lives in the file: a stored tensor, or one
/// of `count` equal chunks of it along dim 0 (OpenCLIP's fused q/k/v).
#[derive(Debug, Clone)]
pub struct StoredRef {
    pub name: String,
    pub chunk: Option<(i64, i64)>,
    /// Stored as the transpose of what we use (OpenCLIP's `text_projection`
    /// is a `[width, proj]` matrix, a Linear weight is `[proj, width]`).
    pub transpose: bool,
}

impl StoredRef {
    pub fn whole(name: &str) -> Self {
        Self {
            name: name.to_string(),
            chunk: None,
            transpose: false,
        }
    }
}

/// A source of named weights: one safetensors file plus a map from diffusers
/// names to the names stored in the file.
pub struct Weights {
    /// `None` for a synthetic source (see [`Weights::synthetic`]).
    file: Option<Arc<SafetensorsFile>>,
    /// Synthetic sources record what they made up, in request order.
    made_up: std::cell::RefCell<Vec<(String, Tensor)>>,
    /// diffusers name → where it is stored.
    names: HashMap<String, StoredRef>,
    kind: Kind,
    device: Device,
    /// Bytes of every tensor handed out so far (the model's footprint).
    loaded_bytes: std::cell::Cell<u64>,
    /// Every tensor handed out, by diffusers name: shallow handles onto the
    /// modules' own weights, which LoRA merging changes in place.
    handed_out: std::cell::RefCell<HashMap<String, Tensor>>,
    /// The file reader's buffer, kept from one tensor to the next while
    /// this component loads (`SafetensorsFile::read_with`); freed with it.
    scratch: std::cell::RefCell<Vec<u8>>,
}

impl Weights {
    /// Weights whose stored names are the diffusers names after `rename`
    /// (which returns the diffusers names a stored key provides, none to drop it).
    pub fn new(
        file: Arc<SafetensorsFile>,
        kind: Kind,
        device: Device,
        rename: impl Fn(&str) -> Vec<(String, Option<(i64, i64)>)>,
    ) -> Self {
        let mut names = HashMap::new();
        for stored in file.tensors().keys() {
            for (ours, chunk) in rename(stored) {
                names.insert(
                    ours,
                    StoredRef {
                        name: stored.clone(),
                        chunk,
                        transpose: false,
                    },
                );
            }
        }
        Self {
            file: Some(file),
            made_up: Default::default(),
            names,
            kind,
            device,
            loaded_bytes: std::cell::Cell::new(0),
            handed_out: Default::default(),
            scratch: Default::default(),
        }
    }

    /// Marks the weight we call `ours` as stored transposed (2-D only).
    pub fn transposed(mut self, ours: &str) -> Self {
        if let Some(stored) = self.names.get_mut(ours) {
            stored.transpose = true;
        }
        self
    }

    /// A source that makes up small random weights of whatever shape is
    /// asked for. Tests and tools use it to build models of a given config
    /// and then save them with [`Weights::take_made_up`].
    pub fn synthetic(kind: Kind, device: Device) -> Self {
        Self {
            file: None,
            made_up: Default::default(),
            names: HashMap::new(),
            kind,
            device,
            loaded_bytes: std::cell::Cell::new(0),
            handed_out: Default::default(),
            scratch: Default::default(),
        }
    }

    /// The weights a synthetic source made up, by diffusers name.
    pub fn take_made_up(&self) -> Vec<(String, Tensor)> {
        self.made_up.take()
    }

    /// The weights handed out so far, by diffusers name (shallow handles:
    /// changing one in place changes the module that holds it).
    pub fn take_handed_out(&self) -> HashMap<String, Tensor> {
        self.handed_out.take()
    }

    /// Bytes of the weights loaded through this source.
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded_bytes.get()
    }

    pub fn root(&self) -> Scope<'_> {
        Scope {
            weights: self,
            prefix: String::new(),
        }
    }

    /// Whether a diffusers-named weight exists.
    pub fn contains(&self, name: &str) -> bool {
        self.file.is_none() || self.names.contains_key(name)
    }

    /// The shape of a diffusers-named weight (after chunking).
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        let stored = self.names.get(name)?;
        let mut shape = self
            .file
            .as_ref()?
            .tensors()
            .get(&stored.name)?
            .shape
            .clone();
        if let (Some((_, count)), Some(first)) = (stored.chunk, shape.first_mut()) {
            *first /= count;
        }
        Some(shape)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn device(&self) -> Device {
        self.device
    }

    fn load(&self, name: &str, expected: &[i64]) -> Result<Tensor, ModelError> {
        let Some(file) = &self.file else {
            // Norm weights near 1, everything else small, so activations
            // stay in range through deep stacks.
            let is_norm_weight = name.ends_with("weight") && expected.len() == 1;
            let t = Tensor::f_randn(expected, (Kind::Float, Device::Cpu))?.f_mul_scalar(0.1)?;
            let t = if is_norm_weight {
                t.f_add_scalar(1.0)?
            } else {
                t
            };
            self.made_up
                .borrow_mut()
                .push((name.to_string(), t.shallow_clone()));
            return Ok(t.f_to_kind(self.kind)?.f_to_device(self.device)?);
        };
        let stored = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight {
                name: name.to_string(),
            })?;
        let info = file
            .tensors()
            .get(&stored.name)
            .ok_or_else(|| ModelError::MissingWeight {
                name: name.to_string(),
            })?;
        let mut found = info.shape.clone();
        if stored.transpose {
            if found.len() != 2 || stored.chunk.is_some() {
                return Err(ModelError::Shape {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    found,
                });
            }
            found.reverse();
        }
        if let Some((_, count)) = stored.chunk {
            match found.first_mut() {
                Some(first) if count > 0 && *first % count == 0 => *first /= count,
                _ => {
                    return Err(ModelError::Shape {
                        name: name.to_string(),
                        expected: expected.to_vec(),
                        found,
                    })
                }
            }
        }
        // A 1×1 convolution and a linear layer hold the same numbers; SD 2.x
        // checkpoints store attention projections either way.
        let squeezable = found.len() == expected.len() + 2
            && found[expected.len()..].iter().all(|&d| d == 1)
            && found[..expected.len()] == *expected;
        let unsqueezable = expected.len() == found.len() + 2
            && expected[found.len()..].iter().all(|&d| d == 1)
            && expected[..found.len()] == *found;
        if found != expected && !squeezable && !unsqueezable {
            return Err(ModelError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        if !info.dtype.is_float() {
            return Err(ModelError::Config(format!(
                "weight {name:?} is stored as {:?}, not floating point",
                info.dtype
            )));
        }
        let mut t = file.read_as_with(
            &stored.name,
            self.kind,
            self.device,
            &mut self.scratch.borrow_mut(),
        )?;
        if stored.transpose {
            t = t.f_transpose(0, 1)?.f_contiguous()?;
        }
        if let Some((index, count)) = stored.chunk {
            t = t
                .f_chunk(count, 0)?
                .into_iter()
                .nth(index as usize)
                .ok_or_else(|| ModelError::MissingWeight {
                    name: name.to_string(),
                })?
                .f_contiguous()?;
        }
        self.loaded_bytes
            .set(self.loaded_bytes.get() + (t.numel() * self.kind.elt_size_in_bytes()) as u64);
        let t = if found != expected {
            t.f_reshape(expected)?
        } else {
            t
        };
        self.handed_out
            .borrow_mut()
            .insert(name.to_string(), t.shallow_clone());
        Ok(t)
    }
}

/// A name prefix inside [`Weights`], like `tch::nn::Path`.
#[derive(Clone)]
pub struct Scope<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn sub(&self, part: impl std::fmt::Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Scope {
            weights: self.weights,
            prefix,
        }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    pub fn tensor(&self, leaf: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        self.weights.load(&self.name(leaf), shape)
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.weights.contains(&self.name(leaf))
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }
}

pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(s: &Scope, input: i64, output: i64, bias: bool) -> Result<Self, ModelError> {
        Ok(Self {
            weight: s.tensor("weight", &[output, input])?,
            bias: if bias {
                Some(s.tensor("bias", &[output])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(
        s: &Scope,
        input: i64,
        output: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: s.tensor("weight", &[output, input, kernel, kernel])?,
            bias: s.tensor("bias", &[output])?,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        if crate::engine::conv3x3::takes_large(
            &x.size(),
            &self.weight.size(),
            self.stride,
            self.padding,
            x.device(),
            crate::onednn::enabled(),
        ) {
            return Ok(crate::engine::conv3x3::conv3x3_large(
                x,
                &self.weight,
                &self.bias,
            )?);
        }
        Ok(x.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(s: &Scope, groups: i64, channels: i64, eps: f64) -> Result<Self, ModelError> {
        if groups <= 0 || channels % groups != 0 {
            return Err(ModelError::Config(format!(
                "{} channels cannot be split into {groups} groups",
                channels
            )));
        }
        Ok(Self {
            weight: s.tensor("weight", &[channels])?,
            bias: s.tensor("bias", &[channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(s: &Scope, dim: i64, eps: f64) -> Result<Self, ModelError> {
        Ok(Self {
            weight: s.tensor("weight", &[dim])?,
            bias: s.tensor("bias", &[dim])?,
            dim,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// Multi-head attention over `[batch, tokens, heads × head_dim]` tensors.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: i64,
    causal: bool,
) -> Result<Tensor, ModelError> {
    let (b, n, inner) = q.size3()?;
    let head_dim = inner / heads;
    let split = |t: &Tensor| -> Result<Tensor, ModelError> {
        let (b, m, _) = t.size3()?;
        Ok(t.f_view([b, m, heads, head_dim])?.f_transpose(1, 2)?)
    };
    let out = Tensor::f_scaled_dot_product_attention::<Tensor>(
        &split(q)?,
        &split(k)?,
        &split(v)?,
        None,
        0.0,
        causal,
        None,
        false,
    )?;
    Ok(out.f_transpose(1, 2)?.f_reshape([b, n, inner])?)
}

/// Total bytes of a set of tensors.
pub fn bytes_of<'t>(tensors: impl IntoIterator<Item = &'t Tensor>) -> u64 {
    tensors
        .into_iter()
        .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
        .sum()
}
