//! Reading the file: one descriptor, a size cap, UTF-8.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{permissions, ConfigProblem, MAX_CONFIG_BYTES};
use crate::proto::Mode;

/// Reads the file through one descriptor. With `recheck`, also checks on
/// that descriptor what [`check_permissions`] checked by path, so what is
/// parsed is the file that passed even if the path was swapped in between.
/// Without it (the permission check already failed), a file that is not
/// regular stops here with no further problem: that check reported it.
pub(super) fn read_config_text(
    path: &Path,
    recheck: Option<(Mode, &[u32])>,
) -> Result<String, Option<Box<ConfigProblem>>> {
    let unreadable =
        |source: std::io::Error| Some(Box::new(ConfigProblem::unreadable(path, source)));
    // O_NONBLOCK: opening a FIFO must not hang; fstat then reports it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if let Some((mode, allowed)) = recheck {
        if let Some(problem) = permissions::check_opened_file(path, &meta, mode, allowed) {
            return Err(Some(Box::new(problem)));
        }
    }
    if !meta.is_file() {
        return Err(None);
    }
    let too_large = || ConfigProblem::InvalidFile {
        path: path.to_path_buf(),
        problem: format!("is larger than {MAX_CONFIG_BYTES} bytes, too large for a config"),
        fix: "check that --config names the right file".into(),
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Some(Box::new(too_large())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    // The size can change between fstat and read; what was read counts.
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Some(Box::new(too_large())));
    }
    String::from_utf8(bytes).map_err(|error| {
        Some(Box::new(ConfigProblem::InvalidFile {
            path: path.to_path_buf(),
            problem: format!(
                "is not valid UTF-8 (first bad byte at offset {})",
                error.utf8_error().valid_up_to()
            ),
            fix: "save the file as UTF-8".into(),
        }))
    })
}
