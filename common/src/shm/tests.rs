//! Channel tests: tampering, replay, keys, segment refusal, a writer and a
//! reader in separate processes, and libsodium interoperability.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::slot::{AadFields, SlotHeader, SLOT_HEADER_LEN, TAG_LEN};
use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn small_geometry() -> RingGeometry {
    RingGeometry {
        slot_count: 2,
        slot_size: 128,
    }
}

/// A writer on a fresh segment and a reader on its own mapping of the same
/// memfd (received through `from_fd`, as the worker does).
fn pair_with_keys(
    geometry: RingGeometry,
    writer_key: &ChannelKey,
    reader_key: &ChannelKey,
) -> (Writer, Reader) {
    let id = SegmentId(42);
    let segment = SealedSegment::create(id, Direction::WorkerToBroker, geometry).unwrap();
    let fd = segment.fd().try_clone_to_owned().unwrap();
    let received = SealedSegment::from_fd(fd, id, Direction::WorkerToBroker, geometry).unwrap();
    let bell = Doorbell::new().unwrap();
    let reader_bell = bell.try_clone().unwrap();
    let writer = Writer::new(segment, bell, writer_key);
    let reader = Reader::new(received, reader_bell, reader_key).unwrap();
    (writer, reader)
}

fn pair(geometry: RingGeometry) -> (Writer, Reader, ChannelKey) {
    let key = ChannelKey::generate(1).unwrap();
    let (w, r) = pair_with_keys(geometry, &key, &key);
    (w, r, key)
}

#[test]
fn messages_round_trip_in_order_up_to_the_slot_capacity() {
    let geometry = RingGeometry::for_max_message(3, 1000).unwrap();
    let (mut w, mut r, key) = pair(geometry);
    let max = w.max_message();
    assert!(max >= 1000);
    for (i, len) in [0usize, 1, 17, max, 500, max].into_iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        let seq = w.send(i as u16, &payload, WAIT).unwrap();
        assert_eq!(seq, i as u64);
        let m = r.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (m.seq, m.kind, m.payload),
            (i as u64, i as u16, &payload[..])
        );
    }
    assert!(matches!(
        w.try_send(0, &vec![0; max + 1]),
        Err(ChannelError::TooLarge { .. })
    ));
    assert!(r.try_recv().unwrap().is_none());
    assert_eq!(w.stats().messages, 6);
    assert_eq!(r.stats().messages, 6);
    let info = r.info();
    assert_eq!(
        (info.role, info.next_seq, info.key_generation),
        (EndpointRole::Reader, 6, 1)
    );
    assert_eq!(w.info().stats.bytes, r.info().stats.bytes);
    let shown = format!("{:?} {:?} {:?} {:?}", w.info(), w, r.info(), r);
    let key_bytes = format!("{:?}", key.expose_secret());
    assert!(
        !shown.contains(&key_bytes[1..key_bytes.len() - 1]),
        "key material in {shown}"
    );
}

#[test]
fn plaintext_never_appears_in_the_shared_mapping() {
    let (mut w, _r, _) = pair(small_geometry());
    let secret = b"the prompt is a secret!";
    w.try_send(1, secret).unwrap();
    let raw = w.slot_bytes_for_test(0);
    assert!(!raw.windows(secret.len()).any(|win| win == secret));
}

