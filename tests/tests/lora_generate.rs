//! LoRAs end to end, through a real broker and sandboxed worker on the
//! digits model: the project's `models/loras/digits-bold.safetensors` at
//! weight 1 draws clearly more ink over the same seeds and the digits stay
//! recognizable; weight 0 and a base request after a LoRA request are
//! bit-identical to the base image; unknown ids, LoRAs for another model and
//! weights out of range are refused by field; a hostile LoRA file fails its
//! job by field and the worker keeps serving; `sshmctl generate --lora`
//! writes A1111's `Lora hashes` into the PNG.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::path::{Path, PathBuf};

use cli_support::{decode_png, png_parameters, text, Daemon};
use weave_common::proto::{ErrorCode, GenerateRequest, LoraChoice, Request, Response, Scheduler};
use weave_tests::digits_gate::digits_gate;
use weave_tests::{digits_request, repo_root, write_placeholder_model, Client};

const WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

fn bold_lora() -> PathBuf {
    repo_root().join("models/loras/digits-bold.safetensors")
}

/// Every image of one generate request (32×32 RGB), or its error.
fn generate(socket: &Path, request: GenerateRequest) -> Result<Vec<Vec<u8>>, ErrorCode> {
    let mut client = Client::hello(socket);
    client.send(&Request::Generate(request));
    let mut images = Vec::new();
    loop {
        match client.recv().unwrap() {
            Response::Image { png, .. } => images.push(decode_png(&png).2),
            Response::Finished { .. } => return Ok(images),
            Response::Error(code) => return Err(code),
            _ => {}
        }
    }
}

/// Two images of each of the first `digits` digits, seeds 100 + 2·digit,
/// 20 DDIM steps.
fn digit_set(socket: &Path, loras: &[LoraChoice], digits: usize) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for (digit, word) in WORDS.iter().enumerate().take(digits) {
        let request = GenerateRequest {
            steps: Some(20),
            seed: Some(100 + 2 * digit as u64),
            scheduler: Some(Scheduler::Ddim),
            batch: 2,
            loras: loras.to_vec(),
            ..digits_request(&format!("a handwritten digit {word}"))
        };
        all.extend(generate(socket, request).unwrap());
    }
    all
}

fn mean_ink(images: &[Vec<u8>]) -> f64 {
    let total: u64 = images.iter().flatten().map(|&b| u64::from(b)).sum();
    total as f64 / images.iter().map(Vec::len).sum::<usize>() as f64
}

fn lora(id: &str, weight: f32) -> LoraChoice {
    LoraChoice {
        id: id.into(),
        weight,
    }
}

