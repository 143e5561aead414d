//! The shm slot reader (seqlock version, header CRC, bounds, generation,
//! AEAD tag, sequence) against a peer that owns the shared memory.
//!
//! A real sealed segment, a real `Writer` and a `Reader` on its own mapping
//! of the same memfd. The input is a program of operations: valid sends,
//! raw overwrites of slot bytes, header rewrites *with a valid CRC* (so the
//! checks past the CRC run), ciphertext bit flips, replays of earlier slot
//! contents, forged published counters, key rotations on either side, and
//! receives. The keys are random for every run, so no input can carry a
//! valid tag: the reader must never panic, and every message it accepts must
//! be exactly the one the writer sent under that sequence number, in order.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use weave_common::shm::slot::{SlotHeader, NONCE_LEN, SLOT_HEADER_LEN};
use weave_common::shm::{
    ChannelKey, Direction, Doorbell, Reader, RingGeometry, SealedSegment, SegmentId, Writer,
};

const SLOT_COUNT: u32 = 4;
const MAX_MESSAGE: usize = 96;
const SEGMENT: SegmentId = SegmentId(7);

/// Reads the operation program; every read past the end yields zeros.
struct Program<'a> {
    bytes: &'a [u8],
}

impl<'a> Program<'a> {
    fn op(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let src = self.take(2);
        b[..src.len()].copy_from_slice(src);
        u16::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let src = self.take(8);
        b[..src.len()].copy_from_slice(src);
        u64::from_le_bytes(b)
    }
    /// A value near `base` (most forgeries that matter are off by a little)
    /// or an arbitrary one.
    fn near(&mut self, base: u64) -> u64 {
        let choice = self.u8();
        match choice % 4 {
            0 => self.u64(),
            1 => base.wrapping_sub(u64::from(choice >> 2)),
            _ => base.wrapping_add(u64::from(choice >> 2)),
        }
    }
}

/// The header fields as stored, without checking the CRC or reserved bytes.
fn raw_header(slot: &[u8]) -> SlotHeader {
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&slot[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&slot[24..48]);
    SlotHeader {
        version: u64_at(0),
        seq: u64_at(8),
        len: u32::from_le_bytes([slot[16], slot[17], slot[18], slot[19]]),
        kind: u16::from_le_bytes([slot[20], slot[21]]),
        nonce,
        generation: u64_at(48),
    }
}

struct Channel {
    writer: Writer,
    reader: Reader,
    /// keys[g - 1] has generation g; either side may be on any of them.
    keys: Vec<ChannelKey>,
    /// What the writer sent, by sequence number.
    sent: HashMap<u64, (u16, Vec<u8>)>,
    /// Earlier contents of slots, for replays.
    snapshots: Vec<Vec<u8>>,
    slot_size: usize,
}

impl Channel {
    fn new() -> Self {
        let geometry = RingGeometry::for_max_message(SLOT_COUNT, MAX_MESSAGE)
            .expect("a small geometry is valid");
        let key = ChannelKey::generate(1).expect("random key");
        let segment = SealedSegment::create(SEGMENT, Direction::WorkerToBroker, geometry)
            .expect("memfd segment");
        let fd = segment.fd().try_clone_to_owned().expect("dup segment fd");
        let received = SealedSegment::from_fd(fd, SEGMENT, Direction::WorkerToBroker, geometry)
            .expect("the segment we sealed is accepted");
        let bell = Doorbell::new().expect("eventfd");
        let reader_bell = bell.try_clone().expect("dup eventfd");
        Self {
            writer: Writer::new(segment, bell, &key),
            reader: Reader::new(received, reader_bell, &key).expect("reader"),
            keys: vec![key],
            sent: HashMap::new(),
            snapshots: Vec::new(),
            slot_size: geometry.slot_size as usize,
        }
    }

    /// Starts over as a fresh channel under a fresh random key: empty ring,
    /// zeroed slots, sequence 0. (Cheaper than a new segment per input, and
    /// leaves nothing of the previous input behind.)
    fn reset(&mut self) {
        let key = ChannelKey::generate(1).expect("random key");
        self.writer.reset_for_new_peer(&key).expect("reset writer");
        self.reader.reset_for_new_peer(&key).expect("reset reader");
        let zeros = vec![0u8; self.slot_size];
        for index in 0..SLOT_COUNT {
            self.writer.write_slot_bytes_for_test(index, &zeros);
        }
        self.keys = vec![key];
        self.sent.clear();
        self.snapshots.clear();
    }

    fn key(&mut self, generation_pick: u8) -> &ChannelKey {
        let wanted = usize::from(generation_pick % 3);
        while self.keys.len() <= wanted {
            let next = self.keys[self.keys.len() - 1].rotate().expect("random key");
            self.keys.push(next);
        }
        &self.keys[wanted]
    }

