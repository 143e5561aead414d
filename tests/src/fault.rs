//! Helpers for the fault-injection tests (`tests/tests/fault_*.rs`) and the
//! load harness (`weave-load`): a broker's footprint from `/proc`, one job
//! run to its single terminal answer, a job ledger cross-checked against
//! the audit trail, the worker's shared-memory segments opened from the
//! broker's fd table, and a small seeded random source.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use weave_common::proto::{ErrorCode, GenerateRequest, Request, Response};

use crate::{AuditSink, Client};

/// Open file descriptors and resident memory of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub fds: usize,
    /// `VmRSS`: everything resident, binary pages included.
    pub rss_kib: u64,
    /// `RssAnon`: the heap and stacks, where a leak would show.
    pub anon_kib: u64,
}

/// Reads `/proc/<pid>/fd` and `VmRSS` of `/proc/<pid>/status`.
pub fn footprint(pid: u32) -> Footprint {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    Footprint {
        fds,
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
    }
}

/// Fails when `after` has more descriptors than `before` (a small slack for
/// connections the broker is still closing) or grew its resident memory by
/// more than 10 % (plus 2 MiB of allocator noise on a small process).
pub fn assert_no_leak(before: Footprint, after: Footprint, what: &str) {
    assert!(
        after.fds <= before.fds + 2,
        "{what}: broker fds grew from {} to {}",
        before.fds,
        after.fds
    );
    let anon_limit = before.anon_kib + before.anon_kib / 10 + 1024;
    assert!(
        after.anon_kib <= anon_limit,
        "{what}: broker heap (RssAnon) grew from {} KiB to {} KiB (limit {anon_limit} KiB)",
        before.anon_kib,
        after.anon_kib
    );
    let limit = before.rss_kib + before.rss_kib / 10 + 2048;
    assert!(
        after.rss_kib <= limit,
        "{what}: broker RSS grew from {} KiB to {} KiB (limit {limit} KiB)",
        before.rss_kib,
        after.rss_kib
    );
}

