//! Live previews through a real broker and its sandboxed worker on the
//! demo model (issue 16, item 5): previews come every `preview_every`
//! steps of each image, before its `Image`, as valid PNGs within
//! `limits.preview_max_size`; the final image is the same as without
//! them; `preview_every` out of bounds is refused by name; and a caller
//! that reads slowly still gets its image, every preview either delivered
//! or counted as dropped in the audit.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weave_common::proto::{ErrorCode, GenerateRequest, Request, Response};
use weave_tests::{
    digits_request, require_digits, require_root, stream_error, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

/// Width, height and RGB pixels of a PNG (which must decode).
fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png.to_vec()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn images(events: &[Response]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Response::Image { png, .. } => Some(decode(png).2),
            _ => None,
        })
        .collect()
}

/// A number field of an audit record (`name=N`).
fn audit_number(record: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    let start = record
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {record}"))
        + key.len();
    record[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn start(name: &str, limits: &str) -> (Scratch, AuditSink, BrokerProcess) {
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.limits = limits.to_owned();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    (scratch, sink, broker)
}

#[test]
fn previews_come_every_k_steps_before_the_image_and_change_no_pixel() {
    if !require_root("broker-previews") || !require_digits("broker-previews") {
        return;
    }
    // Both keys reach the code: a minimum of 2 refuses 1, and 12 pixels
    // shrinks the 16x16 preview (twice the 8x8 latents) to 8x8.
    let (_scratch, sink, broker) = start(
        "broker-previews",
        "min_preview_every = 2\npreview_max_size = 12\n",
    );
    let mut client = Client::hello(&broker.socket);
    let request = |every: u32| GenerateRequest {
        steps: Some(6),
        batch: 2,
        preview_every: every,
        ..digits_request("the digit 4")
    };

    let plain = client.generate(request(0));
    assert!(
        stream_error(&plain).is_none(),
        "{plain:?}\n{}",
        broker.log_text()
    );
    assert!(!plain.iter().any(|e| matches!(e, Response::Preview { .. })));

    let with = client.generate(request(2));
    assert!(
        stream_error(&with).is_none(),
        "{with:?}\n{}",
        broker.log_text()
    );
    let record = sink
        .wait_for(&["event=job", "previews_sent="], Duration::from_secs(5))
        .expect("the job's audit record counts its previews");
    let dropped = audit_number(&record, "previews_dropped");
    // (index, step) of every preview, and of every image, in stream order.
    let mut order = Vec::new();
    for event in &with {
        match event {
            Response::Preview {
                index,
                step,
                total,
                width,
                height,
                png,
                ..
            } => {
                assert_eq!(*total, 6);
                assert_eq!((*width, *height), (8, 8), "within preview_max_size = 12");
                let (w, h, rgb) = decode(png);
                assert_eq!((w, h, rgb.len()), (8, 8, 8 * 8 * 3));
                order.push(("preview", *index, *step));
            }
            Response::Image { index, .. } => order.push(("image", *index, 0)),
            _ => {}
        }
    }
    // The worker sends a batch's images when the last one is done, so
    // every preview comes first.
    let mut want = Vec::new();
    for index in 0..2 {
        want.extend([2, 4, 6].map(|step| ("preview", index, step)));
    }
    want.extend([("image", 0, 0), ("image", 1, 0)]);
    if dropped == 0 {
        assert_eq!(order, want, "{record}");
    } else {
        // A busy machine may have left the connection behind: what came is
        // in order, and every missing preview was counted.
        let kept: Vec<_> = want.iter().filter(|w| order.contains(w)).copied().collect();
        assert_eq!(order, kept);
        assert_eq!(want.len() - order.len(), dropped as usize, "{record}");
    }
    assert_eq!(images(&with), images(&plain), "previews changed the images");
    assert_eq!(images(&with).len(), 2);

    // Out of bounds: below the minimum, above the steps.
    for every in [1, 7] {
        let refused = client.generate(request(every));
        match stream_error(&refused) {
            Some(ErrorCode::InvalidParameter { field, allowed }) => {
                assert_eq!(field, "preview_every");
                assert!(allowed.contains("from 2 to 6"), "{allowed}");
            }
            other => panic!("{every}: {other:?}"),
        }
        assert_eq!(refused.len(), 1, "refused before queueing: {refused:?}");
    }
    // The model's default steps (10 in this config) bound it too.
    let default_steps = client.generate(GenerateRequest {
        preview_every: 11,
        ..digits_request("the digit 4")
    });
    assert!(matches!(
        stream_error(&default_steps),
        Some(ErrorCode::InvalidParameter { field, .. }) if field == "preview_every"
    ));
}

#[test]
fn a_slow_reader_still_gets_its_image_and_previews_are_accounted_for() {
    if !require_root("broker-previews-slow") || !require_digits("broker-previews-slow") {
        return;
    }
    let (_scratch, sink, broker) = start("broker-previews-slow", "");
    let mut client = Client::hello(&broker.socket);
    // A preview every step; the caller reads nothing until the job has
    // ended. Whatever the socket buffers could not hold was dropped and
    // counted (the dropping itself: broker/src/scheduler/previews.rs; the
    // demo model's previews are too small to fill the buffers here).
    let request = GenerateRequest {
        steps: Some(20),
        preview_every: 1,
        ..digits_request("the digit 8")
    };
    client.send(&Request::Generate(request.clone()));
    // Not a byte read until the job ends, or for 25 s (the broker drops a
    // caller that takes nothing for 30 s).
    let _ = sink.wait_for(&["event=job", "previews_sent="], Duration::from_secs(25));
    let events = client.collect_stream();
    let record = sink
        .wait_for(&["event=job", "previews_sent="], Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the job did not end\n{}", broker.log_text()));
    assert!(stream_error(&events).is_none(), "{record}");
    assert!(record.contains("outcome=finished"), "{record}");
    let dropped = audit_number(&record, "previews_dropped");
    let sent = audit_number(&record, "previews_sent");
    assert_eq!(sent + dropped, 20, "{record}");
    let previews = events
        .iter()
        .filter(|e| matches!(e, Response::Preview { .. }))
        .count();
    assert_eq!(previews as u64, sent, "{record}");
    for event in &events {
        if let Response::Preview {
            width, height, png, ..
        } = event
        {
            assert_eq!((*width, *height), (16, 16));
            assert_eq!(decode(png).0, *width);
        }
    }
    let image = images(&events);
    assert_eq!(image.len(), 1);
    assert!(matches!(events.last(), Some(Response::Finished { .. })));
    // The same image as a run without previews.
    let plain = client.generate(GenerateRequest {
        preview_every: 0,
        ..request
    });
    assert_eq!(images(&plain), image);
}
