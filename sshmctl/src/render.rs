//! Human and `--json` renderings of the daemon's answers.
//!
//! JSON output is the protocol's own types serialized with serde, one object
//! per line, so its field names are the ones `docs/PROTOCOL.md` documents.
#![forbid(unsafe_code)]

use serde::Serialize;
use serde_json::json;
use weave_common::proto::{
    ChannelDirection, ChannelStatsReport, JobInfo, JobState, ModelInfo, StatusReport, WorkerState,
};

use crate::client::Connection;
use crate::CliError;

pub struct Renderer {
    json: bool,
}

impl Renderer {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints one JSON line. Serializing our own plain data types cannot fail.
    pub fn json_line<T: Serialize>(&self, value: &T) {
        match serde_json::to_string(value) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("sshmctl: cannot encode JSON output: {e}"),
        }
    }

    pub fn done(&self, message: &str) {
        if self.json {
            self.json_line(&json!({ "ok": true, "message": message }));
        } else {
            println!("{message}");
        }
    }

    pub fn error(&self, err: &CliError, debug: bool) {
        if self.json {
            let code = match err {
                CliError::Client(crate::client::ClientError::Daemon(code)) => Some(code),
                _ => None,
            };
            self.json_line(&json!({
                "ok": false,
                "exit_code": err.exit_code(),
                "error": code.map(|c| c.name()).unwrap_or("client"),
                "detail": code,
                "message": err.to_string(),
            }));
        } else {
            eprintln!("sshmctl: {err}");
            if debug {
                eprintln!("debug: {err:?}");
            }
        }
    }

    pub fn status(&self, report: &StatusReport, conn: &Connection) {
        if self.json {
            self.json_line(report);
            return;
        }
        println!(
            "daemon     weave-broker {} ({:?} mode)",
            report.daemon_version, report.mode
        );
        println!("socket     {}", conn.path().display());
        println!(
            "you        {:?} of a {:?}-mode daemon",
            conn.role, conn.mode
        );
        if conn.server_version != env!("CARGO_PKG_VERSION") {
            println!(
                "note       sshmctl is {}, the daemon {}: upgrade them together",
                env!("CARGO_PKG_VERSION"),
                conn.server_version
            );
        }
        println!("uptime     {}", human_duration(report.uptime_s));
        match &report.loaded {
            Some(m) => println!(
                "model      {} (loaded {} ago, idle {}, {})",
                m.model_id,
                human_duration(m.loaded_for_s),
                human_duration(m.idle_for_s),
                human_bytes(m.memory_bytes)
            ),
            None => println!("model      none loaded"),
        }
        println!(
            "queue      {} waiting{}",
            report.queue_depth,
            if report.draining { " (draining)" } else { "" }
        );
        let worker = match report.worker {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Restarting => "restarting",
            WorkerState::Down => "down",
        };
        println!("worker     {worker}, {} restarts", report.worker_restarts);
        println!("sandbox    {}", report.sandbox);
        match report.device {
            Some(device) => println!("device     {device}"),
            None => println!("device     not known until the worker starts"),
        }
    }

    pub fn models(&self, models: &[ModelInfo]) {
        if self.json {
            self.json_line(&models);
            return;
        }
        if models.is_empty() {
            println!("no models configured; add [[model]] entries to the daemon's config");
            return;
        }
        println!(
            "{:<20} {:<6} {:<18} DEFAULTS (steps, cfg, size, scheduler) / BOUNDS",
            "ID", "KIND", "STATE"
        );
        for m in models {
            let mut state = vec![if m.loaded { "loaded" } else { "available" }];
            if m.pinned {
                state.push("pinned");
            }
            if m.quarantined {
                state.push("quarantined");
            }
            let d = &m.defaults;
            let b = &m.bounds;
            println!(
                "{:<20} {:<6} {:<18} {} steps, cfg {}, {}x{}, {} / size {}..{}x{}..{}, steps ≤ {}, batch ≤ {}",
                m.id,
                m.kind,
                state.join(","),
                d.steps,
                d.guidance,
                d.width,
                d.height,
                d.scheduler,
                b.min_width,
                b.max_width,
                b.min_height,
                b.max_height,
                b.max_steps,
                b.max_batch
            );
        }
    }

    pub fn jobs(&self, jobs: &[JobInfo]) {
        if self.json {
            self.json_line(&jobs);
            return;
        }
        if jobs.is_empty() {
            println!("no jobs");
            return;
        }
        println!(
            "{:<8} {:<8} {:<12} {:<16} {:<10} AGE",
            "JOB", "UID", "TAG", "MODEL", "STATE"
        );
        for j in jobs {
            let state = match (j.state, j.position) {
                (JobState::Queued, Some(p)) => format!("queued #{p}"),
                (JobState::Queued, None) => "queued".to_owned(),
                (JobState::Running, _) => "running".to_owned(),
                (JobState::Cancelling, _) => "cancelling".to_owned(),
            };
            println!(
                "{:<8} {:<8} {:<12} {:<16} {:<10} {}",
                j.job_id,
                j.owner_uid,
                j.tag.as_deref().unwrap_or("-"),
                j.model_id,
                state,
                human_duration(j.submitted_s_ago)
            );
        }
    }

    pub fn segments(&self, stats: &ChannelStatsReport) {
        if self.json {
            self.json_line(stats);
            return;
        }
        println!("key generation {}", stats.key_generation);
        println!(
            "{:<16} {:>6} {:>10} {:>10} {:>10} {:>6} {:>6} {:>8}",
            "DIRECTION", "SLOTS", "SLOT SIZE", "WRITE SEQ", "READ SEQ", "CRC", "TAG", "REPLAYS"
        );
        for s in &stats.segments {
            let dir = match s.direction {
                ChannelDirection::BrokerToWorker => "broker→worker",
                ChannelDirection::WorkerToBroker => "worker→broker",
            };
            println!(
                "{:<16} {:>6} {:>10} {:>10} {:>10} {:>6} {:>6} {:>8}",
                dir,
                s.slots,
                human_bytes(u64::from(s.slot_size)),
                s.write_seq,
                s.read_seq,
                s.crc_failures,
                s.tag_failures,
                s.replays_rejected
            );
        }
    }
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m05s");
        assert_eq!(human_duration(7260), "2h01m");
        assert_eq!(human_duration(90_000), "1d01h");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
