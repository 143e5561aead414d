//! A 10-second run of the `weave-load` harness in `make test`: the broker
//! survives valid, invalid, unauthorized (another uid), malformed and
//! slow-reader traffic, every job gets exactly one terminal answer, and
//! `Status` p99 under the flood stays within 2× the baseline (+1 ms).
//! `make load` runs the same harness for 60 s.
#![allow(clippy::unwrap_used)]

use weave_tests::{require_digits, require_root, target_bin};

#[test]
fn ten_second_flood_is_survived_with_status_latency_held() {
    let name = "load_smoke";
    if !require_root(name) || !require_digits(name) {
        return;
    }
    let out = std::process::Command::new(target_bin("weave-load"))
        .args(["--seconds", "10", "--assert"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "weave-load failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("broker alive at the end: yes"), "{stdout}");
    assert!(
        stdout.contains("| jobs without exactly one terminal answer | 0 |"),
        "{stdout}"
    );
}