#[test]
fn every_single_bit_flip_of_a_written_slot_is_rejected() {
    let payload = b"0123456789abcdef0123456789abcdef"; // 32 bytes
    let covered_bits = (SLOT_HEADER_LEN + payload.len() + TAG_LEN) * 8;
    let key = ChannelKey::generate(3).unwrap();
    let mut by_kind = std::collections::BTreeMap::<&'static str, usize>::new();
    for bit in 0..covered_bits {
        let (mut w, mut r) = pair_with_keys(small_geometry(), &key, &key);
        let seq = w.try_send(9, payload).unwrap();
        w.flip_slot_bit_for_test(seq, bit);
        let err = match r.try_recv() {
            Ok(m) => panic!("bit {bit}: accepted a corrupted message {m:?}"),
            Err(e) => e,
        };
        let kind = match err {
            ChannelError::Torn => "torn",
            ChannelError::Crc => "crc",
            ChannelError::Tag => "tag",
            other => panic!("bit {bit}: unexpected error {other}"),
        };
        *by_kind.entry(kind).or_default() += 1;
        if bit < SLOT_HEADER_LEN * 8 {
            assert_ne!(
                kind, "tag",
                "bit {bit}: header flips must be caught before decryption"
            );
        } else {
            assert_eq!(kind, "tag", "bit {bit}");
        }
        // Flipping it back restores the original, which is then accepted:
        // the rejection was about the flip, nothing else.
        w.flip_slot_bit_for_test(seq, bit);
        assert_eq!(r.try_recv().unwrap().unwrap().payload, payload);
        let stats = r.stats();
        assert_eq!(
            stats.crc_failures + stats.tag_failures + stats.torn_reads,
            1
        );
    }
    assert_eq!(by_kind.values().sum::<usize>(), covered_bits);
    assert_eq!(by_kind["tag"], (payload.len() + TAG_LEN) * 8);
}

#[test]
fn replayed_slot_is_rejected() {
    let (mut w, mut r, _) = pair(small_geometry());
    w.try_send(1, b"first").unwrap();
    let old_slot0 = w.slot_bytes_for_test(0);
    assert_eq!(r.try_recv().unwrap().unwrap().payload, b"first");
    w.try_send(1, b"second").unwrap();
    r.try_recv().unwrap().unwrap();
    w.try_send(1, b"third").unwrap(); // seq 2, back in slot 0
    w.write_slot_bytes_for_test(0, &old_slot0);
    match r.try_recv() {
        Err(ChannelError::Replay {
            expected: 2,
            got: 0,
        }) => {}
        other => panic!("replay not rejected: {other:?}"),
    }
    assert_eq!(r.stats().replays_rejected, 1);
    assert_eq!(r.next_seq(), 2, "a rejected message is not consumed");
}

#[test]
fn rolled_back_slot_and_head_are_rejected() {
    let (mut w, mut r, _) = pair(small_geometry());
    w.try_send(1, b"a").unwrap();
    let first = w.slot_bytes_for_test(0);
    r.try_recv().unwrap().unwrap();
    w.try_send(1, b"b").unwrap();
    // The slot of message 1 is rolled back to hold message 0 (moved across
    // slots): sequence 0 again.
    w.write_slot_bytes_for_test(1, &first);
    assert!(matches!(
        r.try_recv(),
        Err(ChannelError::Replay {
            expected: 1,
            got: 0
        })
    ));
    // The published counter rolled back below what was consumed.
    w.set_head_for_test(0);
    assert!(matches!(
        r.try_recv(),
        Err(ChannelError::HeadRollback {
            expected: 1,
            got: 0
        })
    ));
    // A head claiming more than a ring of messages.
    w.set_head_for_test(10);
    assert!(matches!(
        r.try_recv(),
        Err(ChannelError::PeerViolation { .. })
    ));
}

#[test]
fn wrong_key_or_generation_is_rejected() {
    let key = ChannelKey::generate(1).unwrap();
    let other = ChannelKey::generate(1).unwrap();
    let (mut w, mut r) = pair_with_keys(small_geometry(), &key, &other);
    w.try_send(1, b"hello").unwrap();
    assert!(matches!(r.try_recv(), Err(ChannelError::Tag)));
    assert_eq!(r.stats().tag_failures, 1);

    // Same bytes, next generation: refused by the header check ...
    let next_gen = ChannelKey::from_bytes(*key.expose_secret(), 2);
    let (mut w, mut r) = pair_with_keys(small_geometry(), &key, &next_gen);
    w.try_send(1, b"hello").unwrap();
    assert!(matches!(
        r.try_recv(),
        Err(ChannelError::Generation {
            expected: 2,
            got: 1
        })
    ));
    // ... and by the tag when the header is forged to the new generation,
    // because the generation is in the AAD.
    let mut raw = w.slot_bytes_for_test(0);
    let mut header_bytes = [0u8; SLOT_HEADER_LEN];
    header_bytes.copy_from_slice(&raw[..SLOT_HEADER_LEN]);
    let mut header = SlotHeader::decode(&header_bytes).unwrap();
    header.generation = 2;
    raw[..SLOT_HEADER_LEN].copy_from_slice(&header.encode());
    w.write_slot_bytes_for_test(0, &raw);
    assert!(matches!(r.try_recv(), Err(ChannelError::Tag)));
}

