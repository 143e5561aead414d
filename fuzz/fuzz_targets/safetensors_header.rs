//! The safetensors header parser (the worker's `engine/weights/safetensors/header.rs`,
//! which has no libtorch dependency) on a hostile model file's start.
//!
//! Input: what a file begins with, `u64` LE header length `N` then `N` bytes
//! of header, followed by up to 8 bytes (LE, zero-padded) giving the length
//! of the data section. The seeds are the first `8 + N` bytes of real model
//! files with their true data length appended.
//!
//! Never panics; every error renders as a message; an accepted header's
//! tensors each lie inside the data section, are exactly numel × dtype size
//! bytes, and no two non-empty ones share a byte.
#![no_main]

#[allow(dead_code)]
#[path = "../../worker/src/engine/weights/safetensors/header.rs"]
mod header;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len_bytes, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    // The file reader refuses a header longer than the file before parsing.
    let Some(header_len) = usize::try_from(header_len)
        .ok()
        .filter(|&n| n <= rest.len())
    else {
        return;
    };
    let (header_bytes, trailer) = rest.split_at(header_len);
    let mut data_len_bytes = [0u8; 8];
    let take = trailer.len().min(8);
    data_len_bytes[..take].copy_from_slice(&trailer[..take]);
    let data_len = u64::from_le_bytes(data_len_bytes);
    let data_start = 8 + header_len as u64;

    let (tensors, _metadata) = match header::parse_header(header_bytes, data_start, data_len) {
        Ok(parsed) => parsed,
        Err(issue) => {
            let _ = issue.to_string();
            return;
        }
    };
    let mut ranges = Vec::with_capacity(tensors.len());
    for (name, info) in &tensors {
        let begin = info
            .file_offset()
            .checked_sub(data_start)
            .unwrap_or_else(|| panic!("{name:?} starts before the data section"));
        let end = begin
            .checked_add(info.byte_len())
            .unwrap_or_else(|| panic!("{name:?} end overflows"));
        assert!(
            end <= data_len,
            "{name:?} [{begin}, {end}) lies past the data section ({data_len} bytes)"
        );
        assert!(info.shape.len() <= 8, "{name:?} rank {}", info.shape.len());
        let mut numel: u128 = 1;
        for &dim in &info.shape {
            assert!(dim >= 0, "{name:?} has negative dimension {dim}");
            numel = numel.saturating_mul(dim as u128);
        }
        assert_eq!(
            numel.saturating_mul(u128::from(info.dtype.size())),
            u128::from(info.byte_len()),
            "{name:?}: byte length is not numel × dtype size"
        );
        if begin != end {
            ranges.push((begin, end, name));
        }
    }
    // Sorted by begin, non-empty ranges are disjoint exactly when each one
    // begins at or after the previous one's end (ends then increase too).
    ranges.sort();
    for pair in ranges.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.1 <= b.0,
            "{:?} [{}, {}) overlaps {:?} [{}, {})",
            b.2,
            b.0,
            b.1,
            a.2,
            a.0,
            a.1
        );
    }
});
