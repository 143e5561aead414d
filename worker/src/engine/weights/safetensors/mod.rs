//! A defensive reader for the safetensors format.
//!
//! Layout: `u64` little-endian header length `N`, then `N` bytes of JSON
//! (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`),
//! then the data section the offsets point into.
//!
//! Model files are untrusted input: everything in the header is checked against
//! the real file size *before* any tensor byte is read, and a tensor is read
//! with a positioned read of exactly its validated byte range (no mmap, no
//! pointer arithmetic on attacker-controlled numbers). The file is recognized
//! by its content, never by its extension; pickle checkpoints (zip or raw
//! pickle) are refused with a message that says how to convert them.
//!
//! We do not use the `safetensors` crate so that every check is visible here
//! and the error type is ours. The header checks themselves live in
//! [`header`], which has no libtorch dependency so that it can be fuzzed.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

pub mod header;
pub use header::{parse_header, Dtype, HeaderIssue, ParsedHeader, TensorInfo};

/// Largest JSON header we accept. Real SD checkpoints have headers of a few
/// hundred KiB; anything near this is hostile or corrupt.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Errors from reading a safetensors file. Each one names the file; none
/// ever results from reading outside the validated ranges.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a pickle checkpoint (.ckpt/.bin/.pt); pickle checkpoints are not supported \
         because loading them can run arbitrary code. Convert it to safetensors first, e.g. with \
         diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py --to_safetensors \
         (on a machine you trust), and point the config at the .safetensors file"
    )]
    PickleCheckpoint { path: PathBuf },
    #[error(
        "{path} is not a safetensors file ({reason}); only safetensors model files are accepted"
    )]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: header length {len} exceeds the limit of {MAX_HEADER_BYTES} bytes or the file size; the file is corrupt or hostile")]
    HeaderTooLarge { path: PathBuf, len: u64 },
    #[error("{path}: the JSON header is invalid: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("{path}: tensor {name:?} uses unsupported dtype {dtype:?} (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor {name:?} is invalid: {reason}; the file is corrupt or hostile")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tensor {name:?} not found")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: libtorch rejected tensor {name:?}: {source}")]
    Torch {
        path: PathBuf,
        name: String,
        #[source]
        source: tch::TchError,
    },
}

impl Dtype {
    /// The matching libtorch element kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::F64 => Kind::Double,
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
            Self::I64 => Kind::Int64,
            Self::I32 => Kind::Int,
            Self::I16 => Kind::Int16,
            Self::I8 => Kind::Int8,
            Self::U8 => Kind::Uint8,
            Self::Bool => Kind::Bool,
        }
    }
}

/// An open safetensors file whose header has been fully validated.
pub struct SafetensorsFile {
    path: PathBuf,
    source: Source,
    tensors: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

/// Where the bytes come from: the open file (positioned reads), or bytes
/// read once into memory — a pinned model, whose digest was checked on
/// exactly these bytes, so nothing can change between the check and the
/// parse.
enum Source {
    File(File),
    Bytes(std::sync::Arc<Vec<u8>>),
}

impl Source {
    fn len(&self) -> std::io::Result<u64> {
        match self {
            Source::File(file) => Ok(file.metadata()?.len()),
            Source::Bytes(bytes) => Ok(bytes.len() as u64),
        }
    }

    /// Fills as much of `buf` as there is from `offset`; returns the count.
    fn read_up_to(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            Source::File(file) => read_up_to(file, buf, offset),
            Source::Bytes(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::File(file) => file.read_exact_at(buf, offset),
            Source::Bytes(_) => {
                if self.read_up_to(buf, offset)? == buf.len() {
                    Ok(())
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                }
            }
        }
    }
}

/// The first bytes of a zip archive (torch.save since 1.6).
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";
/// The pickle PROTO opcode that starts every protocol ≥ 2 pickle.
const PICKLE_PROTO: u8 = 0x80;

impl SafetensorsFile {
    /// Opens and validates `path`. Reads only the header.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let file = File::open(path).map_err(|source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_source(path, Source::File(file))
    }

    /// Validates `bytes`, the whole content of `path` read earlier (and
    /// checked against a pin); tensors are read from these bytes only.
    pub fn from_bytes(
        path: &Path,
        bytes: std::sync::Arc<Vec<u8>>,
    ) -> Result<Self, SafetensorsError> {
        Self::from_source(path, Source::Bytes(bytes))
    }