#[test]
fn rotation_switches_keys_on_both_sides() {
    let (mut w, mut r, key) = pair(small_geometry());
    w.try_send(1, b"old").unwrap();
    assert_eq!(r.try_recv().unwrap().unwrap().payload, b"old");
    let new_key = key.rotate().unwrap();
    w.rotate(&new_key);
    w.try_send(1, b"new").unwrap();
    assert!(matches!(
        r.try_recv(),
        Err(ChannelError::Generation {
            expected: 1,
            got: 2
        })
    ));
    r.rotate(&new_key);
    assert_eq!(r.try_recv().unwrap().unwrap().payload, b"new");
}

#[test]
fn full_ring_and_timeouts_are_reported() {
    let (mut w, mut r, _) = pair(small_geometry());
    w.try_send(1, b"1").unwrap();
    w.try_send(1, b"2").unwrap();
    assert!(matches!(w.try_send(1, b"3"), Err(ChannelError::Full)));
    let start = Instant::now();
    assert!(matches!(
        w.send(1, b"3", Duration::from_millis(30)),
        Err(ChannelError::Timeout(_))
    ));
    assert!(start.elapsed() >= Duration::from_millis(25));
    r.try_recv().unwrap().unwrap();
    w.try_send(1, b"3").unwrap();
    r.try_recv().unwrap().unwrap();
    r.try_recv().unwrap().unwrap();
    let start = Instant::now();
    assert!(matches!(
        r.recv_timeout(Duration::from_millis(30)),
        Err(ChannelError::Timeout(_))
    ));
    assert!(start.elapsed() >= Duration::from_millis(25));
    assert!(w.stats().full >= 2);
}

#[test]
fn doorbell_wakes_a_waiting_reader() {
    let (mut w, mut r, _) = pair(small_geometry());
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        w.try_send(5, b"wake").unwrap();
        w
    });
    let start = Instant::now();
    let m = r.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((m.kind, m.payload), (5, &b"wake"[..]));
    assert!(start.elapsed() < Duration::from_secs(5));
    sender.join().unwrap();
}

#[test]
fn postcard_helpers_round_trip_and_enforce_the_limit() {
    let (mut w, mut r, _) = pair(RingGeometry::for_max_message(2, 4096).unwrap());
    let value = (7u32, String::from("a prompt"), vec![1u8, 2, 3]);
    w.send_postcard(3, &value, WAIT).unwrap();
    let (kind, back): (u16, (u32, String, Vec<u8>)) = r.recv_postcard(1024, WAIT).unwrap();
    assert_eq!((kind, back), (3, value.clone()));
    w.send_postcard(3, &value, WAIT).unwrap();
    let err = r
        .recv_postcard::<(u32, String, Vec<u8>)>(4, WAIT)
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::DecodeLimit { max: 4, .. }),
        "{err}"
    );
    let too_big = vec![0u8; 5000];
    assert!(matches!(
        w.send_postcard(1, &too_big, WAIT),
        Err(ChannelError::TooLarge { .. })
    ));
}

