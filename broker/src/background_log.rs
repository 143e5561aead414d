//! `weave-broker &` from an interactive shell: the log goes to a file under
//! the user's state directory instead of the terminal the user keeps typing
//! into. One line on the terminal says where it went.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::syscalls;

/// Where the log goes when diverted: `$XDG_STATE_HOME/weave/weave-broker.log`,
/// else `$HOME/.local/state/weave/weave-broker.log`; `None` without either.
pub fn log_path(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let state = match xdg_state_home.filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(home.filter(|dir| !dir.is_empty())?).join(".local/state"),
    };
    Some(state.join("weave/weave-broker.log"))
}

/// When stderr is a terminal we are in the background of, moves stderr to
/// the log file. Any failure leaves stderr as it was (and says why): a
/// noisy terminal is better than a lost log.
pub fn divert_if_backgrounded() {
    if !syscalls::stderr_is_background_terminal() {
        return;
    }
    let Some(path) = log_path(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) else {
        return;
    };
    let opened = path
        .parent()
        .map_or(Ok(()), |dir| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        })
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
        });
    match opened.and_then(|file| {
        eprintln!(
            "weave-broker: running in the background; logging to {}",
            path.display()
        );
        syscalls::redirect_stderr(&file)
    }) {
        Ok(()) => {}
        Err(error) => eprintln!(
            "weave-broker: cannot log to {} ({error}); logging here",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_home_wins_then_home() {
        assert_eq!(
            log_path(Some("/s".into()), Some("/h".into())),
            Some(PathBuf::from("/s/weave/weave-broker.log"))
        );
        assert_eq!(
            log_path(Some("".into()), Some("/h".into())),
            Some(PathBuf::from("/h/.local/state/weave/weave-broker.log"))
        );
        assert_eq!(log_path(None, None), None);
    }
}
