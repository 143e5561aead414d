//! The sending end of a segment: steps 1 to 4 of the writer in the module
//! docs.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The sending end of one segment.
#[derive(Debug)]
pub struct Writer {
    end: Endpoint,
}

impl Writer {
    /// Becomes the one writer of `segment`, continuing after the last message
    /// the segment holds (0 for a new or reset segment).
    pub fn new(segment: SealedSegment, doorbell: Doorbell, key: &ChannelKey) -> Self {
        let next_seq = segment.head().load(Ordering::Acquire);
        Self {
            end: Endpoint::new(segment, doorbell, key, next_seq, EndpointRole::Writer),
        }
    }

    /// Switches to a new key; messages from now on carry its generation.
    pub fn rotate(&mut self, key: &ChannelKey) {
        self.end.rotate(key);
    }

    /// Empties the ring and starts over at sequence 0 under `key`, for a
    /// respawned peer. Only while no peer maps the segment (the old worker
    /// is dead); statistics are kept.
    pub fn reset_for_new_peer(&mut self, key: &ChannelKey) -> Result<(), ChannelError> {
        self.end.segment.reset_ring()?;
        self.end.restart(key)
    }

    pub fn stats(&self) -> ChannelStats {
        self.end.stats
    }

    /// Statistics and identity for the admin `segments` command.
    pub fn info(&self) -> EndpointInfo {
        self.end.info()
    }

    pub fn segment(&self) -> &SealedSegment {
        &self.end.segment
    }

    pub fn doorbell(&self) -> &Doorbell {
        &self.end.doorbell
    }

    /// Largest payload one message may carry.
    pub fn max_message(&self) -> usize {
        self.end.segment.geometry().max_message()
    }

