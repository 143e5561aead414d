//! Default locations: where each mode looks for its config and listens.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use super::{ConfigProblem, SYSTEM_SOCKET_PATH};
use crate::proto::Mode;

/// The environment values default paths depend on; [`EnvPaths::from_process`]
/// reads them, tests build them by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPaths {
    pub home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl EnvPaths {
    /// `$HOME`, `$XDG_CONFIG_HOME`, `$XDG_RUNTIME_DIR`; empty counts as unset.
    pub fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        Self {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
        }
    }
}

/// An XDG base directory counts only when absolute (the XDG spec says to
/// ignore relative ones).
pub(super) fn absolute_env(value: &Option<PathBuf>) -> Option<&Path> {
    value.as_deref().filter(|path| path.is_absolute())
}

/// The socket path of `mode` when the config does not set `daemon.socket`:
/// user mode `$XDG_RUNTIME_DIR/weave/weave.sock`, system mode
/// [`SYSTEM_SOCKET_PATH`].
pub fn default_socket_path(mode: Mode, env: &EnvPaths) -> Result<PathBuf, ConfigProblem> {
    match mode {
        Mode::System => Ok(PathBuf::from(SYSTEM_SOCKET_PATH)),
        Mode::User => absolute_env(&env.xdg_runtime_dir)
            .map(|dir| dir.join("weave").join("weave.sock"))
            .ok_or_else(|| ConfigProblem::Environment {
                variable: "XDG_RUNTIME_DIR",
                problem: "is not set to an absolute path, so user mode has no default socket \
                          path"
                    .into(),
                fix: "log in through a session that sets it (systemd-logind does), or set \
                      `socket = \"/run/user/<uid>/weave/weave.sock\"` under [daemon]"
                    .into(),
            }),
    }
}
