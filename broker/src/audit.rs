//! Audit records through syslog (RFC 3164 over a Unix datagram socket).
//!
//! Records are `key=value` lines. Values a caller chose are escaped so they
//! cannot forge fields or lines. Keys never appear; prompts only when the
//! config says so. The `syslog` crate does not reconnect, so a failed send
//! drops the logger and the next record builds a fresh one: audit resumes as
//! soon as the sink is back.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use std::time::Duration;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

type SyslogLogger = Logger<LoggerBackend, Formatter3164>;

/// Longest a record may wait for room in the sink's queue before it goes
/// to stderr instead (records that are not flood-prone; those never wait).
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Events any connected peer can cause once per connection or request, as
/// fast as it likes. They are sent without waiting: when the sink is full
/// they are counted and reported as `event=audit_dropped count=N` by the
/// next record that gets through.
const FLOOD_PRONE_EVENTS: [&str; 6] = [
    "connection_rejected",
    "connection_limit",
    "invalid_request",
    "generate_refused",
    "not_permitted",
    "client_disconnected",
];

fn is_flood_prone(record: &AuditRecord) -> bool {
    let event = record
        .as_str()
        .strip_prefix("event=")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("");
    FLOOD_PRONE_EVENTS.contains(&event)
}

/// How serious a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Notice,
    Warning,
}

/// The broker's audit trail.
pub struct AuditLog {
    sink: PathBuf,
    facility: Facility,
    log_prompts: bool,
    logger: Mutex<Option<SyslogLogger>>,
    /// Records the sink had no room for since the last one it took.
    dropped: AtomicU64,
}

/// A record under construction: `AuditRecord::new("event").field("uid", 5)`.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    line: String,
}

impl AuditRecord {
    pub fn new(event: &str) -> Self {
        Self {
            line: format!("event={event}"),
        }
    }

    /// Adds `key=value`; the value is escaped (see [`escape_value`]).
    pub fn field(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        let _ = write!(self.line, " {key}={}", escape_value(&value.to_string()));
        self
    }

    pub fn as_str(&self) -> &str {
        &self.line
    }
}