#[test]
fn garbage_slots_and_counters_never_panic_or_get_accepted() {
    let g = RingGeometry::for_max_message(4, 200).unwrap();
    let (w, mut r, _) = pair(g);
    let slot_size = g.slot_size as usize;
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state = mix(state);
        state
    };
    let mut seen = std::collections::HashSet::new();
    for round in 0..20_000u64 {
        let index = (next() % 4) as u32;
        let mut bytes: Vec<u8> = (0..slot_size).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // A header with a valid CRC and plausible or hostile fields, so
            // the checks past the CRC run too.
            let seq = match next() % 4 {
                0 => r.next_seq(),
                1 => next(),
                _ => r.next_seq() + next() % 8,
            };
            let header = SlotHeader {
                version: if next() % 2 == 0 {
                    next() & !1
                } else {
                    2 * (seq / 4 + 1)
                },
                seq,
                len: match next() % 3 {
                    0 => next() as u32,
                    _ => (next() % 200) as u32,
                },
                kind: next() as u16,
                nonce: [next() as u8; 24],
                generation: if next() % 4 == 0 { next() } else { 1 },
            };
            bytes[..SLOT_HEADER_LEN].copy_from_slice(&header.encode());
        }
        w.write_slot_bytes_for_test(index, &bytes);
        let head = match next() % 3 {
            0 => next(),
            _ => r.next_seq() + next() % 6,
        };
        w.set_head_for_test(head);
        match r.try_recv() {
            Ok(None) => assert_eq!(head, r.next_seq()),
            Ok(Some(m)) => panic!("forged slot accepted: {m:?}"),
            Err(e) => {
                seen.insert(std::mem::discriminant(&e));
            }
        }
    }
    assert_eq!(r.stats().messages, 0);
    // Torn, Crc, Bounds, Generation, Tag, PeerViolation (nothing is ever
    // accepted, so the head cannot roll back below it here).
    assert!(
        seen.len() >= 6,
        "only {} kinds of rejection exercised",
        seen.len()
    );
}

// ---- segment refusal -------------------------------------------------------

fn raw_memfd(len: usize, seals: libc::c_int) -> OwnedFd {
    let fd = syscalls::memfd_create_sealable(c"weave-test").unwrap();
    syscalls::set_len(fd.as_fd_for_test(), len).unwrap();
    if seals != 0 {
        syscalls::add_seals(fd.as_fd_for_test(), seals).unwrap();
    }
    fd
}

