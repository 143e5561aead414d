//! A model's JSON configs as diffusers and transformers write them: size
//! bounded, and Python's non-standard number tokens accepted.
#![forbid(unsafe_code)]

use std::path::Path;

use super::LoaderError;
use crate::engine::weights::files::ModelFiles;

/// Largest config JSON we read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

pub fn read_json(path: &Path) -> Result<serde_json::Value, LoaderError> {
    read_json_in(&ModelFiles::Disk, path)
}

pub(super) fn read_json_in(
    files: &ModelFiles,
    path: &Path,
) -> Result<serde_json::Value, LoaderError> {
    let too_large = |len: u64| LoaderError::BadConfig {
        path: path.to_path_buf(),
        reason: format!("{len} bytes exceeds the {MAX_CONFIG_BYTES}-byte limit"),
    };
    if let ModelFiles::Disk = files {
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LoaderError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                LoaderError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(too_large(meta.len()));
        }
    }
    let text = files.read(path)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(text.len() as u64));
    }
    serde_json::from_slice(&python_json_to_strict(&text)).map_err(|e| LoaderError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Python's `json.dump` writes `NaN`, `Infinity` and `-Infinity` (diffusers
/// saves e.g. `lambda_min_clipped: -inf`); strict JSON has no such tokens.
/// Outside string literals they become `null`, which our configs treat as
/// "not set".
pub fn python_json_to_strict(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            out.push(c);
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if let Some(token) = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.extend_from_slice(b"null");
            i += token.len();
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn python_json_tokens() {
        let fixed = python_json_to_strict(
            br#"{"a": -Infinity, "b": "NaN \" Infinity", "c": [NaN, Infinity]}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&fixed).unwrap();
        assert!(v["a"].is_null() && v["c"][0].is_null() && v["c"][1].is_null());
        assert_eq!(v["b"], "NaN \" Infinity");
    }
}
