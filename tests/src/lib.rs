//! Helpers shared by the cross-process integration tests: a real broker
//! process with a temporary config, a protocol client, real users and groups
//! (created with `useradd`/`groupadd`, idempotently) and an audit sink on a
//! real Unix datagram socket.
#![allow(clippy::unwrap_used)]

pub mod digits_gate;
pub mod fault;
pub mod pty;
pub mod staged;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weave_common::proto::{
    read_response, write_request, ErrorCode, FrameError, GenerateRequest, Request, Response,
    DEFAULT_MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The running test's `target/<profile>` folder.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// libtorch's `lib/` folder the worker was linked against.
pub fn libtorch_lib() -> PathBuf {
    let root = option_env!("LIBTORCH").map_or_else(
        || repo_root().join(".cache/libtorch/cpu"),
        |dir| {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        },
    );
    root.join("lib")
}

/// This build's executables, libtorch and demo model, staged where every
/// uid can reach them ([`staged`]); once per test process.
pub fn staged_tree() -> &'static staged::Staged {
    static STAGED: std::sync::OnceLock<staged::Staged> = std::sync::OnceLock::new();
    STAGED.get_or_init(|| {
        let sources = staged::Sources {
            profile_dir: profile_dir(),
            libtorch_lib: Some(libtorch_lib()),
            digits: Some(repo_root().join("models/digits")).filter(|d| d.is_dir()),
        };
        let root = staged::default_root(&sources);
        staged::stage(&sources, &root)
            .unwrap_or_else(|e| panic!("cannot stage the binaries in {}: {e}", root.display()))
    })
}

/// `<name>` of this build (`target/<profile>/<name>`), run from its staged
/// copy so another uid can execute it wherever the checkout lives.
pub fn target_bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries of this profile first \
         (`cargo build --bins`, with --release for release tests)",
        path.display()
    );
    if staged::EXECUTABLES.contains(&name) {
        staged_tree().bin(name)
    } else {
        path
    }
}

/// Whether the run is CI, where missing privileges are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when running as root. Outside CI a test without root says why and
/// returns early; under `CI=true` it fails.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(!in_ci(), "{test} needs root (CI runs as root)");
        eprintln!("SKIP {test}: needs root to create users");
    }
    root
}

/// The digits demo model folder (its staged copy, readable by the
/// service account wherever the checkout lives), when it is in the tree.
pub fn digits_model() -> Option<PathBuf> {
    let path = repo_root().join("models/digits");
    path.is_dir()
        .then(|| staged_tree().digits().canonicalize().unwrap())
}

/// True when the real worker can generate (models/digits present). Under
/// `CI=true` its absence fails the test.
pub fn require_digits(test: &str) -> bool {
    let present = digits_model().is_some();
    if !present {
        assert!(!in_ci(), "{test} needs models/digits");
        eprintln!("SKIP {test}: models/digits is not in the tree yet");
    }
    present
}

static ACCOUNTS: Mutex<()> = Mutex::new(());

