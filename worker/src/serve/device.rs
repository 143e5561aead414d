//! Where the worker runs the models. A GPU worker is confined to one GPU:
//! the broker makes it the only device CUDA sees (`CUDA_VISIBLE_DEVICES`,
//! broker/src/worker_setup.rs) and Landlock grants only its node
//! `/dev/nvidiaN`. So the worker of `cuda:N` addresses its GPU as CUDA
//! device 0 and reports `cuda:N` back ([`torch_device`]).
//!
//! `device = "auto"` is decided in two steps, because CUDA must not start
//! before Landlock (its initialisation opens the driver's nodes and starts
//! threads) while Landlock must already know which node to grant:
//!
//! 1. before Landlock, without calling CUDA: could this worker use a GPU at
//!    all? ([`select_gpu`]: its libtorch has the CUDA backend linked in and
//!    the NVIDIA driver's control node exists; the GPU is the one the broker
//!    picked and made visible, named in the bootstrap);
//! 2. after Landlock, before seccomp: [`resolve`] asks libtorch whether it
//!    sees that CUDA device (`cuda:N` if so, else the CPU).
#![forbid(unsafe_code)]

use weave_common::config::Device;

/// The NVIDIA driver's control node; every CUDA process opens it.
pub const NVIDIA_CONTROL_NODE: &str = "/dev/nvidiactl";

/// Whether libtorch's CUDA backend is mapped into this process, from the
/// text of `/proc/self/maps` (a CPU-only libtorch has no `libtorch_cuda`).
pub fn links_torch_cuda(maps: &str) -> bool {
    maps.lines().any(|line| {
        line.rsplit('/')
            .next()
            .is_some_and(|file| file.starts_with("libtorch_cuda.so"))
    })
}

/// What the worker knows before Landlock, without calling CUDA.
pub struct GpuProbe {
    /// libtorch's CUDA backend is mapped ([`links_torch_cuda`]).
    pub torch_cuda_linked: bool,
    /// [`NVIDIA_CONTROL_NODE`] exists.
    pub nvidia_control_node: bool,
}

/// Step 1: the index `N` of the GPU (node `/dev/nvidiaN`) the worker must be
/// confined for (that node, the driver's files and the GPU syscall
/// options), or `None` for a CPU worker. `given`: the GPU the broker made
/// visible to this worker (the bootstrap's `gpu`), which an `auto` worker
/// takes when it can use a GPU at all.
pub fn select_gpu(configured: Device, given: Option<u32>, probe: &GpuProbe) -> Option<u32> {
    match configured {
        Device::Cpu => None,
        Device::Cuda(index) => Some(index),
        Device::Auto if probe.torch_cuda_linked && probe.nvidia_control_node => given,
        Device::Auto => None,
    }
}

/// Step 2: the device the worker runs on, as it reports it (`cuda:N`, the
/// GPU's node index). `cuda_available` (libtorch's CUDA probe) is called
/// only for `auto` on a possible GPU worker.
pub fn resolve(
    configured: Device,
    gpu: Option<u32>,
    cuda_available: impl FnOnce() -> bool,
) -> Device {
    match (configured, gpu) {
        (Device::Auto, Some(index)) if cuda_available() => Device::Cuda(index),
        (Device::Auto, _) => Device::Cpu,
        (device @ (Device::Cpu | Device::Cuda(_)), _) => device,
    }
}

/// The device libtorch addresses for the resolved `device`: the worker's
/// GPU is the only one CUDA shows it, so whatever `N` it was configured
/// with, it is CUDA device 0 inside the worker.
pub fn torch_device(device: Device) -> Device {
    match device {
        Device::Cuda(_) => Device::Cuda(0),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_MAPS: &str = "\
55d0c0a00000-55d0c0a20000 r-xp 00000000 fd:00 11 /usr/libexec/weave/weave-worker
7f0000100000-7f0000900000 r-xp 00100000 fd:00 12 /usr/lib/weave/libtorch_cpu.so
7f0000900000-7f0000a00000 r-xp 00000000 fd:00 13 /usr/lib/weave/libc10.so
";

    #[test]
    fn the_cuda_backend_is_recognised_from_the_maps() {
        assert!(!links_torch_cuda(CPU_MAPS));
        let cuda = format!(
            "{CPU_MAPS}7f0001000000-7f0002000000 r-xp 00000000 fd:00 14 \
             /opt/torch/lib/libtorch_cuda.so\n"
        );
        assert!(links_torch_cuda(&cuda));
        // A model file named like the library is not the library's mapping
        // unless its file name is exactly that.
        assert!(!links_torch_cuda(
            "7f00-7f01 r--s 00000000 fd:00 15 /srv/models/libtorch_cuda_notes/unet.safetensors\n"
        ));
    }

    fn select(configured: Device, given: Option<u32>, linked: bool, control: bool) -> Option<u32> {
        select_gpu(
            configured,
            given,
            &GpuProbe {
                torch_cuda_linked: linked,
                nvidia_control_node: control,
            },
        )
    }

    #[test]
    fn auto_is_a_gpu_worker_only_with_the_backend_and_the_driver() {
        // The GPU the broker gave it (the visible GPUs in turn).
        assert_eq!(select(Device::Auto, Some(1), true, true), Some(1));
        assert_eq!(select(Device::Auto, Some(2), true, true), Some(2));
        assert_eq!(select(Device::Auto, Some(1), true, false), None);
        assert_eq!(select(Device::Auto, Some(1), false, true), None);
        // The driver but no GPU the broker saw: nothing to run on.
        assert_eq!(select(Device::Auto, None, true, true), None);
        assert_eq!(select(Device::Cpu, Some(1), true, true), None);
        // A configured GPU is confined for its own node, present or not.
        assert_eq!(select(Device::Cuda(3), None, false, false), Some(3));
    }

    #[test]
    fn auto_resolves_to_its_gpu_only_when_libtorch_sees_a_device() {
        assert_eq!(resolve(Device::Auto, Some(0), || true), Device::Cuda(0));
        assert_eq!(resolve(Device::Auto, Some(2), || true), Device::Cuda(2));
        assert_eq!(resolve(Device::Auto, Some(0), || false), Device::Cpu);
        // Not a possible GPU worker: CUDA is not even asked.
        assert_eq!(
            resolve(Device::Auto, None, || panic!("CUDA probed")),
            Device::Cpu
        );
        assert_eq!(resolve(Device::Cuda(3), Some(3), || false), Device::Cuda(3));
        assert_eq!(resolve(Device::Cpu, None, || true), Device::Cpu);
    }

    #[test]
    fn the_only_visible_gpu_is_cuda_device_0_inside_the_worker() {
        assert_eq!(torch_device(Device::Cuda(5)), Device::Cuda(0));
        assert_eq!(torch_device(Device::Cuda(0)), Device::Cuda(0));
        assert_eq!(torch_device(Device::Cpu), Device::Cpu);
    }
}
