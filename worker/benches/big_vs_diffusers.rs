//! Issue 14: SD 1.5-size and SDXL-size models through the real daemon (a
//! user-mode broker with its supervised, sandboxed worker, over the Unix
//! socket) against diffusers on the same folder, same seed, scheduler,
//! steps, guidance and size: seconds per image, load time and peak RSS.
//!
//! The models are random-weight folders built by
//! `tools/bench/make_big_models.py` (`tools/bench/big_vs_diffusers.sh` and
//! `make bench BENCH_BIG=1` build them first). Without `WEAVE_BENCH_BIG=1`
//! this bench prints how to run it and measures nothing, so `cargo bench`
//! stays cheap.
//!
//! Measured per model: load (ours: admin `Load` until `Ok`, the worker's
//! start included on the first; diffusers: `from_pretrained` and the move
//! to the device), one warm-up image each, then rounds of one image per
//! side, the order alternating (ours: `Generate` until `Finished`, PNG
//! included; diffusers: its pipeline call, prompt to PIL image), then the
//! peak RSS (`VmHWM`: the worker's, and the Python process's), then
//! `BENCH_BIG_LOADS - 1` more loads of each side. When the two sides do not
//! fit in memory at once they take turns instead (see `sequential`): each
//! round one side loads, warms up, draws its image and frees its memory,
//! then the other.
//!
//! Needs root (the sandboxed worker) and `cargo build --release --bins`.
//! Environment (docs/PERFORMANCE.md lists the defaults): `DEVICE`
//! (`WEAVE_BENCH_DEVICE`), `WEAVE_BENCH_PYTHON`, `BENCH_BIG_MODELS`,
//! `BENCH_BIG_DIR`, `BENCH_BIG_SIZE`, `BENCH_BIG_STEPS`, `BENCH_BIG_ROUNDS`,
//! `BENCH_BIG_LOADS`, `BENCH_BIG_THREADS`, `BENCH_BIG_SCHEDULER`,
//! `BENCH_BIG_EXEC_MAPPINGS`, `BENCH_BIG_SEQUENTIAL`.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use support::{env_count, median};
use weave_common::proto::{GenerateRequest, Request, Response, Scheduler};
use weave_tests::{digits_request, proc_status_field, AuditSink, BrokerProcess, Client, Scratch};

const GUIDANCE: f32 = 7.5;
const PROMPT: &str = "a photograph of an astronaut riding a horse";

/// One of the models `make_big_models.py` builds.
struct BigModel {
    /// Folder name under `BENCH_BIG_DIR` and the daemon's model id.
    id: &'static str,
    /// The daemon's `kind`.
    kind: &'static str,
    /// `diffusers_server.py --pipeline`.
    pipeline: &'static str,
    /// Default size on CPU and on CUDA (the model's own).
    size: (u32, u32),
    /// Default scheduler (the family's usual one).
    scheduler: &'static str,
    /// fp32 bytes of the weights, for the memory estimate.
    fp32_bytes: u64,
}

const MODELS: [BigModel; 2] = [
    BigModel {
        id: "sd15",
        kind: "sd1",
        pipeline: "sd",
        size: (256, 512),
        scheduler: "ddim",
        fp32_bytes: 1_066_000_000 * 4,
    },
    BigModel {
        id: "sdxl",
        kind: "sdxl",
        pipeline: "sdxl",
        size: (512, 1024),
        scheduler: "euler",
        fp32_bytes: 3_469_000_000 * 4,
    },
];