trait AsFdForTest {
    fn as_fd_for_test(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdForTest for OwnedFd {
    fn as_fd_for_test(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

#[test]
fn segment_with_wrong_size_or_missing_seals_is_refused() {
    let g = small_geometry();
    let len = g.segment_len().unwrap();
    let id = SegmentId(1);
    let dir = Direction::BrokerToWorker;

    let good = SealedSegment::create(id, dir, g).unwrap();
    // The seals hold: the kernel refuses to shrink or grow it.
    let err = syscalls::set_len(good.fd(), len / 2).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = syscalls::set_len(good.fd(), len * 2).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    let bigger = RingGeometry { slot_count: 4, ..g };
    let err = SealedSegment::from_fd(good.fd().try_clone_to_owned().unwrap(), id, dir, bigger)
        .unwrap_err();
    assert!(matches!(err, SegmentError::WrongSize { .. }), "{err}");

    let unsealed = raw_memfd(len, 0);
    let err = SealedSegment::from_fd(unsealed, id, dir, g).unwrap_err();
    assert!(
        matches!(err, SegmentError::MissingSeals { missing } if missing == syscalls::REQUIRED_SEALS),
        "{err}"
    );

    let half = raw_memfd(len, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    let err = SealedSegment::from_fd(half, id, dir, g).unwrap_err();
    assert!(
        matches!(err, SegmentError::MissingSeals { missing } if missing == libc::F_SEAL_SEAL),
        "{err}"
    );

    let write_sealed = raw_memfd(len, syscalls::REQUIRED_SEALS | libc::F_SEAL_WRITE);
    let err = SealedSegment::from_fd(write_sealed, id, dir, g).unwrap_err();
    assert!(matches!(err, SegmentError::WriteSealed { .. }), "{err}");

    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let err = SealedSegment::from_fd(OwnedFd::from(file), id, dir, g).unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::NotMemfd | SegmentError::MissingSeals { .. }
        ),
        "{err}"
    );

    let err = SealedSegment::from_fd(
        good.fd().try_clone_to_owned().unwrap(),
        SegmentId(2),
        dir,
        g,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::ControlMismatch {
                field: "segment id"
            }
        ),
        "{err}"
    );
    let err = SealedSegment::from_fd(
        good.fd().try_clone_to_owned().unwrap(),
        id,
        Direction::WorkerToBroker,
        g,
    )
    .unwrap_err();
    assert!(
        matches!(err, SegmentError::ControlMismatch { field: "direction" }),
        "{err}"
    );

    assert!(SealedSegment::from_fd(good.fd().try_clone_to_owned().unwrap(), id, dir, g).is_ok());
}

#[test]
fn geometry_limits_are_enforced() {
    for bad in [
        RingGeometry {
            slot_count: 1,
            slot_size: 128,
        },
        RingGeometry {
            slot_count: 2,
            slot_size: 64,
        },
        RingGeometry {
            slot_count: 2,
            slot_size: 200,
        },
        RingGeometry {
            slot_count: 2,
            slot_size: (MAX_SLOT_SIZE + 64) as u32,
        },
        RingGeometry {
            slot_count: 4096,
            slot_size: MAX_SLOT_SIZE as u32,
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(SegmentError::Geometry { .. })),
            "{bad:?}"
        );
    }
    RingGeometry::default().validate().unwrap();
    assert!(RingGeometry::default().max_message() >= 3 << 20);
}

#[test]
fn reset_ring_starts_over() {
    let (mut w, mut r, _) = pair(small_geometry());
    w.try_send(1, b"x").unwrap();
    r.try_recv().unwrap().unwrap();
    drop(r);
    let key = ChannelKey::generate(2).unwrap();
    let fd = w.segment().fd().try_clone_to_owned().unwrap();
    let mut seg = SealedSegment::from_fd(
        fd,
        SegmentId(42),
        Direction::WorkerToBroker,
        small_geometry(),
    )
    .unwrap();
    drop(w);
    seg.reset_ring().unwrap();
    let fd = seg.fd().try_clone_to_owned().unwrap();
    let bell = Doorbell::new().unwrap();
    let mut w = Writer::new(seg, bell.try_clone().unwrap(), &key);
    let received = SealedSegment::from_fd(
        fd,
        SegmentId(42),
        Direction::WorkerToBroker,
        small_geometry(),
    )
    .unwrap();
    let mut r = Reader::new(received, bell, &key).unwrap();
    assert_eq!((w.next_seq(), r.next_seq()), (0, 0));
    w.try_send(1, b"y").unwrap();
    assert_eq!(r.try_recv().unwrap().unwrap().payload, b"y");
}

#[test]
fn endpoints_reset_for_a_respawned_peer() {
    // The broker side: it created both segments and keeps them.
    let g = small_geometry();
    let key1 = ChannelKey::generate(1).unwrap();
    let to_worker = SealedSegment::create(SegmentId(1), Direction::BrokerToWorker, g).unwrap();
    let from_worker = SealedSegment::create(SegmentId(2), Direction::WorkerToBroker, g).unwrap();
    let (bell_out, bell_in) = (Doorbell::new().unwrap(), Doorbell::new().unwrap());
    let worker_fds = |s: &SealedSegment| s.fd().try_clone_to_owned().unwrap();
    let (out_fd, in_fd) = (worker_fds(&to_worker), worker_fds(&from_worker));
    let (wb_out, wb_in) = (bell_out.try_clone().unwrap(), bell_in.try_clone().unwrap());
    let mut broker_tx = Writer::new(to_worker, bell_out, &key1);
    let mut broker_rx = Reader::new(from_worker, bell_in, &key1).unwrap();
    {
        // First worker: echoes one message, then dies mid-way (one unread
        // message left in each direction).
        let mut rx = Reader::new(
            SealedSegment::from_fd(out_fd, SegmentId(1), Direction::BrokerToWorker, g).unwrap(),
            wb_out,
            &key1,
        )
        .unwrap();
        let mut tx = Writer::new(
            SealedSegment::from_fd(in_fd, SegmentId(2), Direction::WorkerToBroker, g).unwrap(),
            wb_in,
            &key1,
        );
        broker_tx.try_send(1, b"job").unwrap();
        let job = rx.try_recv().unwrap().unwrap().payload.to_vec();
        tx.try_send(2, &job).unwrap();
        assert_eq!(broker_rx.try_recv().unwrap().unwrap().payload, b"job");
        broker_tx.try_send(1, b"lost").unwrap();
        tx.try_send(2, b"stale").unwrap();
    }
    let key2 = key1.rotate().unwrap();
    broker_tx.reset_for_new_peer(&key2).unwrap();
    broker_rx.reset_for_new_peer(&key2).unwrap();
    assert!(
        broker_rx.try_recv().unwrap().is_none(),
        "stale message from the dead worker"
    );
    let out_fd = broker_tx.segment().fd().try_clone_to_owned().unwrap();
    let in_fd = broker_rx.segment().fd().try_clone_to_owned().unwrap();
    let mut rx = Reader::new(
        SealedSegment::from_fd(out_fd, SegmentId(1), Direction::BrokerToWorker, g).unwrap(),
        Doorbell::new().unwrap(),
        &key2,
    )
    .unwrap();
    let mut tx = Writer::new(
        SealedSegment::from_fd(in_fd, SegmentId(2), Direction::WorkerToBroker, g).unwrap(),
        Doorbell::new().unwrap(),
        &key2,
    );
    assert!(rx.try_recv().unwrap().is_none());
    broker_tx.try_send(1, b"again").unwrap();
    assert_eq!(rx.try_recv().unwrap().unwrap().payload, b"again");
    tx.try_send(2, b"ok").unwrap();
    let m = broker_rx.try_recv().unwrap().unwrap();
    assert_eq!((m.seq, m.payload), (0, &b"ok"[..]));
}

// ---- cross-process race ----------------------------------------------------

const ROLE_ENV: &str = "WEAVE_SHM_TEST_ROLE";
const CHILD_SEGMENT_FD: i32 = 200;
const CHILD_DOORBELL_FD: i32 = 201;
const CHILD_KEY_FD: i32 = 202;
const RACE_MESSAGES: u64 = 100_000;

/// splitmix64: deterministic content both processes can derive from `seq`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn race_geometry() -> RingGeometry {
    // Smaller messages in debug builds, where the cipher is ~30× slower.
    let max = if cfg!(debug_assertions) {
        2048
    } else {
        24 * 1024
    };
    RingGeometry::for_max_message(8, max).unwrap()
}

