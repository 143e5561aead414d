//! What can be wrong with a config, each problem with its place and fix.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

/// Line and column (both from 1, column in characters) of a key in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// `file` or `file:line:column`, the prefix of every problem about the
/// file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub location: Option<Location>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(location) => write!(f, "{}:{location}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One thing wrong with a config. The message names the file (with line and
/// column where there is one), the key, what is wrong and, on a line starting
/// with `fix:`, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error("{}: cannot read the config file: {source}\n    fix: {fix}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
        fix: String,
    },

    #[error("{}: {problem}\n    fix: {fix}", path.display())]
    InvalidFile {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error(
        "{place}: TOML syntax error: {message}\n    fix: correct the TOML at that line and column"
    )]
    Syntax { place: Place, message: String },

    #[error("{place}: unknown key `{key}`{}\n    fix: {fix}", valid_keys(valid))]
    UnknownKey {
        place: Place,
        /// Dotted path, e.g. `limits.queue_dpeth` or `model[1].pth`.
        key: String,
        /// The keys allowed where this one is.
        valid: Vec<String>,
        fix: String,
    },

    #[error("{place}: `{key}` {problem}\n    fix: {fix}")]
    InvalidValue {
        place: Place,
        key: String,
        problem: String,
        fix: String,
    },

    #[error("{}: {problem} (config file {})\n    fix: {fix}", path.display(), config.display())]
    UnsafePermissions {
        /// The file or directory at fault: the config or one above it.
        path: PathBuf,
        config: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("{}: model `{model_id}`: path {} {problem}\n    fix: {fix}", config.display(), path.display())]
    ModelPath {
        config: PathBuf,
        model_id: String,
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("environment variable {variable} {problem}\n    fix: {fix}")]
    Environment {
        variable: &'static str,
        problem: String,
        fix: String,
    },
}

fn valid_keys(valid: &[String]) -> String {
    if valid.is_empty() {
        String::new()
    } else {
        format!(" (valid keys here: {})", valid.join(", "))
    }
}

impl ConfigProblem {
    pub(super) fn unreadable(path: &Path, source: std::io::Error) -> Self {
        let fix = match source.kind() {
            std::io::ErrorKind::NotFound => format!(
                "create {} (annotated examples: docs/weave.example.toml for user mode, \
                 packaging/weave.toml.example for system mode) or name another file with \
                 --config",
                path.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "make it readable by the account the daemon starts as, e.g. `chmod 0644 {}`",
                path.display()
            ),
            _ => "check that the path names a readable regular file".into(),
        };
        ConfigProblem::Unreadable {
            path: path.to_path_buf(),
            source,
            fix,
        }
    }
}

/// Every problem found in one config, in the order found: permissions,
/// syntax and types, values, model paths.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The config file.
    pub path: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "config {} has {count} problem{}:",
            self.path.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for (number, problem) in self.problems.iter().enumerate() {
            write!(f, "\n{}. {problem}", number + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
