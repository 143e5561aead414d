//! What the sshmctl test files share: a user-mode broker serving the
//! digits model, and readers for sshmctl's output and PNGs.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Command, Output};

use weave_common::proto::{JobState, Request, Response};
use weave_tests::{
    require_digits, require_root, target_bin, AuditSink, BrokerProcess, Client, Scratch, TestConfig,
};

pub struct Daemon {
    pub broker: BrokerProcess,
    pub sink: AuditSink,
    pub scratch: Scratch,
}

impl Daemon {
    pub fn start(name: &str, limits: &str) -> Option<Self> {
        Self::start_with(name, limits, |_| String::new())
    }

    /// Like [`Daemon::start`], with tables (`[[lora]]`, more models) that
    /// `extra(scratch folder)` returns appended to the config.
    pub fn start_with(
        name: &str,
        limits: &str,
        extra: impl FnOnce(&std::path::Path) -> String,
    ) -> Option<Self> {
        Self::start_configured(name, |config, scratch| {
            config.limits = limits.to_owned();
            config.extra = extra(scratch);
        })
    }

    /// Like [`Daemon::start`] (4 default steps), with the config changed by
    /// `change(config, scratch folder)` first (e.g. its `[worker]` lines).
    pub fn start_configured(
        name: &str,
        change: impl FnOnce(&mut TestConfig, &std::path::Path),
    ) -> Option<Self> {
        if !require_root(name) || !require_digits(name) {
            return None;
        }
        let scratch = Scratch::new(name);
        let sink = AuditSink::bind(scratch.join("audit.sock"));
        let etc = scratch.join("etc");
        std::fs::create_dir(&etc).unwrap();
        let mut config = TestConfig::digits(&sink.path);
        config.steps = 4;
        change(&mut config, &scratch.join("."));
        let config = config.write(&etc);
        let broker = BrokerProcess::start_user(&scratch, &config);
        Some(Self {
            broker,
            sink,
            scratch,
        })
    }

    pub fn sshmctl_command(&self) -> Command {
        let mut command = Command::new(target_bin("sshmctl"));
        command
            .arg("--socket")
            .arg(&self.broker.socket)
            .env_remove("WEAVE_SOCKET");
        command
    }

    pub fn sshmctl(&self, args: &[&str]) -> Output {
        self.sshmctl_command().args(args).output().unwrap()
    }

    pub fn running_jobs(&self) -> Vec<u64> {
        match Client::hello(&self.broker.socket).call(&Request::AllJobs) {
            // Live jobs, not the history of ended ones.
            Response::Jobs(jobs) => jobs
                .iter()
                .filter(|j| !matches!(j.state, JobState::Finished | JobState::Failed))
                .map(|j| j.job_id)
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn has_running_job(&self) -> bool {
        match Client::hello(&self.broker.socket).call(&Request::AllJobs) {
            Response::Jobs(jobs) => jobs.iter().any(|j| j.state == JobState::Running),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Width and height from a PNG's IHDR, and its RGB8 pixels.
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    pixels.truncate(info.buffer_size());
    assert_eq!(info.color_type, png::ColorType::Rgb, "digits PNGs are RGB8");
    (info.width, info.height, pixels)
}

/// The PNG's A1111 `parameters` text (tEXt or iTXt).
pub fn png_parameters(bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .filter(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .chain(
            info.utf8_text
                .iter()
                .filter(|t| t.keyword == "parameters")
                .filter_map(|t| t.get_text().ok()),
        )
        .next()
        .unwrap_or_else(|| panic!("no parameters chunk"))
}