    fn from_source(path: &Path, file: Source) -> Result<Self, SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_len = file.len().map_err(io)?;
        let mut prefix = [0u8; 8];
        let got = file.read_up_to(&mut prefix, 0).map_err(io)?;
        let prefix = &prefix[..got];
        if prefix.starts_with(ZIP_MAGIC) || prefix.first() == Some(&PICKLE_PROTO) {
            return Err(SafetensorsError::PickleCheckpoint {
                path: path.to_path_buf(),
            });
        }
        if got < 8 {
            return Err(SafetensorsError::NotSafetensors {
                path: path.to_path_buf(),
                reason: format!("only {got} bytes long"),
            });
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(prefix);
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(SafetensorsError::HeaderTooLarge {
                path: path.to_path_buf(),
                len: header_len,
            });
        }
        // Bounded by MAX_HEADER_BYTES above, so the allocation is bounded too.
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(io)?;
        if header.first() != Some(&b'{') {
            return Err(SafetensorsError::NotSafetensors {
                path: path.to_path_buf(),
                reason: "the header does not start with a JSON object".into(),
            });
        }
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let (tensors, metadata) =
            parse_header(&header, data_start, data_len).map_err(|e| match e {
                HeaderIssue::Json(reason) => SafetensorsError::BadHeader {
                    path: path.to_path_buf(),
                    reason,
                },
                HeaderIssue::Dtype { name, dtype } => SafetensorsError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype,
                },
                HeaderIssue::Tensor { name, reason } => SafetensorsError::BadTensor {
                    path: path.to_path_buf(),
                    name,
                    reason,
                },
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            source: file,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names and their validated descriptions.
    pub fn tensors(&self) -> &HashMap<String, TensorInfo> {
        &self.tensors
    }

    /// The free-form `__metadata__` map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Reads one tensor's bytes (exactly its validated range) into a CPU
    /// tensor of the stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor, SafetensorsError> {
        self.read_with(name, &mut Vec::new())
    }

    /// [`Self::read`] through `scratch`, a buffer the caller keeps between
    /// tensors: a model's loader reads hundreds of tensors, and a fresh
    /// buffer for each one costs an allocation, a zero fill and, for the
    /// large ones, a page fault per 4 KiB (most of a load's kernel time on
    /// a fresh process, docs/PERFORMANCE.md, issue 14). `scratch` grows to
    /// the largest tensor read and is never shrunk here.
    pub fn read_with(&self, name: &str, scratch: &mut Vec<u8>) -> Result<Tensor, SafetensorsError> {
        let (info, bytes) = self.read_bytes(name, scratch)?;
        // `from_data_size` trusts that the slice holds numel × element size
        // bytes; `parse_header` proved byte_len == numel × size and we read
        // exactly byte_len bytes.
        Tensor::f_from_data_size(bytes, &info.shape, info.dtype.kind()).map_err(|source| {
            SafetensorsError::Torch {
                path: self.path.clone(),
                name: name.to_string(),
                source,
            }
        })
    }

