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
    ChannelStatsReport, JobInfo, JobState, ModelInfo, Scheduler, StatusReport,
};

use crate::client::{ClientError, Connection};
use crate::pool_view::{segment_lines, worker_lines, worker_state_name};
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
        // In a pool the lines from here to `device` are worker 0's; the
        // table under them has every worker.
        let first = if report.workers.len() > 1 {
            " (worker 0)"
        } else {
            ""
        };
        println!(
            "worker     {}, {} restarts{first}",
            worker_state_name(report.worker),
            report.worker_restarts
        );
        if let Some(error) = &report.worker_error {
            println!("           last start failed: {error}");
        }
        if let Some(memory) = &report.worker_memory {
            println!(
                "memory     {} resident, {} peak (worker)",
                human_bytes(memory.resident_bytes),
                human_bytes(memory.peak_bytes)
            );
        }
        println!("sandbox    {}", report.sandbox);
        match report.device {
            Some(device) => println!("device     {device}"),
            None => println!("device     not known until the worker starts"),
        }
        println!("workers    {}", report.workers.len());
        for line in worker_lines(&report.workers) {
            println!("  {line}");
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
            let mut state = vec![if !m.available {
                "UNAVAILABLE"
            } else if m.loaded {
                "loaded"
            } else {
                "available"
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
            if !m.available {
                println!("{:<20} {}", "", unavailable_reason(m));
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
            "{:<8} {:<8} {:<12} {:<16} {:<22} {:<10} {:<8} {:<6} AGE",
            "JOB", "UID", "TAG", "MODEL", "STATE", "PROGRESS", "DEVICE", "WORKER"
        );
        for j in jobs {
            let state = match (j.state, j.position, &j.error) {
                (JobState::Queued, Some(p), _) => format!("queued #{p}"),
                (JobState::Queued, None, _) => "queued".to_owned(),
                (JobState::Running, ..) if j.run_ms.is_none() => "loading model".to_owned(),
                (JobState::Running, ..) => "running".to_owned(),
                (JobState::Cancelling, ..) => "cancelling".to_owned(),
                (JobState::Finished, ..) => "finished".to_owned(),
                (JobState::Failed, _, Some(code)) => format!("failed: {}", code.name()),
                (JobState::Failed, _, None) => "failed".to_owned(),
            };
            let progress = if j.total > 0 {
                format!("{}/{}", j.step, j.total)
            } else {
                "-".to_owned()
            };
            let took = j
                .run_ms
                .map_or(String::new(), |ms| format!(" (ran {})", human_millis(ms)));
            println!(
                "{:<8} {:<8} {:<12} {:<16} {:<22} {:<10} {:<8} {:<6} {}{took}",
                j.job_id,
                j.owner_uid,
                j.tag.as_deref().unwrap_or("-"),
                j.model_id,
                state,
                progress,
                j.device.map_or("-".to_owned(), |d| d.to_string()),
                j.worker.map_or("-".to_owned(), |w| w.to_string()),
                human_duration(j.submitted_s_ago)
            );
        }
    }

    pub fn segments(&self, stats: &ChannelStatsReport) {
        if self.json {
            self.json_line(stats);
            return;
        }
        for line in segment_lines(stats) {
            println!("{line}");
        }
    }
}

/// What the human listing says under an unavailable model: the broker's
/// reason (admins get one), else where to find it.
pub fn unavailable_reason(model: &ModelInfo) -> &str {
    model
        .reason
        .as_deref()
        .unwrap_or("not available on this daemon; an administrator sees why with `sshmctl models`")
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
        CliError::WorkerDown { state, why } => json!({ "worker": state, "worker_error": why }),
        CliError::OutputExists { path }
        | CliError::OutputUnwritable { path, .. }
        | CliError::WriteImage { path, .. } => json!({ "path": path }),
        CliError::ReadInput { flag, path, .. } => json!({ "flag": flag, "path": path }),
        CliError::InputTooLarge {
            flag,
            path,
            len,
            max,
        } => json!({ "flag": flag, "path": path, "bytes": len, "max_bytes": max }),
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

/// `850ms`, `12.3s`, then as [`human_duration`].
pub fn human_millis(ms: u64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        ms => human_duration(ms / 1000),
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
    fn an_unavailable_model_shows_the_brokers_reason_or_where_to_find_it() {
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
            available: false,
            reason: None,
        };
        assert!(unavailable_reason(&model).contains("administrator"));
        model.reason = Some("path /m does not exist".into());
        assert_eq!(unavailable_reason(&model), "path /m does not exist");
    }

    #[test]
    fn run_times_read_naturally() {
        assert_eq!(human_millis(850), "850ms");
        assert_eq!(human_millis(12_340), "12.3s");
        assert_eq!(human_millis(125_000), "2m05s");
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
