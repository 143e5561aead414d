//! Helpers the worker's benches share: the oneDNN switch and medians.
//!
//! The sandboxed worker turns oneDNN off before it confines itself (its JIT
//! needs RWX memory, docs/SANDBOX.md); an in-process comparison with the
//! daemon must do the same, and the engine-vs-diffusers bench reports both.

/// Switches oneDNN on or off for every later libtorch op in this process and
/// reports whether the switch now reads `enabled`.
#[allow(dead_code)] // the big-model bench leaves oneDNN to the worker's config
pub fn set_onednn(enabled: bool) -> bool {
    weave_worker::onednn::set_enabled(enabled)
}

/// The median (upper median for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A positive integer from the environment, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
