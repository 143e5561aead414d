//! Sealed memfd segments: creation, the receiver's checks, and the layout.
//!
//! Layout (all integers little-endian, offsets in bytes):
//!
//! ```text
//! 0      control page (4096)
//!          0  magic "WEAVSHM1"          8  layout version u32
//!         12  direction u32            16  segment id u64
//!         24  slot count u32           28  slot size u32
//!         64  head: AtomicU64 — messages published (written by the writer only)
//!        128  tail: AtomicU64 — messages consumed  (written by the reader only)
//! 4096   slot 0, slot 1, ... (slot_count × slot_size)
//! ```
//!
//! The geometry fields are informational: each side is told the geometry by
//! its own configuration and compares, so a peer cannot resize the ring.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::slot::{SLOT_HEADER_LEN, TAG_LEN};
use super::syscalls;

/// Bytes before the first slot.
pub const CONTROL_PAGE_LEN: usize = 4096;
const MAGIC: [u8; 8] = *b"WEAVSHM1";
const LAYOUT_VERSION: u32 = 1;
const OFF_MAGIC: usize = 0;
const OFF_LAYOUT: usize = 8;
const OFF_DIRECTION: usize = 12;
const OFF_SEGMENT_ID: usize = 16;
const OFF_SLOT_COUNT: usize = 24;
const OFF_SLOT_SIZE: usize = 28;
const OFF_HEAD: usize = 64;
const OFF_TAIL: usize = 128;

/// Smallest slot: a header, a tag and 48 bytes of payload.
pub const MIN_SLOT_SIZE: usize = 128;
/// Largest slot (32 MiB): a message never spans slots, so this bounds the
/// largest message (an uncompressed 2048×2048 RGBA image is 16 MiB).
pub const MAX_SLOT_SIZE: usize = 32 << 20;
/// Largest ring.
pub const MAX_SLOT_COUNT: u32 = 4096;
/// Largest segment, whatever the geometry.
pub const MAX_SEGMENT_LEN: usize = 1 << 30;

/// Which way a segment carries messages; part of every message's AAD, so a
/// message cannot be reflected back to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Direction {
    BrokerToWorker = 1,
    WorkerToBroker = 2,
}

impl Direction {
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::BrokerToWorker),
            2 => Some(Self::WorkerToBroker),
            _ => None,
        }
    }
}

/// Identity of a segment, assigned by the broker; bound into the AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SegmentId(pub u64);

/// Ring geometry. Both sides must agree (the broker sends it with the keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingGeometry {
    /// Number of slots in the ring (2..=4096).
    pub slot_count: u32,
    /// Bytes per slot including the 64-byte header and the 16-byte tag; a
    /// multiple of 64 in 128..=32 MiB.
    pub slot_size: u32,
}

impl Default for RingGeometry {
    /// 4 slots of 8 MiB: room for a 1024×1024 RGBA image (4 MiB) per message
    /// and a few messages in flight; pages are only allocated when touched.
    fn default() -> Self {
        Self {
            slot_count: 4,
            slot_size: 8 << 20,
        }
    }
}

impl RingGeometry {
    /// A geometry whose slots hold messages of `max_message` bytes.
    pub fn for_max_message(slot_count: u32, max_message: usize) -> Result<Self, SegmentError> {
        let slot = (max_message + SLOT_HEADER_LEN + TAG_LEN)
            .next_multiple_of(64)
            .max(MIN_SLOT_SIZE);
        let slot_size = u32::try_from(slot).map_err(|_| SegmentError::Geometry {
            reason: "message too large for a slot",
        })?;
        let g = Self {
            slot_count,
            slot_size,
        };
        g.validate()?;
        Ok(g)
    }

    pub fn validate(&self) -> Result<(), SegmentError> {
        let slot = self.slot_size as usize;
        let reason = if !(2..=MAX_SLOT_COUNT).contains(&self.slot_count) {
            "slot_count must be in 2..=4096"
        } else if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot) {
            "slot_size must be in 128 bytes..=32 MiB"
        } else if slot % 64 != 0 {
            "slot_size must be a multiple of 64"
        } else if self.segment_len_unchecked() > MAX_SEGMENT_LEN {
            "slot_count × slot_size must stay under 1 GiB"
        } else {
            return Ok(());
        };
        Err(SegmentError::Geometry { reason })
    }

    fn segment_len_unchecked(&self) -> usize {
        CONTROL_PAGE_LEN + self.slot_count as usize * self.slot_size as usize
    }

    /// Total segment length in bytes for this geometry.
    pub fn segment_len(&self) -> Result<usize, SegmentError> {
        self.validate()?;
        Ok(self.segment_len_unchecked())
    }

    /// Largest plaintext one message may carry.
    pub fn max_message(&self) -> usize {
        self.slot_size as usize - SLOT_HEADER_LEN - TAG_LEN
    }
}

