//! Human and `--json` renderings of the daemon's answers.
//!
//! JSON output is the protocol's own types serialized with serde, one object
//! per line, so its field names are the ones `docs/PROTOCOL.md` documents;
//! enum values are spelled as on the command line and in configs
//! (`"mode":"user"`, `"scheduler":"dpmpp_2m_karras"`), see [`cli_spellings`].
#![forbid(unsafe_code)]

use serde::Serialize;
use serde_json::{json, Value};
use weave_common::proto::{
    ChannelDirection, ChannelStatsReport, JobInfo, JobState, ModelInfo, Scheduler, StatusReport,
    WorkerState,
};

use crate::client::{ClientError, Connection};
use crate::CliError;

/// Object keys whose values are protocol enums.
const ENUM_KEYS: [&str; 6] = ["mode", "role", "worker", "state", "scheduler", "direction"];

/// Rewrites enum values under [`ENUM_KEYS`] from serde's variant names to
/// the CLI's spellings: schedulers by their config names, the rest in
/// snake_case (`BrokerToWorker` → `broker_to_worker`).
pub fn cli_spellings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    Value::String(text) if ENUM_KEYS.contains(&key.as_str()) => {
                        *text = cli_name(key, text);
                    }
                    _ => cli_spellings(item),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(cli_spellings),
        _ => {}
    }
}

fn cli_name(key: &str, variant: &str) -> String {
    if key == "scheduler" {
        if let Some(scheduler) = Scheduler::ALL.into_iter().find(|s| {
            serde_json::to_value(s)
                .ok()
                .as_ref()
                .and_then(Value::as_str)
                == Some(variant)
        }) {
            return scheduler.as_str().to_owned();
        }
    }
    let mut name = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    name
}

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
        let line = serde_json::to_value(value).and_then(|mut value| {
            cli_spellings(&mut value);
            serde_json::to_string(&value)
        });
        match line {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("sshmctl: cannot encode JSON output: {e}"),
        }
    }

    /// A side note for a person (never part of the results): on stderr.
    pub fn note(&self, message: &str) {
        eprintln!("sshmctl: {message}");
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
            let mut object = json!({
                "ok": false,
                "exit_code": err.exit_code(),
                "error": err.kind(),
                "message": err.to_string(),
            });
            if let (Value::Object(map), Value::Object(extra)) = (&mut object, error_fields(err)) {
                for (key, value) in extra {
                    map.entry(key).or_insert(value);
                }
            }
            self.json_line(&object);
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
            let with_availability: Vec<Value> = models
                .iter()
                .map(|m| {
                    let mut value = serde_json::to_value(m).unwrap_or(Value::Null);
                    let (available, reason) = availability(m);
                    if let Value::Object(map) = &mut value {
                        map.insert("available".into(), available.into());
                        if let Some(reason) = reason {
                            map.insert("reason".into(), reason.into());
                        }
                    }
                    value
                })
                .collect();
            self.json_line(&with_availability);
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
            let mut state = vec![match availability(m) {
                (false, _) => "UNAVAILABLE",
                (true, _) if m.loaded => "loaded",
                (true, _) => "available",
            }];
            if m.pinned {
                state.push("pinned");
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
            if let (false, Some(reason)) = availability(m) {
                println!("{:<20} {reason}", "");
            }
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

/// Whether a job on `model` can run now, and why not. From what the
/// protocol carries today (the quarantine flag); when the broker reports
/// availability itself (a model whose files cannot be used), this reads
/// that instead.
pub fn availability(model: &ModelInfo) -> (bool, Option<&'static str>) {
    if model.quarantined {
        return (
            false,
            Some(
                "quarantined after repeated worker crashes; an administrator can \
                 release it with `sshmctl quarantine clear ID`",
            ),
        );
    }
    (true, None)
}

/// The typed details of an error, as JSON fields next to `error`.
fn error_fields(err: &CliError) -> Value {
    match err {
        CliError::Client(ClientError::Daemon(code)) => {
            // serde writes `{"Variant": {fields}}`; keep the fields.
            match serde_json::to_value(code) {
                Ok(Value::Object(map)) => map.into_iter().next().map_or(json!({}), |(_, v)| v),
                _ => json!({}),
            }
        }
        CliError::Client(
            ClientError::NotRunning { path, .. }
            | ClientError::PermissionDenied { path, .. }
            | ClientError::Connect { path, .. }
            | ClientError::Rejected { path },
        ) => json!({ "socket": path }),
        CliError::BadFlag {
            flag,
            field,
            allowed,
        } => json!({ "flag": flag, "field": field, "allowed": allowed }),
        CliError::UnknownModel {
            given,
            suggestion,
            ids,
        } => json!({ "model_id": given, "suggestion": suggestion, "models": ids }),
        CliError::QueueExpired { job_id } => json!({ "job_id": job_id }),
        CliError::WorkerDown { state } => json!({ "worker": state }),
        CliError::OutputExists { path }
        | CliError::OutputUnwritable { path, .. }
        | CliError::WriteImage { path, .. } => json!({ "path": path }),
        CliError::Client(ClientError::Frame(_) | ClientError::Unexpected(_))
        | CliError::Usage(_)
        | CliError::Output(_)
        | CliError::Hash(_) => json!({}),
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m05s");
        assert_eq!(human_duration(7260), "2h01m");
        assert_eq!(human_duration(90_000), "1d01h");
    }

    #[test]
    fn a_quarantined_model_is_unavailable_with_a_reason() {
        let mut model = ModelInfo {
            id: "digits".into(),
            kind: "sd1".into(),
            loaded: false,
            pinned: false,
            quarantined: false,
            defaults: weave_common::proto::GenerationDefaults {
                width: 32,
                height: 32,
                steps: 20,
                guidance: 5.0,
                scheduler: Scheduler::Ddim,
            },
            bounds: weave_common::validate::ParamBounds::default(),
        };
        assert_eq!(availability(&model), (true, None));
        model.quarantined = true;
        let (available, reason) = availability(&model);
        assert!(!available);
        assert!(reason.unwrap().contains("quarantine clear"));
    }

    #[test]
    fn json_enums_use_the_cli_spellings() {
        let mut value = json!({
            "mode": "User",
            "defaults": { "scheduler": "DpmPp2mKarras" },
            "segments": [{ "direction": "BrokerToWorker" }],
            "id": "DpmPp2mKarras",
        });
        cli_spellings(&mut value);
        assert_eq!(
            value,
            json!({
                "mode": "user",
                "defaults": { "scheduler": "dpmpp_2m_karras" },
                "segments": [{ "direction": "broker_to_worker" }],
                "id": "DpmPp2mKarras",
            })
        );
        for scheduler in Scheduler::ALL {
            let mut value = json!({ "scheduler": serde_json::to_value(scheduler).unwrap() });
            cli_spellings(&mut value);
            assert_eq!(value["scheduler"], scheduler.as_str());
        }
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
