#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::*;

/// Encodes `data` as a PNG with the png crate's encoder.
pub(crate) fn png_of(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if let Some(p) = palette {
        encoder.set_palette(p.to_vec());
    }
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

/// A hand-made PNG: signature, the given chunks, with CRCs.
fn png_from_chunks(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    for (kind, data) in chunks {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    out
}

/// PNG's CRC-32 (ISO 3309), bit by bit: tests only.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn ihdr(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut d = width.to_be_bytes().to_vec();
    d.extend_from_slice(&height.to_be_bytes());
    d.extend_from_slice(&[depth, color, 0, 0, 0]);
    d
}

/// zlib stream of `len` zero bytes.
fn zlib_zeros(len: usize) -> Vec<u8> {
    zlib_zeros_fixed(len).into_inner()
}

/// A zlib stream of zeros built with fixed-Huffman deflate blocks by hand:
/// each block repeats a run of 258 zeros, so a few KiB inflate to MiBs.
fn zlib_zeros_fixed(len: usize) -> std::io::Cursor<Vec<u8>> {
    let mut bits = BitWriter::default();
    // One fixed-Huffman block (BFINAL=1, BTYPE=01): a literal 0, then
    // length-258 matches at distance 1, then end of block.
    bits.put(1, 1);
    bits.put(1, 2);
    bits.put_code(0b0011_0000, 8); // literal 0
    let mut left = len.saturating_sub(1);
    while left >= 258 {
        bits.put_code(0b1100_0101, 8); // length code 285 = 258
        bits.put_code(0, 5); // distance code 0 = 1
        left -= 258;
    }
    while left > 0 {
        bits.put_code(0b0011_0000, 8);
        left -= 1;
    }
    bits.put_code(0, 7); // end of block (256)
    let mut out = vec![0x78, 0x01];
    out.extend_from_slice(&bits.finish());
    out.extend_from_slice(&adler32_zeros(len).to_be_bytes());
    std::io::Cursor::new(out)
}

fn adler32_zeros(len: usize) -> u32 {
    let a = 1u64;
    let b = (len as u64) % 65521;
    ((b << 16) | a) as u32
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Puts `count` bits of `value`, least significant first.
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// Puts a Huffman code, most significant bit first.
    fn put_code(&mut self, code: u64, count: u32) {
        let mut reversed = 0;
        for i in 0..count {
            reversed |= ((code >> i) & 1) << (count - 1 - i);
        }
        self.put(reversed, count);
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

#[test]
fn every_color_type_becomes_rgb8_and_luma() {
    use png::{BitDepth as D, ColorType as C};
    let (w, h) = (2, 1);
    let cases: Vec<(Vec<u8>, [u8; 6], [u8; 2])> = vec![
        (
            png_of(w, h, C::Grayscale, D::Eight, &[10, 200], None),
            [10, 10, 10, 200, 200, 200],
            [10, 200],
        ),
        (
            png_of(w, h, C::Grayscale, D::Sixteen, &[10, 1, 200, 2], None),
            [10, 10, 10, 200, 200, 200],
            [10, 200],
        ),
        (
            png_of(w, h, C::Grayscale, D::One, &[0b0100_0000], None),
            [0, 0, 0, 255, 255, 255],
            [0, 255],
        ),
        (
            png_of(w, h, C::GrayscaleAlpha, D::Eight, &[10, 0, 200, 255], None),
            [10, 10, 10, 200, 200, 200],
            [10, 200],
        ),
        (
            png_of(w, h, C::Rgb, D::Eight, &[255, 0, 0, 0, 0, 255], None),
            [255, 0, 0, 0, 0, 255],
            [76, 29],
        ),
        (
            png_of(w, h, C::Rgba, D::Eight, &[255, 0, 0, 7, 0, 0, 255, 9], None),
            [255, 0, 0, 0, 0, 255],
            [76, 29],
        ),
        (
            png_of(
                w,
                h,
                C::Rgb,
                D::Sixteen,
                &[255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 255, 1],
                None,
            ),
            [255, 0, 0, 0, 0, 255],
            [76, 29],
        ),
        (
            png_of(
                w,
                h,
                C::Indexed,
                D::Eight,
                &[1, 0],
                Some(&[0, 0, 255, 255, 0, 0]),
            ),
            [255, 0, 0, 0, 0, 255],
            [76, 29],
        ),
    ];
    for (i, (png, rgb, luma)) in cases.into_iter().enumerate() {
        assert_eq!(decode_rgb(&png, w, h).unwrap(), rgb, "case {i}");
        assert_eq!(decode_luma(&png, w, h).unwrap(), luma, "case {i}");
    }
}

#[test]
fn the_header_reports_its_fields() {
    let data: Vec<u8> = (0..64u8).collect();
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, 8, 8);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        let mut w = e.write_header().unwrap();
        w.write_image_data(&data).unwrap();
    }
    let header = inspect(&out, 8, 8).unwrap();
    assert!(!header.interlaced);
    assert_eq!(
        (
            header.width,
            header.height,
            header.bit_depth,
            header.color_type
        ),
        (8, 8, 8, 0)
    );
}

#[test]
fn the_header_names_each_fault() {
    let good = png_of(
        2,
        2,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &[0; 12],
        None,
    );
    assert!(inspect(&good, 2, 2).is_ok());
    assert_eq!(inspect(b"GIF89a....", 2, 2), Err(ImageProblem::NotPng));
    assert_eq!(inspect(b"", 2, 2), Err(ImageProblem::NotPng));
    assert_eq!(inspect(&good[..5], 2, 2), Err(ImageProblem::Truncated));
    for cut in [8, 12, 20, 33, good.len() - 12, good.len() - 1] {
        assert_eq!(
            inspect(&good[..cut], 2, 2),
            Err(ImageProblem::Truncated),
            "cut at {cut}"
        );
        assert!(decode_rgb(&good[..cut], 2, 2).is_err());
    }
    assert_eq!(
        inspect(&good, 4, 2),
        Err(ImageProblem::WrongSize {
            width: 2,
            height: 2,
            expected_width: 4,
            expected_height: 2
        })
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(inspect(&trailing, 2, 2), Err(ImageProblem::BadStructure));
    // Bit depth 3 is not a PNG depth; palette without PLTE; no IDAT.
    let bad_depth = png_from_chunks(&[
        (b"IHDR", ihdr(2, 2, 3, 0)),
        (b"IDAT", vec![]),
        (b"IEND", vec![]),
    ]);
    assert_eq!(inspect(&bad_depth, 2, 2), Err(ImageProblem::BadStructure));
    let no_plte = png_from_chunks(&[
        (b"IHDR", ihdr(2, 2, 8, 3)),
        (b"IDAT", vec![]),
        (b"IEND", vec![]),
    ]);
    assert_eq!(inspect(&no_plte, 2, 2), Err(ImageProblem::BadStructure));
    let no_idat = png_from_chunks(&[(b"IHDR", ihdr(2, 2, 8, 0)), (b"IEND", vec![])]);
    assert_eq!(inspect(&no_idat, 2, 2), Err(ImageProblem::BadStructure));
    let ihdr_late = png_from_chunks(&[(b"tEXt", b"a\0b".to_vec()), (b"IHDR", ihdr(2, 2, 8, 0))]);
    assert_eq!(inspect(&ihdr_late, 2, 2), Err(ImageProblem::BadStructure));
    // Corrupt image data: the header is fine, the decode is not.
    let mut bad_crc = good.clone();
    let idat = bad_crc.windows(4).position(|w| w == b"IDAT").unwrap();
    bad_crc[idat + 5] ^= 0xff;
    assert!(inspect(&bad_crc, 2, 2).is_ok());
    assert_eq!(decode_rgb(&bad_crc, 2, 2), Err(ImageProblem::Corrupt));
}

#[test]
fn a_huge_header_is_refused_before_any_allocation() {
    // 100000 × 100000 RGBA would be 40 GB: refused by the size check from
    // IHDR alone (the decoder is never created).
    let bomb = png_from_chunks(&[
        (b"IHDR", ihdr(100_000, 100_000, 8, 6)),
        (b"IDAT", zlib_zeros(1000)),
        (b"IEND", vec![]),
    ]);
    assert_eq!(
        decode_rgb(&bomb, 32, 32),
        Err(ImageProblem::WrongSize {
            width: 100_000,
            height: 100_000,
            expected_width: 32,
            expected_height: 32
        })
    );
}

#[test]
fn extra_compressed_data_is_not_inflated_to_the_end() {
    // A 32 × 32 gray image whose IDAT inflates to 256 MiB of zeros (the
    // image needs 32 × 33 bytes). The decode must finish fast and small.
    let idat = zlib_zeros(256 << 20);
    assert!(idat.len() < 4 << 20, "{}", idat.len());
    let bomb = png_from_chunks(&[
        (b"IHDR", ihdr(32, 32, 8, 0)),
        (b"IDAT", idat),
        (b"IEND", vec![]),
    ]);
    let start = Instant::now();
    let result = decode_rgb(&bomb, 32, 32);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    if let Ok(rgb) = result {
        assert_eq!(rgb, vec![0; 32 * 32 * 3]);
    }
}

#[test]
fn a_compressed_text_bomb_is_skipped() {
    // zTXt that inflates to 32 MiB: text chunks are ignored, so it costs
    // nothing and the image decodes.
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend_from_slice(&zlib_zeros(32 << 20));
    let mut rows = Vec::new();
    for _ in 0..2 {
        rows.extend_from_slice(&[0, 7, 9]);
    }
    let bomb = png_from_chunks(&[
        (b"IHDR", ihdr(2, 2, 8, 0)),
        (b"zTXt", ztxt),
        (b"IDAT", zlib_stored(&rows)),
        (b"IEND", vec![]),
    ]);
    let start = Instant::now();
    assert_eq!(decode_luma(&bomb, 2, 2).unwrap(), [7, 9, 7, 9]);
    assert!(start.elapsed() < Duration::from_secs(5));
    // One whose compressed chunk alone is larger than the decoder's
    // allowance for a 2 × 2 image: refused as too large, not read.
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend_from_slice(&zlib_zeros(512 << 20));
    let bigger = png_from_chunks(&[
        (b"IHDR", ihdr(2, 2, 8, 0)),
        (b"zTXt", ztxt),
        (b"IDAT", zlib_stored(&rows)),
        (b"IEND", vec![]),
    ]);
    assert_eq!(decode_luma(&bigger, 2, 2), Err(ImageProblem::TooLarge));
}

/// zlib of `data` in one stored (uncompressed) block.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).unwrap();
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

#[test]
fn problems_name_the_fix() {
    let wrong = ImageProblem::WrongSize {
        width: 64,
        height: 64,
        expected_width: 32,
        expected_height: 32,
    };
    let text = wrong.allowed();
    assert!(
        text.contains("32×32") && text.contains("64×64") && text.contains("resize"),
        "{text}"
    );
    for p in [
        ImageProblem::NotPng,
        ImageProblem::Truncated,
        ImageProblem::BadStructure,
        ImageProblem::Corrupt,
        ImageProblem::TooLarge,
    ] {
        assert!(p.allowed().contains("; "), "{p:?} names no fix");
    }
    assert_eq!(ImageField::InitImage.name(), "init_image");
    assert_eq!(ImageField::Mask.name(), "mask");
}

#[test]
fn the_fuzz_seeds_decode() {
    // fuzz/corpus/png_input: every color type, bit depth 1 to 16, a
    // palette with tRNS, a text chunk and an interlaced image.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/png_input");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let header = inspect(&bytes, be32(&bytes, 16), be32(&bytes, 20)).unwrap();
        let rgb = decode_rgb(&bytes, header.width, header.height).unwrap();
        assert_eq!(
            rgb.len(),
            header.width as usize * header.height as usize * 3
        );
        seen += 1;
    }
    assert!(seen >= 7, "{seen} seeds");
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}
