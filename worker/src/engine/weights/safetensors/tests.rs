//! Unit tests of the safetensors reader (mod.rs).
#![allow(clippy::unwrap_used)]
use super::*;
use std::io::Write;

fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn file_with_header(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    write_tmp(&bytes)
}

#[test]
fn round_trip_f32_f16_bf16() {
    let a = Tensor::from_slice(&[1.0f32, -2.5, 3.25, 4.0]).reshape([2, 2]);
    let h = a.to_kind(Kind::Half);
    let b = a.to_kind(Kind::BFloat16);
    let bytes = serialize(&[("a", &a), ("h", &h), ("b", &b)]).unwrap();
    let f = write_tmp(&bytes);
    let st = SafetensorsFile::open(f.path()).unwrap();
    for name in ["a", "h", "b"] {
        let t = st.read_as(name, Kind::Float, Device::Cpu).unwrap();
        assert_eq!(t.size(), vec![2, 2]);
        let diff = (&t - &a).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name}");
    }
    assert_eq!(st.tensors()["h"].dtype, Dtype::F16);
}

#[test]
fn one_scratch_serves_tensors_of_any_size_in_any_order() {
    // Large, small, larger: a buffer left longer by an earlier tensor
    // must not leak its bytes into a later, shorter one.
    let big = Tensor::arange(64, (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
    let small = Tensor::from_slice(&[-7.0f32, 0.5]).to_kind(Kind::Half);
    let bigger = Tensor::arange(100, (Kind::Float, Device::Cpu)).neg();
    let bytes = serialize(&[("big", &big), ("small", &small), ("bigger", &bigger)]).unwrap();
    let f = write_tmp(&bytes);
    let st = SafetensorsFile::open(f.path()).unwrap();
    let mut scratch = Vec::new();
    for (name, want) in [
        ("big", &big),
        ("small", &small),
        ("bigger", &bigger),
        ("small", &small),
    ] {
        let t = st
            .read_as_with(name, Kind::Float, Device::Cpu, &mut scratch)
            .unwrap();
        let want = want.to_kind(Kind::Float);
        assert_eq!(t.size(), want.size(), "{name}");
        assert_eq!((&t - &want).abs().max().double_value(&[]), 0.0, "{name}");
    }
    assert_eq!(scratch.len(), 400, "grown to the largest tensor, f32 × 100");
}

#[test]
fn a_weight_converted_by_chunks_has_every_value_in_place() {
    // Chunks of 6 bytes: three fp16 or one f32 (6 / 4, at least one
    // whole element) at a time, with a short last chunk; one element
    // per chunk; one chunk for the whole.
    let half = Tensor::randn([7, 5], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
    let single = Tensor::randn([3, 3], (Kind::Float, Device::Cpu));
    let empty = Tensor::zeros([0, 4], (Kind::Half, Device::Cpu));
    let bytes = serialize(&[("h", &half), ("f", &single), ("e", &empty)]).unwrap();
    let file = write_tmp(&bytes);
    let pinned = SafetensorsFile::from_bytes(file.path(), std::sync::Arc::new(bytes)).unwrap();
    let st = SafetensorsFile::open(file.path()).unwrap();
    for chunk in [6, 1, 1 << 20] {
        let mut scratch = Vec::new();
        for (name, want) in [("h", &half), ("f", &single), ("e", &empty)] {
            let want = want.to_kind(Kind::Float);
            for source in [&st, &pinned] {
                let got = source
                    .read_as_chunked(name, Kind::Float, Device::Cpu, &mut scratch, chunk)
                    .unwrap();
                assert_eq!(got.kind(), Kind::Float);
                assert!(got.equal(&want), "{name}, chunks of {chunk}");
            }
        }
        // Scratch held one chunk at most (the pinned source uses none):
        // 6 bytes (three fp16; the f32 took 4), 4 (one f32; an fp16
        // took 2), or the larger tensor whole (70 bytes of fp16).
        let most = match chunk {
            6 => 6,
            1 => 4,
            _ => 70,
        };
        assert_eq!(scratch.len(), most, "chunks of {chunk}");
    }
    // fp16 kept as fp16 through the same path.
    let got = st
        .read_as_chunked("h", Kind::Half, Device::Cpu, &mut Vec::new(), 4)
        .unwrap();
    assert!(got.equal(&half));
}

#[test]
fn a_file_cut_short_after_opening_is_an_io_error() {
    let t = Tensor::arange(64, (Kind::Float, Device::Cpu));
    let bytes = serialize(&[("t", &t)]).unwrap();
    let file = write_tmp(&bytes);
    let st = SafetensorsFile::open(file.path()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file.path())
        .unwrap()
        .set_len(bytes.len() as u64 - 10)
        .unwrap();
    let err = st
        .read_as_chunked("t", Kind::Float, Device::Cpu, &mut Vec::new(), 16)
        .unwrap_err();
    assert!(matches!(err, SafetensorsError::Io { .. }), "{err}");
}

#[test]
fn refuses_zip_pickle() {
    let f = write_tmp(b"PK\x03\x04rest-of-a-torch-zip");
    let err = SafetensorsFile::open(f.path()).err().unwrap();
    assert!(
        matches!(err, SafetensorsError::PickleCheckpoint { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("convert"), "{err}");
}

#[test]
fn refuses_raw_pickle() {
    let f = write_tmp(b"\x80\x02}q\x00.");
    let err = SafetensorsFile::open(f.path()).err().unwrap();
    assert!(
        matches!(err, SafetensorsError::PickleCheckpoint { .. }),
        "{err}"
    );
}

#[test]
fn refuses_huge_header_length() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let err = SafetensorsFile::open(write_tmp(&bytes).path())
        .err()
        .unwrap();
    assert!(
        matches!(err, SafetensorsError::HeaderTooLarge { .. }),
        "{err}"
    );
    // Below the cap but beyond the file.
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let err = SafetensorsFile::open(write_tmp(&bytes).path())
        .err()
        .unwrap();
    assert!(
        matches!(err, SafetensorsError::HeaderTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn refuses_truncated_files() {
    let err = SafetensorsFile::open(write_tmp(b"\x05\x00").path())
        .err()
        .unwrap();
    assert!(
        matches!(err, SafetensorsError::NotSafetensors { .. }),
        "{err}"
    );
    let a = Tensor::from_slice(&[1.0f32; 16]);
    let bytes = serialize(&[("a", &a)]).unwrap();
    let err = SafetensorsFile::open(write_tmp(&bytes[..bytes.len() - 4]).path())
        .err()
        .unwrap();
    assert!(matches!(err, SafetensorsError::BadTensor { .. }), "{err}");
}

#[test]
fn refuses_offsets_past_eof() {
    let f = file_with_header(
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        &[0u8; 8],
    );
    let err = SafetensorsFile::open(f.path()).err().unwrap();
    assert!(matches!(err, SafetensorsError::BadTensor { .. }), "{err}");
}

#[test]
fn refuses_reversed_and_mismatched_offsets() {
    let f = file_with_header(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
        &[0u8; 8],
    );
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::BadTensor { .. }
    ));
    let f = file_with_header(
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::BadTensor { .. }
    ));
}

#[test]
fn refuses_shape_overflow() {
    let f = file_with_header(
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#,
        &[],
    );
    let err = SafetensorsFile::open(f.path()).err().unwrap();
    assert!(err.to_string().contains("overflow"), "{err}");
    let f = file_with_header(
        r#"{"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]}}"#,
        &[],
    );
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::BadTensor { .. }
    ));
}

#[test]
fn refuses_bad_dtype_and_bad_json() {
    let f = file_with_header(
        r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
        &[0u8],
    );
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::UnsupportedDtype { .. }
    ));
    let f = file_with_header(r#"{"a":{"dtype":"F32","shape":[1],"#, &[0u8; 4]);
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::BadHeader { .. }
    ));
    let f = file_with_header(r#"{"a":[1,2,3]}"#, &[]);
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::BadTensor { .. }
    ));
    let f = file_with_header(r#"["not","an","object"]"#, &[]);
    assert!(matches!(
        SafetensorsFile::open(f.path()).err().unwrap(),
        SafetensorsError::NotSafetensors { .. }
    ));
}

#[test]
fn refuses_overlapping_tensors() {
    let f = file_with_header(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0u8; 12],
    );
    let err = SafetensorsFile::open(f.path()).err().unwrap();
    assert!(err.to_string().contains("overlap"), "{err}");
}

#[test]
fn missing_tensor_is_an_error() {
    let a = Tensor::from_slice(&[1.0f32]);
    let f = write_tmp(&serialize(&[("a", &a)]).unwrap());
    let st = SafetensorsFile::open(f.path()).unwrap();
    assert!(matches!(
        st.read("nope").err().unwrap(),
        SafetensorsError::MissingTensor { .. }
    ));
}