/// Waits (up to 5 s) until the broker's fd count is back to at most
/// `baseline + 2`: connections just closed by clients take a moment.
pub fn settled_footprint(pid: u32, baseline: Footprint) -> Footprint {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let now = footprint(pid);
        if now.fds <= baseline.fds + 2 || Instant::now() >= end {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One generation from `Generate` to its terminal answer.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// From `Queued`; `None` when the request was refused before queueing.
    pub job_id: Option<u64>,
    pub events: Vec<Response>,
    /// `Finished` or `Error`.
    pub terminal: Response,
    pub elapsed: Duration,
}

impl JobRun {
    pub fn finished(&self) -> bool {
        matches!(self.terminal, Response::Finished { .. })
    }

    pub fn error(&self) -> Option<&ErrorCode> {
        match &self.terminal {
            Response::Error(code) => Some(code),
            _ => None,
        }
    }

    /// Whether a finished job carried exactly one PNG.
    pub fn has_one_png(&self) -> bool {
        self.events
            .iter()
            .filter(|e| matches!(e, Response::Image { png, .. } if png.starts_with(b"\x89PNG")))
            .count()
            == 1
    }
}

/// Runs one generate on `client` up to its terminal answer, then proves it
/// was the only one: the next frame on the connection must be the answer
/// to a `Status` sent afterwards, not a second `Finished`/`Error`.
pub fn run_job(client: &mut Client, request: GenerateRequest) -> JobRun {
    let start = Instant::now();
    client.send(&Request::Generate(request));
    let mut events = Vec::new();
    let mut job_id = None;
    let terminal = loop {
        let event = client
            .recv()
            .unwrap_or_else(|e| panic!("stream broke before a terminal answer: {e:?}"));
        if let Response::Queued { job_id: id, .. } = event {
            job_id = Some(id);
        }
        if event.ends_generate_stream() {
            break event;
        }
        events.push(event);
    };
    let elapsed = start.elapsed();
    match client.call(&Request::Status) {
        Response::Status(_) => {}
        other => panic!("a second answer after {terminal:?}: {other:?}"),
    }
    JobRun {
        job_id,
        events,
        terminal,
        elapsed,
    }
}

/// Every job the test saw accepted, with how many terminal answers each got.
#[derive(Debug, Default)]
pub struct Ledger {
    answers: BTreeMap<u64, u32>,
}

impl Ledger {
    pub fn record(&mut self, run: &JobRun) {
        if let Some(id) = run.job_id {
            *self.answers.entry(id).or_default() += 1;
        }
    }

    pub fn accepted(&self) -> usize {
        self.answers.len()
    }

    /// Every accepted job got exactly one terminal answer on its stream and
    /// exactly one `event=job` audit record (waits up to 5 s for the sink).
    pub fn assert_exactly_once(&self, sink: &AuditSink) {
        for (id, count) in &self.answers {
            assert_eq!(*count, 1, "job {id} got {count} terminal answers");
        }
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let audited = audited_jobs(sink);
            let missing: Vec<_> = self
                .answers
                .keys()
                .filter(|id| !audited.contains_key(id))
                .collect();
            let duplicated: Vec<_> = audited.iter().filter(|(_, n)| **n > 1).collect();
            assert!(
                duplicated.is_empty(),
                "jobs audited more than once: {duplicated:?}"
            );
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < end,
                "accepted jobs without an audit record: {missing:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `event=job` records per job id.
pub fn audited_jobs(sink: &AuditSink) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    for record in sink.records() {
        let Some(rest) = record.split("event=job ").nth(1) else {
            continue;
        };
        let id = rest
            .split("job=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = id {
            *out.entry(id).or_default() += 1;
        }
    }
    out
}

/// The broker's `Status` answer (panics on anything else).
pub fn status(client: &mut Client) -> weave_common::proto::StatusReport {
    match client.call(&Request::Status) {
        Response::Status(status) => status,
        other => panic!("Status answered {other:?}"),
    }
}

/// Which way a shared-memory segment carries messages (the control page's
/// `direction` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentDirection {
    ToWorker,
    ToBroker,
}

/// A channel segment opened read-write through `/proc/<broker>/fd/N`: the
/// same memfd pages the broker and the worker map, reached from outside
/// both (root only), so the test can corrupt messages in flight without
/// any hook in the broker.
pub struct SharedSegment {
    pub file: File,
    pub direction: SegmentDirection,
    pub slot_count: u32,
    pub slot_size: u32,
}

const CONTROL_PAGE: u64 = 4096;
const OFF_HEAD: u64 = 64;

impl SharedSegment {
    /// Opens every `memfd:` descriptor of `pid` that carries the channel's
    /// magic.
    pub fn open_all(pid: u32) -> Vec<SharedSegment> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return out;
        };
        for entry in entries.flatten() {
            let is_memfd = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
            if !is_memfd {
                continue;
            }
            if let Some(segment) = Self::open(&entry.path()) {
                out.push(segment);
            }
        }
        out
    }

    fn open(path: &Path) -> Option<SharedSegment> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ok()?;
        let mut header = [0u8; 32];
        file.read_exact_at(&mut header, 0).ok()?;
        if &header[..8] != b"WEAVSHM1" {
            return None;
        }
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let direction = match word(12) {
            1 => SegmentDirection::ToWorker,
            2 => SegmentDirection::ToBroker,
            _ => return None,
        };
        Some(SharedSegment {
            file,
            direction,
            slot_count: word(24),
            slot_size: word(28),
        })
    }

    /// Messages the writer has published so far.
    pub fn head(&self) -> u64 {
        let mut bytes = [0u8; 8];
        self.file.read_exact_at(&mut bytes, OFF_HEAD).unwrap();
        u64::from_le_bytes(bytes)
    }

    /// Overwrites `bytes.len()` bytes at `offset` inside slot `slot`.
    pub fn scribble(&self, slot: u32, offset: u32, bytes: &[u8]) {
        let slot = u64::from(slot % self.slot_count.max(1));
        let room = u64::from(self.slot_size).saturating_sub(bytes.len() as u64);
        let at = CONTROL_PAGE + slot * u64::from(self.slot_size) + u64::from(offset) % room.max(1);
        let _ = self.file.write_all_at(bytes, at);
    }

    /// Forges a publish: fills the slot the reader will look at next with
    /// `garbage` and advances `head` past it, as a compromised writer could.
    pub fn forge_next_message(&self, garbage: &[u8]) {
        let head = self.head();
        let slot = (head % u64::from(self.slot_count.max(1))) as u32;
        self.scribble(slot, 0, garbage);
        let _ = self.file.write_all_at(&(head + 1).to_le_bytes(), OFF_HEAD);
    }
}

