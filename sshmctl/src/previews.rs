//! `generate --preview K`: the live preview of each image, one file next
//! to its output (`out.png` → `out.preview.png`, `out-1.png` →
//! `out-1.preview.png`), replaced atomically at every preview so that an
//! image viewer watching it shows the job as it goes, and removed once the
//! image itself is written (the file is the work in progress, not a
//! result).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use crate::output_files::output_path;
use crate::CliError;

/// `out.png` → `out.preview.png` (for image `index` of `batch`).
pub fn preview_path(base: &Path, index: u32, batch: u32) -> PathBuf {
    let path = output_path(base, index, batch);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.preview.png"))
}

/// The preview files of one job.
#[derive(Debug)]
pub struct PreviewFiles {
    base: PathBuf,
    batch: u32,
}

impl PreviewFiles {
    /// Checks, before the job is sent, that no preview would replace a
    /// file that is there already (unless `force`).
    pub fn prepare(base: &Path, batch: u32, force: bool) -> Result<Self, CliError> {
        if base == Path::new("-") {
            return Err(CliError::Usage(
                "--preview writes files next to the output; give -o a file name".into(),
            ));
        }
        for index in 0..batch.max(1) {
            let path = preview_path(base, index, batch);
            if path.exists() && !force {
                return Err(CliError::OutputExists { path });
            }
        }
        Ok(Self {
            base: base.to_owned(),
            batch,
        })
    }

    /// Replaces the preview of image `index`; returns its path.
    pub fn write(&self, index: u32, png: &[u8]) -> Result<PathBuf, CliError> {
        let path = preview_path(&self.base, index, self.batch);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = path.with_file_name(format!(".{name}.{}.part", std::process::id()));
        let failed = |source| CliError::WriteImage {
            path: path.clone(),
            source,
        };
        std::fs::write(&part, png).map_err(failed)?;
        std::fs::rename(&part, &path).map_err(failed)?;
        Ok(path)
    }

    /// Image `index` is written: its preview has served.
    pub fn finish(&self, index: u32) {
        let _ = std::fs::remove_file(preview_path(&self.base, index, self.batch));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn previews_sit_next_to_their_image() {
        assert_eq!(
            preview_path(Path::new("a/out.png"), 0, 1),
            Path::new("a/out.preview.png")
        );
        assert_eq!(
            preview_path(Path::new("a/out.png"), 1, 2),
            Path::new("a/out-1.preview.png")
        );
        assert!(matches!(
            PreviewFiles::prepare(Path::new("-"), 1, false),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn a_preview_is_replaced_then_removed_with_the_image() {
        let dir = std::env::temp_dir().join(format!("sshmctl-preview-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("x.png");
        let files = PreviewFiles::prepare(&base, 1, false).unwrap();
        let path = files.write(0, b"one").unwrap();
        files.write(0, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(matches!(
            PreviewFiles::prepare(&base, 1, false),
            Err(CliError::OutputExists { .. })
        ));
        files.finish(0);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