/// Errors creating or receiving a segment.
#[derive(Debug, Error)]
pub enum SegmentError {
    #[error("invalid ring geometry: {reason}; fix the channel settings so both sides agree")]
    Geometry { reason: &'static str },
    #[error("could not create the memfd segment ({0}); the kernel must support memfd_create with sealing (Linux ≥ 3.17)")]
    Create(std::io::Error),
    #[error("could not size or seal the segment ({0})")]
    Seal(std::io::Error),
    #[error("could not inspect the received segment fd ({0}); pass the memfd the broker created")]
    Stat(std::io::Error),
    #[error("the received fd is not a regular memfd file; refusing to map it")]
    NotMemfd,
    #[error("the received segment is {actual} bytes but {expected} were expected; refusing to map it (geometry mismatch or tampering)")]
    WrongSize { expected: u64, actual: u64 },
    #[error("the received segment lacks seals {missing:#x} (needs shrink, grow and seal seals); refusing to map it")]
    MissingSeals { missing: i32 },
    #[error("the received segment carries a write seal ({seals:#x}); it cannot be used as a ring")]
    WriteSealed { seals: i32 },
    #[error("could not map the segment ({0})")]
    Map(std::io::Error),
    #[error("the segment's control page does not match (field {field}); both sides must use the same segment id, direction and geometry")]
    ControlMismatch { field: &'static str },
}

/// A sized, sealed, mapped memfd that carries one direction of the channel.
/// Created once by the broker and reused for the life of the worker; the
/// ring inside is reset only while no peer maps it.
#[derive(Debug)]
pub struct SealedSegment {
    fd: OwnedFd,
    map: syscalls::SharedMapping,
    id: SegmentId,
    direction: Direction,
    geometry: RingGeometry,
}

impl SealedSegment {
    /// Creates `MFD_CLOEXEC|MFD_ALLOW_SEALING` memfd, sizes it for
    /// `geometry`, seals shrink/grow/seal, maps it and writes the control page.
    pub fn create(
        id: SegmentId,
        direction: Direction,
        geometry: RingGeometry,
    ) -> Result<Self, SegmentError> {
        let len = geometry.segment_len()?;
        let name =
            CString::new(format!("weave-shm-{}", id.0)).map_err(|_| SegmentError::Geometry {
                reason: "segment name",
            })?;
        let fd = syscalls::memfd_create_sealable(&name).map_err(SegmentError::Create)?;
        syscalls::set_len(fd.as_fd(), len).map_err(SegmentError::Seal)?;
        syscalls::add_seals(fd.as_fd(), syscalls::REQUIRED_SEALS).map_err(SegmentError::Seal)?;
        let map = syscalls::SharedMapping::map(fd.as_fd(), len).map_err(SegmentError::Map)?;
        let seg = Self {
            fd,
            map,
            id,
            direction,
            geometry,
        };
        seg.write_control_page();
        Ok(seg)
    }

    /// Accepts a segment fd from the peer. Checks, BEFORE mapping, that it is
    /// a memfd of exactly the expected size carrying the shrink/grow/seal
    /// seals (so it can never be truncated under us: no SIGBUS); then maps it
    /// and compares the control page with what we expect.
    pub fn from_fd(
        fd: OwnedFd,
        id: SegmentId,
        direction: Direction,
        geometry: RingGeometry,
    ) -> Result<Self, SegmentError> {
        let expected = geometry.segment_len()?;
        let (size, mode) = syscalls::file_size_and_mode(fd.as_fd()).map_err(SegmentError::Stat)?;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(SegmentError::NotMemfd);
        }
        let seals = match syscalls::get_seals(fd.as_fd()) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Err(SegmentError::NotMemfd),
            Err(e) => return Err(SegmentError::Stat(e)),
        };
        let missing = syscalls::REQUIRED_SEALS & !seals;
        if missing != 0 {
            return Err(SegmentError::MissingSeals { missing });
        }
        if seals & syscalls::FORBIDDEN_SEALS != 0 {
            return Err(SegmentError::WriteSealed { seals });
        }
        if size != expected as u64 {
            return Err(SegmentError::WrongSize {
                expected: expected as u64,
                actual: size,
            });
        }
        let map = syscalls::SharedMapping::map(fd.as_fd(), expected).map_err(SegmentError::Map)?;
        let seg = Self {
            fd,
            map,
            id,
            direction,
            geometry,
        };
        seg.check_control_page()?;
        Ok(seg)
    }