    fn slot(&self, pick: u8) -> (u32, Vec<u8>) {
        let index = u32::from(pick) % SLOT_COUNT;
        (index, self.writer.slot_bytes_for_test(index))
    }

    fn receive(&mut self) {
        let expected_seq = self.reader.next_seq();
        match self.reader.try_recv() {
            Ok(Some(message)) => {
                assert_eq!(message.seq, expected_seq, "accepted out of order");
                let Some((kind, payload)) = self.sent.get(&message.seq) else {
                    panic!("accepted a message never sent: {message:?}");
                };
                assert_eq!(
                    (message.kind, message.payload),
                    (*kind, &payload[..]),
                    "accepted a message that differs from the one sent"
                );
            }
            Ok(None) => assert_eq!(self.reader.next_seq(), expected_seq),
            Err(error) => {
                let _ = error.to_string();
                assert_eq!(self.reader.next_seq(), expected_seq, "{error}");
            }
        }
    }

    fn step(&mut self, op: u8, program: &mut Program<'_>) {
        match op % 8 {
            0 => {
                let kind = program.u16();
                let len = usize::from(program.u8()) % (MAX_MESSAGE + 1);
                let mut payload = program.take(len).to_vec();
                payload.resize(len, 0xA5);
                if let Ok(seq) = self.writer.try_send(kind, &payload) {
                    self.sent.insert(seq, (kind, payload));
                    let index = (seq % u64::from(SLOT_COUNT)) as u32;
                    self.snapshots.push(self.writer.slot_bytes_for_test(index));
                }
            }
            1 => {
                // Raw bytes anywhere in a slot (header included).
                let (index, mut slot) = self.slot(program.u8());
                let offset = usize::from(program.u16()) % self.slot_size;
                let len = usize::from(program.u8());
                let bytes = program.take(len.min(self.slot_size - offset));
                slot[offset..offset + bytes.len()].copy_from_slice(bytes);
                self.writer.write_slot_bytes_for_test(index, &slot);
            }
            2 => {
                // One header field rewritten, CRC recomputed.
                let (index, mut slot) = self.slot(program.u8());
                let mut header = raw_header(&slot);
                let next = self.reader.next_seq();
                match program.u8() % 6 {
                    0 => header.version = program.near(header.version),
                    1 => header.seq = program.near(next),
                    2 => header.len = program.near(u64::from(header.len)) as u32,
                    3 => header.kind = program.u16(),
                    4 => {
                        let bytes = program.take(NONCE_LEN);
                        header.nonce[..bytes.len()].copy_from_slice(bytes);
                    }
                    _ => header.generation = program.near(header.generation),
                }
                slot[..SLOT_HEADER_LEN].copy_from_slice(&header.encode());
                self.writer.write_slot_bytes_for_test(index, &slot);
            }
            3 => {
                // Flip bits of the ciphertext or tag.
                let (index, mut slot) = self.slot(program.u8());
                let offset = SLOT_HEADER_LEN
                    + usize::from(program.u16()) % (self.slot_size - SLOT_HEADER_LEN);
                slot[offset] ^= program.u8() | 1;
                self.writer.write_slot_bytes_for_test(index, &slot);
            }
            4 => {
                // Replay an earlier slot, into its own or another slot.
                if self.snapshots.is_empty() {
                    return;
                }
                let pick = usize::from(program.u8()) % self.snapshots.len();
                let index = u32::from(program.u8()) % SLOT_COUNT;
                self.writer
                    .write_slot_bytes_for_test(index, &self.snapshots[pick]);
            }
            5 => {
                let head = program.near(self.writer.next_seq());
                self.writer.set_head_for_test(head);
            }
            6 => self.receive(),
            _ => {
                let side = program.u8();
                let key = self.key(side >> 2).clone();
                match side % 3 {
                    0 => self.writer.rotate(&key),
                    1 => self.reader.rotate(&key),
                    _ => {
                        self.writer.rotate(&key);
                        self.reader.rotate(&key);
                    }
                }
            }
        }
    }
}

thread_local! {
    static CHANNEL: RefCell<Channel> = RefCell::new(Channel::new());
}

fuzz_target!(|data: &[u8]| {
    CHANNEL.with_borrow_mut(|channel| run(channel, data));
});

fn run(channel: &mut Channel, data: &[u8]) {
    channel.reset();
    let mut program = Program { bytes: data };
    while let Some(op) = program.op() {
        channel.step(op, &mut program);
    }
    // Whatever is left published is read too.
    for _ in 0..=SLOT_COUNT {
        channel.receive();
    }
}
