//! User and system mode: where the config and the socket live, who owns
//! them, and how the listening socket is created (or taken from systemd).
#![forbid(unsafe_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use weave_common::config::{default_socket_path, Config, EnvPaths};
use weave_common::proto::Mode;

use crate::syscalls;

/// Why the daemon cannot set itself up.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error("{0}")]
    Usage(String),
    /// A default path needs an environment variable that is not set
    /// (the message says which and what to pass instead).
    #[error("{0}")]
    Environment(String),
    #[error("system mode must be started as root (it drops to the service user itself)")]
    SystemNeedsRoot,
    #[error(
        "--user refuses to run as root: a user-mode broker keeps the uid it was started \
         with, and uid 0 owns the system's files; use --system (it drops to daemon.user), \
         or start --user as the user it serves"
    )]
    UserModeAsRoot,
    #[error("another broker is already listening on {0}; stop it first")]
    AlreadyRunning(PathBuf),
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("the socket folder {path} {problem}: whoever can write it can replace the socket; {fix}, or choose another --socket")]
    UnsafeSocketDir {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("group {0:?} does not exist; create it (groupadd) or change daemon.client_group")]
    NoSuchGroup(String),
    #[error("user {0:?} does not exist; create it (useradd --system) or change daemon.user")]
    NoSuchUser(String),
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

pub const USAGE: &str = "usage: weave-broker [--user | --system] [--config PATH] [--socket PATH]
       weave-broker --help | --version

  --user           run for the current user (default unless started as root)
  --system         run as the system service (start as root; drops to the service user)
  --config PATH    read this config instead of the mode's default
  --socket PATH    listen on this path instead of the mode's default
  -h, --help       print this help and exit
  -V, --version    print the version and exit

Started in the background of an interactive terminal (`weave-broker &`), the
broker writes its log to $XDG_STATE_HOME/weave/weave-broker.log
(~/.local/state/weave/weave-broker.log) instead of the terminal.
See weave-broker(8) and weave.toml(5).";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Run(Options),
    /// `--help`: print [`USAGE`] to stdout, exit 0.
    Help,
    /// `--version`: print the version to stdout, exit 0.
    Version,
}

impl Invocation {
    /// Parses arguments (without the program name); `--help` and
    /// `--version` win over everything else on the line.
    pub fn parse(args: impl IntoIterator<Item = String>, euid: u32) -> Result<Self, ModeError> {
        let args: Vec<String> = args.into_iter().collect();
        // Only flags count: a PATH that happens to read "--help" is the
        // value of --config/--socket, not a request for help.
        let flag = |names: [&str; 2]| {
            args.iter().enumerate().any(|(index, arg)| {
                names.contains(&arg.as_str())
                    && (index == 0 || !matches!(args[index - 1].as_str(), "--config" | "--socket"))
            })
        };
        if flag(["--help", "-h"]) {
            return Ok(Invocation::Help);
        }
        if flag(["--version", "-V"]) {
            return Ok(Invocation::Version);
        }
        Options::parse(args, euid).map(Invocation::Run)
    }
}

impl Options {
    /// Parses arguments (without the program name). `euid` picks the default mode.
    pub fn parse(args: impl IntoIterator<Item = String>, euid: u32) -> Result<Self, ModeError> {
        let mut mode = None;
        let mut config = None;
        let mut socket = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--user" => mode = Some(Mode::User),
                "--system" => mode = Some(Mode::System),
                "--config" | "--socket" => {
                    let value = args
                        .next()
                        .ok_or_else(|| ModeError::Usage(format!("{arg} needs a PATH\n{USAGE}")))?;
                    let target = if arg == "--config" {
                        &mut config
                    } else {
                        &mut socket
                    };
                    *target = Some(PathBuf::from(value));
                }
                other => {
                    return Err(ModeError::Usage(format!(
                        "unknown argument {other:?}\n{USAGE}"
                    )))
                }
            }
        }
        let mode = mode.unwrap_or(if euid == 0 { Mode::System } else { Mode::User });
        Ok(Self {
            mode,
            config,
            socket,
        })
    }

    /// The config path: `--config`, else the mode's default.
    pub fn config_path(&self) -> Result<PathBuf, ModeError> {
        if let Some(path) = &self.config {
            return Ok(path.clone());
        }
        Config::default_path(self.mode, &EnvPaths::from_process())
            .map_err(|problem| ModeError::Environment(problem.to_string()))
    }

    /// The socket path: `--socket`, else the config's, else the mode default.
    pub fn socket_path(&self, configured: Option<&Path>) -> Result<PathBuf, ModeError> {
        if let Some(path) = self.socket.as_deref().or(configured) {
            return Ok(path.to_owned());
        }
        default_socket_path(self.mode, &EnvPaths::from_process())
            .map_err(|problem| ModeError::Environment(problem.to_string()))
    }
}

