//! Validation of a safetensors JSON header, with no libtorch and no file
//! access, so that it can be unit-tested and fuzzed on its own (the fuzz
//! crate includes this file by path; keep it free of `super::`/`crate::`).
//!
//! The header is untrusted: every tensor entry is checked against the size
//! of the data section that follows it. An accepted header guarantees that
//! each tensor's byte range lies inside the data section, that its length is
//! exactly `numel × dtype size`, and that no two non-empty ranges overlap.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use serde::Deserialize;

/// Largest number of dimensions a tensor may declare.
const MAX_RANK: usize = 8;

/// What is wrong with a header. The file reader adds the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderIssue {
    #[error("the JSON header is invalid: {0}")]
    Json(String),
    #[error("tensor {name:?} uses unsupported dtype {dtype:?}")]
    Dtype { name: String, dtype: String },
    #[error("tensor {name:?} is invalid: {reason}")]
    Tensor { name: String, reason: String },
}

/// Element types a safetensors file may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F64" => Self::F64,
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::Bf16,
            "I64" => Self::I64,
            "I32" => Self::I32,
            "I16" => Self::I16,
            "I8" => Self::I8,
            "U8" => Self::U8,
            "BOOL" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::Bf16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Whether the values are floating point (and so follow the compute dtype).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F64 | Self::F32 | Self::F16 | Self::Bf16)
    }
}

/// One validated tensor entry: its byte range lies inside the data section.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    /// Every dimension fits an `i64` and their product × dtype size fits a `u64`.
    pub shape: Vec<i64>,
    /// Absolute file offset of the first byte.
    file_offset: u64,
    /// Length in bytes (= numel × dtype size, checked).
    byte_len: u64,
}

impl TensorInfo {
    /// Absolute file offset of the tensor's first byte (`data_start` + its
    /// begin offset).
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }

    /// Length in bytes; equals the product of `shape` × `dtype.size()`.
    pub fn byte_len(&self) -> u64 {
        self.byte_len
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Tensors by name, and the free-form `__metadata__` map.
pub type ParsedHeader = (HashMap<String, TensorInfo>, HashMap<String, String>);

/// Validates the JSON `header` against the data section, which starts at file
/// offset `data_start` and is `data_len` bytes long.
pub fn parse_header(
    header: &[u8],
    data_start: u64,
    data_len: u64,
) -> Result<ParsedHeader, HeaderIssue> {
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| HeaderIssue::Json(e.to_string()))?;
    let mut tensors = HashMap::with_capacity(raw.len());
    let mut metadata = HashMap::new();
    let mut ranges: Vec<(u64, u64, String)> = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            let map: HashMap<String, String> = serde_json::from_value(value).map_err(|e| {
                HeaderIssue::Json(format!("__metadata__ must map strings to strings: {e}"))
            })?;
            metadata = map;
            continue;
        }
        let entry: RawEntry = serde_json::from_value(value).map_err(|e| HeaderIssue::Tensor {
            name: name.clone(),
            reason: format!("malformed entry: {e}"),
        })?;
        let bad = |reason: String| HeaderIssue::Tensor {
            name: name.clone(),
            reason,
        };
        let dtype = Dtype::parse(&entry.dtype).ok_or_else(|| HeaderIssue::Dtype {
            name: name.clone(),
            dtype: entry.dtype.clone(),
        })?;
        if entry.shape.len() > MAX_RANK {
            return Err(bad(format!(
                "rank {} exceeds {MAX_RANK}",
                entry.shape.len()
            )));
        }
        let mut numel: u64 = 1;
        let mut shape = Vec::with_capacity(entry.shape.len());
        for &dim in &entry.shape {
            numel = numel
                .checked_mul(dim)
                .ok_or_else(|| bad("shape product overflows".into()))?;
            shape.push(
                i64::try_from(dim).map_err(|_| bad(format!("dimension {dim} is too large")))?,
            );
        }
        let byte_len = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| bad("byte size overflows".into()))?;
        let [begin, end] = entry.data_offsets;
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(bad(format!(
                "data_offsets end {end} lies past the end of the data section ({data_len} bytes)"
            )));
        }
        if end - begin != byte_len {
            return Err(bad(format!(
                "data_offsets cover {} bytes but shape {:?} × {:?} needs {byte_len}",
                end - begin,
                entry.shape,
                dtype
            )));
        }
        // The reader seeks to data_start + begin and reads through
        // data_start + end; both must be representable file offsets.
        data_start
            .checked_add(end)
            .ok_or_else(|| bad("file offset overflows".into()))?;
        let file_offset = data_start + begin;
        ranges.push((begin, end, name.clone()));
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                file_offset,
                byte_len,
            },
        );
    }
    refuse_overlaps(ranges)?;
    Ok((tensors, metadata))
}

