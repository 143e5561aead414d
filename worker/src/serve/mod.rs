//! `weave-worker`'s life: the spawn-contract checks, confinement in the
//! documented order, then the channel loop serving the broker.
//!
//! Order (DESIGN.md invariant 7):
//! 1. check fds 3–7 and close every other descriptor;
//! 2. read the bootstrap (keys, model table) from fd 7;
//! 3. landlock while still single-threaded;
//! 4. libtorch initialisation (threads, device) and the model table;
//! 5. INITIALIZATION COMPLETE → seccomp on every thread;
//! 6. `Ready`, then serve until `Shutdown` or the broker goes away.
//!
//! The worker never opens a socket or writes a file; it logs to stderr only.

mod device;
mod loaded_model;
mod startup;
mod syscalls;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use weave_common::config::Device;
use weave_common::worker_proto::channel::{ChannelError, WorkerEndpoint};
use weave_common::worker_proto::{
    FromWorker, LoraEntry, ModelEntry, SandboxReport, ToWorker, WorkerBootstrap, WorkerFailure,
    WorkerGenerateParams,
};
use weave_policy::worker as worker_policy;
use weave_policy::{EnforcementStatus, LandlockReport, SeccompMode, WorkerSyscallOptions};

/// Exit status when the process was not started by the broker.
const EXIT_NOT_STARTED_BY_BROKER: u8 = 2;
/// Exit status for any failure after the spawn contract was met.
const EXIT_FAILURE: u8 = 1;

/// How long one blocking wait for a broker message lasts before the loop
/// checks again; only bounds how quickly a dead broker is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// How long the worker waits after an unload before it hands the freed heap
/// back to the kernel. A `Load` within this time (a reload, a model switch
/// by the admin) reuses those pages instead of faulting in fresh ones; an
/// unload nobody follows up (the idle unload) gives the memory back soon.
const HEAP_RELEASE_DELAY: Duration = Duration::from_secs(2);

/// Errors after start-up; each ends the worker (the broker respawns it).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Startup(#[from] startup::StartupError),
    #[error("sandbox setup failed: {0}; see the weave-broker log and docs/WORKER.md (allow_degraded_sandbox)")]
    Sandbox(String),
    #[error("libtorch initialisation failed: {0}")]
    Torch(String),
    #[error("the channel to the broker failed: {0}")]
    Channel(#[from] ChannelError),
}

macro_rules! log {
    ($($arg:tt)*) => { eprintln!("weave-worker[{}]: {}", std::process::id(), format_args!($($arg)*)) };
}

