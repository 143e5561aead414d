//! Structured round trip of every message type: the input is a message
//! *body*; the target adds the length prefix itself, so every input reaches
//! the postcard decoder of both directions (no effort spent on the prefix).
//!
//! Requests: decode → encode is byte-identical (the decoder accepts only the
//! canonical form). Responses: the decoder tolerates non-canonical varints,
//! so decode → encode gives the canonical form, which must be byte-identical
//! to the input whenever the input was canonical, and a fixed point of
//! decode → encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_common::proto::{
    decode_request, decode_response, encode_request, encode_response, MAX_REQUEST_FRAME,
};

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

fuzz_target!(|body: &[u8]| {
    if body.len() > MAX_REQUEST_FRAME as usize {
        return;
    }
    let frame = framed(body);

    if let Ok(request) = decode_request(&frame) {
        let encoded = encode_request(&request).expect("a decoded request re-encodes");
        assert_eq!(encoded, frame, "request {request:?} is not byte-identical");
        let again = decode_request(&encoded).expect("a re-encoded request decodes");
        assert_eq!(encode_request(&again).ok(), Some(encoded));
    }

    if let Ok(response) = decode_response(&frame, u32::MAX) {
        let encoded = encode_response(&response).expect("a decoded response re-encodes");
        let canonical = postcard::to_stdvec(&response).expect("a decoded response serializes");
        if canonical == body {
            assert_eq!(
                encoded, frame,
                "response {response:?} is not byte-identical"
            );
        }
        let again = decode_response(&encoded, u32::MAX).expect("a re-encoded response decodes");
        assert_eq!(
            encode_response(&again).ok(),
            Some(encoded),
            "decode → encode of {response:?} is not a fixed point"
        );
    }
});
