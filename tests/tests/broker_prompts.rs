//! A1111 prompt syntax and long prompts through a real broker and its
//! sandboxed worker on the demo model: weights reach the image, a weight of
//! 1 changes nothing, prompts past 75 tokens run, and the chunk limit is a
//! typed error naming the field.
#![allow(clippy::unwrap_used)]

use weave_common::proto::{ErrorCode, GenerateRequest, Response};
use weave_tests::{
    digits_request, require_digits, require_root, stream_error, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

/// The pixels of the one image of a finished job (the PNG's text chunk
/// holds the prompt, so PNG bytes differ even where pixels do not).
fn pixels(events: &[Response]) -> Vec<u8> {
    let png = events
        .iter()
        .find_map(|e| match e {
            Response::Image { png, .. } => Some(png.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no image: {events:?}"));
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn a1111_syntax_and_long_prompts_reach_the_image() {
    if !require_root("broker-prompts") || !require_digits("broker-prompts") {
        return;
    }
    let scratch = Scratch::new("broker-prompts");
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.limits = "max_prompt_chunks = 2\n".to_owned();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    let run = |client: &mut Client, prompt: &str| {
        client.generate(GenerateRequest {
            steps: Some(8),
            ..digits_request(prompt)
        })
    };

    let first = run(&mut client, "a handwritten digit seven");
    assert!(
        stream_error(&first).is_none(),
        "{first:?}\n{}",
        broker.log_text()
    );
    let plain = pixels(&first);
    let weight_one = pixels(&run(&mut client, "(a handwritten digit seven:1)"));
    assert_eq!(plain, weight_one, "a weight of 1 is the plain prompt");
    let weighted = pixels(&run(&mut client, "a handwritten digit (seven:1.6)"));
    assert_ne!(plain, weighted, "the weight reached the image");

    // 100 words: two chunks, accepted under max_prompt_chunks = 2.
    let long = ["a handwritten digit seven"; 25].join(" ");
    pixels(&run(&mut client, &long));

    // Three chunks: queued (only the worker's tokenizer can count), then
    // refused with the field named; the worker keeps serving.
    let events = run(&mut client, "seven BREAK seven BREAK seven");
    assert!(
        events.iter().any(|e| matches!(e, Response::Queued { .. })),
        "{events:?}"
    );
    match stream_error(&events) {
        Some(ErrorCode::InvalidParameter { field, allowed }) => {
            assert_eq!(field, "prompt");
            assert!(allowed.contains("at most 2 chunks"), "{allowed}");
        }
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
    let events = client.generate(GenerateRequest {
        negative_prompt: "x BREAK y BREAK z".into(),
        steps: Some(8),
        ..digits_request("seven")
    });
    assert!(
        matches!(stream_error(&events), Some(ErrorCode::InvalidParameter { field, .. }) if field == "negative_prompt"),
        "{events:?}"
    );
    assert_eq!(
        plain,
        pixels(&run(&mut client, "a handwritten digit seven"))
    );
}