/// The escape hatch for a throwaway root-only sandbox (a CI container, the
/// demo run as root): with this variable set to `1`, `--user` as root is
/// allowed. Documented in docs/BROKER.md and weave-broker(8).
pub const ALLOW_ROOT_USER_MODE_ENV: &str = "WEAVE_ALLOW_ROOT_USER_MODE";

/// Refuses a user-mode broker started as root (euid 0) unless `hatch` (the
/// value of [`ALLOW_ROOT_USER_MODE_ENV`]) is exactly `1`.
pub fn check_user_mode_uid(
    mode: Mode,
    euid: u32,
    hatch: Option<&std::ffi::OsStr>,
) -> Result<(), ModeError> {
    let allowed = hatch.is_some_and(|value| value == "1");
    match mode {
        Mode::User if euid == 0 && !allowed => Err(ModeError::UserModeAsRoot),
        Mode::User | Mode::System => Ok(()),
    }
}

/// Ownership of the socket in system mode.
#[derive(Debug, Clone, Copy)]
pub struct SystemOwnership {
    pub service_uid: u32,
    pub client_gid: u32,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModeError + '_ {
    move |source| ModeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the socket directory (if missing) and binds the socket with the
/// mode's permissions: user 0700/0600; system dir 0750 and socket 0660 owned
/// by the service user with group `client_group`.
pub fn bind_socket(
    path: &Path,
    system: Option<SystemOwnership>,
) -> Result<UnixListener, ModeError> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir.exists() {
        check_existing_dir(dir, system)?;
    } else {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mode = if system.is_some() { 0o750 } else { 0o700 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(io_error(dir))?;
        if let Some(owners) = system {
            std::os::unix::fs::chown(dir, Some(owners.service_uid), Some(owners.client_gid))
                .map_err(io_error(dir))?;
        }
    }
    remove_stale_socket(path)?;
    // Create the socket 0600 from the start (no window where it is more
    // open), then widen in system mode once the group is right.
    let previous = syscalls::set_umask(0o177);
    let bound = UnixListener::bind(path);
    syscalls::set_umask(previous);
    let listener = bound.map_err(io_error(path))?;
    if let Some(owners) = system {
        std::os::unix::fs::chown(path, Some(owners.service_uid), Some(owners.client_gid))
            .map_err(io_error(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(io_error(path))?;
    }
    Ok(listener)
}

/// A socket folder that was already there must belong to this process's
/// uid (or, in system mode, the service account) and must not be writable
/// by group or others — the rule the config file gets.
fn check_existing_dir(dir: &Path, system: Option<SystemOwnership>) -> Result<(), ModeError> {
    let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
    let euid = syscalls::effective_uid();
    let unsafe_dir = |problem: String, fix: String| ModeError::UnsafeSocketDir {
        path: dir.to_owned(),
        problem,
        fix,
    };
    let owner_ok =
        meta.uid() == euid || system.is_some_and(|owners| meta.uid() == owners.service_uid);
    if !owner_ok {
        return Err(unsafe_dir(
            format!("is owned by uid {}, not {euid}", meta.uid()),
            format!("`chown {euid} {}`", dir.display()),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(
            format!("is group- or world-writable (mode {mode:o})"),
            format!("`chmod go-w {}`", dir.display()),
        ));
    }
    Ok(())
}

/// Removes a socket left by a broker that is gone; refuses when one answers.
fn remove_stale_socket(path: &Path) -> Result<(), ModeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_error(path)(source)),
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(ModeError::NotASocket {
            path: path.to_owned(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ModeError::AlreadyRunning(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(io_error(path))
}

/// Removes our socket at shutdown, if it is still the one we bound.
pub fn remove_socket(path: &Path, bound_ino: Option<u64>) {
    if let (Ok(meta), Some(ino)) = (std::fs::symlink_metadata(path), bound_ino) {
        if meta.ino() == ino {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The listening socket systemd passed (`LISTEN_FDS`), if any.
pub fn activated_listener() -> Result<Option<UnixListener>, ModeError> {
    let fds = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect::<Vec<_>>(),
        Err(_) => return Ok(None),
    };
    let Some(&fd) = fds.first() else {
        return Ok(None);
    };
    syscalls::listener_from_activation(fd)
        .map(Some)
        .map_err(io_error(Path::new("<LISTEN_FDS>")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_mode_follows_euid_and_flags_override() {
        assert_eq!(Options::parse(args(&[]), 1000).unwrap().mode, Mode::User);
        assert_eq!(Options::parse(args(&[]), 0).unwrap().mode, Mode::System);
        let options = Options::parse(args(&["--user", "--socket", "/tmp/s"]), 0).unwrap();
        assert_eq!(options.mode, Mode::User);
        assert_eq!(options.socket_path(None).unwrap(), PathBuf::from("/tmp/s"));
        assert!(Options::parse(args(&["--config"]), 0).is_err());
        assert!(Options::parse(args(&["--tcp"]), 0).is_err());
    }

    #[test]
    fn user_mode_as_root_is_refused_with_the_fix_unless_the_hatch_says_1() {
        let error = check_user_mode_uid(Mode::User, 0, None).unwrap_err();
        assert!(error.to_string().contains("use --system"), "{error}");
        for value in ["0", "yes", "", "1 "] {
            assert!(
                check_user_mode_uid(Mode::User, 0, Some(std::ffi::OsStr::new(value))).is_err(),
                "{value:?} opens the hatch"
            );
        }
        check_user_mode_uid(Mode::User, 0, Some(std::ffi::OsStr::new("1"))).unwrap();
        check_user_mode_uid(Mode::User, 1000, None).unwrap();
        check_user_mode_uid(Mode::System, 0, None).unwrap();
    }

    #[test]
    fn help_and_version_win_but_not_as_a_path() {
        assert_eq!(
            Invocation::parse(args(&["--user", "--help"]), 0).unwrap(),
            Invocation::Help
        );
        assert_eq!(
            Invocation::parse(args(&["-V"]), 0).unwrap(),
            Invocation::Version
        );
        match Invocation::parse(args(&["--config", "--help"]), 0).unwrap() {
            Invocation::Run(options) => {
                assert_eq!(options.config, Some(PathBuf::from("--help")));
            }
            other => panic!("--help as a --config value was taken as a flag: {other:?}"),
        }
    }

    #[test]
    fn user_socket_is_private_and_stale_sockets_are_replaced() {
        let dir = std::env::temp_dir().join(format!("weave-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("weave/weave.sock");
        let listener = bind_socket(&path, None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(matches!(
            bind_socket(&path, None),
            Err(ModeError::AlreadyRunning(_))
        ));
        drop(listener);
        bind_socket(&path, None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_socket_folder_others_can_write_or_own_is_refused() {
        let dir = std::env::temp_dir().join(format!("weave-modes-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weave.sock");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind_socket(&path, None).unwrap_err();
        assert!(
            matches!(&err, ModeError::UnsafeSocketDir { problem, .. } if problem.contains("mode 777")),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        assert!(!path.exists(), "nothing was bound");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(bind_socket(&path, None).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        drop(bind_socket(&path, None).unwrap());
        if syscalls::effective_uid() == 0 {
            // Owned by another uid (root can make one): refused too.
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let _ = std::fs::remove_file(&path);
            let err = bind_socket(&path, None).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        } else {
            assert!(!crate::modes::tests::in_ci(), "CI runs as root");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
    }
}
