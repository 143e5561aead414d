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
//!    `Bounds`), key generation (`Generation`), tag (`Tag`), sequence exactly
//!    `next` (`Replay` if lower, `Gap` if higher), version consistent with the
//!    sequence (`Malformed`);
//! 4. decrypt in place, tail := next + 1, hand out the plaintext.
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
use super::segment::{SealedSegment, SegmentError};
use super::slot::{self, AadFields, HeaderFault, SlotHeader, NONCE_LEN, SLOT_HEADER_LEN, TAG_LEN};
use super::sys;

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
        let dst = buf.get_mut(..payload.len()).ok_or(ChannelError::TooLarge { len: payload.len(), max })?;
        dst.copy_from_slice(payload);
        Ok(payload.len())
    }
}

fn published_version(seq: u64, slot_count: u32) -> u64 {
    2 * (seq / u64::from(slot_count) + 1)
}

fn slot_index(seq: u64, slot_count: u32) -> u32 {
    // The remainder is < slot_count, which is a u32.
    (seq % u64::from(slot_count)) as u32
}

/// The sending end of one segment.
pub struct Writer {
    segment: SealedSegment,
    doorbell: Doorbell,
    cipher: XChaCha20Poly1305,
    generation: u64,
    next_seq: u64,
    scratch: Vec<u8>,
    stats: ChannelStats,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("segment", &self.segment.id())
            .field("generation", &self.generation)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Becomes the one writer of `segment`, continuing after the last message
    /// the segment holds (0 for a new or reset segment).
    pub fn new(segment: SealedSegment, doorbell: Doorbell, key: &ChannelKey) -> Self {
        let next_seq = segment.head().load(Ordering::Acquire);
        let scratch = vec![0u8; segment.geometry().max_message() + TAG_LEN];
        Self {
            cipher: cipher_for(key),
            generation: key.generation(),
            segment,
            doorbell,
            next_seq,
            scratch,
            stats: ChannelStats::default(),
        }
    }

    /// Switches to a new key; messages from now on carry its generation.
    pub fn rotate(&mut self, key: &ChannelKey) {
        self.cipher = cipher_for(key);
        self.generation = key.generation();
    }

    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    pub fn segment(&self) -> &SealedSegment {
        &self.segment
    }

    pub fn doorbell(&self) -> &Doorbell {
        &self.doorbell
    }

    /// Largest payload one message may carry.
    pub fn max_message(&self) -> usize {
        self.segment.geometry().max_message()
    }

