//! The worker pool a config asks for: `[worker] count`, `[worker] devices`
//! and `[[model]] max_workers`, checked here and resolved to one device per
//! worker by [`worker_devices`].
#![forbid(unsafe_code)]

use super::document::KeyPath;
use super::{Config, Device, WorkerConfig};

/// The most workers one broker drives (each is a process with its own
/// shared-memory segments and a scheduler lane).
pub const MAX_WORKERS: u32 = 64;

/// The problems of the pool keys, as `(key, problem, fix)`.
pub(super) fn check(config: &Config) -> Vec<(KeyPath, String, String)> {
    let mut found = Vec::new();
    let worker = &config.worker;
    if let Some(count) = worker.count {
        if count == 0 || count > MAX_WORKERS {
            found.push((
                KeyPath::of(&["worker", "count"]),
                format!("is {count}; a pool has 1 to {MAX_WORKERS} workers"),
                "set `count` to how many workers should run at once (e.g. 2), or remove it \
                 for one"
                    .to_owned(),
            ));
        }
    }
    if let Some(devices) = &worker.devices {
        let key = KeyPath::of(&["worker", "devices"]);
        let autos = devices.iter().filter(|d| **d == Device::Auto).count();
        if devices.is_empty() {
            found.push((
                key,
                "is empty, so no worker would run".to_owned(),
                "list one device per worker (e.g. [\"cuda:0\", \"cuda:1\"]), write [\"auto\"] \
                 for one worker per GPU, or remove `devices`"
                    .to_owned(),
            ));
        } else if autos > 0 && devices.len() > 1 {
            found.push((
                key,
                "mixes \"auto\" with other devices".to_owned(),
                "write [\"auto\"] alone (one worker per GPU, else one CPU worker) or list the \
                 devices"
                    .to_owned(),
            ));
        } else if devices.len() > MAX_WORKERS as usize {
            found.push((
                key,
                format!(
                    "lists {} devices; a pool has at most {MAX_WORKERS} workers",
                    devices.len()
                ),
                "list fewer devices".to_owned(),
            ));
        } else if let Some(count) = worker.count {
            if autos == 0 && count as usize != devices.len() {
                found.push((
                    KeyPath::of(&["worker", "count"]),
                    format!(
                        "is {count} but `devices` lists {} (one worker per device)",
                        devices.len()
                    ),
                    "remove `count` (the list decides), or make it the list's length".to_owned(),
                ));
            }
        }
        if worker.device != Device::Auto {
            found.push((
                KeyPath::of(&["worker", "device"]),
                "is set together with `devices`".to_owned(),
                "remove `device` (each worker's device is its entry of `devices`)".to_owned(),
            ));
        }
    }
    for (position, model) in config.models.iter().enumerate() {
        if model.max_workers == Some(0) {
            found.push((
                KeyPath::model(position).key("max_workers"),
                "is 0, so no worker could ever run this model".to_owned(),
                "set it to at least 1, or remove it for no limit".to_owned(),
            ));
        }
    }
    found
}

/// One device per worker of the pool. `visible_gpus`: the CUDA device
/// indices the broker sees (`/dev/nvidiaN`), which `devices = ["auto"]`
/// expands to; with none it is one CPU worker. Call on a checked config.
pub fn worker_devices(worker: &WorkerConfig, visible_gpus: &[u32]) -> Vec<Device> {
    match worker.devices.as_deref() {
        Some([Device::Auto]) => {
            if visible_gpus.is_empty() {
                vec![Device::Cpu]
            } else {
                visible_gpus
                    .iter()
                    .map(|&index| Device::Cuda(index))
                    .collect()
            }
        }
        Some(list) if !list.is_empty() => list.to_vec(),
        _ => {
            let count = worker.count.unwrap_or(1).clamp(1, MAX_WORKERS);
            vec![worker.device; count as usize]
        }
    }
}

/// The GPU worker `slot` (0, 1, …) of the pool runs on when its device is
/// `auto`: the visible GPUs ([`gpu_indices`], sorted) taken in turn, so
/// `count = 4` on a two-GPU box puts two workers on each and one worker takes
/// the lowest. The broker decides it (and makes it the one CUDA shows the
/// worker); the worker is told in its bootstrap and is landlocked to it.
pub fn auto_gpu(visible_gpus: &[u32], slot: usize) -> Option<u32> {
    match visible_gpus.len() {
        0 => None,
        len => visible_gpus.get(slot % len).copied(),
    }
}

/// The CUDA device indices of the `/dev` entry names given (`nvidia0`,
/// `nvidia3`, …; not `nvidiactl`, `nvidia-uvm`), sorted.
pub fn gpu_indices<'a>(dev_names: impl IntoIterator<Item = &'a str>) -> Vec<u32> {
    let mut indices: Vec<u32> = dev_names
        .into_iter()
        .filter_map(|name| name.strip_prefix("nvidia"))
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|digits| digits.parse().ok())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn worker(text: &str) -> WorkerConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn count_repeats_the_device_and_defaults_to_one() {
        assert_eq!(worker_devices(&worker(""), &[0]), vec![Device::Auto]);
        assert_eq!(
            worker_devices(&worker("count = 2\ndevice = \"cpu\""), &[]),
            vec![Device::Cpu, Device::Cpu]
        );
    }

    #[test]
    fn a_device_list_gives_one_worker_each() {
        assert_eq!(
            worker_devices(&worker("devices = [\"cuda:1\", \"cpu\"]"), &[0, 1]),
            vec![Device::Cuda(1), Device::Cpu]
        );
    }

    #[test]
    fn auto_is_every_visible_gpu_else_one_cpu_worker() {
        let auto = worker("devices = [\"auto\"]");
        assert_eq!(
            worker_devices(&auto, &[0, 2]),
            vec![Device::Cuda(0), Device::Cuda(2)]
        );
        assert_eq!(worker_devices(&auto, &[]), vec![Device::Cpu]);
    }

    #[test]
    fn auto_workers_take_the_visible_gpus_in_turn() {
        let gpus = [0, 1];
        let picked: Vec<Option<u32>> = (0..4).map(|slot| auto_gpu(&gpus, slot)).collect();
        assert_eq!(picked, vec![Some(0), Some(1), Some(0), Some(1)]);
        // One worker: the lowest node.
        assert_eq!(auto_gpu(&[1, 3], 0), Some(1));
        assert_eq!(auto_gpu(&[], 0), None);
        assert_eq!(auto_gpu(&[], 5), None);
    }

    #[test]
    fn gpu_indices_take_only_the_per_gpu_nodes() {
        let names = [
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia0",
            "nvidia",
            "nvidia1x",
        ];
        assert_eq!(gpu_indices(names), vec![0, 1]);
    }
}
