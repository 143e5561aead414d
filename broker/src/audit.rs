//! Audit records through syslog (RFC 3164 over a Unix datagram socket).
//!
//! Records are `key=value` lines. Values a caller chose are escaped so they
//! cannot forge fields or lines. Keys never appear; prompts only when the
//! config says so. The `syslog` crate does not reconnect, so a failed send
//! drops the logger and the next record builds a fresh one: audit resumes as
//! soon as the sink is back.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

type SyslogLogger = Logger<LoggerBackend, Formatter3164>;

/// Longest a record may wait for room in the sink's queue before it goes
/// to stderr instead.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

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
            c if c.is_control() => {
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
            let sent = match severity {
                Severity::Info => logger.info(record.as_str()),
                Severity::Notice => logger.notice(record.as_str()),
                Severity::Warning => logger.warning(record.as_str()),
            };
            if sent.is_ok() {
                return;
            }
            // The sink went away (e.g. syslog restarted): reconnect once now.
            *guard = None;
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
}
