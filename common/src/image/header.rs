//! The broker's cheap look at a PNG: signature, chunk lengths, IHDR.
//! Nothing is decompressed and nothing is allocated, whatever the header
//! claims; CRCs and the image data are the worker's decode's job.
#![forbid(unsafe_code)]

use super::ImageProblem;

/// The PNG signature every file starts with.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// Length + type before a chunk's data, CRC after it.
const CHUNK_HEAD: usize = 8;
const CHUNK_CRC: usize = 4;
const IHDR_LEN: usize = 13;
/// The PNG specification's largest chunk length (2^31 − 1).
const MAX_CHUNK_LEN: u32 = 0x7fff_ffff;

/// What IHDR says, once checked against the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PngHeader {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    /// 0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA.
    pub color_type: u8,
    pub interlaced: bool,
}

/// Checks that `bytes` are a structurally complete PNG of
/// `expected_width × expected_height`: signature, IHDR first and valid,
/// every chunk inside the file, at least one IDAT, PLTE for a palette
/// image, IEND last.
pub fn inspect(
    bytes: &[u8],
    expected_width: u32,
    expected_height: u32,
) -> Result<PngHeader, ImageProblem> {
    let Some(rest) = bytes.strip_prefix(&SIGNATURE) else {
        return Err(if SIGNATURE.starts_with(bytes) && !bytes.is_empty() {
            ImageProblem::Truncated
        } else {
            ImageProblem::NotPng
        });
    };
    let mut chunks = Chunks { rest };
    let (kind, data) = chunks.next_chunk()?.ok_or(ImageProblem::Truncated)?;
    if &kind != b"IHDR" || data.len() != IHDR_LEN {
        return Err(ImageProblem::BadStructure);
    }
    let header = parse_ihdr(data)?;
    if (header.width, header.height) != (expected_width, expected_height) {
        return Err(ImageProblem::WrongSize {
            width: header.width,
            height: header.height,
            expected_width,
            expected_height,
        });
    }
    let (mut idat, mut plte) = (false, false);
    loop {
        let (kind, _) = chunks.next_chunk()?.ok_or(ImageProblem::Truncated)?;
        match &kind {
            b"IDAT" => idat = true,
            b"PLTE" => plte = true,
            b"IHDR" => return Err(ImageProblem::BadStructure),
            b"IEND" => break,
            _ => {}
        }
    }
    if !idat || (header.color_type == 3 && !plte) {
        return Err(ImageProblem::BadStructure);
    }
    // Bytes after IEND are not part of the image: refuse them rather than
    // carry data nobody looks at to the worker.
    if !chunks.rest.is_empty() {
        return Err(ImageProblem::BadStructure);
    }
    Ok(header)
}

fn parse_ihdr(data: &[u8]) -> Result<PngHeader, ImageProblem> {
    let be32 = |at: usize| -> Result<u32, ImageProblem> {
        data.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(ImageProblem::BadStructure)
    };
    let byte = |at: usize| data.get(at).copied().ok_or(ImageProblem::BadStructure);
    let (width, height) = (be32(0)?, be32(4)?);
    let (bit_depth, color_type) = (byte(8)?, byte(9)?);
    let (compression, filter, interlace) = (byte(10)?, byte(11)?, byte(12)?);
    let depth_ok = match color_type {
        0 => matches!(bit_depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(bit_depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(bit_depth, 8 | 16),
        _ => false,
    };
    if width == 0
        || height == 0
        || width > MAX_CHUNK_LEN
        || height > MAX_CHUNK_LEN
        || !depth_ok
        || compression != 0
        || filter != 0
        || interlace > 1
    {
        return Err(ImageProblem::BadStructure);
    }
    Ok(PngHeader {
        width,
        height,
        bit_depth,
        color_type,
        interlaced: interlace == 1,
    })
}

/// A chunk's type and data.
type Chunk<'a> = ([u8; 4], &'a [u8]);

/// Iterates over chunks by their length fields only.
struct Chunks<'a> {
    rest: &'a [u8],
}

impl<'a> Chunks<'a> {
    /// The next chunk's type and data; `None` at the end of the bytes.
    fn next_chunk(&mut self) -> Result<Option<Chunk<'a>>, ImageProblem> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let Some((head, after)) = self.rest.split_first_chunk::<CHUNK_HEAD>() else {
            return Err(ImageProblem::Truncated);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if len > MAX_CHUNK_LEN {
            return Err(ImageProblem::BadStructure);
        }
        let kind = [head[4], head[5], head[6], head[7]];
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(ImageProblem::BadStructure);
        }
        let len = usize::try_from(len).map_err(|_| ImageProblem::Truncated)?;
        let Some(total) = len.checked_add(CHUNK_CRC) else {
            return Err(ImageProblem::Truncated);
        };
        if after.len() < total {
            return Err(ImageProblem::Truncated);
        }
        let (data, after) = after.split_at(len);
        self.rest = &after[CHUNK_CRC..];
        Ok(Some((kind, data)))
    }
}