    /// Sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn has_room(&mut self) -> Result<bool, ChannelError> {
        let tail = self.segment.tail().load(Ordering::Acquire);
        if tail > self.next_seq {
            return Err(ChannelError::PeerViolation { reason: "consumed counter ahead of published" });
        }
        let in_flight = self.next_seq - tail;
        let slots = u64::from(self.segment.geometry().slot_count);
        if in_flight > slots {
            return Err(ChannelError::PeerViolation { reason: "consumed counter went backwards" });
        }
        Ok(in_flight < slots)
    }

    /// Publishes one message if a slot is free; returns its sequence number.
    pub fn try_send(&mut self, kind: u16, payload: &[u8]) -> Result<u64, ChannelError> {
        self.try_send_with(kind, copy_in(payload))
    }

    /// Like [`Writer::try_send`], but `fill` writes the plaintext straight
    /// into the private scratch buffer (e.g. a serializer) and returns its
    /// length, saving one copy.
    pub fn try_send_with(
        &mut self,
        kind: u16,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, ChannelError>,
    ) -> Result<u64, ChannelError> {
        if !self.has_room()? {
            self.stats.full += 1;
            return Err(ChannelError::Full);
        }
        self.publish(kind, fill, true)
    }

    /// Sends, waiting up to `timeout` for the reader to free a slot.
    pub fn send(&mut self, kind: u16, payload: &[u8], timeout: Duration) -> Result<u64, ChannelError> {
        self.wait_for_room(timeout)?;
        self.try_send(kind, payload)
    }

    /// Serializes `value` with postcard directly into the scratch buffer and
    /// sends it, waiting up to `timeout` for room.
    pub fn send_postcard<T: Serialize>(&mut self, kind: u16, value: &T, timeout: Duration) -> Result<u64, ChannelError> {
        self.wait_for_room(timeout)?;
        self.try_send_with(kind, |buf| {
            let max = buf.len();
            postcard::to_slice(value, buf).map(|used| used.len()).map_err(|e| match e {
                postcard::Error::SerializeBufferFull => ChannelError::TooLarge { len: max + 1, max },
                other => ChannelError::Encode(other),
            })
        })
    }

    fn wait_for_room(&mut self, timeout: Duration) -> Result<(), ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(5);
        loop {
            if self.has_room()? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                self.stats.full += 1;
                return Err(ChannelError::Timeout(timeout));
            }
            // The reader frees slots without a doorbell of its own: back off
            // from a yield to at most 1 ms between looks.
            if pause <= Duration::from_micros(20) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause.min(deadline - now));
            }
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn publish(
        &mut self,
        kind: u16,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, ChannelError>,
        ring: bool,
    ) -> Result<u64, ChannelError> {
        let max = self.max_message();
        let len = fill(&mut self.scratch[..max])?;
        if len > max {
            return Err(ChannelError::TooLarge { len, max });
        }
        let len32 = u32::try_from(len).map_err(|_| ChannelError::TooLarge { len, max })?;
        let seq = self.next_seq;
        let geometry = self.segment.geometry();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(ChannelError::Rng)?;
        let aad = AadFields {
            segment: self.segment.id(),
            generation: self.generation,
            direction: self.segment.direction(),
            seq,
            kind,
            len: len32,
            slot_count: geometry.slot_count,
        }
        .encode();
        let (body, rest) = self.scratch.split_at_mut(len);
        let tag = slot::seal_in_place(&self.cipher, &nonce, &aad, body).ok_or(ChannelError::Seal)?;
        rest[..TAG_LEN].copy_from_slice(&tag);
        let header = SlotHeader {
            version: published_version(seq, geometry.slot_count),
            seq,
            len: len32,
            kind,
            nonce,
            generation: self.generation,
        }
        .encode();

        let index = slot_index(seq, geometry.slot_count);
        let version = self.segment.slot_version(index);
        let slot = self.segment.slot_ptr(index);
        version.store(published_version(seq, geometry.slot_count) - 1, Ordering::Relaxed);
        // Orders the odd version before the slot writes below.
        fence(Ordering::Release);
        // SAFETY: the slot spans slot_size bytes of our writable mapping; the
        // header tail is SLOT_HEADER_LEN - 8 bytes at offset 8 and the body is
        // len + TAG_LEN <= slot_size - SLOT_HEADER_LEN bytes at offset 64;
        // sources are our own arrays of those lengths.
        unsafe {
            sys::copy_to_shared(slot.add(8), header[8..].as_ptr(), SLOT_HEADER_LEN - 8);
            sys::copy_to_shared(slot.add(SLOT_HEADER_LEN), self.scratch.as_ptr(), len + TAG_LEN);
        }
        version.store(published_version(seq, geometry.slot_count), Ordering::Release);
        self.next_seq = seq + 1;
        self.segment.head().store(self.next_seq, Ordering::Release);
        self.stats.messages += 1;
        self.stats.bytes += len as u64;
        if ring {
            self.doorbell.ring()?;
        }
        Ok(seq)
    }

    /// Test hook: publishes without checking for room, so a fast writer laps
    /// a slow reader (what a misbehaving peer could do).
    #[doc(hidden)]
    pub fn send_ignoring_flow_control_for_test(&mut self, kind: u16, payload: &[u8]) -> Result<u64, ChannelError> {
        self.publish(kind, copy_in(payload), true)
    }

    /// Test hook (fault injection): flips bit `bit` of the slot holding
    /// message `seq`, counting from the slot's first header byte.
    #[doc(hidden)]
    pub fn flip_slot_bit_for_test(&self, seq: u64, bit: usize) {
        let geometry = self.segment.geometry();
        let byte = bit / 8;
        assert!(byte < geometry.slot_size as usize, "bit outside the slot");
        let ptr = self.segment.slot_ptr(slot_index(seq, geometry.slot_count));
        let mut value = [0u8; 1];
        // SAFETY: byte < slot_size, so the address lies in our writable
        // mapping; both copies are one byte to/from a local array.
        unsafe {
            sys::copy_from_shared(value.as_mut_ptr(), ptr.add(byte), 1);
            value[0] ^= 1 << (bit % 8);
            sys::copy_to_shared(ptr.add(byte), value.as_ptr(), 1);
        }
    }

    /// Test hook: the raw bytes of slot `index` (header, ciphertext, tag).
    #[doc(hidden)]
    pub fn slot_bytes_for_test(&self, index: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.segment.geometry().slot_size as usize];
        // SAFETY: the slot is slot_size bytes inside our mapping; `out` has
        // the same length.
        unsafe { sys::copy_from_shared(out.as_mut_ptr(), self.segment.slot_ptr(index), out.len()) };
        out
    }

    /// Test hook: overwrites slot `index` with `bytes` (at most a slot).
    #[doc(hidden)]
    pub fn write_slot_bytes_for_test(&self, index: u32, bytes: &[u8]) {
        assert!(bytes.len() <= self.segment.geometry().slot_size as usize);
        // SAFETY: bytes.len() <= slot_size, so the destination lies in our
        // writable mapping.
        unsafe { sys::copy_to_shared(self.segment.slot_ptr(index), bytes.as_ptr(), bytes.len()) };
    }

    /// Test hook: sets the published counter (a rolled-back or forged head).
    #[doc(hidden)]
    pub fn set_head_for_test(&self, head: u64) {
        self.segment.head().store(head, Ordering::Release);
    }
}