/// xorshift64*: reproducible random points from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `WEAVE_FAULT_SEED` when set, else from the clock; the
    /// seed is printed so a failing run can be replayed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("WEAVE_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: WEAVE_FAULT_SEED={seed}");
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The worker's pid: the broker's (only) child process, if one runs.
pub fn worker_pid(broker: u32) -> Option<u32> {
    crate::workers_of(broker).first().copied()
}

/// SIGKILL to `pid`; whether the signal was delivered.
pub fn sigkill(pid: u32) -> bool {
    // SAFETY: kill(2) with a pid read from the broker's children list; the
    // worst case of a recycled pid in a test container is a stray signal,
    // and the children list is read right before.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
}

/// A user-mode broker serving the digits model, its audit sink and its
/// scratch folder.
pub struct Rig {
    pub broker: crate::BrokerProcess,
    pub sink: AuditSink,
    pub scratch: crate::Scratch,
}

/// Generous limits: the fault tests and the load harness measure faults and
/// floods, not the rate limiter (which has its own tests).
pub const OPEN_LIMITS: &str = "queue_depth = 64\nper_client_queue_depth = 64\n\
     rate_burst = 100000\nrate_per_minute = 1000000\n";

impl Rig {
    /// Starts `broker` (a `weave-broker` executable) with `--user`, a config
    /// for `models/digits` with `steps` default steps and the extra `[limits]`
    /// lines `limits`, and waits for its socket.
    pub fn start(name: &str, broker: &Path, limits: &str, steps: u32) -> Rig {
        Self::start_with_audit(name, broker, limits, steps, None)
    }

    /// Like [`Rig::start`]; with `audit`, the broker's audit records go to
    /// that path instead of `self.sink` (for a sink the test closes).
    pub fn start_with_audit(
        name: &str,
        broker: &Path,
        limits: &str,
        steps: u32,
        audit: Option<&Path>,
    ) -> Rig {
        let scratch = crate::Scratch::new(name);
        let sink = AuditSink::bind(scratch.join("audit.sock"));
        let etc = scratch.join("etc");
        std::fs::create_dir(&etc).unwrap();
        let mut config = crate::TestConfig::digits(audit.unwrap_or(&sink.path));
        // The digits model is a diffusers SD 1.x folder; the config knows
        // the kinds sd1/sd2/sdxl only.
        config.model_kind = "sd1".into();
        config.limits = limits.to_owned();
        config.steps = steps;
        let config = config.write(&etc);
        let socket = scratch.join("run/weave.sock");
        let mut command = std::process::Command::new(broker);
        command
            .arg("--user")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket);
        let broker =
            crate::BrokerProcess::start_command(command, &socket, &scratch.join("broker.log"));
        Rig {
            broker,
            sink,
            scratch,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.broker.socket
    }

    pub fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// Panics with the broker's log if it exited.
    pub fn assert_alive(&mut self, what: &str) {
        if let Ok(Some(status)) = self.broker.child.try_wait() {
            panic!(
                "{what}: the broker died ({status}): {}",
                self.broker.log_text()
            );
        }
        let mut client = Client::hello(self.socket());
        status(&mut client);
    }
}

/// A digits request of `steps` steps at 32×32 with a fixed seed.
pub fn small_request(prompt: &str, steps: u32) -> GenerateRequest {
    GenerateRequest {
        steps: Some(steps),
        width: Some(32),
        height: Some(32),
        ..crate::digits_request(prompt)
    }
}

/// A syslog stand-in that can go away: a Unix datagram socket drained by a
/// thread until [`ClosableSink::close`] closes and unlinks it (what a
/// restarting syslogd does to the broker).
pub struct ClosableSink {
    path: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    drainer: Option<std::thread::JoinHandle<()>>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClosableSink {
    pub fn bind(path: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let drainer = {
            let (stop, seen) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&seen));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        seen.lock().unwrap().push(text);
                    }
                }
            })
        };
        Self {
            path: path.to_owned(),
            stop,
            drainer: Some(drainer),
            seen,
        }
    }

    pub fn records(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Closes the socket and removes its path.
    pub fn close(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(drainer) = self.drainer.take() {
            drainer.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
        self.records()
    }
}
