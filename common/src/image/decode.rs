//! The worker's full decode of an image input, with the `png` crate.
//!
//! Order matters: [`super::inspect`] checks the dimensions from IHDR before
//! the decoder exists, so no buffer is sized from a header that was not
//! checked against the request; the decoder then runs under a `Limits`
//! derived from those dimensions, skips text and ICC chunks (the usual
//! place for a compressed bomb; they carry nothing the engine uses) and
//! stops reading once the first frame is complete, so extra compressed
//! data after it is never inflated.
#![forbid(unsafe_code)]

use std::io::Cursor;

use png::{BitDepth, ColorType, DecodingError, Transformations};

use super::{inspect, pixel_count, ImageProblem};

/// Headroom of the decoder's own allocations over the pixel data (row
/// buffers, the inflate window, the palette).
const DECODER_SLACK: usize = 1 << 20;

/// Decodes to RGB8, `width × height × 3` bytes, rows top to bottom. Gray is
/// replicated, a palette expanded, 16-bit reduced to its high byte, alpha
/// dropped (not composited).
pub fn decode_rgb(bytes: &[u8], width: u32, height: u32) -> Result<Vec<u8>, ImageProblem> {
    let (pixels, channels) = decode8(bytes, width, height)?;
    Ok(match channels {
        Channels::Gray => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        Channels::GrayAlpha => pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        Channels::Rgb => pixels,
        Channels::Rgba => pixels
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    })
}

/// Decodes to 8-bit luma, `width × height` bytes. Color becomes luma as
/// PIL's `convert("L")` computes it (ITU-R 601-2, fixed point), which is
/// what diffusers sees for a color mask; alpha is dropped.
pub fn decode_luma(bytes: &[u8], width: u32, height: u32) -> Result<Vec<u8>, ImageProblem> {
    let (pixels, channels) = decode8(bytes, width, height)?;
    let luma = |p: &[u8]| {
        let l = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
        ((l + 0x8000) >> 16) as u8
    };
    Ok(match channels {
        Channels::Gray => pixels,
        Channels::GrayAlpha => pixels.chunks_exact(2).map(|p| p[0]).collect(),
        Channels::Rgb => pixels.chunks_exact(3).map(luma).collect(),
        Channels::Rgba => pixels.chunks_exact(4).map(luma).collect(),
    })
}

/// Channel layout of the 8-bit output.
enum Channels {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
}

fn decode8(bytes: &[u8], width: u32, height: u32) -> Result<(Vec<u8>, Channels), ImageProblem> {
    inspect(bytes, width, height)?;
    let pixels = pixel_count(width, height).ok_or(ImageProblem::TooLarge)?;
    // At most 4 channels of 8 bits after the transformations, plus the
    // 16-bit raw rows the decoder keeps.
    let limit = pixels
        .checked_mul(8)
        .and_then(|b| b.checked_add(DECODER_SLACK))
        .ok_or(ImageProblem::TooLarge)?;
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: limit });
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(problem)?;
    let info = reader.info();
    if (info.width, info.height) != (width, height) {
        // inspect read the same IHDR; differing here is a decoder fault.
        return Err(ImageProblem::BadStructure);
    }
    let size = reader.output_buffer_size();
    let (color, depth) = reader.output_color_type();
    let channels = match (color, depth) {
        (ColorType::Grayscale, BitDepth::Eight) => Channels::Gray,
        (ColorType::GrayscaleAlpha, BitDepth::Eight) => Channels::GrayAlpha,
        (ColorType::Rgb, BitDepth::Eight) => Channels::Rgb,
        (ColorType::Rgba, BitDepth::Eight) => Channels::Rgba,
        _ => return Err(ImageProblem::BadStructure),
    };
    let per_pixel = match channels {
        Channels::Gray => 1,
        Channels::GrayAlpha => 2,
        Channels::Rgb => 3,
        Channels::Rgba => 4,
    };
    if Some(size) != pixels.checked_mul(per_pixel) {
        return Err(ImageProblem::BadStructure);
    }
    let mut buffer = vec![0u8; size];
    reader.next_frame(&mut buffer).map_err(problem)?;
    Ok((buffer, channels))
}

fn problem(error: DecodingError) -> ImageProblem {
    match error {
        DecodingError::LimitsExceeded => ImageProblem::TooLarge,
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageProblem::Truncated
        }
        DecodingError::IoError(_) | DecodingError::Format(_) | DecodingError::Parameter(_) => {
            ImageProblem::Corrupt
        }
    }
}
