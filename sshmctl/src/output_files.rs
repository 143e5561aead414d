//! Where `generate` puts its PNGs, settled before the job is sent: an
//! output that cannot be written is refused while nothing has been
//! computed, and a finished image is never lost to a bad path.
//!
//! Each file is first created as a hidden `.NAME.part` next to its final
//! name (proving the folder is writable), filled when its image arrives and
//! renamed into place at once. `-` is stdout.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CliError;

/// The outputs of one `generate`.
#[derive(Debug)]
pub enum Outputs {
    Stdout,
    Files(Vec<PendingFile>),
}

#[derive(Debug)]
pub struct PendingFile {
    pub path: PathBuf,
    part: PathBuf,
    /// Still to be renamed into place (removed on drop otherwise).
    pending: bool,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.pending {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// `out.png` for one image; `out-0.png`, `out-1.png`, … for a batch.
pub fn output_path(base: &Path, index: u32, batch: u32) -> PathBuf {
    if batch <= 1 {
        return base.to_owned();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    base.with_file_name(name)
}

fn part_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.part", std::process::id()))
}

impl Outputs {
    /// Checks and reserves every output of a job of `batch` images.
    pub fn prepare(base: &Path, batch: u32, force: bool, json: bool) -> Result<Self, CliError> {
        if base == Path::new("-") {
            if batch > 1 {
                return Err(CliError::Usage(
                    "`-o -` writes one PNG to stdout; with --batch, give -o a file name".into(),
                ));
            }
            if json {
                return Err(CliError::Usage(
                    "--json prints events on stdout, so `-o -` cannot use it for the PNG; \
                     give -o a file name"
                        .into(),
                ));
            }
            return Ok(Outputs::Stdout);
        }
        let mut files = Vec::new();
        for index in 0..batch.max(1) {
            let path = output_path(base, index, batch);
            if path.is_dir() || path.file_name().is_none() {
                return Err(CliError::Usage(format!(
                    "-o {}: is a folder; give a file name, e.g. -o {}",
                    path.display(),
                    path.join("weave.png").display()
                )));
            }
            if path.exists() && !force {
                return Err(CliError::OutputExists { path });
            }
            let part = part_path(&path);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)
                .map_err(|source| CliError::OutputUnwritable {
                    path: path.clone(),
                    source,
                })?;
            files.push(PendingFile {
                path,
                part,
                pending: true,
            });
        }
        Ok(Outputs::Files(files))
    }

    /// The hidden files to remove if the process has to exit at once.
    pub fn part_paths(&self) -> Vec<PathBuf> {
        match self {
            Outputs::Stdout => Vec::new(),
            Outputs::Files(files) => files.iter().map(|f| f.part.clone()).collect(),
        }
    }

    /// Stores image `index`; returns where it went (`None`: stdout).
    pub fn write(&mut self, index: u32, png: &[u8]) -> Result<Option<PathBuf>, CliError> {
        match self {
            Outputs::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(png)
                    .and_then(|()| stdout.flush())
                    .map_err(CliError::Output)?;
                Ok(None)
            }
            Outputs::Files(files) => {
                let file = usize::try_from(index)
                    .ok()
                    .and_then(|i| files.get_mut(i))
                    .ok_or(CliError::Client(crate::client::ClientError::Unexpected(
                        "image index beyond the batch",
                    )))?;
                let failed = |source| CliError::WriteImage {
                    path: file.path.clone(),
                    source,
                };
                std::fs::write(&file.part, png).map_err(failed)?;
                std::fs::rename(&file.part, &file.path).map_err(|source| CliError::WriteImage {
                    path: file.path.clone(),
                    source,
                })?;
                file.pending = false;
                Ok(Some(file.path.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sshmctl-out-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn batch_outputs_are_numbered_before_the_extension() {
        assert_eq!(
            output_path(Path::new("a/out.png"), 0, 1),
            Path::new("a/out.png")
        );
        assert_eq!(
            output_path(Path::new("a/out.png"), 2, 3),
            Path::new("a/out-2.png")
        );
        assert_eq!(output_path(Path::new("out"), 1, 2), Path::new("out-1"));
    }

    #[test]
    fn existing_files_need_force_and_missing_folders_fail_first() {
        let dir = scratch("exists");
        let path = dir.join("x.png");
        std::fs::write(&path, b"old").unwrap();
        assert!(matches!(
            Outputs::prepare(&path, 1, false, false),
            Err(CliError::OutputExists { .. })
        ));
        let mut outputs = Outputs::prepare(&path, 1, true, false).unwrap();
        outputs.write(0, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(matches!(
            Outputs::prepare(&dir.join("missing/x.png"), 1, false, false),
            Err(CliError::OutputUnwritable { .. })
        ));
        assert!(matches!(
            Outputs::prepare(Path::new("-"), 2, false, false),
            Err(CliError::Usage(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unused_reservations_are_removed() {
        let dir = scratch("drop");
        let outputs = Outputs::prepare(&dir.join("y.png"), 2, false, false).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        drop(outputs);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
