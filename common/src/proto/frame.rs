//! Framing: a `u32` little-endian body length, then the postcard body.
//!
//! Limits are checked from the length prefix before a byte of the body is
//! read or allocated. Decoding rejects unknown message types, trailing bytes
//! and (for requests, which come from untrusted callers) any encoding that is
//! not the canonical one, so that one message has exactly one byte form.
//! After any [`FrameError`] the stream position is unknown: close the
//! connection.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use super::{ErrorCode, Request, Response};

/// Bytes of the length prefix in front of every body.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Hard maximum body length of a request. The largest legitimate request (a
/// `Generate` with prompts at their configured maximum) is far smaller.
pub const MAX_REQUEST_FRAME: u32 = 64 * 1024;

/// Default maximum body length a client accepts for one response (one PNG
/// image per `Image` event).
pub const DEFAULT_MAX_RESPONSE_FRAME: u32 = 64 * 1024 * 1024;

/// Number of `Request` variants this version knows; index >= this is unknown.
const REQUEST_VARIANTS: u32 = 16;
/// Number of `Response` variants this version knows.
const RESPONSE_VARIANTS: u32 = 14;

/// First allocation for a body; the buffer grows only as bytes arrive, so a
/// peer cannot make us reserve a large limit by sending only a prefix.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Why a frame could not be read, decoded or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Clean end of stream at a frame boundary.
    #[error("the peer closed the connection")]
    Closed,
    /// End of stream inside a frame (prefix or body).
    #[error(
        "the connection ended inside a frame ({received} of {expected} bytes); \
         the peer stopped or the connection was cut, reconnect and retry"
    )]
    Truncated { expected: u64, received: u64 },
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes; send a smaller message")]
    TooLarge { len: u64, max: u64 },
    #[error(
        "unknown message type {index}; the peer speaks a newer protocol version, \
         upgrade this side"
    )]
    UnknownMessage { index: u32 },
    #[error("the message body is malformed ({0}); check the encoder against docs/PROTOCOL.md")]
    Malformed(postcard::Error),
    /// A field holds an enum index this version does not know (a
    /// `Generate` whose `scheduler` is past the last scheduler).
    #[error("unknown {field} index {index}; allowed: {allowed}")]
    UnknownVariant {
        field: &'static str,
        index: u32,
        allowed: &'static str,
    },
    #[error("{count} bytes follow the end of the message; send exactly one message per frame")]
    TrailingBytes { count: u64 },
    #[error("the message is not in canonical postcard encoding (e.g. an over-long varint)")]
    NonCanonical,
    #[error("cannot encode the message: {0}")]
    Encode(postcard::Error),
    #[error("I/O error on the connection: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// Whether a socket read or write timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`)
    /// caused this error. Partial frame data is lost either way.
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(error)
            if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// What the broker should send before closing the connection, if the
    /// peer can still be told anything. Reasons are fixed strings: they
    /// never echo the bytes received.
    pub fn to_error_code(&self) -> Option<ErrorCode> {
        let reason = match self {
            FrameError::Closed | FrameError::Truncated { .. } | FrameError::Io(_) => return None,
            FrameError::Encode(_) => return Some(ErrorCode::Internal),
            FrameError::TooLarge { max, .. } => format!("frame longer than {max} bytes"),
            FrameError::UnknownMessage { index } => format!("unknown message type {index}"),
            FrameError::Malformed(_) => "malformed message body".to_owned(),
            FrameError::UnknownVariant { field, allowed, .. } => {
                return Some(ErrorCode::InvalidParameter {
                    field: (*field).to_owned(),
                    allowed: (*allowed).to_owned(),
                })
            }
            FrameError::TrailingBytes { .. } => "bytes after the end of the message".to_owned(),
            FrameError::NonCanonical => "message not in canonical encoding".to_owned(),
        };
        Some(ErrorCode::ProtocolError { reason })
    }
}

/// Encodes a complete request frame (prefix and body).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, FrameError> {
    encode_frame(request, MAX_REQUEST_FRAME)
}

/// Encodes a complete response frame (prefix and body).
pub fn encode_response(response: &Response) -> Result<Vec<u8>, FrameError> {
    encode_frame(response, u32::MAX)
}

