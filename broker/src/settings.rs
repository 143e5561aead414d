//! The broker's configuration (`weave.toml`): parsing and the ownership and
//! permission checks a config file must pass before it is trusted.
//!
//! The file decides model paths and the audit sink; a caller decides neither.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use weave_common::proto::{GenerationDefaults, Scheduler};
use weave_common::validate::ParamBounds;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the config file {path}: {source}; create it or pass --config PATH")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "refusing the config file {path}: {problem}; fix it with chown/chmod \
         (it must not be writable by group or others)"
    )]
    Permissions { path: PathBuf, problem: String },
    #[error("the config is inconsistent: {0}")]
    Invalid(String),
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSection {
    pub socket: Option<PathBuf>,
    pub client_group: String,
    pub admin_group: String,
    pub user: String,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            socket: None,
            client_group: "weave".to_owned(),
            admin_group: "weave-admin".to_owned(),
            user: "weave".to_owned(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub queue_depth: u32,
    pub per_client_queue_depth: u32,
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    pub queue_deadline_s: u64,
    pub job_timeout_s: u64,
    pub idle_unload_s: u64,
    pub bounds: ParamBounds,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue_depth: 32,
            per_client_queue_depth: 8,
            rate_per_minute: 60,
            rate_burst: 10,
            queue_deadline_s: 600,
            job_timeout_s: 600,
            idle_unload_s: 900,
            bounds: ParamBounds::default(),
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    pub sink: PathBuf,
    pub log_prompts: bool,
    pub facility: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            sink: PathBuf::from("/dev/log"),
            log_prompts: false,
            facility: "daemon".to_owned(),
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    pub device: String,
    pub allow_degraded_sandbox: bool,
    pub seccomp_debug: bool,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            device: "cpu".to_owned(),
            allow_degraded_sandbox: false,
            seccomp_debug: false,
        }
    }
}

/// `[output]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    pub png_parameters: bool,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            png_parameters: true,
        }
    }
}

/// `[model.defaults]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelDefaults {
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    pub scheduler: String,
}

impl Default for ModelDefaults {
    fn default() -> Self {
        Self {
            width: 512,
            height: 512,
            steps: 25,
            guidance: 7.5,
            scheduler: "euler".to_owned(),
        }
    }
}

/// One `[[model]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub kind: String,
    pub path: PathBuf,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub defaults: ModelDefaults,
}

impl ModelEntry {
    /// The defaults in wire form; the scheduler name was checked at load.
    pub fn generation_defaults(&self) -> GenerationDefaults {
        GenerationDefaults {
            width: self.defaults.width,
            height: self.defaults.height,
            steps: self.defaults.steps,
            guidance: self.defaults.guidance,
            scheduler: self.defaults.scheduler.parse().unwrap_or(Scheduler::Euler),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub daemon: DaemonSection,
    pub limits: Limits,
    pub audit: AuditSection,
    pub worker: WorkerSection,
    pub output: OutputSection,
    pub model: Vec<ModelEntry>,
}

/// Who may own the config file.
#[derive(Debug, Clone, Copy)]
pub enum TrustedOwners {
    /// User mode: only this uid.
    User(u32),
    /// System mode: root or the service user.
    RootOr(Option<u32>),
}

impl Settings {
    /// Parses TOML text and checks its internal consistency.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SettingsError> {
        let settings: Settings = toml::from_str(text).map_err(|error| SettingsError::Parse {
            path: path.to_owned(),
            message: error.message().to_owned(),
        })?;
        settings.check()?;
        Ok(settings)
    }

    /// Checks the file's (and its directory's) ownership and mode, then reads it.
    pub fn load(path: &Path, owners: TrustedOwners) -> Result<Self, SettingsError> {
        check_trusted(path, owners)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            check_trusted(dir, owners)?;
        }
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    fn check(&self) -> Result<(), SettingsError> {
        let mut ids = HashSet::new();
        for model in &self.model {
            if model.id.is_empty()
                || model.id.len() > 64
                || !model
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(SettingsError::Invalid(format!(
                    "model id {:?} must be 1-64 characters of A-Z a-z 0-9 - _ .",
                    model.id
                )));
            }
            if !ids.insert(model.id.as_str()) {
                return Err(SettingsError::Invalid(format!(
                    "model id {:?} appears twice",
                    model.id
                )));
            }
            if model.defaults.scheduler.parse::<Scheduler>().is_err() {
                return Err(SettingsError::Invalid(format!(
                    "model {:?}: unknown scheduler {:?}",
                    model.id, model.defaults.scheduler
                )));
            }
        }
        let limits = &self.limits;
        for model in &self.model {
            weave_common::validate::validate_defaults(&model.generation_defaults(), &limits.bounds)
                .map_err(|error| {
                    SettingsError::Invalid(format!("model {:?} defaults: {error}", model.id))
                })?;
        }
        if limits.queue_depth == 0 || limits.per_client_queue_depth == 0 {
            return Err(SettingsError::Invalid(
                "limits.queue_depth and limits.per_client_queue_depth must be at least 1".into(),
            ));
        }
        if limits.rate_per_minute == 0 || limits.rate_burst == 0 {
            return Err(SettingsError::Invalid(
                "limits.rate_per_minute and limits.rate_burst must be at least 1".into(),
            ));
        }
        if limits.job_timeout_s == 0 || limits.queue_deadline_s == 0 {
            return Err(SettingsError::Invalid(
                "limits.job_timeout_s and limits.queue_deadline_s must be at least 1".into(),
            ));
        }
        syslog_facility(&self.audit.facility)?;
        Ok(())
    }