/// What the environment asked for.
struct Settings {
    models: Vec<&'static BigModel>,
    dir: PathBuf,
    device: String,
    cuda: bool,
    python: String,
    size: Option<u32>,
    steps: u32,
    rounds: usize,
    loads: usize,
    threads: usize,
    scheduler: Option<String>,
    exec_mappings: bool,
    sequential: Option<bool>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn bool_env(name: &str, default: bool) -> bool {
    match env(name).as_deref() {
        None => default,
        Some("1" | "true" | "yes") => true,
        Some("0" | "false" | "no") => false,
        Some(other) => panic!("{name}={other}: expected 0 or 1"),
    }
}

impl Settings {
    fn from_env() -> Self {
        let device = env("DEVICE")
            .or_else(|| env("WEAVE_BENCH_DEVICE"))
            .unwrap_or_else(|| "cpu".into());
        let cuda = device.starts_with("cuda");
        if !cuda && device != "cpu" {
            panic!("DEVICE={device}: expected cpu, cuda or cuda:N");
        }
        let models = env("BENCH_BIG_MODELS")
            .unwrap_or_else(|| "sd15,sdxl".into())
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| {
                MODELS.iter().find(|b| b.id == m).unwrap_or_else(|| {
                    panic!("BENCH_BIG_MODELS: unknown model {m:?}; choose from sd15, sdxl")
                })
            })
            .collect();
        let size = env("BENCH_BIG_SIZE").map(|s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n >= 64 && n % 8 == 0)
                .unwrap_or_else(|| panic!("BENCH_BIG_SIZE={s}: a multiple of 8, at least 64"))
        });
        let scheduler = env("BENCH_BIG_SCHEDULER");
        if let Some(s) = &scheduler {
            assert!(
                s == "ddim" || s == "euler",
                "BENCH_BIG_SCHEDULER={s}: ddim or euler"
            );
        }
        let sequential = match env("BENCH_BIG_SEQUENTIAL").as_deref() {
            None | Some("auto") => None,
            Some(_) => Some(bool_env("BENCH_BIG_SEQUENTIAL", false)),
        };
        Self {
            models,
            dir: env("BENCH_BIG_DIR").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/bench-models")
            }),
            python: env("WEAVE_BENCH_PYTHON").unwrap_or_else(|| {
                panic!("WEAVE_BENCH_PYTHON: a Python with torch and diffusers (tools/bench/big_vs_diffusers.sh sets it)")
            }),
            size,
            steps: env_count("BENCH_BIG_STEPS", if cuda { 20 } else { 4 }) as u32,
            rounds: env_count("BENCH_BIG_ROUNDS", if cuda { 5 } else { 3 }),
            loads: env_count("BENCH_BIG_LOADS", if cuda { 3 } else { 1 }),
            threads: env_count("BENCH_BIG_THREADS", if cuda { num_cpus() } else { 1 }),
            scheduler,
            exec_mappings: bool_env("BENCH_BIG_EXEC_MAPPINGS", false),
            sequential,
            device,
            cuda,
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `MemAvailable` of /proc/meminfo, bytes.
fn mem_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A `/proc/<pid>/status` size field (`VmHWM:  123 kB`) in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let value = proc_status_field(pid, field);
    value
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}: {value:?}"))
}

/// Reads every file of the folder once, so that the side that loads first
/// does not pay for the disk alone.
fn warm_page_cache(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            warm_page_cache(&path);
        } else if let Ok(mut file) = std::fs::File::open(&path) {
            let _ = std::io::copy(&mut file, &mut std::io::sink());
        }
    }
}

/// The daemon side: a user-mode broker serving one model.
struct Daemon {
    broker: BrokerProcess,
    client: Client,
    model: &'static str,
    _sink: AuditSink,
    _scratch: Scratch,
}

