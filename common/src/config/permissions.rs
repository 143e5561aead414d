//! Who may own and write the config file and the directories above it.
//!
//! A config decides which files the worker opens as models and who is an
//! admin, so whoever can change it controls the daemon. The rules (also in
//! docs/CONFIG.md):
//!
//! - The config file is a regular file owned by one of the allowed uids (user
//!   mode: the user; system mode: root or the daemon account), and neither
//!   group- nor world-writable.
//! - Every directory above it, up to `/`, is owned by root or an allowed uid
//!   and is not group- or world-writable, unless it has the sticky bit (like
//!   `/tmp`: others may add entries there but not rename or remove ours).
//!   Whoever can write a directory can swap what is below it.
//! - Symbolic links are followed, and both sides are checked: the link and
//!   the directories it sits in (whoever controls those can re-point it), then
//!   the file it resolves to and every directory of its real path. A link's
//!   owner must be root or an allowed uid.
//!
//! POSIX ACLs show up in the group bits (the ACL mask), so an ACL that grants
//! someone write access is reported as group-writable.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{absolute, ConfigProblem, Mode};

const GROUP_WRITE: u32 = 0o020;
const WORLD_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    ConfigFile,
    Directory,
    Link,
}

struct Checker<'a> {
    config: PathBuf,
    mode: Mode,
    allowed: &'a [u32],
    /// (device, inode) of what was already checked, so a file reached twice
    /// (by its written and its real path) is reported once.
    seen: HashSet<(u64, u64)>,
    problems: Vec<ConfigProblem>,
}

/// Checks ownership and write permissions of the config file and every
/// directory above it (and, through symbolic links, of what they point to).
/// An empty result means the file is safe to trust.
///
/// `allowed_owner_uids`: user mode, the caller's uid; system mode, `0` and the
/// daemon account's uid. Root may always own the directories above.
pub fn check_permissions(
    config: &Path,
    mode: Mode,
    allowed_owner_uids: &[u32],
) -> Vec<ConfigProblem> {
    let config = absolute(config);
    let mut checker = Checker {
        config: config.clone(),
        mode,
        allowed: allowed_owner_uids,
        seen: HashSet::new(),
        problems: Vec::new(),
    };
    let metadata = match std::fs::symlink_metadata(&config) {
        Ok(metadata) => metadata,
        Err(error) => return vec![ConfigProblem::unreadable(&config, error)],
    };
    let mut through_link = metadata.file_type().is_symlink();
    checker.check(
        &config,
        &metadata,
        if through_link {
            Role::Link
        } else {
            Role::ConfigFile
        },
    );
    for directory in config.ancestors().skip(1) {
        match std::fs::symlink_metadata(directory) {
            Ok(metadata) => {
                let is_link = metadata.file_type().is_symlink();
                through_link |= is_link;
                let role = if is_link { Role::Link } else { Role::Directory };
                checker.check(directory, &metadata, role);
            }
            Err(error) => checker.cannot_examine(directory, &error),
        }
    }
    if through_link {
        checker.check_real_path();
    }
    checker.problems
}