/// Where the reader found the accepted message in its private buffer.
struct Accepted {
    seq: u64,
    kind: u16,
    len: usize,
}

/// The receiving end of one segment.
pub struct Reader {
    segment: SealedSegment,
    doorbell: Doorbell,
    cipher: XChaCha20Poly1305,
    generation: u64,
    next_seq: u64,
    scratch: Vec<u8>,
    stats: ChannelStats,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("segment", &self.segment.id())
            .field("generation", &self.generation)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Becomes the one reader of `segment`, expecting the message after the
    /// last one consumed (0 for a new or reset segment). Maps the slots
    /// read-only in this process.
    pub fn new(segment: SealedSegment, doorbell: Doorbell, key: &ChannelKey) -> Result<Self, ChannelError> {
        segment.protect_slots_read_only()?;
        let next_seq = segment.tail().load(Ordering::Acquire);
        let scratch = vec![0u8; segment.geometry().max_message() + TAG_LEN];
        Ok(Self {
            cipher: cipher_for(key),
            generation: key.generation(),
            segment,
            doorbell,
            next_seq,
            scratch,
            stats: ChannelStats::default(),
        })
    }

    /// Switches to a new key; messages sealed under the old generation are
    /// refused from now on.
    pub fn rotate(&mut self, key: &ChannelKey) {
        self.cipher = cipher_for(key);
        self.generation = key.generation();
    }

    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    pub fn segment(&self) -> &SealedSegment {
        &self.segment
    }

    /// Sequence number the reader expects next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Takes the next message if one is published (`Ok(None)` if not).
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, ChannelError> {
        match self.take_next() {
            Ok(Some(a)) => Ok(Some(Message { seq: a.seq, kind: a.kind, payload: &self.scratch[..a.len] })),
            Ok(None) => Ok(None),
            Err(e) => Err(self.count(e)),
        }
    }

