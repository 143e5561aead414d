//! LoRA merging on the tiny SD 1.x and SDXL fixtures: kohya and PEFT names,
//! linear, 1×1 and 3×3 conv layers, text encoders; the merge equals a model
//! file with the same weights changed by hand; restoring gives the loaded
//! model back bit for bit; hostile LoRA files are typed errors that leave
//! the model as loaded.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use weave_worker::engine::lora::{LoraError, LoraFile, LoraKeyError, LoraUse, Part};
use weave_worker::engine::weights::safetensors::{serialize, SafetensorsFile};
use weave_worker::engine::{
    DeviceChoice, EngineError, GenerateParams, ModelSpec, Pipeline, Precision, SchedulerKind,
};

fn fixture(name: &str) -> PathBuf {
    common::repo_root().join("worker/tests/fixtures").join(name)
}

fn load(dir: &Path) -> Pipeline {
    Pipeline::load(&ModelSpec::new(dir), DeviceChoice::Cpu, Precision::F32).unwrap()
}

fn image(pipe: &Pipeline, size: u32) -> Vec<u8> {
    let params = GenerateParams {
        prompt: "a red cat".into(),
        width: size,
        height: size,
        steps: 3,
        guidance: 5.0,
        seed: 7,
        scheduler: SchedulerKind::Euler,
        ..Default::default()
    };
    let images = pipe
        .generate(&params, &mut |_, _| ControlFlow::Continue(()))
        .unwrap();
    images.into_iter().next().unwrap().pixels
}

/// The first weight of `part` whose name ends with `suffix`, and its shape.
fn weight(pipe: &Pipeline, part: Part, suffix: &str) -> (String, Vec<i64>) {
    let layers = pipe.lora_layers();
    let mut names: Vec<_> = layers.parts[&part]
        .iter()
        .filter(|(n, _)| n.ends_with(suffix))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {suffix}"))
}

fn random(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.3
}

/// A LoRA of rank 2 on each `(key, weight shape)`; kohya names get an alpha
/// of 1 (scale 1/2), PEFT names none (scale 1).
fn lora_tensors(layers: &[(String, Vec<i64>, bool)]) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (i, (key, shape, kohya)) in layers.iter().enumerate() {
        let (down_shape, up_shape) = match shape.as_slice() {
            [o, i] => (vec![2, *i], vec![*o, 2]),
            [o, i, kh, kw] => (vec![2, *i, *kh, *kw], vec![*o, 2, 1, 1]),
            other => panic!("{other:?}"),
        };
        let (down, up) = if *kohya {
            (".lora_down.weight", ".lora_up.weight")
        } else {
            (".lora_A.weight", ".lora_B.weight")
        };
        out.push((format!("{key}{down}"), random(&down_shape, 10 + i as i64)));
        out.push((format!("{key}{up}"), random(&up_shape, 100 + i as i64)));
        if *kohya {
            out.push((format!("{key}.alpha"), Tensor::from(1.0f32)));
        }
    }
    out
}

