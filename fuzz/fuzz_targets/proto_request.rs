//! Client → broker: any bytes a caller can send as one request frame.
//!
//! Never panics; the streaming reader agrees with the in-memory decoder; an
//! accepted frame re-encodes to exactly the bytes received (one request, one
//! byte form); the request validators accept or refuse without panicking.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use weave_common::proto::{decode_request, encode_request, read_request, Request};
use weave_common::validate::{
    validate_client_name, validate_generate, validate_model_id, ParamBounds,
};

fuzz_target!(|frame: &[u8]| {
    let decoded = decode_request(frame);
    let mut stream = Cursor::new(frame);
    let streamed = read_request(&mut stream);
    let consumed_everything = stream.position() == frame.len() as u64;
    match (&decoded, &streamed) {
        (Ok(from_memory), Ok(from_stream)) => {
            // Compared as bytes: a NaN guidance is not equal to itself.
            assert_eq!(
                encode_request(from_memory).ok(),
                encode_request(from_stream).ok()
            );
            assert!(consumed_everything);
        }
        (Ok(request), Err(error)) => {
            panic!("decode_request accepted {request:?}, read_request refused: {error}")
        }
        // The stream reader stops at the end of the first frame; the
        // in-memory decoder refuses what follows it.
        (Err(_), Ok(_)) => assert!(!consumed_everything, "{decoded:?}"),
        (Err(_), Err(_)) => {}
    }

    match decoded {
        Ok(request) => {
            let again = encode_request(&request).expect("a decoded request re-encodes");
            assert_eq!(again, frame, "re-encoding {request:?} changed its bytes");
            let _ = (request.verb(), request.requires_admin());
            let _ = match &request {
                Request::Generate(generate) => validate_generate(generate, &ParamBounds::default()),
                Request::Hello { client_name, .. } => validate_client_name(client_name),
                Request::Load { model_id }
                | Request::Pin { model_id }
                | Request::Unpin { model_id }
                | Request::QuarantineClear { model_id } => validate_model_id(model_id),
                _ => Ok(()),
            }
            .map_err(|error| error.to_string());
        }
        Err(error) => {
            let _ = error.to_string();
            let _ = error.to_error_code();
        }
    }
});
