//! The single-producer single-consumer ring: one [`Writer`] and one
//! [`Reader`] per segment, fixed-size slots, one message per slot.
//!
//! Writer, for message `seq` in slot `seq % n` (lap `seq / n`):
//! 1. check room: `seq - tail < n` (tail is the reader's and is checked for
//!    sanity, never trusted to index anything);
//! 2. copy the plaintext into a private scratch buffer, draw a fresh nonce,
//!    encrypt in place (AAD: see [`super::slot`]);
//! 3. version := 2·lap+1 (odd), copy header and ciphertext‖tag into the slot
//!    (one copy), version := 2·lap+2 (even, Release);
//! 4. head := seq + 1 (Release); ring the doorbell.
//!
//! Reader, expecting `next`:
//! 1. head (Acquire) says whether `next` is published;
//! 2. copy header and ciphertext‖tag out of the mapping into private memory
//!    (opaque copy, no reference into shared memory), bracketed by two reads
//!    of the version;
//! 3. on the private copy, in order: version unchanged and even (else
//!    `Torn`), CRC (`Crc`), reserved fields and bounds (`Malformed`,
//!    `Bounds`), key generation (`Generation`), tag (`Tag`; verified before
//!    the private copy is decrypted in place), sequence exactly `next`
//!    (`Replay` if lower, `Gap` if higher), version consistent with the
//!    sequence (`Malformed`);
//! 4. tail := next + 1, hand out the plaintext (borrowed from the reader's
//!    private buffer).
//!
//! A rejected message is not consumed: the channel is broken and the broker
//! treats that as a protocol violation (kill and respawn the worker).

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::doorbell::{Doorbell, DoorbellError};
use super::key::ChannelKey;
use super::segment::{Direction, RingGeometry, SealedSegment, SegmentError, SegmentId};
use super::slot::{self, AadFields, HeaderFault, SlotHeader, NONCE_LEN, SLOT_HEADER_LEN, TAG_LEN};
use super::syscalls;

/// Errors sending or receiving on the channel.
#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("slot header CRC mismatch: the shared memory was corrupted or tampered with; restart the worker")]
    Crc,
    #[error("message authentication failed (wrong key, wrong generation or tampered ciphertext); restart the worker with fresh keys")]
    Tag,
    #[error("replayed or rolled-back message: expected sequence {expected}, got {got}; treat the peer as compromised and restart it")]
    Replay { expected: u64, got: u64 },
    #[error("messages skipped: expected sequence {expected}, got {got}; the peer broke the ring protocol, restart it")]
    Gap { expected: u64, got: u64 },
    #[error("the ring's published counter went backwards (expected at least {expected}, got {got}); restart the worker")]
    HeadRollback { expected: u64, got: u64 },
    #[error("torn read: the slot changed while it was being copied; retry, and restart the worker if it persists")]
    Torn,
    #[error("malformed slot ({reason}); restart the worker")]
    Malformed { reason: &'static str },
    #[error("slot claims {len} bytes but at most {max} fit; restart the worker")]
    Bounds { len: u64, max: usize },
    #[error("message sealed under key generation {got}, expected {expected}; both sides must rotate keys together")]
    Generation { expected: u64, got: u64 },
    #[error("message of {len} bytes exceeds the slot capacity of {max} bytes; raise slot_size or send less")]
    TooLarge { len: usize, max: usize },
    #[error("the ring is full (the reader has not consumed); wait and retry, or check that the peer is alive")]
    Full,
    #[error("no message within {0:?}; the peer may be stuck")]
    Timeout(Duration),
    #[error("the peer wrote an impossible ring counter ({reason}); restart the worker")]
    PeerViolation { reason: &'static str },
    #[error("the OS random number generator failed ({0}); cannot draw a nonce")]
    Rng(getrandom::Error),
    #[error("encryption failed (message too long for the cipher)")]
    Seal,
    #[error("message of {len} bytes exceeds the caller's limit of {max}; the peer is misbehaving")]
    DecodeLimit { len: usize, max: usize },
    #[error("could not decode the message: {0}")]
    Decode(postcard::Error),
    #[error("could not encode the message: {0}")]
    Encode(postcard::Error),
    #[error(transparent)]
    Doorbell(#[from] DoorbellError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Per-endpoint counters, for the admin `segments` command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Messages sent (writer) or accepted (reader).
    pub messages: u64,
    /// Plaintext bytes sent or accepted.
    pub bytes: u64,
    pub crc_failures: u64,
    pub tag_failures: u64,
    pub replays_rejected: u64,
    pub torn_reads: u64,
    /// Other rejections: malformed, bounds, generation, gap, counters.
    pub other_rejections: u64,
    /// Times the writer found the ring full.
    pub full: u64,
}

/// What the admin `segments` command shows for one endpoint (never keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub segment: SegmentId,
    pub direction: Direction,
    pub role: EndpointRole,
    pub geometry: RingGeometry,
    pub key_generation: u64,
    /// Next sequence number to send (writer) or expected (reader).
    pub next_seq: u64,
    pub stats: ChannelStats,
}

/// Which end of a segment an [`EndpointInfo`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointRole {
    Writer,
    Reader,
}

