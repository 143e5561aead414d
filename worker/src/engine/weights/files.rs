//! Where the loader's bytes come from, and the `sha256` pin
//! (`weave_common::pin`) enforced on exactly those bytes.
//!
//! Without a pin the loader reads from disk as it goes. With one, every
//! file the pin covers is read into memory once, the digest is computed
//! over those bytes, and the loader parses those bytes and no others: a
//! file swapped after the check is never seen (no check-then-reread
//! window). The cost is the pinned files' size in memory while the model
//! loads (the weights become tensors, then the copy is dropped).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weave_common::pin;

use crate::engine::loader::LoaderError;
use crate::engine::text::tokenizer::{TokenizerError, MAX_VOCAB_FILE_BYTES};
use crate::engine::weights::safetensors::SafetensorsFile;

/// The loader's view of a model's files.
pub enum ModelFiles {
    /// Read from disk when needed.
    Disk,
    /// Read once and checked against the pin.
    Pinned {
        files: HashMap<PathBuf, Arc<Vec<u8>>>,
        /// A single-file pin covers that file only; other paths (a
        /// checkpoint's tokenizer folder) are read from disk.
        single_file: bool,
    },
}

fn read_whole(path: &Path) -> Result<Arc<Vec<u8>>, LoaderError> {
    std::fs::read(path)
        .map(Arc::new)
        .map_err(|source| LoaderError::Io {
            path: path.to_owned(),
            source,
        })
}

impl ModelFiles {
    /// Reads what the pin covers under `root` (a file, or a diffusers
    /// folder: [`pin::folder_files`]) and checks it against `expected` (lower-
    /// case hex, as the config stores it).
    pub fn pinned(root: &Path, expected: &str) -> Result<Self, LoaderError> {
        let mut files = HashMap::new();
        let single_file = !root.is_dir();
        let actual = if single_file {
            let bytes = read_whole(root)?;
            let digest = pin::digest_hex(&bytes);
            files.insert(root.to_owned(), bytes);
            digest
        } else {
            let wanted = pin::folder_files(root);
            let mut digests = Vec::with_capacity(wanted.len());
            for &(rel, required) in &wanted {
                let path = root.join(rel);
                if path.is_file() {
                    let bytes = read_whole(&path)?;
                    digests.push((rel, Some(pin::digest_hex(&bytes))));
                    files.insert(path, bytes);
                } else if required {
                    return Err(LoaderError::Missing { path });
                } else {
                    digests.push((rel, None));
                }
            }
            pin::folder_digest(digests.iter().map(|(rel, d)| (*rel, d.as_deref())))
        };
        if actual != expected {
            return Err(LoaderError::PinMismatch);
        }
        Ok(Self::Pinned { files, single_file })
    }

    fn pinned_bytes(&self, path: &Path) -> Option<Option<&Arc<Vec<u8>>>> {
        match self {
            ModelFiles::Disk => None,
            ModelFiles::Pinned { files, single_file } => match files.get(path) {
                Some(bytes) => Some(Some(bytes)),
                None if *single_file => None,
                // A folder pin: a file outside the pinned set does not exist
                // as far as the loader is concerned.
                None => Some(None),
            },
        }
    }

    pub fn exists(&self, path: &Path) -> bool {
        match self.pinned_bytes(path) {
            Some(found) => found.is_some(),
            None => path.exists(),
        }
    }

    /// The whole file, from the snapshot or from disk.
    pub fn read(&self, path: &Path) -> Result<Arc<Vec<u8>>, LoaderError> {
        match self.pinned_bytes(path) {
            Some(Some(bytes)) => Ok(Arc::clone(bytes)),
            Some(None) => Err(LoaderError::Missing {
                path: path.to_owned(),
            }),
            None => read_whole(path),
        }
    }

    /// A safetensors file, parsed from the snapshot or opened on disk.
    pub fn safetensors(&self, path: &Path) -> Result<SafetensorsFile, LoaderError> {
        match self.pinned_bytes(path) {
            Some(Some(bytes)) => Ok(SafetensorsFile::from_bytes(path, Arc::clone(bytes))?),
            Some(None) => Err(LoaderError::Missing {
                path: path.to_owned(),
            }),
            None => Ok(SafetensorsFile::open(path)?),
        }
    }

    /// A tokenizer file's text, bounded as the tokenizer bounds it on disk.
    pub fn tokenizer_text(&self, path: &Path) -> Result<String, TokenizerError> {
        let bytes = match self.pinned_bytes(path) {
            None => return crate::engine::text::tokenizer::read_limited(path),
            Some(None) => {
                return Err(TokenizerError::Io {
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            }
            Some(Some(bytes)) => bytes,
        };
        if bytes.len() as u64 > MAX_VOCAB_FILE_BYTES {
            return Err(TokenizerError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "{} bytes is larger than {MAX_VOCAB_FILE_BYTES}",
                    bytes.len()
                ),
            });
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| TokenizerError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}
