//! A small libtorch CPU workload that confines itself exactly as the worker
//! does (Landlock → init → seccomp), for tracing and checking the worker's
//! sandbox until the real worker's load + generate path exists. Not a
//! workspace member; see docs/SANDBOX.md for how to build and run it.
//!
//!   seccomp-probe prepare   writes the "model" file /tmp/weave-probe/model.bin
//!   seccomp-probe           runs init + steady-state workload
//!   seccomp-probe bench     times one SD-sized conv2d (oneDNN on/off)
//!
//! Environment: PROBE_SANDBOX=1 (apply the sandbox), PROBE_MODE=trap|log
//! (seccomp debug modes), PROBE_EXEC=1 (allow PROT_EXEC mappings),
//! PROBE_NO_MKLDNN=1 (disable oneDNN before init), PROBE_LIBTORCH (libtorch
//! lib dir for the Landlock rule; default $LIBTORCH/lib).
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};
use weave_policy::{worker, ProcessStatus, SeccompMode, WorkerSyscallOptions};

fn mmap_model(path: &str) -> Tensor {
    let f = std::fs::File::open(path).expect("open model");
    let len = f.metadata().unwrap().len() as usize;
    use std::os::fd::AsRawFd;
    // SAFETY: maps a file we just opened, read-only and private.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    // SAFETY: the mapping is `len` bytes long, page aligned and alive until
    // the munmap below; from_slice copies the data.
    let s = unsafe { std::slice::from_raw_parts(p as *const f32, len / 4) };
    let t = Tensor::from_slice(s);
    // SAFETY: unmaps exactly the mapping created above; `s` is not used after.
    unsafe { libc::munmap(p, len) };
    t
}

fn workload(weights: &Tensor, tag: usize) -> f64 {
    let x = Tensor::randn([2, 4, 32 + tag as i64, 32], (Kind::Float, Device::Cpu));
    let w = weights.narrow(0, 0, 8 * 4 * 9).view([8, 4, 3, 3]);
    let y = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let y = y
        .group_norm(4, None::<Tensor>, None::<Tensor>, 1e-5, false)
        .silu();
    let y = y.upsample_nearest2d([64 + 2 * tag as i64, 64], None, None);
    let q = Tensor::randn([2, 8, 77, 64], (Kind::Float, Device::Cpu));
    let a = q
        .matmul(&q.transpose(-1, -2))
        .softmax(-1, Kind::Float)
        .matmul(&q);
    let l = a
        .layer_norm([64], None::<Tensor>, None::<Tensor>, 1e-5, false)
        .gelu("tanh");
    let lin = l.linear(
        &Tensor::randn([128, 64], (Kind::Float, Device::Cpu)),
        None::<Tensor>,
    );
    let bf = lin.to_kind(Kind::BFloat16).sum(Kind::Float);
    y.mean(Kind::Float).double_value(&[]) + bf.double_value(&[])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = "/tmp/weave-probe/model.bin";
    if args.get(1).map(String::as_str) == Some("prepare") {
        std::fs::create_dir_all("/tmp/weave-probe").unwrap();
        let v: Vec<u8> = (0..8 * 4 * 9 * 4 * 16)
            .map(|i| ((i * 7) % 50) as u8)
            .collect();
        let v: Vec<f32> = v.iter().map(|b| *b as f32 / 100.0).collect();
        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        std::fs::write(model, bytes).unwrap();
        return;
    }
    if args.get(1).map(String::as_str) == Some("bench") {
        // conv2d at an SD 1.x UNet-like size, to weigh disabling oneDNN.
        if std::env::var("PROBE_NO_MKLDNN").is_ok() {
            assert!(weave_worker::onednn::set_enabled(false), "oneDNN stays on");
        }
        tch::set_num_threads(2);
        let x = Tensor::randn([1, 320, 64, 64], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([320, 320, 3, 3], (Kind::Float, Device::Cpu));
        let _ = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let start = std::time::Instant::now();
        for _ in 0..5 {
            let _ = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        }
        println!(
            "conv2d 1x320x64x64 k3: {:.1} ms/iter",
            start.elapsed().as_secs_f64() * 200.0
        );
        return;
    }
    let sandbox = std::env::var("PROBE_SANDBOX").is_ok();
    let mode = match std::env::var("PROBE_MODE").as_deref() {
        Ok("trap") => SeccompMode::Trap,
        Ok("log") => SeccompMode::Log,
        _ => SeccompMode::Enforce,
    };
    let exec = std::env::var("PROBE_EXEC").is_ok();
    let mut ll = None;
    if sandbox {
        let paths = worker::WorkerPaths {
            models: vec![PathBuf::from("/tmp/weave-probe")],
            libraries: vec![std::env::var("PROBE_LIBTORCH")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(
                        std::env::var("LIBTORCH").expect("set LIBTORCH or PROBE_LIBTORCH"),
                    )
                    .join("lib")
                })],
            gpu: None,
            extra_read_only: vec![],
        };
        let r = worker::confine_filesystem(&paths, false).expect("landlock");
        eprintln!("{r}");
        ll = Some(r);
    }
    // ---- init: libtorch threads, load "model" ----
    if std::env::var("PROBE_NO_MKLDNN").is_ok() {
        assert!(weave_worker::onednn::set_enabled(false), "oneDNN stays on");
        eprintln!("mkldnn disabled");
    }
    tch::set_num_threads(2);
    let weights = mmap_model(model);
    let warm = workload(&weights, 0);
    eprintln!(
        "init done (warm {warm:.3}), threads {}",
        tch::get_num_threads()
    );
    if std::env::var("PROBE_MARK").is_ok() {
        // marker for strace: split init from steady state
        // SAFETY: getppid has no arguments; it only marks the trace.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    if sandbox {
        worker::lock_syscalls(
            mode,
            WorkerSyscallOptions {
                gpu: false,
                exec_mappings: exec,
            },
        )
        .expect("seccomp");
        eprintln!(
            "report: {:?}, landlock {ll:?}",
            ProcessStatus::current().unwrap()
        );
    }
    // ---- steady state: new shapes, extra threads ----
    let mut total = 0.0;
    for i in 1..4 {
        total += workload(&weights, i);
    }
    let w2 = weights.shallow_clone();
    let h = std::thread::spawn(move || workload(&w2, 5));
    total += h.join().unwrap();
    let weights2 = mmap_model(model);
    total += weights2.sum(Kind::Float).double_value(&[]);
    println!("steady-state ok {total:.3}");
}
