//! The receiving end of a segment: steps 1 to 4 of the reader in the module
//! docs.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Where the reader found the accepted message in its private buffer.
struct Accepted {
    seq: u64,
    kind: u16,
    len: usize,
}

/// The receiving end of one segment.
#[derive(Debug)]
pub struct Reader {
    end: Endpoint,
}

impl Reader {
    /// Becomes the one reader of `segment`, expecting the message after the
    /// last one consumed (0 for a new or reset segment). Maps the slots
    /// read-only in this process.
    pub fn new(
        segment: SealedSegment,
        doorbell: Doorbell,
        key: &ChannelKey,
    ) -> Result<Self, ChannelError> {
        segment.protect_slots_read_only()?;
        let next_seq = segment.tail().load(Ordering::Acquire);
        Ok(Self {
            end: Endpoint::new(segment, doorbell, key, next_seq, EndpointRole::Reader),
        })
    }

    /// Switches to a new key; messages sealed under the old generation are
    /// refused from now on.
    pub fn rotate(&mut self, key: &ChannelKey) {
        self.end.rotate(key);
    }

    /// Empties the ring and starts over at sequence 0 under `key`, for a
    /// respawned peer. Only while no peer maps the segment (the old worker
    /// is dead); statistics are kept.
    pub fn reset_for_new_peer(&mut self, key: &ChannelKey) -> Result<(), ChannelError> {
        self.end.segment.reset_ring()?;
        self.end.segment.protect_slots_read_only()?;
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

    /// Sequence number the reader expects next.
    pub fn next_seq(&self) -> u64 {
        self.end.next_seq
    }

    /// Takes the next message if one is published (`Ok(None)` if not).
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, ChannelError> {
        match self.take_next() {
            Ok(Some(a)) => Ok(Some(Message {
                seq: a.seq,
                kind: a.kind,
                payload: &self.end.scratch[..a.len],
            })),
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
                    return Ok(Message {
                        seq: a.seq,
                        kind: a.kind,
                        payload: &self.end.scratch[..a.len],
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(self.count(e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ChannelError::Timeout(timeout));
            }
            self.end.doorbell.wait(deadline - now)?;
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
            return Err(ChannelError::DecodeLimit {
                len: message.payload.len(),
                max: max_len,
            });
        }
        let kind = message.kind;
        let value = postcard::from_bytes(message.payload).map_err(ChannelError::Decode)?;
        Ok((kind, value))
    }

    fn count(&mut self, e: ChannelError) -> ChannelError {
        match e {
            ChannelError::Crc => self.end.stats.crc_failures += 1,
            ChannelError::Tag => self.end.stats.tag_failures += 1,
            ChannelError::Replay { .. } | ChannelError::HeadRollback { .. } => {
                self.end.stats.replays_rejected += 1
            }
            ChannelError::Torn => self.end.stats.torn_reads += 1,
            ChannelError::Doorbell(_) | ChannelError::Timeout(_) => {}
            _ => self.end.stats.other_rejections += 1,
        }
        e
    }

    fn take_next(&mut self) -> Result<Option<Accepted>, ChannelError> {
        let geometry = self.end.segment.geometry();
        let head = self.end.segment.head().load(Ordering::Acquire);
        let expected = self.end.next_seq;
        if head == expected {
            return Ok(None);
        }
        if head < expected {
            return Err(ChannelError::HeadRollback {
                expected,
                got: head,
            });
        }
        if head - expected > u64::from(geometry.slot_count) {
            return Err(ChannelError::PeerViolation {
                reason: "published counter more than a ring ahead",
            });
        }
        let index = slot_index(expected, geometry.slot_count);
        let slot = self.end.segment.slot_ptr(index);
        let version = self.end.segment.slot_version(index);
        let max = geometry.max_message();

        // Copy out first; every check below runs on private memory.
        let before = version.load(Ordering::Acquire);
        let mut raw_header = [0u8; SLOT_HEADER_LEN];
        // SAFETY: the header is the first SLOT_HEADER_LEN bytes of a slot in
        // our mapping; the destination is a local array of that size.
        unsafe { syscalls::copy_from_shared(raw_header.as_mut_ptr(), slot, SLOT_HEADER_LEN) };
        let claimed_len = u32::from_le_bytes([
            raw_header[16],
            raw_header[17],
            raw_header[18],
            raw_header[19],
        ]);
        let body_len = (claimed_len as usize).min(max) + TAG_LEN;
        // SAFETY: body_len <= max_message + TAG_LEN = slot_size -
        // SLOT_HEADER_LEN, so the range stays inside the slot; scratch has
        // exactly max_message + TAG_LEN bytes.
        unsafe {
            syscalls::copy_from_shared(
                self.end.scratch.as_mut_ptr(),
                slot.add(SLOT_HEADER_LEN),
                body_len,
            )
        };
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
            HeaderFault::Reserved => ChannelError::Malformed {
                reason: "reserved header bytes set",
            },
        })?;
        let len = header.len as usize;
        if len > max {
            return Err(ChannelError::Bounds {
                len: u64::from(header.len),
                max,
            });
        }
        if header.generation != self.end.generation {
            return Err(ChannelError::Generation {
                expected: self.end.generation,
                got: header.generation,
            });
        }
        let aad = AadFields {
            segment: self.end.segment.id(),
            generation: self.end.generation,
            direction: self.end.segment.direction(),
            seq: header.seq,
            kind: header.kind,
            len: header.len,
            slot_count: geometry.slot_count,
        }
        .encode();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&self.end.scratch[len..len + TAG_LEN]);
        if !slot::open_in_place(
            &self.end.cipher,
            &header.nonce,
            &aad,
            &mut self.end.scratch[..len],
            &tag,
        ) {
            return Err(ChannelError::Tag);
        }
        if header.seq < expected {
            return Err(ChannelError::Replay {
                expected,
                got: header.seq,
            });
        }
        if header.seq > expected {
            return Err(ChannelError::Gap {
                expected,
                got: header.seq,
            });
        }
        if header.version != published_version(expected, geometry.slot_count) {
            return Err(ChannelError::Malformed {
                reason: "version does not match the sequence number",
            });
        }
        self.end.next_seq = expected.checked_add(1).ok_or(ChannelError::PeerViolation {
            reason: "sequence numbers exhausted",
        })?;
        self.end
            .segment
            .tail()
            .store(self.end.next_seq, Ordering::Release);
        self.end.stats.messages += 1;
        self.end.stats.bytes += len as u64;
        Ok(Some(Accepted {
            seq: expected,
            kind: header.kind,
            len,
        }))
    }

    /// Test hook: skip ahead to `seq` after a `Gap` (the lapping-writer test
    /// resynchronizes this way; production code restarts the peer instead).
    #[doc(hidden)]
    pub fn skip_to_for_test(&mut self, seq: u64) {
        self.end.next_seq = seq;
        self.end.segment.tail().store(seq, Ordering::Release);
    }
}