fn race_payload(seq: u64, max: usize, out: &mut Vec<u8>) {
    let r = mix(seq);
    let len = match r % 16 {
        0 => 0,
        1 => max,
        _ => (r >> 8) as usize % (max + 1),
    };
    out.clear();
    let mut state = r;
    while out.len() < len {
        state = mix(state);
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&state.to_le_bytes()[..take]);
    }
}

fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// The child half: adopt inherited fds exactly as the worker will.
fn run_child_writer(ignore_flow_control: bool) {
    // SAFETY: the parent placed these descriptors at these numbers for us
    // (pre_exec dup2) and nothing else in this process owns them.
    let (seg_fd, bell_fd, key_fd) = unsafe {
        (
            OwnedFd::from_raw_fd(CHILD_SEGMENT_FD),
            OwnedFd::from_raw_fd(CHILD_DOORBELL_FD),
            OwnedFd::from_raw_fd(CHILD_KEY_FD),
        )
    };
    let mut key_bytes = [0u8; KEY_LEN];
    std::io::Read::read_exact(&mut std::fs::File::from(key_fd), &mut key_bytes).unwrap();
    let key = ChannelKey::from_bytes(key_bytes, 1);
    zeroize::Zeroize::zeroize(&mut key_bytes);
    let geometry = race_geometry();
    let segment =
        SealedSegment::from_fd(seg_fd, SegmentId(7), Direction::WorkerToBroker, geometry).unwrap();
    let mut writer = Writer::new(segment, Doorbell::from_fd(bell_fd).unwrap(), &key);
    let max = writer.max_message();
    let mut payload = Vec::with_capacity(max);
    for seq in 0..RACE_MESSAGES {
        race_payload(seq, max, &mut payload);
        let kind = (seq % 65_536) as u16;
        let sent = if ignore_flow_control {
            writer.send_ignoring_flow_control_for_test(kind, &payload)
        } else {
            writer.send(kind, &payload, Duration::from_secs(30))
        };
        assert_eq!(sent.unwrap(), seq);
    }
}