/// A message handed out by the reader; `payload` borrows the reader's
/// private buffer (never the shared mapping).
#[derive(Debug)]
pub struct Message<'a> {
    pub seq: u64,
    pub kind: u16,
    pub payload: &'a [u8],
}

fn cipher_for(key: &ChannelKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.expose_secret().into())
}

/// A `fill` step that copies `payload` into the scratch buffer.
fn copy_in(payload: &[u8]) -> impl FnOnce(&mut [u8]) -> Result<usize, ChannelError> + '_ {
    move |buf| {
        let max = buf.len();
        let dst = buf.get_mut(..payload.len()).ok_or(ChannelError::TooLarge {
            len: payload.len(),
            max,
        })?;
        dst.copy_from_slice(payload);
        Ok(payload.len())
    }
}

/// The even seqlock value a slot holds once message `seq` is published.
/// Saturating: 2^63 laps are unreachable, but arithmetic on counters must
/// never panic.
fn published_version(seq: u64, slot_count: u32) -> u64 {
    (seq / u64::from(slot_count))
        .saturating_add(1)
        .saturating_mul(2)
}

fn slot_index(seq: u64, slot_count: u32) -> u32 {
    // The remainder is < slot_count, which is a u32.
    (seq % u64::from(slot_count)) as u32
}

/// What both ends of a segment hold: the segment, its doorbell, the cipher
/// and key generation, the next sequence number, a private buffer the size
/// of one sealed message, and the counters.
struct Endpoint {
    segment: SealedSegment,
    doorbell: Doorbell,
    cipher: XChaCha20Poly1305,
    generation: u64,
    next_seq: u64,
    scratch: Vec<u8>,
    stats: ChannelStats,
    role: EndpointRole,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("role", &self.role)
            .field("segment", &self.segment.id())
            .field("generation", &self.generation)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(
        segment: SealedSegment,
        doorbell: Doorbell,
        key: &ChannelKey,
        next_seq: u64,
        role: EndpointRole,
    ) -> Self {
        let scratch = vec![0u8; segment.geometry().max_message() + TAG_LEN];
        Self {
            cipher: cipher_for(key),
            generation: key.generation(),
            segment,
            doorbell,
            next_seq,
            scratch,
            stats: ChannelStats::default(),
            role,
        }
    }

    fn rotate(&mut self, key: &ChannelKey) {
        self.cipher = cipher_for(key);
        self.generation = key.generation();
    }

    /// After the ring was reset: forget pending doorbell rings, start at
    /// sequence 0 under `key`.
    fn restart(&mut self, key: &ChannelKey) -> Result<(), ChannelError> {
        while self.doorbell.wait(Duration::ZERO)? {}
        self.next_seq = 0;
        self.rotate(key);
        Ok(())
    }

    fn info(&self) -> EndpointInfo {
        EndpointInfo {
            segment: self.segment.id(),
            direction: self.segment.direction(),
            role: self.role,
            geometry: self.segment.geometry(),
            key_generation: self.generation,
            next_seq: self.next_seq,
            stats: self.stats,
        }
    }
}

mod reader;
mod writer;

pub use reader::Reader;
pub use writer::Writer;
