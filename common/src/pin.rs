//! The `sha256` model pin: what it is a digest of, for a single file and
//! for a diffusers folder, so that the worker (which enforces it on the
//! bytes it parses) and `sshmctl hash` (which prints it) agree.
//!
//! - A file: the SHA-256 of its bytes, as `sha256sum` prints it.
//! - A folder: the SHA-256 of a manifest with one line per file the loader
//!   reads ([`FOLDER_FILES`]), in that order: `<sha256 of the file>  <path>\n`
//!   for a file that is there, `-  <path>\n` for an optional one that is
//!   not. Files the loader never reads (README, an fp16 variant, a `.bin`
//!   copy) are not part of the pin and may change freely.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Files of a diffusers folder the loader reads, relative to the folder,
/// and whether it needs each one.
pub const FOLDER_FILES: &[(&str, bool)] = &[
    ("model_index.json", true),
    ("scheduler/scheduler_config.json", false),
    ("text_encoder/config.json", true),
    ("text_encoder/model.safetensors", true),
    ("tokenizer/merges.txt", true),
    ("tokenizer/special_tokens_map.json", false),
    ("tokenizer/tokenizer_config.json", false),
    ("tokenizer/vocab.json", true),
    ("unet/config.json", true),
    ("unet/diffusion_pytorch_model.safetensors", true),
    ("vae/config.json", true),
    ("vae/diffusion_pytorch_model.safetensors", true),
];

/// SDXL's second text encoder and tokenizer: part of a folder's pin when
/// the folder has `text_encoder_2/` (appended after [`FOLDER_FILES`], so an
/// SD 1.x/2.x folder's pin is what it always was).
pub const SDXL_FOLDER_FILES: &[(&str, bool)] = &[
    ("text_encoder_2/config.json", true),
    ("text_encoder_2/model.safetensors", true),
    ("tokenizer_2/merges.txt", true),
    ("tokenizer_2/special_tokens_map.json", false),
    ("tokenizer_2/tokenizer_config.json", false),
    ("tokenizer_2/vocab.json", true),
];

/// The files a folder's pin covers, in order: [`FOLDER_FILES`], then
/// [`SDXL_FOLDER_FILES`] when `root/text_encoder_2` exists.
pub fn folder_files(root: &Path) -> Vec<(&'static str, bool)> {
    let mut files = FOLDER_FILES.to_vec();
    if root.join("text_encoder_2").exists() {
        files.extend_from_slice(SDXL_FOLDER_FILES);
    }
    files
}

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The folder pin from the digest of each [`FOLDER_FILES`] entry (`None`:
/// the file is not there), in that order.
pub fn folder_digest<'a>(digests: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut manifest = Sha256::new();
    for (path, digest) in digests {
        manifest.update(digest.unwrap_or("-").as_bytes());
        manifest.update(b"  ");
        manifest.update(path.as_bytes());
        manifest.update(b"\n");
    }
    hex(&manifest.finalize())
}

/// Why a pin could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is missing; a diffusers folder needs it (is this a diffusers folder?)")]
    Missing { path: std::path::PathBuf },
}

fn stream_digest(path: &Path) -> Result<String, PinError> {
    let io = |source| PinError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The pin of a file or a diffusers folder on disk (`sshmctl hash`).
pub fn pin_of(path: &Path) -> Result<String, PinError> {
    if !path.is_dir() {
        return stream_digest(path);
    }
    let wanted = folder_files(path);
    let mut digests = Vec::with_capacity(wanted.len());
    for &(rel, required) in &wanted {
        let file = path.join(rel);
        if file.is_file() {
            digests.push((rel, Some(stream_digest(&file)?)));
        } else if required {
            return Err(PinError::Missing { path: file });
        } else {
            digests.push((rel, None));
        }
    }
    Ok(folder_digest(
        digests.iter().map(|(rel, d)| (*rel, d.as_deref())),
    ))
}

/// The short hash AUTOMATIC1111 writes for a `.safetensors` LoRA in
/// `Lora hashes:` (the "addnet" hash): the first 12 hex digits of the
/// SHA-256 of the file after its header (`8 + header length` bytes), so
/// editing the metadata does not change it.
pub fn lora_short_hash(path: &Path) -> Result<String, PinError> {
    use std::io::{Seek, SeekFrom};
    let io = |source| PinError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let skip = u64::from_le_bytes(len).saturating_add(8);
    file.seek(SeekFrom::Start(skip)).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut digest = hex(&hasher.finalize());
    digest.truncate(12);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lora_short_hash_skips_the_header() {
        let dir = std::env::temp_dir().join(format!("weave-pin-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, header: &str| {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(b"tensor data");
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let a = lora_short_hash(&write("a", "{\"a\":1}")).unwrap();
        let b = lora_short_hash(&write("b", "{\"__metadata__\":{}}")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, digest_hex(b"tensor data")[..12]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_pin_is_what_sha256sum_prints() {
        assert_eq!(
            digest_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = std::env::temp_dir().join(format!("weave-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.safetensors");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(pin_of(&file).unwrap(), digest_hex(b"abc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_pin_covers_the_files_the_loader_reads_and_only_those() {
        let dir = std::env::temp_dir().join(format!("weave-pin-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for &(rel, required) in FOLDER_FILES {
            if required {
                let path = dir.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, rel.as_bytes()).unwrap();
            }
        }
        let pin = pin_of(&dir).unwrap();
        assert_eq!(pin.len(), 64);
        // A file the loader does not read changes nothing.
        std::fs::write(dir.join("README.md"), b"notes").unwrap();
        assert_eq!(pin_of(&dir).unwrap(), pin);
        // One the loader reads does.
        std::fs::write(dir.join("unet/config.json"), b"{}").unwrap();
        let changed = pin_of(&dir).unwrap();
        assert_ne!(changed, pin);
        // So does an optional one appearing.
        std::fs::write(dir.join("tokenizer/special_tokens_map.json"), b"{}").unwrap();
        assert_ne!(pin_of(&dir).unwrap(), changed);
        std::fs::remove_file(dir.join("vae/config.json")).unwrap();
        assert!(matches!(pin_of(&dir), Err(PinError::Missing { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_sdxl_folder_pin_adds_the_second_text_encoder_and_nothing_else_changes() {
        let dir = std::env::temp_dir().join(format!("weave-pin-xl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for &(rel, required) in FOLDER_FILES {
            if required {
                let path = dir.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, rel.as_bytes()).unwrap();
            }
        }
        let sd = pin_of(&dir).unwrap();
        assert_eq!(folder_files(&dir), FOLDER_FILES.to_vec());
        std::fs::create_dir_all(dir.join("text_encoder_2")).unwrap();
        // text_encoder_2/ without its files: refused, not silently skipped.
        assert!(matches!(pin_of(&dir), Err(PinError::Missing { .. })));
        for &(rel, required) in SDXL_FOLDER_FILES {
            if required {
                let path = dir.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, rel.as_bytes()).unwrap();
            }
        }
        let xl = pin_of(&dir).unwrap();
        assert_ne!(xl, sd);
        std::fs::write(dir.join("tokenizer_2/vocab.json"), b"{}").unwrap();
        assert_ne!(pin_of(&dir).unwrap(), xl);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
