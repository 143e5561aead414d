//! `sshmctl config check`: the daemon's own config checks, offline.

use std::path::Path;

use crate::render::Renderer;

/// Exit code 0 when the config is usable, 7 when it has problems.
pub fn run(_path: Option<&Path>, _system: bool, _out: &Renderer) -> u8 {
    eprintln!("sshmctl: config check is not wired to common::config yet");
    7
}
