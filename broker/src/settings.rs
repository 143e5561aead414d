//! The broker's view of `common::config`: loading with the mode's trusted
//! owners, and the config's syslog facility as the syslog crate's.
//!
//! The file decides model paths and the audit sink; a caller decides neither.
#![forbid(unsafe_code)]

use std::path::Path;

use weave_common::config::Facility;
pub use weave_common::config::{Config, ConfigErrors, ModelConfig};
use weave_common::proto::Mode;

/// Loads and checks `path`: user mode trusts only `euid`; system mode root
/// and the service account (`service_uid`), never a name from the file.
/// Each model folder's native size is read once here (a model without
/// `[model.defaults]` width/height defaults to it).
pub fn load(path: &Path, mode: Mode, trusted_uids: &[u32]) -> Result<Config, ConfigErrors> {
    let mut config = Config::load(path, mode, trusted_uids)?;
    config.read_native_sizes();
    Ok(config)
}

pub fn syslog_facility(facility: Facility) -> syslog::Facility {
    match facility {
        Facility::Daemon => syslog::Facility::LOG_DAEMON,
        Facility::User => syslog::Facility::LOG_USER,
        Facility::Auth => syslog::Facility::LOG_AUTH,
        Facility::Authpriv => syslog::Facility::LOG_AUTHPRIV,
        Facility::Local0 => syslog::Facility::LOG_LOCAL0,
        Facility::Local1 => syslog::Facility::LOG_LOCAL1,
        Facility::Local2 => syslog::Facility::LOG_LOCAL2,
        Facility::Local3 => syslog::Facility::LOG_LOCAL3,
        Facility::Local4 => syslog::Facility::LOG_LOCAL4,
        Facility::Local5 => syslog::Facility::LOG_LOCAL5,
        Facility::Local6 => syslog::Facility::LOG_LOCAL6,
        Facility::Local7 => syslog::Facility::LOG_LOCAL7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use weave_common::proto::Scheduler;

    const SAMPLE: &str = r#"
[limits]
queue_depth = 4
[bounds]
max_steps = 50
[audit]
sink = "/tmp/x.sock"
[[model]]
id = "tiny"
kind = "sd1"
path = "/models/tiny"
[model.defaults]
width = 64
height = 64
steps = 10
guidance = 1.0
scheduler = "ddim"
"#;

    #[test]
    fn sample_converts() {
        let config = Config::from_toml_str(SAMPLE, Path::new("/x.toml"), Mode::User).unwrap();
        assert_eq!(config.limits.queue_depth, 4);
        let defaults = config.model("tiny").unwrap().defaults();
        assert_eq!(defaults.scheduler, Scheduler::Ddim);
        assert_eq!((defaults.width, defaults.steps), (64, 10));
        assert_eq!(
            syslog_facility(config.audit.facility) as i32,
            libc::LOG_DAEMON
        );
    }

    #[test]
    fn world_writable_config_is_refused_with_a_fix() {
        let dir = std::env::temp_dir().join(format!("weave-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("weave.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let me = crate::syscalls::effective_uid();
        let error = load(&path, Mode::User, &[me]).unwrap_err().to_string();
        assert!(error.contains("fix:"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The parent directories up to / must be safe too; /tmp is sticky.
        let loaded = load(&path, Mode::User, &[me, 0]);
        assert!(loaded.is_ok(), "{}", loaded.unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
