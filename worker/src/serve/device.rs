//! Where the worker runs the models. `device = "auto"` is decided in two
//! steps, because CUDA must not start before Landlock (its initialisation
//! opens the driver's nodes and starts threads) while Landlock must already
//! know whether to grant those nodes:
//!
//! 1. before Landlock, without calling CUDA: could this worker use a GPU
//!    at all? ([`may_use_gpu`]: its libtorch has the CUDA backend linked in
//!    and the NVIDIA driver's control node exists);
//! 2. after Landlock, before seccomp: [`resolve`] asks libtorch whether it
//!    sees a CUDA device (`cuda:0` if so, else the CPU).
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

/// Step 1: whether the worker must be confined as a GPU worker (device
/// nodes, driver files and the GPU syscall options).
pub fn may_use_gpu(configured: Device, torch_cuda_linked: bool, nvidia_node: bool) -> bool {
    match configured {
        Device::Cpu => false,
        Device::Cuda(_) => true,
        Device::Auto => torch_cuda_linked && nvidia_node,
    }
}

/// Step 2: the device the worker runs on. `cuda_available` (libtorch's
/// CUDA probe) is called only for `auto` on a possible GPU worker.
pub fn resolve(
    configured: Device,
    gpu_possible: bool,
    cuda_available: impl FnOnce() -> bool,
) -> Device {
    match configured {
        Device::Auto if gpu_possible && cuda_available() => Device::Cuda(0),
        Device::Auto => Device::Cpu,
        device @ (Device::Cpu | Device::Cuda(_)) => device,
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

    #[test]
    fn auto_is_a_gpu_worker_only_with_the_backend_and_the_driver() {
        assert!(may_use_gpu(Device::Auto, true, true));
        assert!(!may_use_gpu(Device::Auto, true, false));
        assert!(!may_use_gpu(Device::Auto, false, true));
        assert!(!may_use_gpu(Device::Cpu, true, true));
        assert!(may_use_gpu(Device::Cuda(1), false, false));
    }

    #[test]
    fn auto_resolves_to_cuda_0_only_when_libtorch_sees_a_device() {
        assert_eq!(resolve(Device::Auto, true, || true), Device::Cuda(0));
        assert_eq!(resolve(Device::Auto, true, || false), Device::Cpu);
        // Not a possible GPU worker: CUDA is not even asked.
        assert_eq!(
            resolve(Device::Auto, false, || panic!("CUDA probed")),
            Device::Cpu
        );
        assert_eq!(resolve(Device::Cuda(3), true, || false), Device::Cuda(3));
        assert_eq!(resolve(Device::Cpu, true, || true), Device::Cpu);
    }
}
