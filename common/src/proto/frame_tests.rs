//! Tests of [`super`] (frame.rs): limits, truncation, canonical form.
#![allow(clippy::unwrap_used)]
use std::io::Cursor;

#[test]
fn an_unknown_scheduler_index_names_the_field() {
    let mut request = GenerateRequest {
        model_id: "digits".into(),
        prompt: "a 7".into(),
        negative_prompt: String::new(),
        width: Some(32),
        height: None,
        steps: Some(4),
        guidance: Some(5.0),
        seed: Some(1),
        scheduler: Some(Scheduler::DpmPp2mKarras),
        batch: 1,
        tag: Some("t".into()),
        use_model_negative: true,
        init_image: None,
        mask: None,
        strength: None,
        loras: Vec::new(),
        preview_every: 0,
    };
    let body = postcard::to_stdvec(&Request::Generate(request.clone())).unwrap();
    // The scheduler's index is the only byte 4 in this body past the
    // strings; find it by re-encoding with another scheduler.
    request.scheduler = Some(Scheduler::Ddim);
    let other = postcard::to_stdvec(&Request::Generate(request)).unwrap();
    let at = body.iter().zip(&other).position(|(a, b)| a != b).unwrap();
    assert_eq!(body[at], 4);
    for bad in [5u8, 9, 0x7f] {
        let mut forged = body.clone();
        forged[at] = bad;
        match decode_request_body(&forged) {
            Err(FrameError::UnknownVariant { field, index, .. }) => {
                assert_eq!((field, index), ("scheduler", u32::from(bad)));
            }
            other => panic!("index {bad}: {other:?}"),
        }
        let error = decode_request_body(&forged).unwrap_err();
        assert!(
            error.to_string().contains("unknown scheduler index"),
            "{error}"
        );
        match error.to_error_code() {
            Some(ErrorCode::InvalidParameter { field, allowed }) => {
                assert_eq!(field, "scheduler");
                assert!(allowed.contains("4 dpmpp_2m_karras"), "{allowed}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Another fault in a Generate stays a malformed body.
    let mut broken = body.clone();
    // use_model_negative, before the five one-byte empty fields after it
    // (init_image, mask, strength, loras, preview_every): not a bool.
    let at = broken.len() - 6;
    broken[at] = 9;
    assert!(matches!(
        decode_request_body(&broken),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn generate_wire_mirrors_generate_request() {
    let request = GenerateRequest {
        model_id: "m".into(),
        prompt: "p".into(),
        negative_prompt: "n".into(),
        width: Some(1),
        height: Some(2),
        steps: Some(3),
        guidance: Some(4.5),
        seed: Some(u64::MAX),
        scheduler: Some(Scheduler::EulerAncestral),
        batch: 6,
        tag: Some("tag".into()),
        use_model_negative: false,
        init_image: None,
        mask: None,
        strength: None,
        loras: Vec::new(),
        preview_every: 0,
    };
    let body = postcard::to_stdvec(&request).unwrap();
    let (wire, rest) = postcard::take_from_bytes::<GenerateWire>(&body).unwrap();
    assert!(rest.is_empty(), "the mirror must use every byte");
    assert_eq!(wire.scheduler, Some(2));
    assert_eq!((wire.batch, wire.use_model_negative), (6, false));
    assert_eq!(wire.tag.as_deref(), Some("tag"));
}

use super::*;
use crate::proto::{GenerateRequest, Scheduler};

fn generate() -> Request {
    Request::Generate(GenerateRequest {
        model_id: "sd15".into(),
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: String::new(),
        width: Some(512),
        height: None,
        steps: Some(20),
        guidance: Some(7.5),
        seed: Some(42),
        scheduler: Some(Scheduler::DpmPp2mKarras),
        batch: 1,
        tag: Some("u-17".into()),
        use_model_negative: true,
        init_image: None,
        mask: None,
        strength: None,
        loras: Vec::new(),
        preview_every: 0,
    })
}

fn frame_with_body(body: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// A reader that returns an error kind once before each chunk.
struct Interrupting<'a> {
    data: &'a [u8],
    interrupt_next: bool,
}

impl Read for Interrupting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupt_next {
            self.interrupt_next = false;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupt_next = true;
        let n = buf.len().min(self.data.len()).min(1);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A reader that fails the test if more than `allowed` bytes are read.
struct CountingReader<R> {
    inner: R,
    consumed: usize,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n;
        Ok(n)
    }
}

#[test]
fn stream_round_trip_of_several_frames() {
    let mut wire = Vec::new();
    write_request(&mut wire, &Request::Status).unwrap();
    write_request(&mut wire, &generate()).unwrap();
    let mut reader = Cursor::new(wire);
    assert_eq!(read_request(&mut reader).unwrap(), Request::Status);
    assert_eq!(read_request(&mut reader).unwrap(), generate());
    assert!(matches!(read_request(&mut reader), Err(FrameError::Closed)));
}

#[test]
fn reads_across_short_reads_and_interrupts() {
    let frame = encode_request(&generate()).unwrap();
    let mut reader = Interrupting {
        data: &frame,
        interrupt_next: true,
    };
    assert_eq!(read_request(&mut reader).unwrap(), generate());
}

#[test]
fn prefix_is_little_endian_body_length() {
    let frame = encode_request(&Request::Cancel { job_id: 300 }).unwrap();
    // Cancel = variant 4, 300 = varint ac 02.
    assert_eq!(frame, [3, 0, 0, 0, 4, 0xac, 0x02]);
}

#[test]
fn oversized_request_rejected_before_reading_body() {
    let mut wire = (MAX_REQUEST_FRAME + 1).to_le_bytes().to_vec();
    wire.extend(std::iter::repeat_n(0u8, 1024));
    let mut reader = CountingReader {
        inner: Cursor::new(wire),
        consumed: 0,
    };
    match read_request(&mut reader) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, u64::from(MAX_REQUEST_FRAME) + 1);
            assert_eq!(max, u64::from(MAX_REQUEST_FRAME));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The first body byte (the message type, here not `Generate`) is
    // the only one read: it decides the limit.
    assert_eq!(
        reader.consumed,
        FRAME_PREFIX_LEN + 1,
        "body must not be read"
    );
}

#[test]
fn huge_prefix_does_not_allocate_the_limit() {
    // u32::MAX announced with a permissive limit, but only 10 bytes sent:
    // must end as Truncated without trying to reserve 4 GiB.
    let mut wire = u32::MAX.to_le_bytes().to_vec();
    wire.extend_from_slice(&[0; 10]);
    match read_response(&mut Cursor::new(wire), u32::MAX) {
        Err(FrameError::Truncated { expected, received }) => {
            assert_eq!(expected, u64::from(u32::MAX) + 4);
            assert_eq!(received, 14);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn oversized_response_uses_the_callers_limit() {
    let image = Response::Image {
        job_id: 1,
        index: 0,
        seed: 1,
        width: 8,
        height: 8,
        png: vec![0x89; 2000],
    };
    let frame = encode_response(&image).unwrap();
    assert!(matches!(
        read_response(&mut Cursor::new(&frame), 1000),
        Err(FrameError::TooLarge { max: 1000, .. })
    ));
    assert_eq!(
        read_response(&mut Cursor::new(&frame), DEFAULT_MAX_RESPONSE_FRAME).unwrap(),
        image
    );
    assert!(matches!(
        decode_response(&frame, 1000),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn encoding_an_oversized_request_fails() {
    let mut request = generate();
    if let Request::Generate(params) = &mut request {
        params.prompt = "x".repeat(MAX_REQUEST_FRAME as usize);
    }
    assert!(matches!(
        encode_request(&request),
        Err(FrameError::TooLarge { .. })
    ));
    let mut sink = Vec::new();
    assert!(write_request(&mut sink, &request).is_err());
    assert!(sink.is_empty(), "nothing is written on failure");
}

#[test]
fn clean_eof_and_truncation_are_distinct() {
    assert!(matches!(
        read_request(&mut Cursor::new(Vec::<u8>::new())),
        Err(FrameError::Closed)
    ));
    let frame = encode_request(&generate()).unwrap();
    for cut in 1..frame.len() {
        match read_request(&mut Cursor::new(&frame[..cut])) {
            Err(FrameError::Truncated { expected, received }) => {
                assert_eq!(received, cut as u64, "cut at {cut}");
                let want = if cut < FRAME_PREFIX_LEN {
                    FRAME_PREFIX_LEN
                } else {
                    frame.len()
                };
                assert_eq!(expected, want as u64, "cut at {cut}");
            }
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
        match decode_request(&frame[..cut]) {
            Err(FrameError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_in_body_rejected() {
    let mut body = postcard::to_stdvec(&Request::Status).unwrap();
    body.push(0);
    let frame = frame_with_body(&body);
    assert!(matches!(
        read_request(&mut Cursor::new(&frame)),
        Err(FrameError::TrailingBytes { count: 1 })
    ));
    let mut body = postcard::to_stdvec(&Response::Ok).unwrap();
    body.extend_from_slice(&[1, 2]);
    assert!(matches!(
        decode_response(&frame_with_body(&body), 100),
        Err(FrameError::TrailingBytes { count: 2 })
    ));
}

#[test]
fn bytes_after_an_in_memory_frame_rejected() {
    let mut frame = encode_request(&Request::Jobs).unwrap();
    frame.push(0);
    assert!(matches!(
        decode_request(&frame),
        Err(FrameError::TrailingBytes { count: 1 })
    ));
}

#[test]
fn unknown_top_level_variant_rejected() {
    assert!(matches!(
        decode_request(&frame_with_body(&[REQUEST_VARIANTS as u8])),
        Err(FrameError::UnknownMessage { index: 16 })
    ));
    // A large index in a multi-byte varint.
    assert!(matches!(
        decode_request(&frame_with_body(&[0xff, 0xff, 0x03])),
        Err(FrameError::UnknownMessage { index: 0xffff })
    ));
    assert!(matches!(
        decode_response(&frame_with_body(&[RESPONSE_VARIANTS as u8]), 100),
        Err(FrameError::UnknownMessage { index: 14 })
    ));
}

#[test]
fn variant_counts_match_the_enums() {
    // The last known variant decodes; one past it does not (above).
    assert_eq!(
        decode_request(&frame_with_body(&[REQUEST_VARIANTS as u8 - 1, 1, b'm'])).unwrap(),
        Request::QuarantineClear {
            model_id: "m".into()
        }
    );
    let preview = Response::Preview {
        job_id: 1,
        index: 0,
        step: 1,
        total: 1,
        width: 1,
        height: 1,
        png: Vec::new(),
    };
    let body = postcard::to_stdvec(&preview).unwrap();
    assert_eq!(u32::from(body[0]), RESPONSE_VARIANTS - 1);
}

#[test]
fn unknown_nested_variant_names_its_field_and_bad_values_are_malformed() {
    let mut body = postcard::to_stdvec(&generate()).unwrap();
    // The scheduler is Some(DpmPp2mKarras = 4): ... 01 04 01 01 ...
    let scheduler_at = body
        .windows(3)
        .position(|w| w == [0x01, 0x04, 0x01])
        .unwrap();
    body[scheduler_at + 1] = 9;
    assert!(matches!(
        decode_request(&frame_with_body(&body)),
        Err(FrameError::UnknownVariant {
            field: "scheduler",
            index: 9,
            ..
        })
    ));

    let bad_option = [3u8, 1, b'm', 0, 0, 2];
    assert!(matches!(
        decode_request(&frame_with_body(&bad_option)),
        Err(FrameError::Malformed(postcard::Error::DeserializeBadOption))
    ));
    let bad_utf8 = [6u8, 2, 0xc3, 0x28];
    assert!(matches!(
        decode_request(&frame_with_body(&bad_utf8)),
        Err(FrameError::Malformed(postcard::Error::DeserializeBadUtf8))
    ));
    // Models([ModelInfo { id: "a", kind: "k", loaded: 2 ...
    let bad_bool = [1u8, 1, 1, b'a', 1, b'k', 2];
    assert!(matches!(
        decode_response(&frame_with_body(&bad_bool), 100),
        Err(FrameError::Malformed(postcard::Error::DeserializeBadBool))
    ));
    assert!(matches!(
        decode_request(&frame_with_body(&[])),
        Err(FrameError::Malformed(
            postcard::Error::DeserializeUnexpectedEnd
        ))
    ));
}

#[test]
fn non_canonical_request_rejected() {
    // Cancel { job_id: 1 } with job_id as the over-long varint 81 00.
    let frame = frame_with_body(&[4, 0x81, 0x00]);
    assert!(matches!(
        decode_request(&frame),
        Err(FrameError::NonCanonical)
    ));
    // Over-long variant index 84 00 for Cancel.
    let frame = frame_with_body(&[0x84, 0x00, 0x01]);
    assert!(matches!(
        decode_request(&frame),
        Err(FrameError::NonCanonical)
    ));
    assert_eq!(
        decode_request(&frame_with_body(&[4, 0x01])).unwrap(),
        Request::Cancel { job_id: 1 }
    );
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_and_random_frames_never_panic_and_accepted_ones_are_canonical() {
    let seeds = [
        encode_request(&generate()).unwrap(),
        encode_request(&Request::Hello {
            version: 1,
            client_name: "web".into(),
        })
        .unwrap(),
        encode_request(&Request::Cancel { job_id: u64::MAX }).unwrap(),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut accepted = 0;
    for round in 0..20_000 {
        let mut frame = if round % 10 == 0 {
            let len = 1 + rng.below(40);
            let mut body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            body[0] %= 20;
            frame_with_body(&body)
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(3) {
            let at = FRAME_PREFIX_LEN + rng.below(frame.len() - FRAME_PREFIX_LEN);
            match rng.below(3) {
                0 => frame[at] = rng.next() as u8,
                1 => frame[at] ^= 1 << rng.below(8),
                _ => frame[at] = frame[at].wrapping_add(1),
            }
        }
        if let Ok(request) = read_request(&mut Cursor::new(&frame)) {
            accepted += 1;
            assert_eq!(encode_request(&request).unwrap(), frame);
        }
        let _ = read_response(&mut Cursor::new(&frame), DEFAULT_MAX_RESPONSE_FRAME);
    }
    // The mutations must sometimes produce valid requests, or the
    // re-encoding check above never ran.
    assert!(accepted > 100, "only {accepted} mutated frames decoded");
}

#[test]
fn error_codes_for_frame_errors_never_echo_input() {
    let errors = [
        FrameError::TooLarge { len: 99, max: 10 },
        FrameError::UnknownMessage { index: 77 },
        FrameError::Malformed(postcard::Error::DeserializeBadUtf8),
        FrameError::TrailingBytes { count: 3 },
        FrameError::NonCanonical,
    ];
    for error in errors {
        match error.to_error_code() {
            Some(ErrorCode::ProtocolError { reason }) => assert!(!reason.contains("99")),
            other => panic!("{error:?} -> {other:?}"),
        }
    }
    assert_eq!(FrameError::Closed.to_error_code(), None);
    assert!(FrameError::Io(io::ErrorKind::WouldBlock.into()).is_timeout());
    assert!(!FrameError::Closed.is_timeout());
    assert_eq!(
        FrameError::Truncated {
            expected: 9,
            received: 2
        }
        .to_error_code(),
        None
    );
}
