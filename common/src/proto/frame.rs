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

/// Default of `limits.max_image_request_bytes`: the largest body of a
/// `Generate` that carries `init_image` (docs/PROTOCOL.md, "Frame limits").
pub const DEFAULT_MAX_IMAGE_REQUEST_FRAME: u32 = 8 << 20;

/// Largest `limits.max_image_request_bytes` a config may set; one
/// broker → worker shared-memory slot must hold the request.
pub const MAX_IMAGE_REQUEST_FRAME: u32 = 24 << 20;

/// The first body byte of a `Generate` (its variant index as a one-byte
/// varint): the only request allowed past [`MAX_REQUEST_FRAME`].
const GENERATE_FIRST_BYTE: u8 = 3;

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

/// Encodes a complete request frame (prefix and body). A `Generate` with
/// `init_image` may be up to [`MAX_IMAGE_REQUEST_FRAME`]; the broker holds
/// it to its configured `limits.max_image_request_bytes`.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, FrameError> {
    encode_frame(request, request_limit(request, MAX_IMAGE_REQUEST_FRAME))
}

/// The body limit that applies to `request` once decoded.
fn request_limit(request: &Request, max_image_request: u32) -> u32 {
    match request {
        Request::Generate(g) if g.init_image.is_some() => max_image_request.max(MAX_REQUEST_FRAME),
        _ => MAX_REQUEST_FRAME,
    }
}

/// Encodes a complete response frame (prefix and body).
pub fn encode_response(response: &Response) -> Result<Vec<u8>, FrameError> {
    encode_frame(response, u32::MAX)
}

/// Decodes one complete request frame; `frame` must hold exactly one frame.
/// Image requests are bounded by [`DEFAULT_MAX_IMAGE_REQUEST_FRAME`].
pub fn decode_request(frame: &[u8]) -> Result<Request, FrameError> {
    decode_request_bounded(frame, DEFAULT_MAX_IMAGE_REQUEST_FRAME)
}

/// [`decode_request`] with `max_image_request` as the bound of a
/// `Generate` that carries `init_image`.
pub fn decode_request_bounded(frame: &[u8], max_image_request: u32) -> Result<Request, FrameError> {
    let max_image_request = max_image_request.max(MAX_REQUEST_FRAME);
    let body = split_frame(frame, max_image_request)?;
    check_first_byte(body.len() as u64, body.first().copied())?;
    let request = decode_request_body(body)?;
    check_decoded_limit(&request, body.len() as u64, max_image_request)?;
    Ok(request)
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

/// Reads one request frame: body at most [`MAX_REQUEST_FRAME`], or
/// [`DEFAULT_MAX_IMAGE_REQUEST_FRAME`] for a `Generate` with `init_image`.
pub fn read_request<R: Read + ?Sized>(reader: &mut R) -> Result<Request, FrameError> {
    read_request_bounded(reader, DEFAULT_MAX_IMAGE_REQUEST_FRAME)
}

/// Reads one request frame; a `Generate` with `init_image` may be up to
/// `max_image_request` bytes (`limits.max_image_request_bytes`), every
/// other request up to [`MAX_REQUEST_FRAME`].
///
/// The decision needs no more than the first body byte: a length above
/// `max_image_request` is refused from the prefix alone; a length above
/// [`MAX_REQUEST_FRAME`] reads one byte, and anything but a `Generate`
/// there is refused before the rest is read. A `Generate` read that way
/// must then carry `init_image`.
pub fn read_request_bounded<R: Read + ?Sized>(
    reader: &mut R,
    max_image_request: u32,
) -> Result<Request, FrameError> {
    let max_image_request = max_image_request.max(MAX_REQUEST_FRAME);
    let body_len = read_prefix(reader, max_image_request)?;
    let mut body = Vec::with_capacity(body_capacity(body_len));
    if body_len > u64::from(MAX_REQUEST_FRAME) {
        read_exactly(reader, 1, body_len, &mut body)?;
        check_first_byte(body_len, body.first().copied())?;
    }
    read_exactly(reader, body_len, body_len, &mut body)?;
    let request = decode_request_body(&body)?;
    check_decoded_limit(&request, body_len, max_image_request)?;
    Ok(request)
}

/// A body over [`MAX_REQUEST_FRAME`] must start as a `Generate`.
fn check_first_byte(body_len: u64, first: Option<u8>) -> Result<(), FrameError> {
    if body_len > u64::from(MAX_REQUEST_FRAME) && first != Some(GENERATE_FIRST_BYTE) {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: u64::from(MAX_REQUEST_FRAME),
        });
    }
    Ok(())
}

/// A decoded request must fit the limit of its kind.
fn check_decoded_limit(
    request: &Request,
    body_len: u64,
    max_image_request: u32,
) -> Result<(), FrameError> {
    let max = request_limit(request, max_image_request);
    if body_len > u64::from(max) {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: u64::from(max),
        });
    }
    Ok(())
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
    let body_len = read_prefix(reader, max_body)?;
    let mut body = Vec::with_capacity(body_capacity(body_len));
    read_exactly(reader, body_len, body_len, &mut body)?;
    Ok(body)
}

/// First allocation for a body of `body_len` bytes.
fn body_capacity(body_len: u64) -> usize {
    usize::try_from(body_len)
        .unwrap_or(usize::MAX)
        .min(INITIAL_BODY_CAPACITY)
}

/// Reads the length prefix and checks it against `max_body`.
fn read_prefix<R: Read + ?Sized>(reader: &mut R, max_body: u32) -> Result<u64, FrameError> {
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
    check_prefix(prefix, max_body)
}

/// Reads body bytes until `body` holds `until` of the `body_len` bytes.
fn read_exactly<R: Read + ?Sized>(
    reader: &mut R,
    until: u64,
    body_len: u64,
    body: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let want = until.saturating_sub(body.len() as u64);
    (&mut *reader).take(want).read_to_end(body)?;
    let received = body.len() as u64;
    if received < until {
        return Err(FrameError::Truncated {
            expected: FRAME_PREFIX_LEN as u64 + body_len,
            received: FRAME_PREFIX_LEN as u64 + received,
        });
    }
    Ok(())
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
#[path = "frame_tests.rs"]
mod tests;