/// Refuses two non-empty `[begin, end)` ranges that share a byte. Overlapping
/// tensors are never produced by a real writer; refusing them means one byte
/// range cannot be two different weights. Empty ranges hold no bytes and may
/// sit anywhere.
fn refuse_overlaps(mut ranges: Vec<(u64, u64, String)>) -> Result<(), HeaderIssue> {
    ranges.retain(|(begin, end, _)| begin != end);
    ranges.sort();
    // After sorting by begin, a range overlaps an earlier one exactly when it
    // begins before the largest end seen so far (comparing only neighbours
    // misses a long range followed by a short one inside it and a third).
    let mut furthest: Option<(u64, &str)> = None;
    for (begin, end, name) in &ranges {
        if let Some((furthest_end, furthest_name)) = furthest {
            if *begin < furthest_end {
                return Err(HeaderIssue::Tensor {
                    name: name.clone(),
                    reason: format!("its bytes overlap tensor {furthest_name:?}"),
                });
            }
        }
        if furthest.is_none_or(|(furthest_end, _)| *end > furthest_end) {
            furthest = Some((*end, name));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(header: &str, data_len: u64) -> Result<ParsedHeader, HeaderIssue> {
        parse_header(header.as_bytes(), 100, data_len)
    }

    fn entry(name: &str, begin: u64, end: u64) -> String {
        format!(
            r#""{name}":{{"dtype":"U8","shape":[{}],"data_offsets":[{begin},{end}]}}"#,
            end - begin
        )
    }

    fn overlap_victim(result: Result<ParsedHeader, HeaderIssue>) -> String {
        match result {
            Err(HeaderIssue::Tensor { name, reason }) if reason.contains("overlap") => name,
            Err(other) => panic!("expected an overlap error, got {other}"),
            Ok(_) => panic!("overlapping tensors were accepted"),
        }
    }

    #[test]
    fn accepts_a_valid_header_with_metadata() {
        let header = format!(
            r#"{{"__metadata__":{{"format":"pt"}},{},"b":{{"dtype":"F16","shape":[2,3],"data_offsets":[4,16]}}}}"#,
            entry("a", 0, 4)
        );
        let (tensors, metadata) = parse(&header, 16).unwrap();
        assert_eq!(metadata["format"], "pt");
        let b = &tensors["b"];
        assert_eq!(b.dtype, Dtype::F16);
        assert_eq!(b.shape, vec![2, 3]);
        assert_eq!(b.file_offset(), 104);
        assert_eq!(b.byte_len(), 12);
        assert_eq!(tensors["a"].file_offset(), 100);
    }

    #[test]
    fn refuses_neighbouring_overlap() {
        let header = format!("{{{},{}}}", entry("a", 0, 8), entry("b", 4, 12));
        assert_eq!(overlap_victim(parse(&header, 12)), "b");
    }

    /// Regression: A = [0,100), empty E = [10,10), C = [30,40) sort as A, E,
    /// C; comparing only neighbours (and skipping pairs with an empty range)
    /// never compared A with C.
    #[test]
    fn refuses_overlap_hidden_behind_an_empty_tensor() {
        let header = format!(
            "{{{},{},{}}}",
            entry("A", 0, 100),
            entry("E", 10, 10),
            entry("C", 30, 40)
        );
        assert_eq!(overlap_victim(parse(&header, 100)), "C");
    }

    /// A long range that contains two later ones: the second is compared
    /// with the long one, not only with its neighbour.
    #[test]
    fn refuses_overlap_with_a_non_neighbour() {
        let header = format!(
            "{{{},{},{}}}",
            entry("long", 0, 100),
            entry("x", 10, 20),
            entry("y", 50, 60)
        );
        assert!(matches!(
            parse(&header, 100),
            Err(HeaderIssue::Tensor { .. })
        ));
    }

    #[test]
    fn accepts_adjacent_and_empty_ranges() {
        let header = format!(
            "{{{},{},{},{}}}",
            entry("a", 0, 10),
            entry("empty_inside", 5, 5),
            entry("b", 10, 20),
            entry("empty_end", 20, 20)
        );
        let (tensors, _) = parse(&header, 20).unwrap();
        assert_eq!(tensors.len(), 4);
    }

    #[test]
    fn refuses_file_offset_overflow() {
        let header = entry("a", 0, 4);
        let result = parse_header(format!("{{{header}}}").as_bytes(), u64::MAX - 1, 4);
        assert!(
            matches!(&result, Err(HeaderIssue::Tensor { reason, .. }) if reason.contains("overflow")),
            "{result:?}"
        );
    }

    #[test]
    fn refuses_rank_above_the_limit() {
        let header = r#"{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}"#;
        assert!(matches!(parse(header, 1), Err(HeaderIssue::Tensor { .. })));
    }

    #[test]
    fn refuses_non_string_metadata_and_unknown_fields() {
        assert!(matches!(
            parse(r#"{"__metadata__":{"n":1}}"#, 0),
            Err(HeaderIssue::Json(_))
        ));
        let header = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":0}}"#;
        assert!(matches!(parse(header, 1), Err(HeaderIssue::Tensor { .. })));
    }
}