impl Daemon {
    fn start(model: &BigModel, path: &Path, s: &Settings, size: u32, scheduler: &str) -> Self {
        let scratch = Scratch::new(&format!("bench-big-{}", model.id));
        let sink = AuditSink::bind(scratch.join("audit.sock"));
        let etc = scratch.join("etc");
        std::fs::create_dir(&etc).unwrap();
        // Long limits: a CPU image of these models takes minutes, and an
        // idle unload while the other side runs would time a reload.
        let toml = format!(
            "[limits]\nqueue_depth = 8\nper_client_queue_depth = 8\nrate_burst = 100\n\
             rate_per_minute = 600\njob_timeout_s = 86400\nqueue_deadline_s = 86400\n\
             idle_unload_s = 86400\n\n[audit]\nsink = \"{}\"\n\n[worker]\ndevice = \"{}\"\n\
             torch_threads = {}\nseccomp_exec_mappings = {}\n\n[[model]]\nid = \"{}\"\n\
             kind = \"{}\"\npath = \"{}\"\n[model.defaults]\nwidth = {size}\nheight = {size}\n\
             steps = {}\nguidance = {GUIDANCE}\nscheduler = \"{scheduler}\"\n",
            sink.path.display(),
            s.device,
            s.threads,
            s.exec_mappings,
            model.id,
            model.kind,
            path.display(),
            s.steps,
        );
        let config = etc.join("weave.toml");
        std::fs::write(&config, toml).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let broker = BrokerProcess::start_user(&scratch, &config);
        let client = Client::hello(&broker.socket);
        // Loads and generations take minutes on a CPU.
        client.stream.set_read_timeout(None).unwrap();
        Self {
            broker,
            client,
            model: model.id,
            _sink: sink,
            _scratch: scratch,
        }
    }

    /// A new connection before each timed request: the broker closes one
    /// that sat idle for 5 minutes (`server.rs`'s `IDLE_TIMEOUT`), and at
    /// 512² on a CPU one diffusers image (or two, when the order flips) takes
    /// longer than that. The hello is outside the timed span.
    fn reconnect(&mut self) {
        let client = Client::hello(&self.broker.socket);
        client.stream.set_read_timeout(None).unwrap();
        self.client = client;
    }

    fn load(&mut self) -> f64 {
        self.reconnect();
        let start = Instant::now();
        let answer = self.client.call(&Request::Load {
            model_id: self.model.into(),
        });
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("big bench: ours, load: {seconds:.2} s");
        assert_eq!(
            answer,
            Response::Ok,
            "the daemon did not load {}: {}",
            self.model,
            self.broker.log_text()
        );
        seconds
    }

    fn reload(&mut self) -> f64 {
        self.unload();
        self.load()
    }

    fn unload(&mut self) {
        self.reconnect();
        assert_eq!(self.client.call(&Request::Unload), Response::Ok);
    }

