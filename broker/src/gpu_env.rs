//! The environment that shows a GPU worker its own GPU only. A worker of
//! `cuda:N` is landlocked to the node `/dev/nvidiaN` (weave-policy's
//! `gpu_nodes`); `CUDA_VISIBLE_DEVICES` makes that same GPU the only one
//! CUDA enumerates, so the worker addresses it as CUDA device 0 and cannot
//! even name another worker's GPU. **Unverified on GPU hardware** (see
//! docs/SANDBOX.md "GPU").
//!
//! `N` is the driver's minor number (the `N` of `/dev/nvidiaN`), which is
//! what `devices = ["auto"]` lists. CUDA numbers devices its own way
//! (fastest first by default, and from 0 inside a container that was given
//! `/dev/nvidia3` only), so the GPU is named by its UUID when the driver's
//! `/proc/driver/nvidia/gpus/*/information` says which UUID has minor `N`;
//! only without that does the index stand in, in PCI bus order (the order
//! `nvidia-smi` and, on an ordinary machine, the minor numbers follow).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use weave_common::config::{pool, Device};

/// Where the driver describes each GPU, one folder per PCI address.
const DRIVER_GPUS: &str = "/proc/driver/nvidia/gpus";

/// The GPU (its node index `N`, `/dev/nvidiaN`) worker `slot` of `device`
/// runs on: its own for `cuda:N`; for `auto` the visible GPUs in turn
/// (`pool::auto_gpu`; the worker is told which in its bootstrap); none for
/// the CPU.
pub fn gpu_of(device: Device, visible_gpus: &[u32], slot: usize) -> Option<u32> {
    match device {
        Device::Cuda(index) => Some(index),
        Device::Auto => pool::auto_gpu(visible_gpus, slot),
        Device::Cpu => None,
    }
}

/// The variables to add to the environment of a worker whose GPU is `gpu`
/// ([`gpu_of`]). `uuids`: GPU UUID by minor number ([`read_gpu_uuids`]).
pub fn gpu_env(gpu: Option<u32>, uuids: &BTreeMap<u32, String>) -> Vec<(OsString, OsString)> {
    let Some(gpu) = gpu else {
        return Vec::new();
    };
    let visible = uuids.get(&gpu).cloned().unwrap_or_else(|| gpu.to_string());
    vec![
        // Only read for the index form, harmless with a UUID.
        ("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()),
        ("CUDA_VISIBLE_DEVICES".into(), visible.into()),
    ]
}

/// The minor number and UUID in the text of one GPU's `information` file
/// (lines `Device Minor: 0` and `GPU UUID: GPU-…`), if both are there and
/// the UUID looks like one (`GPU-` and hex digits and dashes).
pub fn parse_information(text: &str) -> Option<(u32, String)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let minor = field("Device Minor")?.parse().ok()?;
    let uuid = field("GPU UUID")?;
    let hex = uuid.strip_prefix("GPU-")?;
    let well_formed = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    well_formed.then_some((minor, uuid))
}

/// GPU UUIDs by minor number, from the driver's `/proc` files; empty without
/// the driver (then [`gpu_env`] uses the index).
pub fn read_gpu_uuids() -> BTreeMap<u32, String> {
    read_gpu_uuids_in(Path::new(DRIVER_GPUS))
}

fn read_gpu_uuids_in(dir: &Path) -> BTreeMap<u32, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("information")).ok())
        .filter_map(|text| parse_information(&text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the driver's file (tab-aligned values).
    const INFORMATION: &str = "Model: \t\t NVIDIA H200\nIRQ:   \t\t 155\n\
        GPU UUID: \t GPU-3f2a9c1e-7b44-2d0e-9a1b-5c6d7e8f9a0b\nVideo BIOS: \t 96.00.99.00.01\n\
        Bus Type: \t PCIe\nBus Location: \t 0000:18:00.0\nDevice Minor: \t 3\n\
        GPU Excluded:\t No\n";

    fn env_of(pairs: &[(OsString, OsString)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_driver_file_gives_the_minor_and_uuid() {
        assert_eq!(
            parse_information(INFORMATION),
            Some((3, "GPU-3f2a9c1e-7b44-2d0e-9a1b-5c6d7e8f9a0b".to_owned()))
        );
        assert_eq!(parse_information("Device Minor: 3\n"), None);
        assert_eq!(
            parse_information("GPU UUID: GPU-ab\nDevice Minor: x\n"),
            None
        );
        // Not a UUID: never passed on to CUDA.
        assert_eq!(
            parse_information("GPU UUID: GPU-ab,1\nDevice Minor: 0\n"),
            None
        );
    }

    #[test]
    fn a_gpu_worker_sees_its_own_gpu_by_uuid_or_else_by_index() {
        let uuids = BTreeMap::from([(3, "GPU-ab-cd".to_owned())]);
        let env = env_of(&gpu_env(gpu_of(Device::Cuda(3), &[0, 3], 0), &uuids));
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-ab-cd");
        let env = env_of(&gpu_env(gpu_of(Device::Cuda(1), &[0, 1, 3], 5), &uuids));
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "1");
        assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
    }

    #[test]
    fn auto_workers_take_the_gpus_in_turn_and_the_cpu_gets_nothing() {
        let none = BTreeMap::new();
        let env = env_of(&gpu_env(gpu_of(Device::Auto, &[1, 2], 0), &none));
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "1");
        let env = env_of(&gpu_env(gpu_of(Device::Auto, &[1, 2], 1), &none));
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "2");
        assert_eq!(gpu_of(Device::Auto, &[1, 2], 2), Some(1));
        assert!(gpu_env(gpu_of(Device::Auto, &[], 0), &none).is_empty());
        assert!(gpu_env(gpu_of(Device::Cpu, &[0, 1], 0), &none).is_empty());
    }

    #[test]
    fn uuids_are_read_per_gpu_folder() {
        let dir = std::env::temp_dir().join(format!("weave-gpu-env-{}", std::process::id()));
        let gpu = dir.join("0000:18:00.0");
        std::fs::create_dir_all(&gpu).unwrap();
        std::fs::write(gpu.join("information"), INFORMATION).unwrap();
        // A GPU folder without the file (a masked one) is skipped.
        std::fs::create_dir_all(dir.join("0000:2a:00.0")).unwrap();
        let uuids = read_gpu_uuids_in(&dir);
        let absent = read_gpu_uuids_in(&dir.join("absent"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            uuids,
            BTreeMap::from([(3, "GPU-3f2a9c1e-7b44-2d0e-9a1b-5c6d7e8f9a0b".to_owned())])
        );
        assert!(absent.is_empty());
    }
}