/// Unicode format and bidirectional-control characters (and the line and
/// paragraph separators): invisible, or reordering what a reader of the log
/// sees (a right-to-left override can make `outcome=ok` display as
/// something else), so they are escaped like control characters.
pub(crate) fn is_format_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Quotes a value when needed and escapes quotes, backslashes and every
/// control character, so one record is always one line of fields.
pub fn escape_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_format_or_bidi(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl AuditLog {
    pub fn new(sink: PathBuf, facility: Facility, log_prompts: bool) -> Self {
        Self {
            sink,
            facility,
            log_prompts,
            logger: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether prompts may be recorded.
    pub fn log_prompts(&self) -> bool {
        self.log_prompts
    }

    /// Sends one record; if the sink is gone, the record is written to stderr
    /// so it is not lost, and the next record tries the sink again.
    pub fn record(&self, severity: Severity, record: &AuditRecord) {
        let mut guard = match self.logger.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for _attempt in 0..2 {
            if guard.is_none() {
                *guard = self.connect();
            }
            let Some(logger) = guard.as_mut() else { break };
            let best_effort = is_flood_prone(record);
            if let LoggerBackend::Unix(socket) = &logger.backend {
                // Records a caller can trigger at will never wait for room
                // in the sink (see below); the others wait SEND_TIMEOUT.
                if socket.set_nonblocking(best_effort).is_err() {
                    *guard = None;
                    continue;
                }
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                let note = AuditRecord::new("audit_dropped").field("count", dropped);
                if logger.warning(note.as_str()).is_ok() {
                    self.dropped.fetch_sub(dropped, Ordering::Relaxed);
                }
            }
            let sent = match severity {
                Severity::Info => logger.info(record.as_str()),
                Severity::Notice => logger.notice(record.as_str()),
                Severity::Warning => logger.warning(record.as_str()),
            };
            match sent {
                Ok(()) => return,
                // The sink is alive but full (a slow or flooded syslog) and
                // the record is one a caller can trigger at will: count it
                // and move on. Waiting here, under the lock every
                // connection thread and the scheduler share, let a flood of
                // rejected connections stall the job queue for seconds.
                Err(syslog::Error::Io(e) | syslog::Error::Write(e))
                    if best_effort && e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // The sink went away (e.g. syslog restarted): reconnect
                // once now.
                Err(_) => *guard = None,
            }
        }
        eprintln!("weave-broker audit (sink unavailable): {}", record.as_str());
    }

    fn connect(&self) -> Option<SyslogLogger> {
        let formatter = Formatter3164 {
            facility: self.facility,
            hostname: None,
            process: "weave-broker".to_owned(),
            pid: std::process::id(),
        };
        // Built by hand rather than with `syslog::unix_custom` to bound the
        // send: a stalled syslog must not stall the connection threads.
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect(&self.sink).ok()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT)).ok()?;
        Some(Logger::new(LoggerBackend::Unix(socket), formatter))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_cannot_forge_fields_or_lines() {
        let record = AuditRecord::new("x")
            .field("tag", "a b=c\n event=forged")
            .field("uid", 5);
        assert_eq!(
            record.as_str(),
            r#"event=x tag="a b=c\u{a} event=forged" uid=5"#
        );
        assert_eq!(escape_value(""), "\"\"");
    }

    #[test]
    fn format_and_bidi_characters_are_escaped() {
        // A right-to-left override, a zero-width space, a BOM, a line
        // separator and a tag character: none reaches the log raw.
        let record =
            AuditRecord::new("x").field("tag", "ok\u{202E}deined\u{200B}\u{FEFF}\u{2028}\u{E0041}");
        assert_eq!(
            record.as_str(),
            r#"event=x tag="ok\u{202e}deined\u{200b}\u{feff}\u{2028}\u{e0041}""#
        );
        // Ordinary non-ASCII text stays readable.
        assert_eq!(escape_value("café"), "\"café\"");
    }

    #[test]
    fn records_reach_the_sink_and_survive_its_restart() {
        let dir = std::env::temp_dir().join(format!("weave-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let sink = UnixDatagram::bind(&path).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let audit = AuditLog::new(path.clone(), Facility::LOG_AUTH, false);
        audit.record(Severity::Notice, &AuditRecord::new("one").field("uid", 7));
        let mut buf = [0u8; 1024];
        let n = sink.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.contains("weave-broker["), "{text}");
        assert!(text.ends_with("event=one uid=7"), "{text}");

        // Sink restarts: a new socket at the same path.
        drop(sink);
        std::fs::remove_file(&path).unwrap();
        audit.record(Severity::Info, &AuditRecord::new("lost"));
        let sink = UnixDatagram::bind(&path).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        audit.record(Severity::Info, &AuditRecord::new("two"));
        let n = sink.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.ends_with("event=two"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_sink_never_stalls_flood_prone_records_and_the_loss_is_reported() {
        let dir = std::env::temp_dir().join(format!("weave-audit-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        // A sink that does not read: its queue fills after a few records.
        let sink = UnixDatagram::bind(&path).unwrap();
        let audit = AuditLog::new(path.clone(), Facility::LOG_AUTH, false);
        let flood = AuditRecord::new("connection_rejected").field("uid", 1);
        assert!(is_flood_prone(&flood));
        assert!(!is_flood_prone(&AuditRecord::new("job")));
        let start = std::time::Instant::now();
        for _ in 0..500 {
            audit.record(Severity::Warning, &flood);
        }
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "500 records into a full sink took {:?}",
            start.elapsed()
        );
        let dropped = audit.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "the kernel queued all 500 records?");
        // The sink drains: the next record reports the loss first.
        sink.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];
        while sink.recv(&mut buf).is_ok() {}
        audit.record(Severity::Info, &AuditRecord::new("job").field("job", 1));
        sink.set_nonblocking(false).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = sink.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            text.ends_with(&format!("event=audit_dropped count={dropped}")),
            "{text}"
        );
        let n = sink.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("event=job job=1"));
        assert_eq!(audit.dropped.load(Ordering::Relaxed), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