    /// Sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.end.next_seq
    }

    fn has_room(&mut self) -> Result<bool, ChannelError> {
        let tail = self.end.segment.tail().load(Ordering::Acquire);
        if tail > self.end.next_seq {
            return Err(ChannelError::PeerViolation {
                reason: "consumed counter ahead of published",
            });
        }
        let in_flight = self.end.next_seq - tail;
        let slots = u64::from(self.end.segment.geometry().slot_count);
        if in_flight > slots {
            return Err(ChannelError::PeerViolation {
                reason: "consumed counter went backwards",
            });
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
            self.end.stats.full += 1;
            return Err(ChannelError::Full);
        }
        self.publish(kind, fill)
    }

    /// Sends, waiting up to `timeout` for the reader to free a slot.
    pub fn send(
        &mut self,
        kind: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, ChannelError> {
        self.wait_for_room(timeout)?;
        self.try_send(kind, payload)
    }

    /// Serializes `value` with postcard directly into the scratch buffer and
    /// sends it, waiting up to `timeout` for room.
    pub fn send_postcard<T: Serialize>(
        &mut self,
        kind: u16,
        value: &T,
        timeout: Duration,
    ) -> Result<u64, ChannelError> {
        self.wait_for_room(timeout)?;
        self.try_send_with(kind, |buf| {
            let max = buf.len();
            postcard::to_slice(value, buf)
                .map(|used| used.len())
                .map_err(|e| match e {
                    postcard::Error::SerializeBufferFull => {
                        ChannelError::TooLarge { len: max + 1, max }
                    }
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
                self.end.stats.full += 1;
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
    ) -> Result<u64, ChannelError> {
        let max = self.max_message();
        let len = fill(&mut self.end.scratch[..max])?;
        if len > max {
            return Err(ChannelError::TooLarge { len, max });
        }
        let len32 = u32::try_from(len).map_err(|_| ChannelError::TooLarge { len, max })?;
        let seq = self.end.next_seq;
        let geometry = self.end.segment.geometry();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(ChannelError::Rng)?;
        let aad = AadFields {
            segment: self.end.segment.id(),
            generation: self.end.generation,
            direction: self.end.segment.direction(),
            seq,
            kind,
            len: len32,
            slot_count: geometry.slot_count,
        }
        .encode();
        let (body, rest) = self.end.scratch.split_at_mut(len);
        let tag =
            slot::seal_in_place(&self.end.cipher, &nonce, &aad, body).ok_or(ChannelError::Seal)?;
        rest[..TAG_LEN].copy_from_slice(&tag);
        let header = SlotHeader {
            version: published_version(seq, geometry.slot_count),
            seq,
            len: len32,
            kind,
            nonce,
            generation: self.end.generation,
        }
        .encode();

        let index = slot_index(seq, geometry.slot_count);
        let version = self.end.segment.slot_version(index);
        let slot = self.end.segment.slot_ptr(index);
        version.store(
            published_version(seq, geometry.slot_count) - 1,
            Ordering::Relaxed,
        );
        // Orders the odd version before the slot writes below.
        fence(Ordering::Release);
        // SAFETY: the slot spans slot_size bytes of our writable mapping; the
        // header tail is SLOT_HEADER_LEN - 8 bytes at offset 8 and the body is
        // len + TAG_LEN <= slot_size - SLOT_HEADER_LEN bytes at offset 64;
        // sources are our own arrays of those lengths.
        unsafe {
            syscalls::copy_to_shared(slot.add(8), header[8..].as_ptr(), SLOT_HEADER_LEN - 8);
            syscalls::copy_to_shared(
                slot.add(SLOT_HEADER_LEN),
                self.end.scratch.as_ptr(),
                len + TAG_LEN,
            );
        }
        version.store(
            published_version(seq, geometry.slot_count),
            Ordering::Release,
        );
        self.end.next_seq = seq.checked_add(1).ok_or(ChannelError::PeerViolation {
            reason: "sequence numbers exhausted",
        })?;
        self.end
            .segment
            .head()
            .store(self.end.next_seq, Ordering::Release);
        self.end.stats.messages += 1;
        self.end.stats.bytes += len as u64;
        self.end.doorbell.ring()?;
        Ok(seq)
    }

    /// Test hook: publishes without checking for room, so a fast writer laps
    /// a slow reader (what a misbehaving peer could do).
    #[doc(hidden)]
    pub fn send_ignoring_flow_control_for_test(
        &mut self,
        kind: u16,
        payload: &[u8],
    ) -> Result<u64, ChannelError> {
        self.publish(kind, copy_in(payload))
    }

    /// Test hook (fault injection): flips bit `bit` of the slot holding
    /// message `seq`, counting from the slot's first header byte.
    #[doc(hidden)]
    pub fn flip_slot_bit_for_test(&self, seq: u64, bit: usize) {
        let geometry = self.end.segment.geometry();
        let byte = bit / 8;
        assert!(byte < geometry.slot_size as usize, "bit outside the slot");
        let ptr = self
            .end
            .segment
            .slot_ptr(slot_index(seq, geometry.slot_count));
        let mut value = [0u8; 1];
        // SAFETY: byte < slot_size, so the address lies in our writable
        // mapping; both copies are one byte to/from a local array.
        unsafe {
            syscalls::copy_from_shared(value.as_mut_ptr(), ptr.add(byte), 1);
            value[0] ^= 1 << (bit % 8);
            syscalls::copy_to_shared(ptr.add(byte), value.as_ptr(), 1);
        }
    }

    /// Test hook: the raw bytes of slot `index` (header, ciphertext, tag).
    #[doc(hidden)]
    pub fn slot_bytes_for_test(&self, index: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.end.segment.geometry().slot_size as usize];
        // SAFETY: the slot is slot_size bytes inside our mapping; `out` has
        // the same length.
        unsafe {
            syscalls::copy_from_shared(
                out.as_mut_ptr(),
                self.end.segment.slot_ptr(index),
                out.len(),
            )
        };
        out
    }

    /// Test hook: overwrites slot `index` with `bytes` (at most a slot).
    #[doc(hidden)]
    pub fn write_slot_bytes_for_test(&self, index: u32, bytes: &[u8]) {
        assert!(bytes.len() <= self.end.segment.geometry().slot_size as usize);
        // SAFETY: bytes.len() <= slot_size, so the destination lies in our
        // writable mapping.
        unsafe {
            syscalls::copy_to_shared(
                self.end.segment.slot_ptr(index),
                bytes.as_ptr(),
                bytes.len(),
            )
        };
    }

    /// Test hook: sets the published counter (a rolled-back or forged head).
    #[doc(hidden)]
    pub fn set_head_for_test(&self, head: u64) {
        self.end.segment.head().store(head, Ordering::Release);
    }
}
