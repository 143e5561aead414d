//! Image inputs through a real broker and its sandboxed worker on the
//! digits model: img2img keeps the digit at a low strength and follows a
//! new prompt at 1.0 (the project's digit classifier judges), inpainting
//! keeps every unmasked pixel, bad images get typed errors naming the
//! field while the broker keeps serving, and no audit record carries an
//! image; the SDXL demo model takes img2img and inpainting the same way.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};

use weave_common::proto::{encode_request, ErrorCode, GenerateRequest, Request, Response};
use weave_tests::digits_gate::digits_gate;
use weave_tests::{
    digits_request, require_digits, require_root, stream_error, AuditSink, BrokerProcess, Client,
    Scratch, TestConfig,
};

/// A marker in a tEXt chunk of every init image: if image bytes reached
/// an audit record or the log, it would show.
const MARKER: &str = "weave-image-marker-5f3a";

fn decode(png: &[u8]) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

fn encode(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk("Comment".into(), MARKER.into())
        .unwrap();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

/// The one image of a finished job: its PNG.
fn image_of(events: &[Response]) -> Vec<u8> {
    events
        .iter()
        .find_map(|e| match e {
            Response::Image { png, .. } => Some(png.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no image: {events:?}"))
}

fn progress_totals(events: &[Response]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Response::Progress { total, .. } => Some(*total),
            _ => None,
        })
        .collect()
}

fn prompt(digit: i64) -> String {
    let word = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ][usize::try_from(digit).unwrap()];
    format!("a handwritten digit {word}")
}

fn invalid(events: &[Response]) -> (String, String) {
    match stream_error(events) {
        Some(ErrorCode::InvalidParameter { field, allowed }) => (field, allowed),
        other => panic!("expected InvalidParameter, got {other:?}: {events:?}"),
    }
}

#[test]
fn img2img_and_inpainting_on_digits_with_typed_refusals() {
    let name = "broker-images";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    // 1 MiB for image requests (the key must reach the frame reader).
    // Some 40 requests in a row: past the default rate bucket on a fast
    // machine.
    config.limits =
        "max_image_request_bytes = 1048576\nrate_burst = 200\nrate_per_minute = 6000\n".to_owned();
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    let steps = 20;
    let run = |client: &mut Client, request: GenerateRequest| {
        let events = client.generate(request);
        (stream_error(&events).is_none(), events)
    };

    // Generated digits to start from: 3s and 5s, their PNGs as sent back
    // (with the broker's own `parameters` chunk).
    let bases: Vec<(i64, u64)> = [3i64, 5]
        .iter()
        .flat_map(|&d| (0..5u64).map(move |s| (d, 100 + s)))
        .collect();
    let mut base_pngs = Vec::new();
    for &(digit, seed) in &bases {
        let (ok, events) = run(
            &mut client,
            GenerateRequest {
                steps: Some(steps),
                seed: Some(seed),
                ..digits_request(&prompt(digit))
            },
        );
        assert!(ok, "{events:?}\n{}", broker.log_text());
        base_pngs.push(image_of(&events));
    }
    let with_marker = |png: &[u8]| encode(32, 32, png::ColorType::Rgb, &decode(png));

    // Strength 0.35 with their own prompt: the digit stays. 20 steps at
    // 0.35 run int(20 × 0.35) = 7 (diffusers' count for Python's 0.35).
    let mut kept = Vec::new();
    for (i, &(digit, seed)) in bases.iter().enumerate() {
        let (ok, events) = run(
            &mut client,
            GenerateRequest {
                steps: Some(steps),
                seed: Some(seed + 1000),
                init_image: Some(with_marker(&base_pngs[i])),
                strength: Some(0.35),
                ..digits_request(&prompt(digit))
            },
        );
        assert!(ok, "{events:?}\n{}", broker.log_text());
        assert_eq!(progress_totals(&events), vec![7; 7], "{events:?}");
        let png = image_of(&events);
        let parameters = String::from_utf8_lossy(&png).into_owned();
        assert!(
            parameters.contains("Steps: 20, ") && parameters.contains("Denoising strength: 0.35"),
            "{parameters}"
        );
        let pixels = decode(&png);
        assert_ne!(pixels, decode(&base_pngs[i]), "img2img changed nothing");
        kept.push(pixels);
    }
    let labels: Vec<i64> = bases.iter().map(|&(d, _)| d).collect();
    if let Some(verdict) = digits_gate(&kept, &labels, &scratch.path) {
        let report = verdict.unwrap_or_else(|r| panic!("strength 0.35 lost the digit: {r}"));
        eprintln!("strength 0.35: {report}");
    }

    // Strength 1.0 with a new prompt: 3 → 7, 5 → 0, from the same images.
    let mut followed = Vec::new();
    let new_digit = |d: i64| if d == 3 { 7 } else { 0 };
    for (i, &(digit, seed)) in bases.iter().enumerate() {
        let (ok, events) = run(
            &mut client,
            GenerateRequest {
                steps: Some(steps),
                seed: Some(seed + 2000),
                init_image: Some(with_marker(&base_pngs[i])),
                strength: Some(1.0),
                ..digits_request(&prompt(new_digit(digit)))
            },
        );
        assert!(ok, "{events:?}");
        assert_eq!(progress_totals(&events), vec![steps; steps as usize]);
        followed.push(decode(&image_of(&events)));
    }
    let labels: Vec<i64> = bases.iter().map(|&(d, _)| new_digit(d)).collect();
    if let Some(verdict) = digits_gate(&followed, &labels, &scratch.path) {
        let report = verdict.unwrap_or_else(|r| panic!("strength 1.0 ignored the prompt: {r}"));
        eprintln!("strength 1.0: {report}");
    }

    // Inpainting: the right half repainted (a gray mask, white = repaint),
    // the left half byte-equal to the init image. Default strength 0.75.
    let init = decode(&base_pngs[0]);
    let mask: Vec<u8> = (0..32 * 32)
        .map(|i| if i % 32 >= 16 { 255 } else { 0 })
        .collect();
    let (ok, events) = run(
        &mut client,
        GenerateRequest {
            steps: Some(steps),
            init_image: Some(with_marker(&base_pngs[0])),
            mask: Some(encode(32, 32, png::ColorType::Grayscale, &mask)),
            ..digits_request(&prompt(8))
        },
    );
    assert!(ok, "{events:?}");
    assert_eq!(progress_totals(&events), vec![15; 15], "int(20 × 0.75)");
    let painted = decode(&image_of(&events));
    let (mut same, mut changed) = (true, 0);
    for (i, (a, b)) in init.chunks(3).zip(painted.chunks(3)).enumerate() {
        if i % 32 < 16 {
            same &= a == b;
        } else if a != b {
            changed += 1;
        }
    }
    assert!(same, "an unmasked pixel changed");
    assert!(changed > 100, "only {changed} masked pixels changed");

    // Refusals, each naming the field and the fix; the broker serves on.
    let good = with_marker(&base_pngs[0]);
    let img = |png: Vec<u8>| GenerateRequest {
        init_image: Some(png),
        ..digits_request("a handwritten digit one")
    };
    let wrong_size = encode(64, 64, png::ColorType::Rgb, &[0; 64 * 64 * 3]);
    let (field, allowed) = invalid(&client.generate(img(wrong_size)));
    assert_eq!(field, "init_image");
    assert!(
        allowed.contains("32×32") && allowed.contains("64×64"),
        "{allowed}"
    );
    let (field, allowed) = invalid(&client.generate(img(good[..good.len() / 2].to_vec())));
    assert_eq!(field, "init_image");
    assert!(allowed.contains("complete PNG"), "{allowed}");
    let (field, allowed) = invalid(&client.generate(img(b"GIF89a not a png".to_vec())));
    assert_eq!(field, "init_image");
    assert!(allowed.contains("PNG signature"), "{allowed}");
    // A header claiming 100000 × 100000: refused from IHDR, nothing
    // allocated.
    let mut bomb = good.clone();
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
    let (field, allowed) = invalid(&client.generate(img(bomb)));
    assert_eq!(field, "init_image");
    assert!(allowed.contains("100000×100000"), "{allowed}");
    // Image data that does not decode passes the broker's header check:
    // the sandboxed worker's decode names the field.
    let mut corrupt = good.clone();
    let idat = corrupt.windows(4).position(|w| w == b"IDAT").unwrap();
    corrupt[idat + 6] ^= 0x55;
    let events = client.generate(img(corrupt));
    assert!(
        events.iter().any(|e| matches!(e, Response::Queued { .. })),
        "{events:?}"
    );
    let (field, allowed) = invalid(&events);
    assert_eq!(field, "init_image");
    assert!(allowed.contains("decodes"), "{allowed}");
    let (field, _) = invalid(&client.generate(GenerateRequest {
        mask: Some(b"not a png".to_vec()),
        ..img(good.clone())
    }));
    assert_eq!(field, "mask");
    for (request, want) in [
        (
            GenerateRequest {
                strength: Some(1.5),
                ..img(good.clone())
            },
            "strength",
        ),
        (
            GenerateRequest {
                strength: Some(0.5),
                ..digits_request("a handwritten digit one")
            },
            "strength",
        ),
        (
            GenerateRequest {
                mask: Some(good.clone()),
                ..digits_request("a handwritten digit one")
            },
            "mask",
        ),
        (
            GenerateRequest {
                steps: Some(2),
                strength: Some(0.3),
                ..img(good.clone())
            },
            "strength",
        ),
    ] {
        let (field, allowed) = invalid(&client.generate(request));
        assert_eq!(field, want, "{allowed}");
    }

    // Over limits.max_image_request_bytes (1 MiB here): refused from the
    // length prefix, the connection closed; a new one is served.
    let mut big = Client::hello(&broker.socket);
    let frame = encode_request(&Request::Generate(img(vec![0x89; 1100 << 10]))).unwrap();
    // The broker stops reading after the prefix and closes: the rest of
    // the write fails, the error is already in our receive queue.
    let _ = big.stream.write_all(&frame);
    match big.recv() {
        Ok(Response::Error(ErrorCode::ProtocolError { reason })) => {
            assert!(reason.contains("longer than 1048576"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A 70 KiB frame that is not a Generate: refused as before images.
    let mut status = Client::hello(&broker.socket);
    let mut frame = (70u32 << 10).to_le_bytes().to_vec();
    frame.push(2);
    frame.extend(std::iter::repeat_n(0u8, (70 << 10) - 1));
    let _ = status.stream.write_all(&frame);
    match status.recv() {
        Ok(Response::Error(ErrorCode::ProtocolError { reason })) => {
            assert!(reason.contains("longer than 65536"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    let _ = status.stream.read_to_end(&mut rest);
    let (ok, events) = run(
        &mut Client::hello(&broker.socket),
        digits_request("a handwritten digit one"),
    );
    assert!(ok, "the broker stopped serving: {events:?}");

    // The audit trail names the kind of job, never its image.
    assert!(
        sink.wait_for(
            &["job", "input=img2img", "strength=0.35"],
            std::time::Duration::from_secs(5)
        )
        .is_some(),
        "{:#?}",
        sink.records()
    );
    assert!(sink
        .wait_for(&["input=inpaint"], std::time::Duration::from_secs(5))
        .is_some());
    let records = sink.records();
    for record in &records {
        for needle in [MARKER, "IHDR", "IDAT", "iVBOR", "[137, 80"] {
            assert!(!record.contains(needle), "{needle} in audit: {record}");
        }
        assert!(record.len() < 2048, "a long audit record: {record}");
    }
    assert!(
        !broker.log_text().contains(MARKER),
        "image bytes in the log"
    );
}

/// SDXL takes image inputs through the daemon too: img2img on the SDXL
/// demo model runs int(steps × strength) steps and returns a changed image
/// of the size sent, with the strength in its parameters; inpainting keeps
/// every unmasked pixel.
#[test]
fn sdxl_img2img_and_inpainting_through_the_daemon() {
    let name = "broker-images-sdxl";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let xl = weave_tests::repo_root().join("models/digits-xl");
    assert!(
        xl.join("model_index.json").exists(),
        "{name} needs models/digits-xl"
    );
    let scratch = Scratch::new(name);
    let sink = AuditSink::bind(scratch.join("audit.sock"));
    let etc = scratch.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let mut config = TestConfig::digits(&sink.path);
    config.extra = format!(
        "\n[[model]]\nid = \"digits-xl\"\nkind = \"sdxl\"\npath = \"{}\"\n",
        xl.display()
    );
    let config = config.write(&etc);
    let broker = BrokerProcess::start_user(&scratch, &config);
    let mut client = Client::hello(&broker.socket);
    // The start image: a digit of the SD 1.x model (any 32×32 PNG would do).
    let base = image_of(&client.generate(GenerateRequest {
        steps: Some(10),
        seed: Some(7),
        ..digits_request(&prompt(3))
    }));
    let xl_request = |prompt: &str| GenerateRequest {
        model_id: "digits-xl".into(),
        steps: Some(10),
        seed: Some(11),
        init_image: Some(base.clone()),
        ..digits_request(prompt)
    };

    let events = client.generate(GenerateRequest {
        strength: Some(0.5),
        ..xl_request(&prompt(8))
    });
    assert!(
        stream_error(&events).is_none(),
        "{events:?}\n{}",
        broker.log_text()
    );
    assert_eq!(progress_totals(&events), vec![5; 5], "int(10 × 0.5)");
    let png = image_of(&events);
    let pixels = decode(&png);
    assert_eq!(pixels.len(), 32 * 32 * 3);
    assert_ne!(pixels, decode(&base), "SDXL img2img changed nothing");
    let parameters = String::from_utf8_lossy(&png).into_owned();
    assert!(
        parameters.contains("Model: digits-xl") && parameters.contains("Denoising strength: 0.5"),
        "{parameters}"
    );

    let mask: Vec<u8> = (0..32 * 32)
        .map(|i| if i % 32 >= 16 { 255 } else { 0 })
        .collect();
    let events = client.generate(GenerateRequest {
        mask: Some(encode(32, 32, png::ColorType::Grayscale, &mask)),
        ..xl_request(&prompt(1))
    });
    assert!(stream_error(&events).is_none(), "{events:?}");
    let init = decode(&base);
    let painted = decode(&image_of(&events));
    let (mut same, mut changed) = (true, 0);
    for (i, (a, b)) in init.chunks(3).zip(painted.chunks(3)).enumerate() {
        if i % 32 < 16 {
            same &= a == b;
        } else if a != b {
            changed += 1;
        }
    }
    assert!(same, "an unmasked pixel changed (SDXL)");
    assert!(changed > 100, "only {changed} masked pixels changed (SDXL)");
}