/// The whole process. Returns the exit status.
pub fn run() -> ExitCode {
    match run_inner() {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Startup(e @ startup::StartupError::NotStartedByBroker { .. })) => {
            eprintln!("weave-worker: {e}");
            ExitCode::from(EXIT_NOT_STARTED_BY_BROKER)
        }
        Err(e) => {
            log!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_inner() -> Result<(), ServeError> {
    // 1. Spawn contract: our fds, nothing else.
    let inherited = startup::take_inherited_fds()?;
    // 2. Keys and the model table, only ever from the broker's pipe.
    let mut bootstrap = startup::read_bootstrap(inherited.bootstrap_pipe)?;
    let mut channel = WorkerEndpoint::from_inherited(
        &bootstrap,
        inherited.to_worker_segment,
        inherited.to_broker_segment,
        inherited.to_worker_doorbell,
        inherited.to_broker_doorbell,
    )?;
    // The channel holds the keys now; wipe the bootstrap's copies.
    zeroize::Zeroize::zeroize(&mut bootstrap.to_worker_key.key);
    zeroize::Zeroize::zeroize(&mut bootstrap.to_broker_key.key);

    // Steps 3 to 6. A failure there is told to the broker before the
    // worker exits, so `status` can say why the worker did not start.
    let (models, missing, device) = match start(&bootstrap, &mut channel) {
        Ok(started) => started,
        Err(error) => {
            let _ = channel.send(&FromWorker::StartFailed {
                reason: error.to_string(),
            });
            return Err(error);
        }
    };

    let loras = bootstrap
        .loras
        .iter()
        .map(|l| (l.id.clone(), l.clone()))
        .collect();
    Server {
        channel,
        models,
        loras,
        missing,
        device,
        loaded: None,
        release_heap_at: None,
        backlog: VecDeque::new(),
    }
    .serve()
}

/// The model table, the models whose path is missing, and the device
/// libtorch addresses.
type Started = (HashMap<String, ModelEntry>, HashSet<String>, Device);

/// Confinement, libtorch, seccomp and `Ready` (steps 3 to 6).
fn start(bootstrap: &WorkerBootstrap, channel: &mut WorkerEndpoint) -> Result<Started, ServeError> {
    // 3. Landlock while single-threaded: libtorch has not started a thread
    // yet. Whether it grants the GPU is decided without calling CUDA. A model
    // whose path is missing is left out (and refused at load), so it cannot
    // take the sandbox — and with it every other model — down.
    let torch_cuda_linked = std::fs::read_to_string("/proc/self/maps")
        .map(|maps| device::links_torch_cuda(&maps))
        .unwrap_or(false);
    let gpu = device::select_gpu(
        bootstrap.device,
        bootstrap.gpu,
        &device::GpuProbe {
            torch_cuda_linked,
            nvidia_control_node: std::path::Path::new(device::NVIDIA_CONTROL_NODE).exists(),
        },
    );
    let missing = missing_models(bootstrap);
    for id in &missing {
        log!("model {id:?} is unavailable: its path does not exist; the other models are served");
    }
    let landlock = confine_filesystem(bootstrap, gpu, &missing)?;

    // 4. libtorch and the model table. Without the executable-mapping
    // opt-in, oneDNN (which JIT-compiles kernels) is switched off first.
    if !bootstrap.seccomp_exec_mappings && !weave_worker::onednn::set_enabled(false) {
        return Err(ServeError::Torch(
            "could not switch oneDNN off; set seccomp_exec_mappings to run with it".into(),
        ));
    }
    // `device` is what the broker is told (`cuda:N`); libtorch addresses
    // the worker's only visible GPU as `cuda:0`.
    let device = device::resolve(bootstrap.device, gpu, tch::Cuda::is_available);
    let torch_device = device::torch_device(device);
    loaded_model::init_torch(bootstrap, device, torch_device).map_err(ServeError::Torch)?;
    log!("device {device} (configured {})", bootstrap.device);
    if device == Device::Cpu && !weave_worker::onednn::enabled() {
        log!(
            "large 3x3 convolutions without oneDNN: {}",
            loaded_model::large_convolutions()
        );
    }
    let models: HashMap<String, ModelEntry> = bootstrap
        .models
        .iter()
        .map(|m| (m.id.clone(), m.clone()))
        .collect();

    // ===== INITIALIZATION COMPLETE =====
    // Everything below runs under the seccomp allowlist on every thread:
    // nothing a caller influenced has been touched before this line.
    let mode = if bootstrap.seccomp_debug {
        SeccompMode::Trap
    } else {
        SeccompMode::Enforce
    };
    worker_policy::lock_syscalls(
        mode,
        WorkerSyscallOptions {
            gpu: matches!(device, Device::Cuda(_)),
            exec_mappings: bootstrap.seccomp_exec_mappings,
        },
    )
    .map_err(|e| ServeError::Sandbox(e.to_string()))?;

    let sandbox = sandbox_report(&landlock, bootstrap.seccomp_debug)?;
    if !sandbox.fully_enforced && !bootstrap.allow_degraded_sandbox {
        return Err(ServeError::Sandbox(format!(
            "sandbox not fully enforced: {sandbox:?}"
        )));
    }
    log!("sandbox: {sandbox:?}");
    channel.send(&FromWorker::Ready { sandbox, device })?;
    Ok((models, missing, torch_device))
}

/// Ids of the models whose configured path does not exist now.
fn missing_models(bootstrap: &WorkerBootstrap) -> HashSet<String> {
    bootstrap
        .models
        .iter()
        .filter(|m| std::fs::symlink_metadata(&m.path).is_err())
        .map(|m| m.id.clone())
        .collect()
}

fn confine_filesystem(
    bootstrap: &WorkerBootstrap,
    gpu: Option<u32>,
    missing: &HashSet<String>,
) -> Result<LandlockReport, ServeError> {
    let paths = worker_policy::WorkerPaths {
        // LoRA files are read-only paths like models; one that is missing is
        // left out (and its jobs fail by id), as a missing model is.
        models: bootstrap
            .models
            .iter()
            .filter(|m| !missing.contains(&m.id))
            .map(|m| m.path.clone())
            .chain(
                bootstrap
                    .loras
                    .iter()
                    .filter(|l| std::fs::symlink_metadata(&l.path).is_ok())
                    .map(|l| l.path.clone()),
            )
            .collect(),
        libraries: bootstrap.library_dirs.clone(),
        gpu,
        // Read by `lock_syscalls` (capability clearing) after Landlock is on.
        extra_read_only: vec!["/proc/sys/kernel/cap_last_cap".into()],
    };
    worker_policy::confine_filesystem(&paths, bootstrap.allow_degraded_sandbox)
        .map_err(|e| ServeError::Sandbox(e.to_string()))
}

/// Reads the sandbox back from the kernel (not from what we asked for).
fn sandbox_report(
    landlock: &LandlockReport,
    seccomp_debug: bool,
) -> Result<SandboxReport, ServeError> {
    // From /proc/self/status: the kernel's own account of this process.
    let seen = weave_policy::ProcessStatus::current()
        .map_err(|e| ServeError::Sandbox(format!("cannot read the sandbox state back: {e}")))?;
    let landlock_full = landlock.status == EnforcementStatus::FullyEnforced;
    Ok(SandboxReport {
        landlock: format!("{:?}", landlock.status),
        landlock_abi: landlock
            .kernel_abi
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        seccomp_mode: seen.seccomp_mode,
        seccomp_debug,
        no_new_privs: seen.no_new_privs,
        // The four held sets: in user mode the bounding set stays (only
        // CAP_SETPCAP clears it), and reporting `false` there read as a
        // failure while nothing was held.
        capabilities_empty: seen.held_capabilities_empty(),
        fully_enforced: landlock_full
            && seen.seccomp_mode == 2
            && seen.no_new_privs
            && !seccomp_debug,
    })
}

struct Server {
    channel: WorkerEndpoint,
    models: HashMap<String, ModelEntry>,
    /// The bootstrap's LoRA table.
    loras: HashMap<String, LoraEntry>,
    /// Models whose path was missing at start: outside the sandbox's view.
    missing: HashSet<String>,
    /// The device libtorch addresses (`cuda:0` for any GPU worker).
    device: Device,
    loaded: Option<(String, loaded_model::LoadedModel)>,
    /// When to give the heap a model left back to the kernel: set when a
    /// model is dropped and nothing replaces it, cleared by the next load.
    release_heap_at: Option<Instant>,
    /// Messages that arrived during a generation and are not a `Cancel`.
    backlog: VecDeque<ToWorker>,
}

impl Server {
    fn serve(mut self) -> Result<(), ServeError> {
        loop {
            self.release_heap_when_due();
            let msg = match self.backlog.pop_front() {
                Some(m) => m,
                None => {
                    let wait = match self.release_heap_at {
                        Some(at) => at.saturating_duration_since(Instant::now()).min(IDLE_WAIT),
                        None => IDLE_WAIT,
                    };
                    match self.channel.recv(wait)? {
                        Some(m) => m,
                        None => continue,
                    }
                }
            };
            match msg {
                ToWorker::Load { model_id } => self.load(&model_id)?,
                ToWorker::Unload => {
                    if self.loaded.take().is_some() {
                        self.release_heap_at = Some(Instant::now() + HEAP_RELEASE_DELAY);
                    }
                    self.channel.send(&FromWorker::Unloaded)?;
                }
                ToWorker::Generate { job_id, params } => self.generate(job_id, &params)?,
                // A cancel that arrives after its job ended: nothing to stop.
                ToWorker::Cancel { .. } => {}
                ToWorker::Rekey {
                    to_worker,
                    to_broker,
                } => {
                    self.channel.rekey(&to_worker, &to_broker)?;
                    self.channel.send(&FromWorker::RekeyAck)?;
                }
                ToWorker::Shutdown => {
                    log!("shutdown requested by the broker");
                    return Ok(());
                }
            }
        }
    }

    /// Gives the freed heap back to the kernel once its delay has passed
    /// with no model loaded: without this, the pages of an unloaded model
    /// (and of the generations before) stay in the worker's RSS.
    fn release_heap_when_due(&mut self) {
        if self.release_heap_at.is_some_and(|at| at <= Instant::now()) {
            self.release_heap_at = None;
            if self.loaded.is_none() {
                if syscalls::release_free_heap() {
                    log!("no model loaded: freed heap memory returned to the system");
                } else {
                    log!("no model loaded: no free heap memory to return");
                }
            }
        }
    }

    fn load(&mut self, model_id: &str) -> Result<(), ServeError> {
        let Some(entry) = self.models.get(model_id) else {
            return Ok(self.channel.send(&FromWorker::Failed {
                job_id: None,
                failure: WorkerFailure::UnknownModel,
            })?);
        };
        if self.missing.contains(model_id) {
            return Ok(self.channel.send(&FromWorker::Failed {
                job_id: None,
                failure: WorkerFailure::LoadFailed {
                    reason: format!(
                        "model {model_id:?} is unavailable: its path did not exist when the \
                         worker started; fix `path` in the config (the next worker start \
                         checks again)"
                    ),
                },
            })?);
        }
        // Free the old model first: two models may not fit in memory. The
        // new one reuses its heap, so nothing is released in between.
        self.loaded = None;
        self.release_heap_at = None;
        let started = Instant::now();
        match loaded_model::LoadedModel::load(entry, self.device) {
            Ok(model) => {
                let memory_bytes = model.memory_bytes();
                let load_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                log!("loaded model {model_id:?} in {load_ms} ms");
                self.loaded = Some((model_id.to_owned(), model));
                self.channel.send(&FromWorker::Loaded {
                    model_id: model_id.to_owned(),
                    memory_bytes,
                    load_ms,
                })?;
            }
            Err(failure) => {
                log!("loading model {model_id:?} failed: {failure:?}");
                // What the failed load had read is freed; hand it back.
                self.release_heap_at = Some(Instant::now());
                self.channel.send(&FromWorker::Failed {
                    job_id: None,
                    failure,
                })?;
            }
        }
        Ok(())
    }

    fn generate(&mut self, job_id: u64, params: &WorkerGenerateParams) -> Result<(), ServeError> {
        let model = match &mut self.loaded {
            Some((id, model)) if *id == params.model_id => model,
            _ => {
                return Ok(self.channel.send(&FromWorker::Failed {
                    job_id: Some(job_id),
                    failure: WorkerFailure::NotLoaded,
                })?);
            }
        };
        if let Err(failure) = model.set_loras(&params.loras, &self.loras) {
            log!("job {job_id} failed: {failure:?}");
            return Ok(self.channel.send(&FromWorker::Failed {
                job_id: Some(job_id),
                failure,
            })?);
        }
        // Both callbacks send on the channel; the engine calls them one at
        // a time.
        let channel = std::cell::RefCell::new(&mut self.channel);
        let backlog = &mut self.backlog;
        // A channel failure inside the step callback stops the generation and
        // is reported after it returns.
        let channel_error: std::cell::RefCell<Option<ChannelError>> = std::cell::RefCell::new(None);
        let mut cancelled = false;
        // A batch runs its images one after the other and reports the share
        // of the whole batch, so a step value repeats: each is sent once,
        // while the cancel check below still runs after every step.
        let mut last_sent = 0;
        let mut on_step = |step: u32, total: u32| -> ControlFlow<()> {
            let mut channel = channel.borrow_mut();
            if step > last_sent {
                last_sent = step;
                if let Err(e) = channel.send(&FromWorker::Progress {
                    job_id,
                    step,
                    total,
                }) {
                    *channel_error.borrow_mut() = Some(e);
                    return ControlFlow::Break(());
                }
            }
            // Cancel check between steps: drain what the broker sent, never block.
            loop {
                match channel.try_recv() {
                    Ok(Some(ToWorker::Cancel { job_id: id })) if id == job_id => cancelled = true,
                    Ok(Some(ToWorker::Cancel { .. })) => {}
                    Ok(Some(other)) => backlog.push_back(other),
                    Ok(None) => break,
                    Err(e) => {
                        *channel_error.borrow_mut() = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            if cancelled || backlog.iter().any(|m| matches!(m, ToWorker::Shutdown)) {
                cancelled = true;
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut on_preview = |preview: weave_worker::engine::Preview| -> ControlFlow<()> {
            let sent = channel.borrow_mut().send(&FromWorker::Preview {
                job_id,
                index: preview.index,
                step: preview.step,
                total: preview.total,
                width: preview.image.width,
                height: preview.image.height,
                rgb: preview.image.pixels,
            });
            match sent {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    *channel_error.borrow_mut() = Some(e);
                    ControlFlow::Break(())
                }
            }
        };
        let result = model.generate(params, &mut on_step, &mut on_preview);
        if let Some(e) = channel_error.into_inner() {
            return Err(e.into());
        }
        if cancelled {
            return Ok(self.channel.send(&FromWorker::Failed {
                job_id: Some(job_id),
                failure: WorkerFailure::Cancelled,
            })?);
        }
        match result {
            Ok(images) => {
                for (index, image) in (0u32..).zip(images) {
                    self.channel.send(&FromWorker::Image {
                        job_id,
                        index,
                        width: image.width,
                        height: image.height,
                        rgb: image.pixels,
                    })?;
                }
                self.channel.send(&FromWorker::Finished { job_id })?;
            }
            Err(failure) => {
                log!("job {job_id} failed: {failure:?}");
                self.channel.send(&FromWorker::Failed {
                    job_id: Some(job_id),
                    failure,
                })?;
            }
        }
        Ok(())
    }
}