    pub fn id(&self) -> SegmentId {
        self.id
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    /// Length of the whole segment in bytes.
    pub fn byte_len(&self) -> usize {
        self.map.len()
    }

    /// The memfd, to pass to the worker (dup it onto a fixed number at exec).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Zeroes the ring (head, tail, every slot header). Only call while no
    /// peer maps the segment (worker not started or dead), e.g. before a
    /// respawn with fresh keys.
    pub fn reset_ring(&mut self) -> Result<(), SegmentError> {
        self.map
            .protect_from(CONTROL_PAGE_LEN, true)
            .map_err(SegmentError::Map)?;
        self.head().store(0, std::sync::atomic::Ordering::SeqCst);
        self.tail().store(0, std::sync::atomic::Ordering::SeqCst);
        let zero = [0u8; SLOT_HEADER_LEN];
        for i in 0..self.geometry.slot_count {
            // SAFETY: the slot pointer is inside our mapping and the header
            // is SLOT_HEADER_LEN bytes long; `&mut self` and the documented
            // precondition mean nobody else is using the ring.
            unsafe { syscalls::copy_to_shared(self.slot_ptr(i), zero.as_ptr(), zero.len()) };
        }
        Ok(())
    }

    fn write_control_page(&self) {
        let mut page = [0u8; 64];
        page[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        page[OFF_LAYOUT..OFF_LAYOUT + 4].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        page[OFF_DIRECTION..OFF_DIRECTION + 4]
            .copy_from_slice(&(self.direction as u32).to_le_bytes());
        page[OFF_SEGMENT_ID..OFF_SEGMENT_ID + 8].copy_from_slice(&self.id.0.to_le_bytes());
        page[OFF_SLOT_COUNT..OFF_SLOT_COUNT + 4]
            .copy_from_slice(&self.geometry.slot_count.to_le_bytes());
        page[OFF_SLOT_SIZE..OFF_SLOT_SIZE + 4]
            .copy_from_slice(&self.geometry.slot_size.to_le_bytes());
        // SAFETY: the first 64 bytes of the control page are inside our
        // mapping; the segment was just created, so no peer maps it yet.
        unsafe { syscalls::copy_to_shared(self.map.base(), page.as_ptr(), page.len()) };
    }

    fn check_control_page(&self) -> Result<(), SegmentError> {
        let mut page = [0u8; 64];
        // SAFETY: 64 bytes at the start of our mapping are readable; the
        // copy is opaque and lands in a local array.
        unsafe { syscalls::copy_from_shared(page.as_mut_ptr(), self.map.base(), page.len()) };
        let u32_at = |off: usize| {
            u32::from_le_bytes([page[off], page[off + 1], page[off + 2], page[off + 3]])
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&page[OFF_SEGMENT_ID..OFF_SEGMENT_ID + 8]);
        let field = if page[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
            "magic"
        } else if u32_at(OFF_LAYOUT) != LAYOUT_VERSION {
            "layout version"
        } else if Direction::from_u32(u32_at(OFF_DIRECTION)) != Some(self.direction) {
            "direction"
        } else if u64::from_le_bytes(id) != self.id.0 {
            "segment id"
        } else if u32_at(OFF_SLOT_COUNT) != self.geometry.slot_count {
            "slot count"
        } else if u32_at(OFF_SLOT_SIZE) != self.geometry.slot_size {
            "slot size"
        } else {
            return Ok(());
        };
        Err(SegmentError::ControlMismatch { field })
    }

    /// The published-messages counter (writer-owned).
    pub(crate) fn head(&self) -> &AtomicU64 {
        // SAFETY: OFF_HEAD is 8-aligned inside the page-aligned mapping, which
        // lives as long as `self`; AtomicU64 has the layout of u64 and every
        // access to this word, in both processes, is atomic.
        unsafe { &*self.map.base().add(OFF_HEAD).cast::<AtomicU64>() }
    }

    /// The consumed-messages counter (reader-owned).
    pub(crate) fn tail(&self) -> &AtomicU64 {
        // SAFETY: as for `head`, at OFF_TAIL.
        unsafe { &*self.map.base().add(OFF_TAIL).cast::<AtomicU64>() }
    }

    /// Start of slot `index` (< slot_count).
    pub(crate) fn slot_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!(index < self.geometry.slot_count);
        let offset = CONTROL_PAGE_LEN + index as usize * self.geometry.slot_size as usize;
        // SAFETY: index < slot_count, so the offset lies inside the mapping
        // whose length is exactly CONTROL_PAGE_LEN + slot_count × slot_size.
        unsafe { self.map.base().add(offset) }
    }

    /// The seqlock word at the start of slot `index`.
    pub(crate) fn slot_version(&self, index: u32) -> &AtomicU64 {
        // SAFETY: slots start at multiples of 64 after a page-aligned control
        // page, so the first word is 8-aligned and inside the mapping; it is
        // only ever accessed atomically.
        unsafe { &*self.slot_ptr(index).cast::<AtomicU64>() }
    }

    /// Makes the slot area read-only in this process: the reader never
    /// writes slots, and a stray write must fault rather than corrupt.
    pub(crate) fn protect_slots_read_only(&self) -> Result<(), SegmentError> {
        self.map
            .protect_from(CONTROL_PAGE_LEN, false)
            .map_err(SegmentError::Map)
    }
}