impl Checker<'_> {
    fn check_real_path(&mut self) {
        let real = match std::fs::canonicalize(&self.config) {
            Ok(real) => real,
            Err(error) => {
                self.problems.push(ConfigProblem::UnsafePermissions {
                    path: self.config.clone(),
                    config: self.config.clone(),
                    problem: format!(
                        "goes through a symbolic link that cannot be resolved: {error}"
                    ),
                    fix: "point the link at the existing config file, or name the file itself \
                          with --config"
                        .into(),
                });
                return;
            }
        };
        match std::fs::metadata(&real) {
            Ok(metadata) => self.check(&real, &metadata, Role::ConfigFile),
            Err(error) => self.cannot_examine(&real, &error),
        }
        for directory in real.ancestors().skip(1) {
            match std::fs::metadata(directory) {
                Ok(metadata) => self.check(directory, &metadata, Role::Directory),
                Err(error) => self.cannot_examine(directory, &error),
            }
        }
    }

    fn cannot_examine(&mut self, path: &Path, error: &std::io::Error) {
        self.problems.push(ConfigProblem::UnsafePermissions {
            path: path.to_path_buf(),
            config: self.config.clone(),
            problem: format!("cannot be examined: {error}"),
            fix: "run the check as a user that can see the whole path (root or the daemon \
                  account)"
                .into(),
        });
    }

    fn push(&mut self, path: &Path, problem: String, fix: String) {
        self.problems.push(ConfigProblem::UnsafePermissions {
            path: path.to_path_buf(),
            config: self.config.clone(),
            problem,
            fix,
        });
    }

    fn check(&mut self, path: &Path, metadata: &Metadata, role: Role) {
        if role != Role::Link && !self.seen.insert((metadata.dev(), metadata.ino())) {
            return;
        }
        match role {
            Role::ConfigFile if !metadata.is_file() => {
                let what = if metadata.is_dir() {
                    "the config file is a directory, not a file"
                } else {
                    "the config file is not a regular file"
                };
                self.push(
                    path,
                    what.into(),
                    "name the config file itself, e.g. --config /etc/weave/weave.toml".into(),
                );
                return;
            }
            Role::Directory if !metadata.is_dir() => {
                self.push(
                    path,
                    "is not a directory".into(),
                    "check the config path".into(),
                );
                return;
            }
            _ => {}
        }
        self.check_owner(path, metadata.uid(), role);
        if role != Role::Link {
            self.check_writable(path, metadata.permissions().mode(), role);
        }
    }

    fn check_owner(&mut self, path: &Path, owner: u32, role: Role) {
        let root_allowed = role != Role::ConfigFile;
        if self.allowed.contains(&owner) || (root_allowed && owner == 0) {
            return;
        }
        let mut owners: Vec<u32> = self.allowed.to_vec();
        if root_allowed && !owners.contains(&0) {
            owners.insert(0, 0);
        }
        let described = describe_uids(&owners);
        let (what, mode) = (role_name(role), self.mode);
        let problem = format!(
            "{what} is owned by uid {owner}; in {mode} mode it must be owned by {described}"
        );
        let quoted = shell_quote(path);
        let link_flag = if role == Role::Link { "-h " } else { "" };
        let fix = match owners.first() {
            Some(0) => format!("as root: `chown {link_flag}root:root {quoted}`"),
            Some(uid) => format!("as root: `chown {link_flag}{uid} {quoted}`"),
            None => "the caller allowed no owner uid at all; this is a bug in the caller".into(),
        };
        self.push(path, problem, fix);
    }

    fn check_writable(&mut self, path: &Path, permission_bits: u32, role: Role) {
        let writable = match (
            permission_bits & GROUP_WRITE != 0,
            permission_bits & WORLD_WRITE != 0,
        ) {
            (false, false) => return,
            (true, false) => "group-writable",
            (false, true) => "world-writable",
            (true, true) => "group- and world-writable",
        };
        // Others may add entries to a sticky directory but not rename or
        // delete ours, and its owner was checked above.
        if role == Role::Directory && permission_bits & STICKY != 0 {
            return;
        }
        let what = role_name(role);
        self.push(
            path,
            format!(
                "{what} is {writable} (mode {:04o}), so others could change what the daemon \
                 reads",
                permission_bits & 0o7777
            ),
            format!("`chmod go-w {}`", shell_quote(path)),
        );
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::ConfigFile => "the config file",
        Role::Directory => "a directory above the config file",
        Role::Link => "a symbolic link on the config path",
    }
}

fn describe_uids(uids: &[u32]) -> String {
    let names: Vec<String> = uids
        .iter()
        .map(|&uid| {
            if uid == 0 {
                "root (uid 0)".to_owned()
            } else {
                format!("uid {uid}")
            }
        })
        .collect();
    match names.as_slice() {
        [] => "nobody (no owner uid was allowed)".to_owned(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The path as one shell word, for the commands in fixes.
pub(super) fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,".contains(&b));
    if plain && !text.is_empty() {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The file actually opened, checked again through its descriptor so that
/// what is parsed is a file that passed: regular, owned by an allowed uid,
/// not group- or world-writable.
pub(super) fn check_opened_file(
    path: &Path,
    metadata: &Metadata,
    mode: Mode,
    allowed: &[u32],
) -> Option<ConfigProblem> {
    let bits = metadata.permissions().mode();
    let problem = if !metadata.is_file() {
        "is not a regular file".to_owned()
    } else if !allowed.contains(&metadata.uid()) {
        format!(
            "is owned by uid {}; in {mode} mode it must be owned by {}",
            metadata.uid(),
            describe_uids(allowed)
        )
    } else if bits & (GROUP_WRITE | WORLD_WRITE) != 0 {
        format!("is group- or world-writable (mode {:04o})", bits & 0o7777)
    } else {
        return None;
    };
    Some(ConfigProblem::UnsafePermissions {
        path: path.to_path_buf(),
        config: path.to_path_buf(),
        problem: format!("changed while it was being opened: the file opened {problem}"),
        fix: "find out what is replacing the file, then run the check again".into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paths_in_fixes_are_single_shell_words() {
        assert_eq!(
            shell_quote(Path::new("/etc/weave/weave.toml")),
            "/etc/weave/weave.toml"
        );
        assert_eq!(shell_quote(Path::new("/a b/c")), "'/a b/c'");
        assert_eq!(shell_quote(Path::new("/it's")), r"'/it'\''s'");
    }

    #[test]
    fn owner_lists_read_naturally() {
        assert_eq!(describe_uids(&[0]), "root (uid 0)");
        assert_eq!(describe_uids(&[0, 999]), "root (uid 0) or uid 999");
        assert_eq!(describe_uids(&[0, 5, 6]), "root (uid 0), uid 5 or uid 6");
    }
}