    /// Waits up to `timeout` (on the doorbell) for the next message.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.take_next() {
                Ok(Some(a)) => {
                    return Ok(Message { seq: a.seq, kind: a.kind, payload: &self.scratch[..a.len] });
                }
                Ok(None) => {}
                Err(e) => return Err(self.count(e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ChannelError::Timeout(timeout));
            }
            self.doorbell.wait(deadline - now)?;
        }
    }

    /// Receives and decodes one postcard value of at most `max_len` bytes.
    pub fn recv_postcard<T: DeserializeOwned>(
        &mut self,
        max_len: usize,
        timeout: Duration,
    ) -> Result<(u16, T), ChannelError> {
        let message = self.recv_timeout(timeout)?;
        if message.payload.len() > max_len {
            return Err(ChannelError::DecodeLimit { len: message.payload.len(), max: max_len });
        }
        let kind = message.kind;
        let value = postcard::from_bytes(message.payload).map_err(ChannelError::Decode)?;
        Ok((kind, value))
    }

    fn count(&mut self, e: ChannelError) -> ChannelError {
        match e {
            ChannelError::Crc => self.stats.crc_failures += 1,
            ChannelError::Tag => self.stats.tag_failures += 1,
            ChannelError::Replay { .. } | ChannelError::HeadRollback { .. } => self.stats.replays_rejected += 1,
            ChannelError::Torn => self.stats.torn_reads += 1,
            ChannelError::Doorbell(_) | ChannelError::Timeout(_) => {}
            _ => self.stats.other_rejections += 1,
        }
        e
    }

    fn take_next(&mut self) -> Result<Option<Accepted>, ChannelError> {
        let geometry = self.segment.geometry();
        let head = self.segment.head().load(Ordering::Acquire);
        let expected = self.next_seq;
        if head == expected {
            return Ok(None);
        }
        if head < expected {
            return Err(ChannelError::HeadRollback { expected, got: head });
        }
        if head - expected > u64::from(geometry.slot_count) {
            return Err(ChannelError::PeerViolation { reason: "published counter more than a ring ahead" });
        }
        let index = slot_index(expected, geometry.slot_count);
        let slot = self.segment.slot_ptr(index);
        let version = self.segment.slot_version(index);
        let max = geometry.max_message();

        // Copy out first; every check below runs on private memory.
        let before = version.load(Ordering::Acquire);
        let mut raw_header = [0u8; SLOT_HEADER_LEN];
        // SAFETY: the header is the first SLOT_HEADER_LEN bytes of a slot in
        // our mapping; the destination is a local array of that size.
        unsafe { sys::copy_from_shared(raw_header.as_mut_ptr(), slot, SLOT_HEADER_LEN) };
        let claimed_len = u32::from_le_bytes([raw_header[16], raw_header[17], raw_header[18], raw_header[19]]);
        let body_len = (claimed_len as usize).min(max) + TAG_LEN;
        // SAFETY: body_len <= max_message + TAG_LEN = slot_size -
        // SLOT_HEADER_LEN, so the range stays inside the slot; scratch has
        // exactly max_message + TAG_LEN bytes.
        unsafe { sys::copy_from_shared(self.scratch.as_mut_ptr(), slot.add(SLOT_HEADER_LEN), body_len) };
        // Orders the copies before the second version read.
        fence(Ordering::Acquire);
        let after = version.load(Ordering::Relaxed);

        let mut copied_version = [0u8; 8];
        copied_version.copy_from_slice(&raw_header[..8]);
        if before != after || before % 2 == 1 || u64::from_le_bytes(copied_version) != before {
            return Err(ChannelError::Torn);
        }
        let header = SlotHeader::decode(&raw_header).map_err(|fault| match fault {
            HeaderFault::Crc => ChannelError::Crc,
            HeaderFault::Reserved => ChannelError::Malformed { reason: "reserved header bytes set" },
        })?;
        let len = header.len as usize;
        if len > max {
            return Err(ChannelError::Bounds { len: u64::from(header.len), max });
        }
        if header.generation != self.generation {
            return Err(ChannelError::Generation { expected: self.generation, got: header.generation });
        }
        let aad = AadFields {
            segment: self.segment.id(),
            generation: self.generation,
            direction: self.segment.direction(),
            seq: header.seq,
            kind: header.kind,
            len: header.len,
            slot_count: geometry.slot_count,
        }
        .encode();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&self.scratch[len..len + TAG_LEN]);
        if !slot::open_in_place(&self.cipher, &header.nonce, &aad, &mut self.scratch[..len], &tag) {
            return Err(ChannelError::Tag);
        }
        if header.seq < expected {
            return Err(ChannelError::Replay { expected, got: header.seq });
        }
        if header.seq > expected {
            return Err(ChannelError::Gap { expected, got: header.seq });
        }
        if header.version != published_version(expected, geometry.slot_count) {
            return Err(ChannelError::Malformed { reason: "version does not match the sequence number" });
        }
        self.next_seq = expected + 1;
        self.segment.tail().store(self.next_seq, Ordering::Release);
        self.stats.messages += 1;
        self.stats.bytes += len as u64;
        Ok(Some(Accepted { seq: expected, kind: header.kind, len }))
    }

    /// Test hook: skip ahead to `seq` after a `Gap` (the lapping-writer test
    /// resynchronizes this way; production code restarts the peer instead).
    #[doc(hidden)]
    pub fn skip_to_for_test(&mut self, seq: u64) {
        self.next_seq = seq;
        self.segment.tail().store(seq, Ordering::Release);
    }
}
