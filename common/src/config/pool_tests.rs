//! `[worker] count`, `[worker] devices` and `[[model]] max_workers`: every
//! key reaches the config, every rule names the key and a fix.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

const MODEL: &str = "[[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"/models/digits\"\n";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(
        &format!("{text}\n{MODEL}"),
        Path::new("/etc/weave/weave.toml"),
        Mode::User,
    )
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected problems, got {:#?}", config.worker),
        Err(errors) => errors
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn every_pool_key_reaches_the_config() {
    let config = parse("[worker]\ncount = 2\ndevice = \"cpu\"").unwrap();
    assert_eq!(config.worker.count, Some(2));
    assert_eq!(
        pool::worker_devices(&config.worker, &[]),
        vec![Device::Cpu, Device::Cpu]
    );
    let config = parse("[worker]\ndevices = [\"cuda:0\", \"cuda:1\"]").unwrap();
    assert_eq!(
        config.worker.devices,
        Some(vec![Device::Cuda(0), Device::Cuda(1)])
    );
    let text = format!("{MODEL}max_workers = 1\n");
    let config = Config::from_toml_str(&text, Path::new("/etc/weave/weave.toml"), Mode::User);
    assert_eq!(config.unwrap().models[0].max_workers, Some(1));
}

#[test]
fn a_bad_count_names_the_key_and_the_range() {
    for bad in ["0", "65"] {
        let found = problems(&format!("[worker]\ncount = {bad}"));
        assert!(found.contains("`worker.count` is"), "{found}");
        assert!(found.contains("1 to 64 workers"), "{found}");
        assert!(found.contains("fix: set `count`"), "{found}");
    }
}

#[test]
fn bad_device_lists_are_refused_with_a_fix() {
    let empty = problems("[worker]\ndevices = []");
    assert!(empty.contains("`worker.devices` is empty"), "{empty}");
    let mixed = problems("[worker]\ndevices = [\"auto\", \"cuda:1\"]");
    assert!(mixed.contains("mixes \"auto\""), "{mixed}");
    let counted = problems("[worker]\ncount = 3\ndevices = [\"cuda:0\", \"cuda:1\"]");
    assert!(counted.contains("`devices` lists 2"), "{counted}");
    let both = problems("[worker]\ndevice = \"cpu\"\ndevices = [\"cuda:0\"]");
    assert!(
        both.contains("`worker.device` is set together with `devices`"),
        "{both}"
    );
    let typo = problems("[worker]\ndevices = [\"gpu0\"]");
    assert!(typo.contains("not a device"), "{typo}");
}

#[test]
fn max_workers_zero_is_refused() {
    let text = format!("{MODEL}max_workers = 0\n");
    let found = Config::from_toml_str(&text, Path::new("/etc/weave/weave.toml"), Mode::User)
        .unwrap_err()
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(found.contains("max_workers` is 0"), "{found}");
}