/// Decodes one complete request frame; `frame` must hold exactly one frame.
pub fn decode_request(frame: &[u8]) -> Result<Request, FrameError> {
    let body = split_frame(frame, MAX_REQUEST_FRAME)?;
    decode_request_body(body)
}

/// Decodes one complete response frame whose body is at most `max_body`.
pub fn decode_response(frame: &[u8], max_body: u32) -> Result<Response, FrameError> {
    let body = split_frame(frame, max_body)?;
    decode_response_body(body)
}

/// Writes one request frame with a single `write_all`, then flushes.
pub fn write_request<W: Write + ?Sized>(
    writer: &mut W,
    request: &Request,
) -> Result<(), FrameError> {
    write_all_and_flush(writer, &encode_request(request)?)
}

/// Writes one response frame with a single `write_all`, then flushes.
pub fn write_response<W: Write + ?Sized>(
    writer: &mut W,
    response: &Response,
) -> Result<(), FrameError> {
    write_all_and_flush(writer, &encode_response(response)?)
}

/// Reads one request frame (body at most [`MAX_REQUEST_FRAME`]).
pub fn read_request<R: Read + ?Sized>(reader: &mut R) -> Result<Request, FrameError> {
    let body = read_body(reader, MAX_REQUEST_FRAME)?;
    decode_request_body(&body)
}

/// Reads one response frame whose body is at most `max_body` bytes
/// (usually [`DEFAULT_MAX_RESPONSE_FRAME`]).
pub fn read_response<R: Read + ?Sized>(
    reader: &mut R,
    max_body: u32,
) -> Result<Response, FrameError> {
    let body = read_body(reader, max_body)?;
    decode_response_body(&body)
}

fn encode_frame<T: Serialize>(message: &T, max_body: u32) -> Result<Vec<u8>, FrameError> {
    let mut frame =
        postcard::to_extend(message, vec![0u8; FRAME_PREFIX_LEN]).map_err(FrameError::Encode)?;
    let body_len = frame.len() - FRAME_PREFIX_LEN;
    let too_large = || FrameError::TooLarge {
        len: body_len as u64,
        max: u64::from(max_body),
    };
    let body_len = u32::try_from(body_len).map_err(|_| too_large())?;
    if body_len > max_body {
        return Err(too_large());
    }
    frame[..FRAME_PREFIX_LEN].copy_from_slice(&body_len.to_le_bytes());
    Ok(frame)
}

fn write_all_and_flush<W: Write + ?Sized>(writer: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    writer.write_all(frame)?;
    writer.flush()?;
    Ok(())
}

/// Checks the prefix of an in-memory frame and returns its body.
fn split_frame(frame: &[u8], max_body: u32) -> Result<&[u8], FrameError> {
    let Some((prefix, body)) = frame.split_first_chunk::<FRAME_PREFIX_LEN>() else {
        return Err(if frame.is_empty() {
            FrameError::Closed
        } else {
            FrameError::Truncated {
                expected: FRAME_PREFIX_LEN as u64,
                received: frame.len() as u64,
            }
        });
    };
    let body_len = check_prefix(*prefix, max_body)?;
    let expected = FRAME_PREFIX_LEN as u64 + body_len;
    let received = frame.len() as u64;
    if received < expected {
        return Err(FrameError::Truncated { expected, received });
    }
    if received > expected {
        return Err(FrameError::TrailingBytes {
            count: received - expected,
        });
    }
    Ok(body)
}

/// Returns the announced body length, or `TooLarge` above `max_body`.
fn check_prefix(prefix: [u8; FRAME_PREFIX_LEN], max_body: u32) -> Result<u64, FrameError> {
    let body_len = u32::from_le_bytes(prefix);
    if body_len > max_body {
        return Err(FrameError::TooLarge {
            len: u64::from(body_len),
            max: u64::from(max_body),
        });
    }
    Ok(u64::from(body_len))
}

