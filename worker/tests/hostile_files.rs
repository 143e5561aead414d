//! Hostile model files through the public entry point: every crafted file
//! gives a typed error from `Pipeline::load`, never a panic or a read outside
//! the file.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use weave_worker::engine::{
    DeviceChoice, EngineError, LoaderError, ModelSpec, Pipeline, Precision, SafetensorsError,
};

fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn load_file(bytes: &[u8]) -> EngineError {
    let dir = tempfile::tempdir().unwrap();
    // The extension says safetensors; only the content counts.
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    load(&path)
}

fn load(path: &Path) -> EngineError {
    match Pipeline::load(&ModelSpec::new(path), DeviceChoice::Cpu, Precision::F32) {
        Ok(_) => panic!("a hostile file loaded"),
        Err(e) => e,
    }
}

fn file_error(e: EngineError) -> SafetensorsError {
    match e {
        EngineError::Loader(LoaderError::File(f)) => f,
        other => panic!("expected a safetensors error, got {other}"),
    }
}

const UNET_KEY: &str = "model.diffusion_model.conv_in.weight";

#[test]
fn huge_header_length() {
    let mut bytes = (u64::MAX - 7).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(matches!(
        file_error(load_file(&bytes)),
        SafetensorsError::HeaderTooLarge { .. }
    ));
    let mut bytes = (64u64 << 20).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(matches!(
        file_error(load_file(&bytes)),
        SafetensorsError::HeaderTooLarge { .. }
    ));
}

#[test]
fn offsets_past_eof() {
    let h = format!(
        r#"{{"{UNET_KEY}":{{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}}}"#
    );
    assert!(matches!(
        file_error(load_file(&with_header(&h, &[0u8; 64]))),
        SafetensorsError::BadTensor { .. }
    ));
    let h = format!(
        r#"{{"{UNET_KEY}":{{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551600,18446744073709551608]}}}}"#
    );
    assert!(matches!(
        file_error(load_file(&with_header(&h, &[0u8; 64]))),
        SafetensorsError::BadTensor { .. }
    ));
}

#[test]
fn shape_overflow_and_mismatch() {
    let h = format!(
        r#"{{"{UNET_KEY}":{{"dtype":"BF16","shape":[65536,65536,65536,65536,2],"data_offsets":[0,8]}}}}"#
    );
    let e = file_error(load_file(&with_header(&h, &[0u8; 8])));
    assert!(e.to_string().contains("overflow"), "{e}");
    let h = format!(r#"{{"{UNET_KEY}":{{"dtype":"F16","shape":[3,3],"data_offsets":[0,8]}}}}"#);
    assert!(matches!(
        file_error(load_file(&with_header(&h, &[0u8; 8]))),
        SafetensorsError::BadTensor { .. }
    ));
}

#[test]
fn bad_dtype_bad_json_truncated() {
    let h = format!(r#"{{"{UNET_KEY}":{{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}}}"#);
    assert!(matches!(
        file_error(load_file(&with_header(&h, &[0u8; 8]))),
        SafetensorsError::UnsupportedDtype { .. }
    ));
    assert!(matches!(
        file_error(load_file(&with_header("{\"a\": {\"dtype\": ", &[]))),
        SafetensorsError::BadHeader { .. }
    ));
    assert!(matches!(
        file_error(load_file(&[1, 0, 0])),
        SafetensorsError::NotSafetensors { .. }
    ));
    let h = format!(r#"{{"{UNET_KEY}":{{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}}}"#);
    let mut bytes = with_header(&h, &[0u8; 16]);
    bytes.truncate(bytes.len() - 1);
    assert!(matches!(
        file_error(load_file(&bytes)),
        SafetensorsError::BadTensor { .. }
    ));
}

#[test]
fn pickle_checkpoints_are_refused() {
    for bytes in [
        &b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl"[..],
        b"\x80\x04\x95\x10\x00\x00\x00",
    ] {
        let e = file_error(load_file(bytes));
        assert!(
            matches!(e, SafetensorsError::PickleCheckpoint { .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("convert it to safetensors")
                || e.to_string().contains("Convert it to safetensors"),
            "{e}"
        );
    }
    // Named .ckpt: the same refusal, decided by content.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd-v1-5.ckpt");
    std::fs::write(&path, b"PK\x03\x04rest").unwrap();
    assert!(matches!(
        file_error(load(&path)),
        SafetensorsError::PickleCheckpoint { .. }
    ));
}

#[test]
fn valid_file_without_sd_weights_is_refused() {
    let h = r#"{"some.other.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let e = load_file(&with_header(h, &[0u8; 8]));
    assert!(
        matches!(e, EngineError::Loader(LoaderError::SingleFile { .. })),
        "{e}"
    );
}