/// Spawns this test binary again as the writer, with the segment, doorbell
/// and key socket inherited at fixed descriptor numbers.
fn spawn_child_writer(test_name: &str, role: &str) -> (std::process::Child, Reader) {
    let geometry = race_geometry();
    let key = ChannelKey::generate(1).unwrap();
    let segment = SealedSegment::create(SegmentId(7), Direction::WorkerToBroker, geometry).unwrap();
    let bell = Doorbell::new().unwrap();
    let (mut key_tx, key_rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let sources = [
        segment.fd().as_raw_fd(),
        bell.fd().as_raw_fd(),
        key_rx.as_raw_fd(),
    ];
    let targets = [CHILD_SEGMENT_FD, CHILD_DOORBELL_FD, CHILD_KEY_FD];
    assert!(
        sources.iter().all(|s| *s < CHILD_SEGMENT_FD),
        "test fds unexpectedly high"
    );
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only calls dup2 /
    // fcntl (async-signal-safe) on descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            for (s, t) in sources.iter().zip(targets) {
                inherit_fd_as(*s, t)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(key_rx);
    std::io::Write::write_all(&mut key_tx, key.expose_secret()).unwrap();
    let reader = Reader::new(segment, bell, &key).unwrap();
    (child, reader)
}

#[test]
fn cross_process_race_delivers_every_message_in_order() {
    if let Some(role) = child_role() {
        assert_eq!(role, "writer");
        run_child_writer(false);
        return;
    }
    let (mut child, mut reader) = spawn_child_writer(
        "shm::tests::cross_process_race_delivers_every_message_in_order",
        "writer",
    );
    let max = reader.segment().geometry().max_message();
    let mut expected = Vec::with_capacity(max);
    let mut bytes = 0u64;
    for seq in 0..RACE_MESSAGES {
        race_payload(seq, max, &mut expected);
        let m = match reader.recv_timeout(Duration::from_secs(30)) {
            Ok(m) => m,
            Err(e) => {
                let _ = child.kill();
                panic!("message {seq}: {e}");
            }
        };
        assert_eq!(m.seq, seq);
        assert_eq!(m.kind, (seq % 65_536) as u16);
        assert!(
            m.payload == expected.as_slice(),
            "message {seq}: content differs"
        );
        bytes += m.payload.len() as u64;
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "writer process failed: {status}");
    assert!(matches!(reader.try_recv(), Ok(None)));
    let stats = reader.stats();
    assert_eq!(stats.messages, RACE_MESSAGES);
    assert_eq!(stats.bytes, bytes);
    assert_eq!(
        stats.crc_failures + stats.tag_failures + stats.torn_reads + stats.replays_rejected,
        0
    );
}

#[test]
fn cross_process_lapping_writer_never_gets_a_torn_message_accepted() {
    if let Some(role) = child_role() {
        assert_eq!(role, "lapping-writer");
        run_child_writer(true);
        return;
    }
    let (mut child, mut reader) = spawn_child_writer(
        "shm::tests::cross_process_lapping_writer_never_gets_a_torn_message_accepted",
        "lapping-writer",
    );
    let max = reader.segment().geometry().max_message();
    let mut expected = Vec::with_capacity(max);
    let (mut accepted, mut torn, mut gaps) = (0u64, 0u64, 0u64);
    let mut last: Option<u64> = None;
    let deadline =
        Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 600 } else { 120 });
    let mut child_done = false;
    loop {
        assert!(Instant::now() < deadline, "lapping race did not finish");
        match reader.try_recv() {
            Ok(Some(m)) => {
                assert!(last.is_none_or(|l| m.seq > l), "sequence went backwards");
                race_payload(m.seq, max, &mut expected);
                assert_eq!(m.kind, (m.seq % 65_536) as u16);
                assert!(
                    m.payload == expected.as_slice(),
                    "message {}: corrupt content accepted",
                    m.seq
                );
                last = Some(m.seq);
                accepted += 1;
            }
            Ok(None) => {
                if child_done {
                    break;
                }
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "writer process failed: {status}");
                    child_done = true;
                }
                std::thread::yield_now();
            }
            Err(ChannelError::Torn) => torn += 1,
            Err(ChannelError::Gap { got, .. }) => {
                gaps += 1;
                reader.skip_to_for_test(got);
            }
            Err(ChannelError::PeerViolation { .. }) => {
                // The writer ran more than a ring ahead; catch up to what is
                // still in the ring.
                let head = reader
                    .segment()
                    .head()
                    .load(std::sync::atomic::Ordering::Acquire);
                let n = u64::from(reader.segment().geometry().slot_count);
                reader.skip_to_for_test(head.saturating_sub(n - 1));
                gaps += 1;
            }
            Err(other) => panic!("unexpected rejection in an honest lapping race: {other}"),
        }
    }
    eprintln!("lapping race: accepted {accepted}, torn reads {torn}, gaps {gaps}");
    assert!(accepted > 0);
    assert_eq!(
        last,
        Some(RACE_MESSAGES - 1),
        "the final message is delivered once the writer stops"
    );
}