fn refused_field(socket: &Path, loras: Vec<LoraChoice>) -> String {
    let request = GenerateRequest {
        steps: Some(2),
        loras,
        ..digits_request("a 7")
    };
    match generate(socket, request) {
        Err(ErrorCode::InvalidParameter { field, .. }) => field,
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn digits_bold_lora_end_to_end() {
    let hostile = |dir: &Path| {
        let path = dir.join("hostile.safetensors");
        // A header length far past the file's end.
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let other = dir.join("other-model");
        write_placeholder_model(&other);
        format!(
            "\n[[lora]]\nid = \"digits-bold\"\npath = \"{}\"\nmodels = [\"digits\"]\n\
             min_weight = 0.0\nmax_weight = 1.5\n\n\
             [[lora]]\nid = \"hostile\"\npath = \"{}\"\nmodels = [\"digits\"]\n\n\
             [[model]]\nid = \"other\"\nkind = \"sd1\"\npath = \"{}\"\n\n\
             [[lora]]\nid = \"for-other\"\npath = \"{}\"\nmodels = [\"other\"]\n",
            bold_lora().display(),
            path.display(),
            other.display(),
            bold_lora().display(),
        )
    };
    let Some(daemon) = Daemon::start_with(
        "lora_generate",
        // Some 40 requests in a row: past the default rate bucket.
        "max_loras = 2\nrate_burst = 200\nrate_per_minute = 6000\n",
        hostile,
    ) else {
        return;
    };
    let socket = daemon.broker.socket.clone();

    let base = digit_set(&socket, &[], 10);
    let bold = digit_set(&socket, &[lora("digits-bold", 1.0)], 10);
    // Bit-identity needs no statistics: three digits are enough.
    let zero = digit_set(&socket, &[lora("digits-bold", 0.0)], 3);
    let after = digit_set(&socket, &[], 3);
    let ratio = mean_ink(&bold) / mean_ink(&base);
    eprintln!(
        "mean ink: base {:.2}, bold {:.2} ({ratio:.3}x)",
        mean_ink(&base),
        mean_ink(&bold)
    );
    assert!(ratio >= 1.2, "digits-bold raised mean ink only {ratio:.3}x");
    // The first three digits' images of the base set, in the same order.
    assert!(
        zero == base[..zero.len()],
        "weight 0 must be bit-identical to no LoRA"
    );
    assert!(
        after == base[..after.len()],
        "a base request after a LoRA request must be bit-identical"
    );
    // Two images of each digit, in order.
    let labels: Vec<i64> = (0..bold.len() as i64).map(|i| i / 2).collect();
    if let Some(result) = digits_gate(&bold, &labels, &daemon.scratch.path) {
        let report = result.unwrap_or_else(|r| panic!("digits-bold lost the digits: {r}"));
        eprintln!("digits-bold at weight 1: {report}");
    }

    // Refusals by field, before anything is queued.
    assert_eq!(refused_field(&socket, vec![lora("nope", 1.0)]), "loras.id");
    assert_eq!(
        refused_field(&socket, vec![lora("for-other", 1.0)]),
        "loras.id"
    );
    assert_eq!(
        refused_field(&socket, vec![lora("digits-bold", 1.6)]),
        "loras.weight"
    );
    assert_eq!(
        refused_field(&socket, vec![lora("digits-bold", -0.1)]),
        "loras.weight"
    );
    assert_eq!(
        refused_field(
            &socket,
            vec![lora("digits-bold", 1.0), lora("digits-bold", 0.5)]
        ),
        "loras.id"
    );
    assert_eq!(
        refused_field(
            &socket,
            vec![
                lora("digits-bold", 1.0),
                lora("hostile", 1.0),
                lora("x", 1.0)
            ]
        ),
        "loras"
    );
    // The hostile file fails its job by field, never with a path...
    let error = generate(
        &socket,
        GenerateRequest {
            steps: Some(2),
            loras: vec![lora("hostile", 1.0)],
            ..digits_request("a 7")
        },
    )
    .unwrap_err();
    match &error {
        ErrorCode::InvalidParameter { field, allowed } => {
            assert_eq!(field, "loras.id");
            assert!(!allowed.contains('/'), "{allowed}");
        }
        other => panic!("{other:?}"),
    }
    // ...and the worker keeps serving the model as loaded.
    assert!(digit_set(&socket, &[], 1) == base[..2]);
    assert!(daemon.broker.log_text().contains("hostile"));

    // sshmctl: --lora, and A1111's Lora hashes in the PNG.
    let out_png = daemon.scratch.join("bold.png");
    let out = daemon.sshmctl(&[
        "generate",
        "-m",
        "digits",
        "-p",
        "a handwritten digit seven",
        "--seed",
        "3",
        "--lora",
        "digits-bold:0.75",
        "-o",
        out_png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let parameters = png_parameters(&std::fs::read(&out_png).unwrap());
    let hash = weave_common::pin::lora_short_hash(&bold_lora()).unwrap();
    assert!(
        parameters.contains(&format!("Lora hashes: \"digits-bold: {hash}\"")),
        "{parameters}"
    );
    assert!(
        parameters.contains("Lora weights: \"digits-bold: 0.75\""),
        "{parameters}"
    );
    assert!(
        parameters.starts_with("a handwritten digit seven\n"),
        "{parameters}"
    );
}
