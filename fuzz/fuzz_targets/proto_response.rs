//! Broker → client: any bytes a client library can receive as one response
//! frame, under a body limit the input picks.
//!
//! Never panics or allocates past the limit; the streaming reader agrees with
//! the in-memory decoder; an accepted response re-encodes to a frame that
//! decodes to the same response.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use weave_common::proto::{
    decode_response, encode_response, read_response, DEFAULT_MAX_RESPONSE_FRAME, FRAME_PREFIX_LEN,
};

/// Body limits a client may use: none allowed, tiny, typical, the default.
const LIMITS: [u32; 4] = [0, 16, 4096, DEFAULT_MAX_RESPONSE_FRAME];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, frame)) = input.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(selector % 4)];
    let decoded = decode_response(frame, limit);
    let mut stream = Cursor::new(frame);
    let streamed = read_response(&mut stream, limit);
    let consumed_everything = stream.position() == frame.len() as u64;
    match (&decoded, &streamed) {
        (Ok(from_memory), Ok(from_stream)) => {
            assert_eq!(
                encode_response(from_memory).ok(),
                encode_response(from_stream).ok()
            );
            assert!(consumed_everything);
        }
        (Ok(response), Err(error)) => {
            panic!("decode_response accepted {response:?}, read_response refused: {error}")
        }
        (Err(_), Ok(_)) => assert!(!consumed_everything, "{decoded:?}"),
        (Err(_), Err(_)) => {}
    }

    match decoded {
        Ok(response) => {
            assert!(frame.len() - FRAME_PREFIX_LEN <= limit as usize);
            let _ = response.ends_generate_stream();
            let encoded = encode_response(&response).expect("a decoded response re-encodes");
            let again = decode_response(&encoded, u32::MAX).expect("a re-encoded response decodes");
            assert_eq!(encode_response(&again).ok(), Some(encoded));
        }
        Err(error) => {
            let _ = error.to_string();
            let _ = error.to_error_code();
        }
    }
});