fn run_ok(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn id_of(kind: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent").arg(kind).arg(name).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)?
        .trim()
        .parse()
        .ok()
}

/// Creates a system group if missing; returns its gid.
pub fn ensure_group(name: &str) -> u32 {
    let _guard = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(gid) = id_of("group", name) {
        return gid;
    }
    for _ in 0..20 {
        if run_ok(Command::new("groupadd").arg("--system").arg(name)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    id_of("group", name).unwrap_or_else(|| panic!("groupadd {name} failed"))
}

/// A test account: uid and primary gid.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Creates a system user (no home, no login) with its own primary group if
/// missing, and makes it a member of `groups`. Idempotent.
pub fn ensure_user(name: &str, groups: &[&str]) -> Account {
    for group in groups {
        ensure_group(group);
    }
    let _guard = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    if id_of("passwd", name).is_none() {
        for _ in 0..20 {
            let ok = run_ok(
                Command::new("useradd")
                    .args(["--system", "--no-create-home", "--user-group"])
                    .args(["--shell", "/usr/sbin/nologin"])
                    .arg(name),
            );
            if ok || id_of("passwd", name).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if !groups.is_empty() {
        assert!(
            run_ok(
                Command::new("usermod")
                    .arg("-a")
                    .arg("-G")
                    .arg(groups.join(","))
                    .arg(name)
            ),
            "usermod -aG {groups:?} {name} failed"
        );
    }
    let uid = id_of("passwd", name).unwrap_or_else(|| panic!("useradd {name} failed"));
    let out = Command::new("id").arg("-g").arg(name).output().unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    Account { uid, gid }
}

/// Runs `weave-probe-client --socket SOCKET <args>` as the user `name`,
/// with that user's full group list (`setpriv --init-groups`), and returns
/// its stdout.
pub fn probe_as_user(name: &str, socket: &Path, args: &[&str]) -> String {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={name}"))
        .arg(format!("--regid={name}"))
        .arg("--init-groups")
        .arg("--")
        .arg(target_bin("weave-probe-client"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A private scratch folder (0755 so dropped-privilege brokers can reach
/// their socket and the audit sink), removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("weave-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // WEAVE_KEEP_SCRATCH=1 keeps logs and configs for debugging.
        if std::env::var_os("WEAVE_KEEP_SCRATCH").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A syslog stand-in: a real Unix datagram socket the broker's audit
/// records arrive at.
pub struct AuditSink {
    pub path: PathBuf,
    seen: std::sync::Arc<Mutex<Vec<String>>>,
}

impl AuditSink {
    pub fn bind(path: PathBuf) -> Self {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        // The broker may have dropped to a service account.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        // Drain continuously, like syslogd: the kernel queues only a few
        // datagrams per socket.
        let collector = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                collector.lock().unwrap().push(text);
            }
        });
        Self { path, seen }
    }

    /// Every record received so far.
    pub fn records(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a record containing every needle.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .records()
                .into_iter()
                .find(|record| needles.iter().all(|needle| record.contains(needle)))
            {
                return Some(found);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A config for a test broker; `toml()` renders it.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub audit_sink: PathBuf,
    /// Extra `[limits]` lines.
    pub limits: String,
    /// Extra `[daemon]` lines (system mode).
    pub daemon: String,
    /// The `[worker]` lines (default: `device = "cpu"`).
    pub worker: String,
    /// `kind` and `path` of the one model, id `digits`.
    pub model_kind: String,
    pub model_path: PathBuf,
    /// Default steps.
    pub steps: u32,
    /// Tables appended after the model (e.g. `[[lora]]`).
    pub extra: String,
}

impl TestConfig {
    /// A config whose model is never loaded (tests that stop before the
    /// worker runs anything).
    pub fn new(audit_sink: &Path) -> Self {
        Self {
            audit_sink: audit_sink.to_owned(),
            limits: String::new(),
            daemon: String::new(),
            worker: "device = \"cpu\"\n".into(),
            model_kind: "sd1".into(),
            // A folder next to the sink with a diffusers folder's files, all
            // `{}`: it passes the broker's file checks and the worker's
            // sandbox includes it, but loading it fails.
            model_path: audit_sink
                .parent()
                .unwrap_or(Path::new("/"))
                .join("placeholder-model"),
            steps: 10,
            extra: String::new(),
        }
    }

    /// A config serving the real digits demo model.
    pub fn digits(audit_sink: &Path) -> Self {
        Self {
            model_kind: "sd1".into(),
            model_path: digits_model().unwrap_or_else(|| repo_root().join("models/digits")),
            ..Self::new(audit_sink)
        }
    }

    pub fn toml(&self) -> String {
        let mut text = format!(
            "[daemon]\n{}\n[limits]\n{}\n[audit]\nsink = \"{}\"\n\n[worker]\n{}",
            self.daemon,
            self.limits,
            self.audit_sink.display(),
            self.worker
        );
        text.push_str(&format!(
            "\n[[model]]\nid = \"digits\"\nkind = \"{}\"\npath = \"{}\"\n\
             [model.defaults]\nwidth = 32\nheight = 32\nsteps = {}\nguidance = 5.0\n\
             scheduler = \"ddim\"\n",
            self.model_kind,
            self.model_path.display(),
            self.steps
        ));
        text.push_str(&self.extra);
        text
    }

    /// Writes the config 0600 into `dir` (which must be root-owned and not
    /// group/world-writable).
    pub fn write(&self, dir: &Path) -> PathBuf {
        if !self.model_path.exists() {
            write_placeholder_model(&self.model_path);
        }
        let path = dir.join("weave.toml");
        std::fs::write(&path, self.toml()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

/// The tests run as root and most of them run a user-mode broker (the
/// clients connect as root too): `weave-broker --user` refuses root unless
/// this is `1` (docs/BROKER.md). Brokers started by the helpers below get
/// it; `broker_user_mode` checks the refusal without it.
pub const ROOT_USER_MODE_HATCH: &str = "WEAVE_ALLOW_ROOT_USER_MODE";

/// A running `weave-broker`.
pub struct BrokerProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl BrokerProcess {
    /// Starts `weave-broker <args>` and waits until its socket answers.
    pub fn start(args: &[&str], socket: &Path, log: &Path) -> Self {
        let child = Self::spawn(args, log);
        Self::wait_ready(child, socket, log)
    }

    /// Starts a user-mode broker with `config`, its socket at
    /// `<scratch>/run/weave.sock` and its log at `<scratch>/broker.log`.
    pub fn start_user(scratch: &Scratch, config: &Path) -> Self {
        let log = scratch.join("broker.log");
        let (child, socket) = Self::spawn_user(scratch, config, &log);
        Self::wait_ready(child, &socket, &log)
    }

    /// Spawns a user-mode broker as [`Self::start_user`] does, its log at
    /// `log`, without waiting for its socket: the child and the socket path.
    pub fn spawn_user(scratch: &Scratch, config: &Path, log: &Path) -> (Child, PathBuf) {
        let socket = scratch.join("run/weave.sock");
        let args = [
            "--user",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ];
        (Self::spawn(&args, log), socket)
    }

    /// Starts `command` (which must exec the broker in place, like
    /// `setpriv`) with its output to `log`, and waits for `socket`.
    pub fn start_command(mut command: Command, socket: &Path, log: &Path) -> Self {
        let log_file = std::fs::File::create(log).unwrap();
        let child = command
            .env(ROOT_USER_MODE_HATCH, "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Self::wait_ready(child, socket, log)
    }

    fn wait_ready(child: Child, socket: &Path, log: &Path) -> Self {
        let mut broker = Self {
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("broker exited early ({status}): {}", broker.log_text());
            }
            if socket.exists() && UnixStream::connect(socket).is_ok() {
                return broker;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker socket never came up: {}", broker.log_text());
    }

    /// Spawns without waiting (for start-up failures).
    pub fn spawn(args: &[&str], log: &Path) -> Child {
        let log_file = std::fs::File::create(log).unwrap();
        Command::new(target_bin("weave-broker"))
            .args(args)
            .env(ROOT_USER_MODE_HATCH, "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 20 s) for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "broker ignored SIGTERM: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A protocol client over the broker's socket.
pub struct Client {
    pub stream: UnixStream,
    reader: std::io::BufReader<UnixStream>,
}

impl Client {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader }
    }

    /// Connects and completes the handshake.
    pub fn hello(socket: &Path) -> Self {
        let mut client = Self::connect(socket);
        match client.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: "weave-tests".into(),
        }) {
            Response::Hello { .. } => client,
            other => panic!("handshake failed: {other:?}"),
        }
    }

    pub fn send(&mut self, request: &Request) {
        write_request(&mut self.stream, request).unwrap();
    }

    pub fn recv(&mut self) -> Result<Response, FrameError> {
        read_response(&mut self.reader, DEFAULT_MAX_RESPONSE_FRAME)
    }

    pub fn call(&mut self, request: &Request) -> Response {
        self.send(request);
        self.recv().unwrap()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until EOF; the bytes read.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.reader.read_to_end(&mut out);
        out
    }

    /// Sends a generate request and collects events up to the end of the
    /// stream.
    pub fn generate(&mut self, request: GenerateRequest) -> Vec<Response> {
        self.send(&Request::Generate(request));
        self.collect_stream()
    }

    /// Events up to and including `Finished` or `Error`.
    pub fn collect_stream(&mut self) -> Vec<Response> {
        let mut events = Vec::new();
        loop {
            let event = self
                .recv()
                .unwrap_or_else(|e| panic!("stream broke: {e:?}"));
            let done = event.ends_generate_stream() || events.is_empty() && is_refusal(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

fn is_refusal(event: &Response) -> bool {
    matches!(event, Response::Error(_))
}

/// The typed error that ended a stream, if any.
pub fn stream_error(events: &[Response]) -> Option<ErrorCode> {
    match events.last() {
        Some(Response::Error(code)) => Some(code.clone()),
        _ => None,
    }
}

/// A digits generation request.
pub fn digits_request(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        model_id: "digits".into(),
        prompt: prompt.into(),
        negative_prompt: String::new(),
        width: None,
        height: None,
        steps: None,
        guidance: None,
        seed: Some(7),
        scheduler: None,
        batch: 1,
        tag: None,
        use_model_negative: true,
        init_image: None,
        mask: None,
        strength: None,
        loras: Vec::new(),
        preview_every: 0,
    }
}

/// A folder holding every file the broker's model check requires, each
/// `{}`: it passes the check and a real worker fails to load it.
pub fn write_placeholder_model(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for &(relative, required) in weave_common::pin::FOLDER_FILES {
        if required {
            let file = path.join(relative);
            let dir = file.parent().unwrap();
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(&file, b"{}").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// A line of `/proc/<pid>/status`, e.g. `CapEff`.
pub fn proc_status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The worker processes among the children of `pid` (from
/// /proc/<pid>/task/*/children, those whose name is `weave-worker`): a
/// broker's other child is its spawner (`weave-spawner`).
pub fn workers_of(pid: u32) -> Vec<u32> {
    children_named(pid, "weave-worker")
}

/// The children of `pid` whose `comm` is `name`.
pub fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok())
                        .filter(|child| {
                            std::fs::read_to_string(format!("/proc/{child}/comm"))
                                .is_ok_and(|comm| comm.trim_end() == name)
                        }),
                );
            }
        }
    }
    out
}