fn read_body<R: Read + ?Sized>(reader: &mut R, max_body: u32) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; FRAME_PREFIX_LEN];
    let mut filled = 0;
    while filled < FRAME_PREFIX_LEN {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    expected: FRAME_PREFIX_LEN as u64,
                    received: filled as u64,
                })
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(FrameError::Io(error)),
        }
    }
    let body_len = check_prefix(prefix, max_body)?;
    let capacity = usize::try_from(body_len)
        .unwrap_or(usize::MAX)
        .min(INITIAL_BODY_CAPACITY);
    let mut body = Vec::with_capacity(capacity);
    (&mut *reader).take(body_len).read_to_end(&mut body)?;
    let received = body.len() as u64;
    if received < body_len {
        return Err(FrameError::Truncated {
            expected: FRAME_PREFIX_LEN as u64 + body_len,
            received: FRAME_PREFIX_LEN as u64 + received,
        });
    }
    Ok(body)
}

fn decode_request_body(body: &[u8]) -> Result<Request, FrameError> {
    let request: Request = match decode_body(body, REQUEST_VARIANTS) {
        Err(FrameError::Malformed(error)) => {
            return Err(unknown_scheduler(body).unwrap_or(FrameError::Malformed(error)))
        }
        other => other?,
    };
    // Requests come from untrusted callers: accept only the canonical form,
    // so that one request has one byte representation (audit, dedup, fuzz).
    let canonical = postcard::to_stdvec(&request).map_err(FrameError::Encode)?;
    if canonical != body {
        return Err(FrameError::NonCanonical);
    }
    Ok(request)
}

/// The wire index of `Request::Generate`.
const GENERATE_INDEX: u32 = 3;
/// The scheduler indexes a `Generate` may carry, for the error message.
const SCHEDULER_INDEXES: &str =
    "0 ddim, 1 euler, 2 euler_a, 3 dpmpp_2m, 4 dpmpp_2m_karras, or none for the model's default";

/// `GenerateRequest` as it is on the wire with the scheduler as its raw
/// index: decoded only after the real decode failed, to name the field
/// when the failure is a scheduler index this version does not know.
/// (`generate_wire_mirrors_generate_request` keeps the two in step.)
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // only `scheduler` is read; the rest keeps the layout
struct GenerateWire {
    model_id: String,
    prompt: String,
    negative_prompt: String,
    width: Option<u32>,
    height: Option<u32>,
    steps: Option<u32>,
    guidance: Option<f32>,
    seed: Option<u64>,
    scheduler: Option<u32>,
    batch: u32,
    tag: Option<String>,
    use_model_negative: bool,
    init_image: Option<Vec<u8>>,
    mask: Option<Vec<u8>>,
    strength: Option<f32>,
    loras: Vec<super::LoraChoice>,
    preview_every: u32,
}

/// `UnknownVariant` for a `Generate` body whose only fault is its
/// scheduler index.
fn unknown_scheduler(body: &[u8]) -> Option<FrameError> {
    let (index, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
    if index != GENERATE_INDEX {
        return None;
    }
    let (wire, _) = postcard::take_from_bytes::<GenerateWire>(rest).ok()?;
    let scheduler = wire.scheduler?;
    (usize::try_from(scheduler).map_or(true, |i| i >= super::Scheduler::ALL.len())).then_some(
        FrameError::UnknownVariant {
            field: "scheduler",
            index: scheduler,
            allowed: SCHEDULER_INDEXES,
        },
    )
}

fn decode_response_body(body: &[u8]) -> Result<Response, FrameError> {
    decode_body(body, RESPONSE_VARIANTS)
}

fn decode_body<T: DeserializeOwned>(body: &[u8], known_variants: u32) -> Result<T, FrameError> {
    // The top-level message type is the leading varint; name an unknown one
    // precisely instead of as a generic decode failure.
    let (index, _) = postcard::take_from_bytes::<u32>(body).map_err(FrameError::Malformed)?;
    if index >= known_variants {
        return Err(FrameError::UnknownMessage { index });
    }
    let (message, rest) = postcard::take_from_bytes::<T>(body).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes {
            count: rest.len() as u64,
        });
    }
    Ok(message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        assert_eq!(reader.consumed, FRAME_PREFIX_LEN, "body must not be read");
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
}
