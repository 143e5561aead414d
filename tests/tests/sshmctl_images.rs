//! `sshmctl generate --init-image/--strength/--mask` against a real
//! user-mode broker, its sandboxed worker and the digits model: sshmctl
//! reads the files and sends their bytes, the size comes from the PNG, the
//! output's A1111 parameters name the strength, inpainting keeps the
//! unmasked half, and bad files are errors in the command line's words.
#![allow(clippy::unwrap_used)]

mod cli_support;

use cli_support::{decode_png, json, png_parameters, text, Daemon};

#[test]
fn init_image_strength_and_mask_from_the_command_line() {
    let Some(daemon) = Daemon::start("sshmctl-images", "") else {
        return;
    };
    let dir = &daemon.scratch;
    let base = dir.join("base.png");
    let out = daemon.sshmctl(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "a handwritten digit three",
        "--seed",
        "3",
        "-o",
        base.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, _, base_pixels) = decode_png(&std::fs::read(&base).unwrap());

    // img2img: no --width/--height, the PNG's 32×32 is the request's.
    let img2img = dir.join("img2img.png");
    let out = daemon.sshmctl(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "a handwritten digit eight",
        "--steps",
        "8",
        "--init-image",
        base.to_str().unwrap(),
        "--strength",
        "0.5",
        "-o",
        img2img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(&img2img).unwrap();
    let parameters = png_parameters(&bytes);
    assert!(
        parameters.contains("Steps: 8, ") && parameters.contains("Denoising strength: 0.5"),
        "{parameters}"
    );
    let (w, h, pixels) = decode_png(&bytes);
    assert_eq!((w, h), (32, 32));
    assert_ne!(pixels, base_pixels);

    // Inpainting: the left half is kept byte-equal.
    let mask = dir.join("mask.png");
    {
        let file = std::fs::File::create(&mask).unwrap();
        let mut encoder = png::Encoder::new(file, 32, 32);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..32 * 32)
            .map(|i| if i % 32 >= 16 { 255 } else { 0 })
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    let painted = dir.join("painted.png");
    let out = daemon.sshmctl(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "a handwritten digit one",
        "--init-image",
        base.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "-o",
        painted.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, _, painted) = decode_png(&std::fs::read(&painted).unwrap());
    for (i, (a, b)) in base_pixels.chunks(3).zip(painted.chunks(3)).enumerate() {
        if i % 32 < 16 {
            assert_eq!(a, b, "unmasked pixel {i} changed");
        }
    }

    // A file that is not there: read by sshmctl, nothing sent.
    let out = daemon.sshmctl(&[
        "--json",
        "generate",
        "-m",
        "digits",
        "-p",
        "x",
        "--init-image",
        "/nonexistent/a.png",
        "-o",
        dir.join("never.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let error = json(&out);
    assert_eq!(error["error"], "read_failed", "{error}");
    assert_eq!(error["flag"], "--init-image");
    // Not a PNG: the daemon's refusal, in the flag's words.
    let not_png = dir.join("notes.txt");
    std::fs::write(&not_png, "hello").unwrap();
    let out = daemon.sshmctl(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "x",
        "--init-image",
        not_png.to_str().unwrap(),
        "-o",
        dir.join("never.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid --init-image: must be PNG file bytes"),
        "{stderr}"
    );
    // --strength without --init-image: a usage error before connecting.
    let out = daemon.sshmctl(&["generate", "-m", "digits", "-p", "x", "--strength", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--init-image"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("never.png").exists());
}