// ---- libsodium interoperability ---------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The venv python with PyNaCl (libsodium bindings), or None (a failure
/// under CI=true).
fn sodium_python() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("WEAVE_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import nacl.bindings"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let msg = format!(
        "libsodium interop needs PyNaCl in {} (run scripts/deps.sh)",
        python.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

fn python(python: &std::path::Path, script: &str, args: &[String]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn libsodium_opens_what_we_seal_and_we_open_what_it_seals() {
    let Some(py) = sodium_python() else { return };
    let (mut w, mut r, key) = pair(RingGeometry::for_max_message(2, 4096).unwrap());
    let geometry = w.segment().geometry();

    // Ours -> libsodium: take the published slot out of shared memory.
    let plaintext = b"sealed by weave, opened by libsodium".repeat(7);
    let seq = w.try_send(11, &plaintext).unwrap();
    let raw = w.slot_bytes_for_test(0);
    let mut header_bytes = [0u8; SLOT_HEADER_LEN];
    header_bytes.copy_from_slice(&raw[..SLOT_HEADER_LEN]);
    let header = SlotHeader::decode(&header_bytes).unwrap();
    let aad = AadFields {
        segment: SegmentId(42),
        generation: 1,
        direction: Direction::WorkerToBroker,
        seq,
        kind: 11,
        len: header.len,
        slot_count: geometry.slot_count,
    }
    .encode();
    let combined = &raw[SLOT_HEADER_LEN..SLOT_HEADER_LEN + plaintext.len() + TAG_LEN];
    let opened = python(
        &py,
        "import sys\nfrom nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt as d\n\
         k,n,a,c=(bytes.fromhex(x) for x in sys.argv[1:5])\nprint(d(c,a,n,k).hex())",
        &[
            hex(key.expose_secret()),
            hex(&header.nonce),
            hex(&aad),
            hex(combined),
        ],
    );
    assert_eq!(unhex(&opened), plaintext);
    assert_eq!(r.try_recv().unwrap().unwrap().payload, &plaintext[..]);

    // libsodium -> ours: libsodium seals message 1 with its own random
    // nonce; we lay it into the slot and our reader must accept it.
    let plaintext = b"sealed by libsodium, opened by weave".repeat(5);
    let seq = 1;
    let aad = AadFields {
        segment: SegmentId(42),
        generation: 1,
        direction: Direction::WorkerToBroker,
        seq,
        kind: 12,
        len: plaintext.len() as u32,
        slot_count: geometry.slot_count,
    }
    .encode();
    let out = python(
        &py,
        "import sys, nacl.utils\nfrom nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt as e\n\
         k,a,m=(bytes.fromhex(x) for x in sys.argv[1:4])\nn=nacl.utils.random(24)\nprint(n.hex(), e(m,a,n,k).hex())",
        &[hex(key.expose_secret()), hex(&aad), hex(&plaintext)],
    );
    let (nonce_hex, combined_hex) = out.split_once(' ').unwrap();
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&unhex(nonce_hex));
    let header = SlotHeader {
        version: 2,
        seq,
        len: plaintext.len() as u32,
        kind: 12,
        nonce,
        generation: 1,
    };
    let mut slot_bytes = header.encode().to_vec();
    slot_bytes.extend_from_slice(&unhex(combined_hex));
    w.write_slot_bytes_for_test(1, &slot_bytes);
    w.set_head_for_test(2);
    let m = r.try_recv().unwrap().unwrap();
    assert_eq!((m.seq, m.kind, m.payload), (1, 12, &plaintext[..]));
}
