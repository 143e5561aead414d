//! The `sha256` pin, enforced by the loader on the bytes it parses: a
//! diffusers folder (one digest over the files the loader reads) and a
//! single-file checkpoint, the right pin loads, a wrong one or a changed
//! file is refused with `PinMismatch`, and a file swapped after the check
//! is never read (no check-then-reread window).
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::{write_tiny_model, TinyOptions};
use weave_common::pin::pin_of;
use weave_worker::engine::weights::files::ModelFiles;
use weave_worker::engine::weights::safetensors::SafetensorsFile;
use weave_worker::engine::{
    DeviceChoice, EngineError, GenerateParams, LoaderError, ModelKind, ModelSpec, Pipeline,
    Precision, SchedulerKind,
};

fn load(spec: &ModelSpec) -> Result<Pipeline, EngineError> {
    Pipeline::load(spec, DeviceChoice::Cpu, Precision::F32)
}

fn pinned(path: &Path, sha256: &str) -> ModelSpec {
    ModelSpec {
        sha256: Some(sha256.to_owned()),
        ..ModelSpec::new(path)
    }
}

fn is_pin_mismatch(result: Result<Pipeline, EngineError>) -> bool {
    matches!(result, Err(EngineError::Loader(LoaderError::PinMismatch)))
}

#[test]
fn a_folder_pin_loads_when_it_matches_and_refuses_any_change() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pin = pin_of(dir.path()).unwrap();
    let pipe = load(&pinned(dir.path(), &pin)).unwrap();
    let params = GenerateParams {
        prompt: "the cat".into(),
        width: 16,
        height: 16,
        steps: 2,
        scheduler: SchedulerKind::Ddim,
        ..Default::default()
    };
    let image = pipe
        .generate(&params, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(image.len(), 1);

    assert!(is_pin_mismatch(load(&pinned(dir.path(), &"0".repeat(64)))));
    // One byte of one config the loader reads: refused, though the folder
    // still loads without the pin.
    let config = dir.path().join("vae/config.json");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push(' ');
    std::fs::write(&config, text).unwrap();
    assert!(load(&ModelSpec::new(dir.path())).is_ok());
    assert!(is_pin_mismatch(load(&pinned(dir.path(), &pin))));
}

#[test]
fn a_file_swapped_after_the_check_is_never_parsed() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinyOptions::default());
    let pin = pin_of(dir.path()).unwrap();
    let unet = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let original = SafetensorsFile::open(&unet).unwrap();
    let name = original.tensors().keys().next().unwrap().clone();
    let expected = original.read(&name).unwrap();
    drop(original);

    let files = ModelFiles::pinned(dir.path(), &pin).unwrap();
    // Swap the file for garbage of the same size after the check.
    let len = std::fs::metadata(&unet).unwrap().len() as usize;
    std::fs::write(&unet, vec![0xA5u8; len]).unwrap();
    assert!(
        SafetensorsFile::open(&unet).is_err(),
        "the disk copy is garbage now"
    );
    let parsed = files.safetensors(&unet).unwrap();
    assert!(parsed.read(&name).unwrap().equal(&expected));
}

fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if dir.join("tiny-sd1.safetensors").exists() {
        Some(dir)
    } else {
        assert!(
            !common::ci(),
            "{} lacks tiny-sd1.safetensors",
            dir.display()
        );
        None
    }
}

#[test]
fn a_single_file_pin_is_its_sha256sum_and_a_flipped_byte_is_refused() {
    let Some(fixtures) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    std::fs::copy(fixtures.join("tiny-sd1.safetensors"), &file).unwrap();
    let spec = |sha256: Option<String>| ModelSpec {
        kind: ModelKind::Sd1,
        path: file.clone(),
        config: Some(fixtures.join("tiny-sd1")),
        sha256,
    };
    let pin = pin_of(&file).unwrap();
    assert_eq!(
        pin,
        weave_common::pin::digest_hex(&std::fs::read(&file).unwrap())
    );
    load(&spec(Some(pin.clone()))).unwrap();
    // Flip the last byte (tensor data, not the header): it still parses
    // unpinned, and the pin refuses it.
    let mut bytes = std::fs::read(&file).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    assert!(load(&spec(None)).is_ok());
    assert!(is_pin_mismatch(load(&spec(Some(pin)))));
}
