//! The per-verb request limit (docs/PROTOCOL.md, "Frame limits"): only a
//! `Generate` carrying `init_image` may exceed `MAX_REQUEST_FRAME`, up to
//! the configured bound; everything else is refused from its first bytes.
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Read};

use weave_common::proto::{
    decode_request_bounded, encode_request, read_request_bounded, FrameError, GenerateRequest,
    Request, FRAME_PREFIX_LEN, MAX_IMAGE_REQUEST_FRAME, MAX_REQUEST_FRAME,
};

fn generate(init_image: Option<Vec<u8>>, prompt: String) -> Request {
    Request::Generate(GenerateRequest {
        model_id: "digits".into(),
        prompt,
        negative_prompt: String::new(),
        width: Some(32),
        height: Some(32),
        steps: Some(4),
        guidance: None,
        seed: Some(1),
        scheduler: None,
        batch: 1,
        tag: None,
        use_model_negative: false,
        init_image,
        mask: None,
        strength: Some(0.5),
        loras: Vec::new(),
        preview_every: 0,
    })
}

/// Counts what the reader consumed.
struct Counting<R> {
    inner: R,
    consumed: usize,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n;
        Ok(n)
    }
}

fn read(frame: Vec<u8>, max: u32) -> (Result<Request, FrameError>, usize) {
    let mut reader = Counting {
        inner: Cursor::new(frame),
        consumed: 0,
    };
    let result = read_request_bounded(&mut reader, max);
    (result, reader.consumed)
}

#[test]
fn an_image_request_up_to_the_bound_is_read_and_decoded() {
    let request = generate(Some(vec![7u8; 1 << 20]), "a 7".into());
    let frame = encode_request(&request).unwrap();
    assert!(frame.len() > MAX_REQUEST_FRAME as usize);
    let (result, _) = read(frame.clone(), 2 << 20);
    assert_eq!(result.unwrap(), request);
    assert_eq!(decode_request_bounded(&frame, 2 << 20).unwrap(), request);
    // Over the configured bound: refused from the prefix alone.
    let (result, consumed) = read(frame.clone(), 512 << 10);
    match result {
        Err(FrameError::TooLarge { max, .. }) => assert_eq!(max, 512 << 10),
        other => panic!("{other:?}"),
    }
    assert_eq!(consumed, FRAME_PREFIX_LEN);
    assert!(matches!(
        decode_request_bounded(&frame, 512 << 10),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn a_large_non_generate_frame_is_refused_after_its_first_byte() {
    // 70 KiB announced for a `Status` (index 2): only the prefix and the
    // message type are read.
    let mut frame = (70u32 << 10).to_le_bytes().to_vec();
    frame.push(2);
    frame.extend(std::iter::repeat_n(0u8, 70 << 10));
    let (result, consumed) = read(frame, 8 << 20);
    match result {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!((len, max), (70 << 10, u64::from(MAX_REQUEST_FRAME)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(consumed, FRAME_PREFIX_LEN + 1);
}

#[test]
fn a_large_generate_without_an_image_is_refused() {
    // A prompt that makes the body exceed 64 KiB: decodes, but only image
    // requests may be that large.
    let request = generate(None, "x".repeat(MAX_REQUEST_FRAME as usize));
    let body = postcard::to_stdvec(&request).unwrap();
    let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    match read(frame, 8 << 20).0 {
        Err(FrameError::TooLarge { max, .. }) => assert_eq!(max, u64::from(MAX_REQUEST_FRAME)),
        other => panic!("{other:?}"),
    }
    assert!(encode_request(&request).is_err());
}

#[test]
fn the_encoder_caps_image_requests_at_the_ceiling() {
    let request = generate(
        Some(vec![0u8; MAX_IMAGE_REQUEST_FRAME as usize]),
        String::new(),
    );
    assert!(matches!(
        encode_request(&request),
        Err(FrameError::TooLarge { .. })
    ));
}