    /// The configured model with this id.
    pub fn model(&self, id: &str) -> Option<&ModelEntry> {
        self.model.iter().find(|model| model.id == id)
    }
}

/// The syslog facility named in `[audit] facility`.
pub fn syslog_facility(name: &str) -> Result<syslog::Facility, SettingsError> {
    name.parse::<syslog::Facility>().map_err(|()| {
        SettingsError::Invalid(format!("audit.facility {name:?} is not a syslog facility"))
    })
}

fn check_trusted(path: &Path, owners: TrustedOwners) -> Result<(), SettingsError> {
    let meta = std::fs::metadata(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let owner_ok = match owners {
        TrustedOwners::User(uid) => meta.uid() == uid,
        TrustedOwners::RootOr(service) => meta.uid() == 0 || Some(meta.uid()) == service,
    };
    if !owner_ok {
        let wanted = match owners {
            TrustedOwners::User(uid) => format!("uid {uid}"),
            TrustedOwners::RootOr(_) => "root or the service user".to_owned(),
        };
        return Err(SettingsError::Permissions {
            path: path.to_owned(),
            problem: format!("it is owned by uid {}, expected {wanted}", meta.uid()),
        });
    }
    let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky_dir {
        return Err(SettingsError::Permissions {
            path: path.to_owned(),
            problem: format!(
                "its mode {:o} lets group or others write it",
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SAMPLE: &str = r#"
[daemon]
client_group = "webapp"
[limits]
queue_depth = 4
[limits.bounds]
max_steps = 50
[audit]
sink = "/tmp/x.sock"
[[model]]
id = "digits"
kind = "digits"
path = "/models/digits"
[model.defaults]
width = 32
height = 32
steps = 10
guidance = 1.0
scheduler = "ddim"
"#;

    #[test]
    fn sample_parses() {
        let settings = Settings::from_toml(SAMPLE, Path::new("x")).unwrap();
        assert_eq!(settings.limits.queue_depth, 4);
        assert_eq!(settings.limits.bounds.max_steps, 50);
        assert_eq!(settings.daemon.client_group, "webapp");
        assert_eq!(
            settings
                .model("digits")
                .unwrap()
                .generation_defaults()
                .scheduler,
            Scheduler::Ddim
        );
    }

    #[test]
    fn unknown_keys_and_bad_ids_are_refused() {
        assert!(Settings::from_toml("[limits]\nqueue_dept = 1", Path::new("x")).is_err());
        let bad = "[[model]]\nid = \"../x\"\nkind = \"k\"\npath = \"/p\"";
        assert!(matches!(
            Settings::from_toml(bad, Path::new("x")),
            Err(SettingsError::Invalid(_))
        ));
    }

    #[test]
    fn world_writable_config_is_refused() {
        let dir = std::env::temp_dir().join(format!("weave-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("weave.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let me = crate::sys::effective_uid();
        let error = Settings::load(&path, TrustedOwners::User(me)).unwrap_err();
        assert!(
            error.to_string().contains("lets group or others write"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Settings::load(&path, TrustedOwners::User(me)).unwrap();
        let error = Settings::load(&path, TrustedOwners::User(me + 1)).unwrap_err();
        assert!(error.to_string().contains("owned by uid"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