    /// Unloads and waits until the worker has handed its freed heap back
    /// (it does `HEAP_RELEASE_DELAY`, 2 s, after an `Unload`), so the other
    /// side loads into memory this one no longer holds.
    fn unload_and_release(&mut self) {
        self.unload();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let released = |log: &str| log.matches("no model loaded: ").count();
        let before = released(&self.broker.log_text());
        while released(&self.broker.log_text()) == before {
            assert!(
                Instant::now() < deadline,
                "the worker did not release its heap within 60 s of Unload: {}",
                self.broker.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let workers = weave_tests::workers_of(self.broker.pid());
        if let Some(&pid) = workers.first() {
            eprintln!(
                "big bench: ours, unloaded: worker VmRSS {} kB",
                status_kb(pid, "VmRSS")
            );
        }
    }

    fn generate(&mut self, seed: u64, size: u32, steps: u32, scheduler: Scheduler) -> f64 {
        let request = GenerateRequest {
            model_id: self.model.into(),
            width: Some(size),
            height: Some(size),
            steps: Some(steps),
            guidance: Some(GUIDANCE),
            seed: Some(seed),
            scheduler: Some(scheduler),
            batch: 1,
            use_model_negative: false,
            ..digits_request(PROMPT)
        };
        self.reconnect();
        let start = Instant::now();
        self.client.send(&Request::Generate(request));
        let events = self.client.collect_stream();
        let elapsed = start.elapsed().as_secs_f64();
        // As it happens, so an interrupted run still leaves its numbers.
        eprintln!("big bench: ours, seed {seed}: {elapsed:.2} s");
        assert!(
            matches!(events.last(), Some(Response::Finished { .. }))
                && events.iter().any(|e| matches!(e, Response::Image { .. })),
            "generation through the daemon failed: {:?}\n{}",
            events.last(),
            self.broker.log_text()
        );
        elapsed
    }

    /// The worker's peak RSS, kB.
    fn worker_vmhwm_kb(&self) -> u64 {
        let workers = weave_tests::workers_of(self.broker.pid());
        let pid = *workers.first().expect("no worker process");
        status_kb(pid, "VmHWM")
    }

    fn broker_vmhwm_kb(&self) -> u64 {
        status_kb(self.broker.pid(), "VmHWM")
    }

    fn stop(mut self) {
        drop(self.client);
        self.broker.stop();
    }
}

/// The diffusers side: `tools/bench/diffusers_server.py` in a child.
struct Diffusers {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    info: String,
}

impl Diffusers {
    /// `lazy`: it loads nothing until the first `load` (the turn-taking mode).
    fn start(
        model: &BigModel,
        path: &Path,
        s: &Settings,
        size: u32,
        scheduler: &str,
        lazy: bool,
    ) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bench/diffusers_server.py");
        let mut child = Command::new(&s.python)
            .arg(script)
            .arg(path)
            .args([
                &s.device,
                &s.threads.to_string(),
                &s.steps.to_string(),
                &GUIDANCE.to_string(),
                &size.to_string(),
                PROMPT,
                "--pipeline",
                model.pipeline,
                "--scheduler",
                scheduler,
                // The bench warms up itself, with one image like ours.
                "--warmup",
                "none",
            ])
            .args(lazy.then_some("--lazy"))
            .env("OMP_NUM_THREADS", s.threads.to_string())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .env("DIFFUSERS_VERBOSITY", "error")
            .env("TRANSFORMERS_VERBOSITY", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", s.python));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(info) = line.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            panic!("diffusers side did not start: {line:?} (see its stderr above)");
        };
        Self {
            info: info.to_owned(),
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    fn seconds(&mut self, command: &str) -> f64 {
        let answer = self.ask(command);
        let seconds = answer
            .parse()
            .unwrap_or_else(|_| panic!("diffusers side answered {answer:?} to {command:?}"));
        eprintln!("big bench: diffusers, {command}: {seconds:.2} s");
        seconds
    }

    /// (first load seconds, VmHWM kB).
    fn stats(&mut self) -> (f64, u64) {
        let answer = self.ask("stats");
        let words: Vec<&str> = answer.split_whitespace().collect();
        match words.as_slice() {
            ["load_s", load, "vmhwm_kb", hwm, ..] => (load.parse().unwrap(), hwm.parse().unwrap()),
            _ => panic!("diffusers side answered {answer:?} to stats"),
        }
    }
}

impl Drop for Diffusers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one model's run measured.
#[derive(Default)]
struct Measured {
    ours_load: Vec<f64>,
    theirs_load: Vec<f64>,
    ours: Vec<f64>,
    theirs: Vec<f64>,
    ours_hwm_kb: u64,
    broker_hwm_kb: u64,
    theirs_hwm_kb: u64,
    info: String,
}

fn run_model(model: &'static BigModel, s: &Settings) -> Option<Measured> {
    let path = s.dir.join(model.id);
    if !path.join(".complete").exists() {
        eprintln!(
            "big bench: {} is not built; run tools/bench/make_big_models.py {} --models {} \
             (tools/bench/big_vs_diffusers.sh does)",
            path.display(),
            s.dir.display(),
            model.id
        );
        return None;
    }
    let path = path.canonicalize().unwrap();
    let size = s
        .size
        .unwrap_or(if s.cuda { model.size.1 } else { model.size.0 });
    let scheduler_name = s.scheduler.as_deref().unwrap_or(model.scheduler);
    let scheduler = if scheduler_name == "ddim" {
        Scheduler::Ddim
    } else {
        Scheduler::Euler
    };
    // Both processes hold an fp32 copy on the CPU (fp16 weights on the GPU
    // leave host memory mostly free), plus activations and the Python
    // process's own ~1 GB.
    let need = if s.cuda {
        4 << 30
    } else {
        model.fp32_bytes * 5 / 4 + (2 << 30)
    };
    let available = mem_available();
    let sequential = s.sequential.unwrap_or(2 * need > available);
    println!(
        "== {}: {size}x{size}, {scheduler_name}, {} steps, guidance {GUIDANCE}, batch 1, device {}, \
         {} torch threads per side, worker oneDNN {}; {} rounds, {} loads; {} \
         (about {:.1} GiB per side, {:.1} GiB available)",
        model.id,
        s.steps,
        s.device,
        s.threads,
        if s.exec_mappings { "on (seccomp_exec_mappings = true)" } else { "off (the sandbox default)" },
        s.rounds,
        s.loads,
        if sequential {
            "the sides taking turns, each freeing its memory for the other"
        } else {
            "both sides at once, interleaved"
        },
        need as f64 / f64::from(1u32 << 30),
        available as f64 / f64::from(1u32 << 30),
    );
    let mut m = Measured::default();
    let seeds: Vec<u64> = (1..=s.rounds as u64).collect();
    if sequential {
        // Turns, alternating who goes first: each side loads, warms up with
        // a one-step image (the timed image's shapes, so its first-touch
        // memory and kernel caches are paid for beforehand, as the warm-up
        // image does when both sides run at once), draws its timed image
        // and frees its memory; so both sides' images are minutes apart,
        // not a whole side apart. Every load is timed.
        let mut ours = Daemon::start(model, &path, s, size, scheduler_name);
        let mut theirs = Diffusers::start(model, &path, s, size, scheduler_name, true);
        // The other side's turn pushes the model's files out of the page
        // cache (both hold the whole model in memory), so each load is
        // preceded by a read of them, untimed.
        let ours_turn = |m: &mut Measured, ours: &mut Daemon, seed: Option<u64>| {
            warm_page_cache(&path);
            m.ours_load.push(ours.load());
            if let Some(seed) = seed {
                ours.generate(0, size, 1, scheduler);
                m.ours.push(ours.generate(seed, size, s.steps, scheduler));
            }
            ours.unload_and_release();
        };
        let theirs_turn = |m: &mut Measured, theirs: &mut Diffusers, seed: Option<u64>| {
            warm_page_cache(&path);
            m.theirs_load.push(theirs.seconds("load"));
            if let Some(seed) = seed {
                theirs.seconds("warmup 1");
                m.theirs.push(theirs.seconds(&format!("gen {seed} 1")));
            }
            let answer = theirs.ask("unload");
            let Some(rss) = answer.strip_prefix("ok ") else {
                panic!("diffusers side answered {answer:?} to unload");
            };
            eprintln!("big bench: diffusers, unloaded: VmRSS {rss} kB");
        };
        let turns = s.rounds.max(s.loads);
        for round in 0..turns {
            // Past the rounds, the turns only load (BENCH_BIG_LOADS).
            let seed = seeds.get(round).copied();
            if round % 2 == 0 {
                ours_turn(&mut m, &mut ours, seed);
                theirs_turn(&mut m, &mut theirs, seed);
            } else {
                theirs_turn(&mut m, &mut theirs, seed);
                ours_turn(&mut m, &mut ours, seed);
            }
        }
        m.ours_hwm_kb = ours.worker_vmhwm_kb();
        m.broker_hwm_kb = ours.broker_vmhwm_kb();
        m.theirs_hwm_kb = theirs.stats().1;
        m.info = theirs.info.clone();
        ours.stop();
    } else {
        // Diffusers loads first (it is timed in its process); the daemon's
        // worker then starts and loads on the warm page cache as well.
        warm_page_cache(&path);
        let mut theirs = Diffusers::start(model, &path, s, size, scheduler_name, false);
        let mut ours = Daemon::start(model, &path, s, size, scheduler_name);
        m.ours_load.push(ours.load());
        ours.generate(0, size, s.steps, scheduler);
        theirs.seconds("gen 0 1");
        for (round, &seed) in seeds.iter().enumerate() {
            if round % 2 == 0 {
                m.ours.push(ours.generate(seed, size, s.steps, scheduler));
                m.theirs.push(theirs.seconds(&format!("gen {seed} 1")));
            } else {
                m.theirs.push(theirs.seconds(&format!("gen {seed} 1")));
                m.ours.push(ours.generate(seed, size, s.steps, scheduler));
            }
        }
        m.ours_hwm_kb = ours.worker_vmhwm_kb();
        m.broker_hwm_kb = ours.broker_vmhwm_kb();
        let (load, hwm) = theirs.stats();
        m.theirs_load.push(load);
        m.theirs_hwm_kb = hwm;
        for _ in 1..s.loads {
            m.ours_load.push(ours.reload());
            m.theirs_load.push(theirs.seconds("reload"));
        }
        m.info = theirs.info.clone();
        ours.stop();
    }
    Some(m)
}

fn report(model: &BigModel, m: &Measured) {
    let gib = |kb: u64| kb as f64 / f64::from(1u32 << 20);
    let (o, t) = (median(&m.ours), median(&m.theirs));
    let (ol, tl) = (median(&m.ours_load), median(&m.theirs_load));
    let per_round: Vec<f64> = m.ours.iter().zip(&m.theirs).map(|(a, b)| a / b).collect();
    println!("{} results (diffusers: {}):", model.id, m.info);
    println!(
        "  seconds per image, median of {}: ours {o:.2} s, diffusers {t:.2} s -> {:.3}x \
         (median of per-round ratios {:.3}x; target <= 1.0x)",
        m.ours.len(),
        o / t,
        median(&per_round)
    );
    println!(
        "  load, median of {}: ours {ol:.2} s, diffusers {tl:.2} s -> {:.3}x (target <= 1.0x)",
        m.ours_load.len(),
        ol / tl
    );
    println!(
        "  peak RSS (VmHWM): worker {:.2} GiB (broker {:.3} GiB), diffusers process {:.2} GiB -> {:.3}x (target <= 1.0x)",
        gib(m.ours_hwm_kb),
        gib(m.broker_hwm_kb),
        gib(m.theirs_hwm_kb),
        m.ours_hwm_kb as f64 / m.theirs_hwm_kb as f64
    );
    println!(
        "  raw: ours {:?} diffusers {:?}; loads ours {:?} diffusers {:?}",
        m.ours, m.theirs, m.ours_load, m.theirs_load
    );
}

fn main() {
    if !bool_env("WEAVE_BENCH_BIG", false) {
        println!(
            "big bench: skipped (SD 1.5-size and SDXL-size models, minutes per image on a CPU); \
             run tools/bench/big_vs_diffusers.sh or `make bench BENCH_BIG=1`"
        );
        return;
    }
    let s = Settings::from_env();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("big bench: run as root (the sandboxed worker needs it)");
        std::process::exit(2);
    }
    if s.cuda && !tch::Cuda::is_available() {
        eprintln!(
            "big bench: DEVICE={} asked for, but this libtorch sees no CUDA device; build with \
             FLAVOR=cuda libtorch on a machine with an NVIDIA GPU (tools/bench/big_vs_diffusers.sh \
             does with DEVICE=cuda)",
            s.device
        );
        std::process::exit(2);
    }
    let started = Instant::now();
    for model in &s.models {
        if let Some(m) = run_model(model, &s) {
            report(model, &m);
        }
    }
    println!(
        "big bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
