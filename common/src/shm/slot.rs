//! The slot format: a 64-byte header fenced by a seqlock version and a
//! CRC32C, then the ciphertext and its 16-byte Poly1305 tag.
//!
//! ```text
//! slot header (little-endian):
//!   0  version  u64   seqlock: odd while the writer is inside the slot;
//!                     after publishing message `seq`: 2 × (seq / slot_count + 1)
//!   8  seq      u64   message sequence number (0, 1, 2, ... per segment)
//!  16  len      u32   plaintext length
//!  20  kind     u16   message kind (the caller's tag, bound into the AAD)
//!  22  reserved u16   zero
//!  24  nonce    [24]  fresh random XChaCha20 nonce
//!  48  generation u64 key generation the message was sealed under
//!  56  reserved u32   zero
//!  60  crc32c   u32   CRC32C of bytes 0..60 (with the published version)
//!  64  ciphertext (len bytes) then tag (16 bytes)
//! ```
//!
//! AAD (55 bytes): `"weave-shm/aad/v1"` (16) ‖ segment id u64 ‖ generation
//! u64 ‖ direction u8 ‖ seq u64 ‖ kind u16 ‖ len u32 ‖ slot count u32 ‖
//! reserved u32 (0), all little-endian. The layout is what libsodium's
//! `crypto_aead_xchacha20poly1305_ietf_*` sees as `ad`; ciphertext ‖ tag is
//! its combined `c`.
#![forbid(unsafe_code)]

use chacha20poly1305::{AeadInOut, Tag, XChaCha20Poly1305, XNonce};

use super::segment::{Direction, SegmentId};

pub const SLOT_HEADER_LEN: usize = 64;
pub const TAG_LEN: usize = 16;
pub const NONCE_LEN: usize = 24;
pub const AAD_LEN: usize = 55;
const AAD_DOMAIN: &[u8; 16] = b"weave-shm/aad/v1";
const CRC_OFFSET: usize = 60;

/// A decoded slot header (from the reader's private copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    pub version: u64,
    pub seq: u64,
    pub len: u32,
    pub kind: u16,
    pub nonce: [u8; NONCE_LEN],
    pub generation: u64,
}

/// Why a header copy was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFault {
    Crc,
    Reserved,
}

impl SlotHeader {
    pub fn encode(&self) -> [u8; SLOT_HEADER_LEN] {
        let mut h = [0u8; SLOT_HEADER_LEN];
        h[0..8].copy_from_slice(&self.version.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..20].copy_from_slice(&self.len.to_le_bytes());
        h[20..22].copy_from_slice(&self.kind.to_le_bytes());
        h[24..48].copy_from_slice(&self.nonce);
        h[48..56].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&h[..CRC_OFFSET]);
        h[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Checks the CRC and reserved fields, then decodes.
    pub fn decode(h: &[u8; SLOT_HEADER_LEN]) -> Result<Self, HeaderFault> {
        let le_u64 = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let le_u32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        if crc32c::crc32c(&h[..CRC_OFFSET]) != le_u32(CRC_OFFSET) {
            return Err(HeaderFault::Crc);
        }
        if h[22..24] != [0, 0] || le_u32(56) != 0 {
            return Err(HeaderFault::Reserved);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&h[24..48]);
        Ok(Self {
            version: le_u64(0),
            seq: le_u64(8),
            len: le_u32(16),
            kind: u16::from_le_bytes([h[20], h[21]]),
            nonce,
            generation: le_u64(48),
        })
    }
}

/// What the AAD binds: where the message belongs and what it claims to be.
#[derive(Clone, Copy, Debug)]
pub struct AadFields {
    pub segment: SegmentId,
    pub generation: u64,
    pub direction: Direction,
    pub seq: u64,
    pub kind: u16,
    pub len: u32,
    pub slot_count: u32,
}

impl AadFields {
    pub fn encode(&self) -> [u8; AAD_LEN] {
        let mut a = [0u8; AAD_LEN];
        a[0..16].copy_from_slice(AAD_DOMAIN);
        a[16..24].copy_from_slice(&self.segment.0.to_le_bytes());
        a[24..32].copy_from_slice(&self.generation.to_le_bytes());
        a[32] = self.direction as u8;
        a[33..41].copy_from_slice(&self.seq.to_le_bytes());
        a[41..43].copy_from_slice(&self.kind.to_le_bytes());
        a[43..47].copy_from_slice(&self.len.to_le_bytes());
        a[47..51].copy_from_slice(&self.slot_count.to_le_bytes());
        a
    }
}

/// Encrypts `buf` in place; returns the detached tag.
pub fn seal_in_place(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Option<[u8; TAG_LEN]> {
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(*nonce), aad, buf.into())
        .ok()?;
    Some(tag.into())
}

/// Verifies the tag, then decrypts `buf` in place. `false` means forged,
/// corrupted, wrong key or wrong AAD; `buf` is then unspecified.
pub fn open_in_place(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    cipher
        .decrypt_inout_detached(&XNonce::from(*nonce), aad, buf.into(), &Tag::from(*tag))
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header() -> SlotHeader {
        SlotHeader {
            version: 4,
            seq: 9,
            len: 1234,
            kind: 7,
            nonce: [3; NONCE_LEN],
            generation: 2,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        assert_eq!(SlotHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_header_bit_flip_is_caught_by_the_crc() {
        let bytes = header().encode();
        for bit in 0..SLOT_HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SlotHeader::decode(&b).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn nonzero_reserved_with_valid_crc_is_refused() {
        let mut b = header().encode();
        b[22] = 1;
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SlotHeader::decode(&b), Err(HeaderFault::Reserved));
    }

    #[test]
    fn aad_fields_each_change_the_encoding() {
        let base = AadFields {
            segment: SegmentId(1),
            generation: 1,
            direction: Direction::BrokerToWorker,
            seq: 1,
            kind: 1,
            len: 1,
            slot_count: 4,
        };
        let e = base.encode();
        let variants = [
            AadFields {
                segment: SegmentId(2),
                ..base
            },
            AadFields {
                generation: 2,
                ..base
            },
            AadFields {
                direction: Direction::WorkerToBroker,
                ..base
            },
            AadFields { seq: 2, ..base },
            AadFields { kind: 2, ..base },
            AadFields { len: 2, ..base },
            AadFields {
                slot_count: 8,
                ..base
            },
        ];
        for v in variants {
            assert_ne!(v.encode(), e, "{v:?}");
        }
    }
}