fn write(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> PathBuf {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let path = dir.join(name);
    std::fs::write(&path, serialize(&refs).unwrap()).unwrap();
    path
}

fn kohya(part_prefix: &str, name: &str) -> String {
    let module = name.strip_suffix(".weight").unwrap().replace('.', "_");
    format!("{part_prefix}{module}")
}

fn apply(pipe: &mut Pipeline, file: &LoraFile, weight: f32) -> Result<(), EngineError> {
    pipe.apply_loras(&[LoraUse { file, weight }])
}

#[test]
fn sd1_merge_matches_hand_merged_weights_and_restores_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = fixture("tiny-sd1");
    let mut pipe = load(&base_dir);
    let before = image(&pipe, 32);

    let (q, q_shape) = weight(&pipe, Part::Unet, "attn2.to_q.weight");
    let (conv, conv_shape) = weight(&pipe, Part::Unet, "resnets.0.conv1.weight");
    let (proj, proj_shape) = weight(&pipe, Part::Unet, "proj_in.weight");
    let (te, te_shape) = weight(&pipe, Part::TextEncoder, "self_attn.q_proj.weight");
    let layers = vec![
        (kohya("lora_unet_", &q), q_shape, true),
        (kohya("lora_unet_", &conv), conv_shape, true),
        (
            format!("unet.{}", proj.strip_suffix(".weight").unwrap()),
            proj_shape,
            false,
        ),
        (kohya("lora_te_text_model_", &te), te_shape, true),
    ];
    let tensors = lora_tensors(&layers);
    let path = write(dir.path(), "lora.safetensors", &tensors);
    let file = LoraFile::open(&path, None).unwrap();

    apply(&mut pipe, &file, 0.0).unwrap();
    assert_eq!(image(&pipe, 32), before, "weight 0 must change nothing");
    apply(&mut pipe, &file, 0.8).unwrap();
    assert!(pipe.has_loras());
    let merged = image(&pipe, 32);
    assert_ne!(merged, before);

    // The reference: a copy of the model whose files hold W + 0.8·s·up@down.
    let copy = dir.path().join("merged-model");
    copy_dir(&base_dir, &copy);
    let find = |key: &str, suffix: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == &format!("{key}{suffix}"))
            .map(|(_, t)| t.shallow_clone())
    };
    for (file_rel, part_layers) in [
        (
            "unet/diffusion_pytorch_model.safetensors",
            vec![
                (&q, &layers[0].0, 0.5),
                (&conv, &layers[1].0, 0.5),
                (&proj, &layers[2].0, 1.0),
            ],
        ),
        (
            "text_encoder/model.safetensors",
            vec![(&te, &layers[3].0, 0.5)],
        ),
    ] {
        let original = SafetensorsFile::open(&base_dir.join(file_rel)).unwrap();
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for name in original.tensors().keys() {
            let mut t = original
                .read_as(name, Kind::Float, tch::Device::Cpu)
                .unwrap();
            let ours = name.strip_prefix("text_model.").unwrap_or(name);
            if let Some((_, key, scale)) = part_layers.iter().find(|(w, _, _)| w.as_str() == ours) {
                let (down, up) = match (find(key, ".lora_down.weight"), find(key, ".lora_A.weight"))
                {
                    (Some(d), _) => (d, find(key, ".lora_up.weight").unwrap()),
                    (None, Some(d)) => (d, find(key, ".lora_B.weight").unwrap()),
                    _ => unreachable!(),
                };
                let delta = up.flatten(1, -1).mm(&down.flatten(1, -1)).reshape(t.size());
                t = &t + delta * (0.8 * scale);
            }
            out.push((name.clone(), t));
        }
        write(
            copy.join(file_rel).parent().unwrap(),
            Path::new(file_rel).file_name().unwrap().to_str().unwrap(),
            &out,
        );
    }
    let reference = image(&load(&copy), 32);
    let close = merged
        .iter()
        .zip(&reference)
        .all(|(a, b)| (i16::from(*a) - i16::from(*b)).abs() <= 1);
    assert!(close, "the merge differs from the hand-merged model");

    // Back to the model as loaded, bit for bit.
    pipe.apply_loras(&[]).unwrap();
    assert!(!pipe.has_loras());
    assert_eq!(image(&pipe, 32), before);
    // Switching between weights restores before merging again.
    apply(&mut pipe, &file, 0.8).unwrap();
    apply(&mut pipe, &file, 0.8).unwrap();
    assert_eq!(image(&pipe, 32), merged);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn sdxl_unet_and_both_text_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = load(&fixture("tiny-sdxl"));
    let before = image(&pipe, 32);
    let (q, q_shape) = weight(&pipe, Part::Unet, "attn1.to_k.weight");
    let (te1, te1_shape) = weight(&pipe, Part::TextEncoder, "mlp.fc1.weight");
    let (te2, te2_shape) = weight(&pipe, Part::TextEncoder2, "self_attn.v_proj.weight");
    let tensors = lora_tensors(&[
        (kohya("lora_unet_", &q), q_shape, true),
        (kohya("lora_te1_text_model_", &te1), te1_shape, true),
        (
            format!(
                "text_encoder_2.text_model.{}",
                te2.strip_suffix(".weight").unwrap()
            ),
            te2_shape,
            false,
        ),
    ]);
    let file = LoraFile::open(&write(dir.path(), "xl.safetensors", &tensors), None).unwrap();
    apply(&mut pipe, &file, 1.0).unwrap();
    assert_ne!(image(&pipe, 32), before);
    pipe.apply_loras(&[]).unwrap();
    assert_eq!(image(&pipe, 32), before);
}

#[test]
fn hostile_lora_files_are_typed_errors_and_leave_the_model_as_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipe = load(&fixture("tiny-sd1"));
    let before = image(&pipe, 32);
    let (conv, conv_shape) = weight(&pipe, Part::Unet, "resnets.0.conv1.weight");
    let good = lora_tensors(&[(kohya("lora_unet_", &conv), conv_shape.clone(), true)]);
    let good = LoraFile::open(&write(dir.path(), "good.safetensors", &good), None).unwrap();

    // Not safetensors, a header that lies about its length, bad JSON.
    for (i, bytes) in [
        b"not a lora".to_vec(),
        [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        [5u64.to_le_bytes().to_vec(), b"{\"a\":".to_vec()].concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("bad{i}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        assert!(
            matches!(LoraFile::open(&path, None), Err(LoraError::File(_))),
            "{i}"
        );
    }
    // A pin that does not match.
    let pinned = dir.path().join("good.safetensors");
    assert!(matches!(
        LoraFile::open(&pinned, Some(&"0".repeat(64))),
        Err(LoraError::PinMismatch)
    ));

    // Wrong shapes, a layer the model lacks, a non-LoRA name: refused after
    // a good LoRA was merged, which is then undone too.
    let mut wrong = conv_shape.clone();
    wrong[1] += 1;
    type Case = (Vec<(String, Tensor)>, fn(&LoraKeyError) -> bool);
    let cases: Vec<Case> = vec![
        (
            lora_tensors(&[(kohya("lora_unet_", &conv), wrong, true)]),
            |e| matches!(e, LoraKeyError::Shape { .. }),
        ),
        (
            lora_tensors(&[("lora_unet_up_blocks_7_nothing".into(), vec![4, 4], true)]),
            |e| matches!(e, LoraKeyError::NoSuchLayer(_)),
        ),
        (
            vec![("model.diffusion_model.x".into(), Tensor::from(1.0f32))],
            |e| matches!(e, LoraKeyError::UnknownName(_)),
        ),
    ];
    for (i, (tensors, expected)) in cases.into_iter().enumerate() {
        let bad = LoraFile::open(
            &write(dir.path(), &format!("k{i}.safetensors"), &tensors),
            None,
        )
        .unwrap();
        apply(&mut pipe, &good, 1.0).unwrap();
        let error = pipe
            .apply_loras(&[
                LoraUse {
                    file: &good,
                    weight: 1.0,
                },
                LoraUse {
                    file: &bad,
                    weight: 1.0,
                },
            ])
            .unwrap_err();
        match &error {
            EngineError::Lora(LoraError::Keys(e)) => assert!(expected(e), "{i}: {e}"),
            other => panic!("{i}: {other}"),
        }
        assert!(!error.to_string().contains(dir.path().to_str().unwrap()));
        assert!(!pipe.has_loras());
        assert_eq!(image(&pipe, 32), before, "{i}");
    }
}
