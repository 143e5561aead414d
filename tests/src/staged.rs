//! The build's executables, libtorch and the demo model, staged in a folder
//! every user can traverse, so the cross-user tests (a broker that drops to
//! `weave`, clients run as other uids, the worker it spawns) do not depend on
//! where the checkout lives. A checkout under a 0700 parent (a home folder,
//! `mktemp -d`) is unreachable for those uids; the staged copy is not.
//!
//! Layout (the one `weave-broker` looks for: the worker next to it, libtorch
//! in `<prefix>/lib/weave`, which the worker's rpath `$ORIGIN/../lib/weave`
//! also names):
//!
//! ```text
//! <temp>/weave-staged-<euid>-<hash of the build folder>/
//!     bin/{weave-broker, weave-worker, sshmctl, weave-probe-client, weave-load}
//!     lib/weave/<libtorch's lib/ files>
//!     models/digits/...
//! ```
//!
//! Files are hard links where the file system allows (instant, no space),
//! else copies; a file whose size and mtime already match is kept, a
//! changed one is replaced atomically (rename), so a broker still running
//! from an earlier stage is never disturbed.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The executables staged into `bin/` (those of them the build has).
pub const EXECUTABLES: &[&str] = &[
    "weave-broker",
    "weave-worker",
    "sshmctl",
    "weave-probe-client",
    "weave-load",
];

/// Where the pieces come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `target/<profile>`: the executables.
    pub profile_dir: PathBuf,
    /// libtorch's `lib/` (none: the worker is not staged with libraries).
    pub libtorch_lib: Option<PathBuf>,
    /// `models/digits`, when present.
    pub digits: Option<PathBuf>,
}

/// A staged tree.
#[derive(Debug, Clone)]
pub struct Staged {
    pub root: PathBuf,
}

impl Staged {
    /// `bin/<name>`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }

    /// `models/digits`.
    pub fn digits(&self) -> PathBuf {
        self.root.join("models/digits")
    }

    /// `lib/weave`.
    pub fn libs(&self) -> PathBuf {
        self.root.join("lib/weave")
    }
}

/// The default staging folder for `sources`: one per user and build folder.
pub fn default_root(sources: &Sources) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sources.profile_dir.hash(&mut hasher);
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("weave-staged-{euid}-{:016x}", hasher.finish()))
}

/// Creates `dir` 0755 if missing and refuses one that another uid owns or
/// that others may write (the temp folder is shared).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a folder of uid {euid} closed to writes by others; remove it",
            dir.display()
        )));
    }
    Ok(())
}

/// Puts `src` at `dst` (hard link, else copy keeping the mtime), unless a
/// file of the same size and mtime is already there.
fn place(src: &Path, dst: &Path) -> std::io::Result<()> {
    let from = std::fs::metadata(src)?;
    if let Ok(to) = std::fs::symlink_metadata(dst) {
        if to.is_file() && to.len() == from.len() && to.modified()? == from.modified()? {
            return Ok(());
        }
    }
    let name = dst.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dst.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp)?;
        std::fs::File::options()
            .write(true)
            .open(&tmp)?
            .set_modified(from.modified()?)?;
    }
    // Readable (and where it was, executable) by everyone.
    let mode = if from.mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dst)
}

/// Copies the tree `src` into `dst` (folders 0755).
fn place_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    private_dir(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        let meta = std::fs::metadata(entry.path())?;
        if meta.is_dir() {
            place_tree(&entry.path(), &target)?;
        } else if meta.is_file() {
            place(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Stages `sources` under `root` (created, and checked, 0755).
pub fn stage(sources: &Sources, root: &Path) -> std::io::Result<Staged> {
    private_dir(root)?;
    let bin = root.join("bin");
    private_dir(&bin)?;
    for name in EXECUTABLES {
        let src = sources.profile_dir.join(name);
        if src.is_file() {
            place(&src, &bin.join(name))?;
        }
    }
    private_dir(&root.join("lib"))?;
    let libs = root.join("lib/weave");
    match &sources.libtorch_lib {
        Some(lib) if lib.is_dir() => place_tree(lib, &libs)?,
        _ => private_dir(&libs)?,
    }
    if let Some(digits) = sources.digits.as_deref().filter(|d| d.is_dir()) {
        private_dir(&root.join("models"))?;
        place_tree(digits, &root.join("models/digits"))?;
    }
    Ok(Staged {
        root: root.to_owned(),
    })
}
