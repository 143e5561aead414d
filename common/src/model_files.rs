//! What the broker (and `sshmctl config check`) check of a model's files
//! without loading a weight: the path exists and can be read, and it has a
//! layout the engine recognizes. Also the model's native image size, which
//! a diffusers folder declares.
//!
//! These are cheap checks (a few `stat`s and `open`s, the first bytes of a
//! single-file checkpoint, two small JSON files of a folder): the broker runs
//! them for every model at start-up and again before each load, so a model
//! whose files are missing or broken is listed unavailable with the reason
//! and refused on its own while the others keep working. The weights
//! themselves, and the `sha256` pin over them, are the worker's business:
//! it enforces both on the bytes it parses.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::config::is_safetensors_name;
use crate::pin::FOLDER_FILES;

/// [`FileProblem::problem`] of a path that does not exist.
pub const NOT_FOUND: &str = "does not exist";

/// Why a model's files cannot be used, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; {fix}")]
pub struct FileProblem {
    /// What is wrong, after the path, e.g. `does not exist`.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

fn problem(problem: impl Into<String>, fix: impl Into<String>) -> FileProblem {
    FileProblem {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Largest safetensors header a checkpoint may declare (the worker's own
/// cap is the same order; this only tells a checkpoint from other bytes).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;
/// Largest `config.json` read for the native size.
const MAX_JSON_BYTES: u64 = 256 * 1024;

/// Checks the path and layout of a model at `path` (see the module docs):
/// a `*.safetensors` name is a single-file checkpoint, anything else a
/// diffusers folder.
pub fn check(path: &Path) -> Result<(), FileProblem> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(problem(
                NOT_FOUND,
                "put the model there, or correct `path` of this [[model]]",
            ))
        }
        Err(error) => {
            return Err(problem(
                format!("cannot be examined: {error}"),
                "make every directory above it searchable (`chmod o+x DIR`) by the daemon \
                 account",
            ))
        }
    };
    if is_safetensors_name(path) {
        if !metadata.is_file() {
            return Err(problem(
                "ends in .safetensors but is not a regular file",
                "point `path` at the checkpoint file itself, or at a diffusers folder \
                 (without the .safetensors name)",
            ));
        }
        return check_safetensors_start(path, metadata.len());
    }
    if metadata.is_file() {
        return Err(problem(
            "is a file; a single-file checkpoint must be a .safetensors file (only \
             safetensors is read)",
            "convert it to .safetensors and name it *.safetensors, or point `path` at a \
             diffusers folder",
        ));
    }
    if !metadata.is_dir() {
        return Err(problem(
            "is neither a directory nor a regular file",
            "point `path` at a diffusers folder or a .safetensors file",
        ));
    }
    if let Err(error) = std::fs::read_dir(path) {
        return Err(problem(
            format!("cannot be listed: {error}"),
            format!("make it readable: `chmod 0755 {}`", path.display()),
        ));
    }
    for &(relative, required) in FOLDER_FILES {
        if !required {
            continue;
        }
        let file = path.join(relative);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) | Err(_) => {
                return Err(problem(
                    format!("is not a complete diffusers folder: {relative} is missing"),
                    "point `path` at a folder as diffusers saves it (model_index.json, unet/, \
                     vae/, text_encoder/, tokenizer/; models/digits is one), or at a \
                     .safetensors checkpoint",
                ))
            }
        }
        if let Err(error) = std::fs::File::open(&file) {
            return Err(problem(
                format!("{relative} cannot be opened: {error}"),
                format!(
                    "make the folder readable by the daemon account: `chmod -R a+rX {}`",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A safetensors file starts with its header's length (u64, little-endian)
/// and the header, a JSON object: `{`. Nothing more is parsed here.
fn check_safetensors_start(path: &Path, len: u64) -> Result<(), FileProblem> {
    let mut file = std::fs::File::open(path).map_err(|error| {
        problem(
            format!("cannot be opened: {error}"),
            format!("make it readable: `chmod 0644 {}`", path.display()),
        )
    })?;
    let mut start = [0u8; 9];
    let not_safetensors = || {
        problem(
            "is not a safetensors checkpoint (its first bytes are not a safetensors header)",
            "convert the checkpoint to safetensors, or point `path` at the right file",
        )
    };
    file.read_exact(&mut start).map_err(|_| not_safetensors())?;
    let mut length = [0u8; 8];
    length.copy_from_slice(&start[..8]);
    let header = u64::from_le_bytes(length);
    if !(2..=MAX_HEADER_BYTES).contains(&header)
        || header > len.saturating_sub(8)
        || start[8] != b'{'
    {
        return Err(not_safetensors());
    }
    Ok(())
}

#[derive(Deserialize)]
struct UnetSize {
    sample_size: u32,
}

#[derive(Deserialize)]
struct VaeLevels {
    block_out_channels: Vec<u32>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_JSON_BYTES {
        return None;
    }
    serde_json::from_str(&text).ok()
}

/// The image size a diffusers folder was made for, as diffusers computes
/// its default: `unet/config.json` `sample_size` (latent pixels) times the
/// VAE's scale factor, 2^(number of `vae/config.json` `block_out_channels`
/// − 1). `None` for a single file, or when either file is missing, not of
/// that shape, or the result is not a multiple of 8 from 8 to 8192.
pub fn native_size(path: &Path) -> Option<u32> {
    if is_safetensors_name(path) {
        return None;
    }
    let unet: UnetSize = read_json(&path.join("unet/config.json"))?;
    let vae: VaeLevels = read_json(&path.join("vae/config.json"))?;
    let levels = u32::try_from(vae.block_out_channels.len()).ok()?;
    let scale = 1u32.checked_shl(levels.checked_sub(1)?)?;
    let size = unet.sample_size.checked_mul(scale)?;
    ((8..=8192).contains(&size) && size % 8 == 0).then_some(size)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weave-model-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn complete_folder(dir: &Path) {
        for &(relative, required) in FOLDER_FILES {
            if required {
                let file = dir.join(relative);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, b"{}").unwrap();
            }
        }
    }

    #[test]
    fn a_missing_path_and_an_incomplete_folder_are_named() {
        let dir = scratch("folder");
        let missing = check(&dir.join("nope")).unwrap_err();
        assert_eq!(missing.problem, NOT_FOUND);

        let folder = dir.join("broken");
        std::fs::create_dir(&folder).unwrap();
        let empty = check(&folder.clone()).unwrap_err();
        assert!(
            empty.problem.contains("model_index.json is missing"),
            "{empty}"
        );
        complete_folder(&folder);
        assert_eq!(check(&folder.clone()), Ok(()));
        std::fs::remove_file(folder.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
        let no_unet = check(&folder).unwrap_err();
        assert!(
            no_unet
                .problem
                .contains("unet/diffusion_pytorch_model.safetensors is missing"),
            "{no_unet}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_single_file_must_start_like_safetensors() {
        let dir = scratch("single");
        let file = dir.join("m.safetensors");
        let mut good = 2u64.to_le_bytes().to_vec();
        good.extend_from_slice(b"{}");
        std::fs::write(&file, &good).unwrap();
        assert_eq!(check(&file.clone()), Ok(()));
        for bad in [
            b"PK\x03\x04 a zip, as a pickle checkpoint is".to_vec(),
            b"short".to_vec(),
            // A header longer than the file.
            [&1000u64.to_le_bytes()[..], b"{}"].concat(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let refused = check(&file.clone()).unwrap_err();
            assert!(refused.problem.contains("not a safetensors"), "{refused}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_native_size_is_sample_size_times_the_vae_scale() {
        let dir = scratch("native");
        complete_folder(&dir);
        std::fs::write(dir.join("unet/config.json"), br#"{"sample_size": 8}"#).unwrap();
        std::fs::write(
            dir.join("vae/config.json"),
            br#"{"block_out_channels": [16, 32, 64]}"#,
        )
        .unwrap();
        assert_eq!(native_size(&dir.clone()), Some(32));
        std::fs::write(
            dir.join("vae/config.json"),
            br#"{"block_out_channels": [128, 256, 512, 512]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("unet/config.json"), br#"{"sample_size": 64}"#).unwrap();
        assert_eq!(native_size(&dir.clone()), Some(512));
        // Not of the expected shape: no native size, nothing guessed.
        std::fs::write(
            dir.join("unet/config.json"),
            br#"{"sample_size": [64, 96]}"#,
        )
        .unwrap();
        assert_eq!(native_size(&dir.clone()), None);
        std::fs::write(dir.join("unet/config.json"), br#"{"sample_size": 0}"#).unwrap();
        assert_eq!(native_size(&dir.clone()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_demo_model_declares_32() {
        let digits = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits");
        assert_eq!(native_size(&digits.clone()), Some(32));
        assert_eq!(check(&digits), Ok(()));
    }
}