    /// Reads one tensor's bytes (exactly its validated range) into the
    /// front of `scratch`; its header entry and those bytes.
    fn read_bytes<'s>(
        &self,
        name: &str,
        scratch: &'s mut Vec<u8>,
    ) -> Result<(&TensorInfo, &'s [u8]), SafetensorsError> {
        let info = self.info(name)?;
        let len = self.byte_range(name, info)?.len();
        self.grow(scratch, len)?;
        let bytes = &mut scratch[..len];
        self.read_exact_at(bytes, info.file_offset())?;
        Ok((info, bytes))
    }

    /// Fills `bytes` from `offset` of the source; a short file is an error.
    fn read_exact_at(&self, bytes: &mut [u8], offset: u64) -> Result<(), SafetensorsError> {
        self.source
            .read_exact_at(bytes, offset)
            .map_err(|source| SafetensorsError::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, SafetensorsError> {
        self.tensors
            .get(name)
            .ok_or_else(|| SafetensorsError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// The tensor's validated bytes, as a range of the file.
    fn byte_range(
        &self,
        name: &str,
        info: &TensorInfo,
    ) -> Result<std::ops::Range<usize>, SafetensorsError> {
        // Safetensors data is little-endian, as is every target we build for.
        #[cfg(not(target_endian = "little"))]
        compile_error!("the safetensors reader assumes a little-endian host");
        let too_large = || SafetensorsError::BadTensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason: "larger than the address space".into(),
        };
        let start = usize::try_from(info.file_offset()).map_err(|_| too_large())?;
        let len = usize::try_from(info.byte_len()).map_err(|_| too_large())?;
        let end = start.checked_add(len).ok_or_else(too_large)?;
        Ok(start..end)
    }

    /// Grows `scratch` to at least `len` bytes; an allocation that fails is
    /// an error, not an abort.
    fn grow(&self, scratch: &mut Vec<u8>, len: usize) -> Result<(), SafetensorsError> {
        if scratch.len() < len {
            scratch
                .try_reserve_exact(len - scratch.len())
                .map_err(|e| SafetensorsError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::OutOfMemory, e),
                })?;
            // Only the new tail is zeroed; what an earlier tensor left in
            // the rest is overwritten by the read that follows.
            scratch.resize(len, 0);
        }
        Ok(())
    }

    /// Reads a floating-point tensor and converts it to `kind` on `device`.
    pub fn read_as(
        &self,
        name: &str,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, SafetensorsError> {
        self.read_as_with(name, kind, device, &mut Vec::new())
    }

    /// [`Self::read_as`] through a caller's `scratch` (see [`Self::read_with`]).
    ///
    /// A CPU weight read from the file is read and converted
    /// [`CONVERT_CHUNK_BYTES`] at a time into the tensor it becomes, so
    /// `scratch` grows to one chunk, not to the largest weight; other
    /// devices read the whole weight into `scratch` first.
    pub fn read_as_with(
        &self,
        name: &str,
        kind: Kind,
        device: Device,
        scratch: &mut Vec<u8>,
    ) -> Result<Tensor, SafetensorsError> {
        self.read_as_chunked(name, kind, device, scratch, CONVERT_CHUNK_BYTES)
    }

    fn read_as_chunked(
        &self,
        name: &str,
        kind: Kind,
        device: Device,
        scratch: &mut Vec<u8>,
        chunk_bytes: usize,
    ) -> Result<Tensor, SafetensorsError> {
        let torch = |source| SafetensorsError::Torch {
            path: self.path.clone(),
            name: name.to_string(),
            source,
        };
        let info = self.info(name)?;
        let stored = info.dtype.kind();
        match (&self.source, device) {
            // Pinned bytes are already in memory: converted where they lie.
            (Source::Bytes(bytes), _) => {
                let range = self.byte_range(name, info)?;
                let within = bytes
                    .get(range)
                    .ok_or_else(|| SafetensorsError::BadTensor {
                        path: self.path.clone(),
                        name: name.to_string(),
                        reason: "past the end of the pinned bytes".into(),
                    })?;
                crate::tensor_bytes::convert(within, &info.shape, stored, kind, device)
                    .map_err(torch)
            }
            (Source::File(_), Device::Cpu) => {
                let len = self.byte_range(name, info)?.len();
                let element = stored.elt_size_in_bytes();
                // Whole elements per chunk, at least one.
                let chunk = (chunk_bytes / element).max(1) * element;
                let dest = Tensor::f_empty(&info.shape, (kind, Device::Cpu)).map_err(torch)?;
                let flat = dest.f_view([-1]).map_err(torch)?;
                self.grow(scratch, chunk.min(len))?;
                let index = |bytes: usize| i64::try_from(bytes / element).unwrap_or(i64::MAX);
                let mut done = 0;
                while done < len {
                    let n = chunk.min(len - done);
                    let bytes = &mut scratch[..n];
                    self.read_exact_at(bytes, info.file_offset() + done as u64)?;
                    let mut part = flat.f_narrow(0, index(done), index(n)).map_err(torch)?;
                    crate::tensor_bytes::convert_into(bytes, stored, &mut part).map_err(torch)?;
                    done += n;
                }
                Ok(dest)
            }
            (Source::File(_), _) => {
                // Converted straight out of `scratch`: no tensor of the
                // stored dtype is made (crate::tensor_bytes says why).
                let (info, bytes) = self.read_bytes(name, scratch)?;
                crate::tensor_bytes::convert(bytes, &info.shape, stored, kind, device)
                    .map_err(torch)
            }
        }
    }
}

/// How much of a weight the CPU loader reads before converting it: small
/// enough to still be in the cache when it is converted, large enough that
/// the calls cost nothing next to the copy. Reading a whole 1.7 GB fp16
/// UNet into one buffer and then converting it passes every byte through
/// memory twice more (written by the read, read back by the conversion);
/// docs/PERFORMANCE.md has the measurement.
pub const CONVERT_CHUNK_BYTES: usize = 1 << 20;

/// Fills as much of `buf` as the file has from `offset`; returns the count.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Serializes tensors in the safetensors format. Used by tests and tools to
/// build files; production code never writes files.
pub fn serialize(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>, SafetensorsError> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in tensors {
        let (dtype, kind) = match t.kind() {
            Kind::Float => ("F32", Kind::Float),
            Kind::Half => ("F16", Kind::Half),
            Kind::BFloat16 => ("BF16", Kind::BFloat16),
            Kind::Int64 => ("I64", Kind::Int64),
            _ => ("F32", Kind::Float),
        };
        let torch = |source| SafetensorsError::Torch {
            path: PathBuf::new(),
            name: name.to_string(),
            source,
        };
        let t = t
            .f_to_kind(kind)
            .and_then(|t| t.f_contiguous())
            .map_err(torch)?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel).map_err(torch)?;
        let begin = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests;
