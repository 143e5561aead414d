//! The image-input path on any bytes: the broker's header check
//! (`inspect`) and the worker's decode (`decode_rgb`, `decode_luma`) at the
//! size the bytes' own IHDR claims, clamped so a claim cannot make the
//! fuzzer allocate more than the broker's bounds allow.
//!
//! Never panics; a decode succeeds only where the header check did, and
//! then returns exactly width × height pixels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_common::image::{decode_luma, decode_rgb, inspect};

/// The default `[bounds] max_width`/`max_height`.
const MAX_SIDE: u32 = 1024;

fuzz_target!(|data: &[u8]| {
    let claim = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(1)
    };
    let (width, height) = (claim(16), claim(20));
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        // Still exercise the refusal of any other size.
        assert!(inspect(data, 32, 32).is_err() || (width, height) == (32, 32));
        return;
    }
    let header = inspect(data, width, height);
    let pixels = width as usize * height as usize;
    if let Ok(rgb) = decode_rgb(data, width, height) {
        assert!(header.is_ok(), "decoded what the header check refused");
        assert_eq!(rgb.len(), pixels * 3);
    }
    if let Ok(luma) = decode_luma(data, width, height) {
        assert!(header.is_ok());
        assert_eq!(luma.len(), pixels);
    }
});
