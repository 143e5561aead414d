//! Image inputs of a `Generate` (`init_image`, `mask`): PNG bytes from an
//! untrusted caller.
//!
//! Two stages, in two processes (docs/SANDBOX.md, "Image inputs"):
//! - [`inspect`] (the broker): walks the PNG's chunk structure and reads
//!   its IHDR header without decompressing anything, so a request with a
//!   non-PNG, a truncated file or the wrong dimensions is refused, by
//!   field, before it is queued. No pixel buffer exists in the broker.
//! - [`decode_rgb`] / [`decode_luma`] (the sandboxed worker): the full
//!   decode with the `png` crate, under an allocation limit derived from
//!   the already checked dimensions.
//!
//! Every failure is an [`ImageProblem`]: a closed set of reasons with fixed
//! texts, so the worker (untrusted) cannot put words in a caller's error.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

mod decode;
mod header;
mod rules;

pub use decode::{decode_luma, decode_rgb};
pub use header::{inspect, PngHeader};
pub use rules::{steps_run, validate_image_fields, validate_images, DEFAULT_STRENGTH};

/// Which image field of a request an image or a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageField {
    InitImage,
    Mask,
}

impl ImageField {
    /// The request field's name, as in `ErrorCode::InvalidParameter`.
    pub fn name(self) -> &'static str {
        match self {
            ImageField::InitImage => "init_image",
            ImageField::Mask => "mask",
        }
    }
}

/// Why an image input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ImageProblem {
    /// The bytes do not start with the PNG signature.
    #[error("not a PNG file")]
    NotPng,
    /// The file ends inside a chunk, or before its `IEND` chunk.
    #[error("the PNG is truncated")]
    Truncated,
    /// IHDR missing, not first, of the wrong length, or with values the
    /// PNG specification does not define; or no IDAT; or a palette image
    /// without PLTE.
    #[error("the PNG's structure is invalid")]
    BadStructure,
    /// The header's dimensions are not the request's.
    #[error("the PNG is {width}×{height}, the request {expected_width}×{expected_height}")]
    WrongSize {
        width: u32,
        height: u32,
        expected_width: u32,
        expected_height: u32,
    },
    /// The image data does not decode (bad CRC, bad zlib stream, too
    /// little data for the dimensions).
    #[error("the PNG's image data is corrupt")]
    Corrupt,
    /// Decoding would allocate more than the dimensions justify (a
    /// decompression bomb in a compressed text or profile chunk).
    #[error("decoding the PNG needs more memory than its dimensions allow")]
    TooLarge,
}

impl ImageProblem {
    /// What the field accepts, phrased to follow "must be" (the
    /// `allowed` of `ErrorCode::InvalidParameter`), with the fix.
    pub fn allowed(&self) -> String {
        match self {
            ImageProblem::NotPng => "PNG file bytes (the file does not start with the PNG \
                 signature; convert the image to PNG)"
                .to_owned(),
            ImageProblem::Truncated => "a complete PNG file (this one ends inside a chunk or \
                 before IEND; send the whole file)"
                .to_owned(),
            ImageProblem::BadStructure => "a valid PNG file (its IHDR header, IDAT data or \
                 palette is missing or invalid; re-encode it with an image editor)"
                .to_owned(),
            ImageProblem::WrongSize {
                width,
                height,
                expected_width,
                expected_height,
            } => format!(
                "a PNG of {expected_width}×{expected_height}, the request's width and height \
                 (this one is {width}×{height}; resize it, or set width and height to its size)"
            ),
            ImageProblem::Corrupt => "a PNG whose image data decodes (a checksum or the \
                 compressed data is wrong, or too little data for its size; re-encode it)"
                .to_owned(),
            ImageProblem::TooLarge => "a PNG that decodes within the memory its dimensions \
                 need (an ancillary chunk expands too far; strip metadata and re-encode it)"
                .to_owned(),
        }
    }
}

/// Bytes of one decoded RGB8 image, `None` on overflow.
fn pixel_count(width: u32, height: u32) -> Option<usize> {
    usize::try_from(width)
        .ok()?
        .checked_mul(usize::try_from(height).ok()?)
}

#[cfg(test)]
mod tests;
