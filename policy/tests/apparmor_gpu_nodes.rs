//! The worker's AppArmor profile and its Landlock view agree on the GPU
//! device nodes: every node the profile lets the worker open is one
//! `landlock::gpu_node_access` grants, with the same access (`rw` for
//! `Device`, `r` for `ReadOnly`); every compute node Landlock grants has its
//! rule; the nodes Landlock leaves out (the profiler interface, the display
//! node, DRM render nodes) are denied outright. The profile cannot be
//! loaded on this kernel (AppArmor is not active), so the rules are read
//! as text; `scripts/check-packaging.sh` checks that it parses.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use weave_policy::landlock::{gpu_node_access, PathAccess};

/// A `/dev/...` rule of the profile: (denied, path, permissions).
fn gpu_rules() -> Vec<(bool, String, String)> {
    let profile = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../apparmor/usr.libexec.weave.weave-worker");
    let text = std::fs::read_to_string(&profile).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (deny, rule) = match line.strip_prefix("deny ") {
                Some(rule) => (true, rule),
                None => (false, line),
            };
            let mut words = rule.trim_end_matches(',').split_whitespace();
            let path = words.next()?;
            let perms = words.next()?;
            (path.starts_with("/dev/nvidia") || path.starts_with("/dev/dri"))
                .then(|| (deny, path.to_owned(), perms.to_owned()))
        })
        .collect()
}

/// The `/dev` entry names a rule's path stands for (a glob stands for a
/// few of the names it matches).
fn names_of(path: &str) -> Vec<String> {
    let rest = path.strip_prefix("/dev/").unwrap();
    match rest {
        "nvidia[0-9]*" => vec!["nvidia0".into(), "nvidia7".into(), "nvidia15".into()],
        _ => {
            let first = rest.split('/').next().unwrap();
            assert!(
                !first.contains(['*', '[', '?', '{']),
                "a glob the test does not know: {path}; list the names it matches in names_of"
            );
            vec![first.to_owned()]
        }
    }
}

#[test]
fn the_profile_grants_exactly_the_gpu_nodes_landlock_grants() {
    let rules = gpu_rules();
    assert!(!rules.is_empty(), "no GPU rules in the profile");
    for (deny, path, perms) in &rules {
        for name in names_of(path) {
            let gpu = weave_policy::landlock::per_gpu_index(&name).unwrap_or(0);
            let access = gpu_node_access(&name, gpu);
            if *deny {
                assert_eq!(access, None, "{path} is denied but Landlock grants {name}");
                continue;
            }
            let want = match access {
                Some(PathAccess::Device) => "rw",
                Some(PathAccess::ReadOnly) => "r",
                None => panic!("{path} {perms}: Landlock does not grant {name}; deny it"),
            };
            assert_eq!(perms, want, "{path}: Landlock grants {name} {access:?}");
        }
    }
    let allowed = |name: &str| {
        rules
            .iter()
            .any(|(deny, path, _)| !deny && names_of(path).iter().any(|n| n == name))
    };
    let denied = |name: &str| {
        rules
            .iter()
            .any(|(deny, path, _)| *deny && names_of(path).iter().any(|n| n == name))
    };
    for name in [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-caps",
        "nvidia0",
        "nvidia15",
    ] {
        assert!(gpu_node_access(
            name,
            weave_policy::landlock::per_gpu_index(name).unwrap_or(0)
        )
        .is_some());
        assert!(
            allowed(name),
            "Landlock grants {name}, the profile has no rule for it"
        );
    }
    for name in ["nvidia-uvm-tools", "nvidia-modeset", "dri"] {
        assert_eq!(gpu_node_access(name, 0), None, "{name}");
        assert!(denied(name), "the profile does not deny {name}");
    }
}
