//! Helpers the worker's benches share: the oneDNN switch and medians.
//!
//! The sandboxed worker turns oneDNN off before it confines itself (its JIT
//! needs RWX memory, docs/SANDBOX.md); an in-process comparison with the
//! daemon must do the same, and the engine-vs-diffusers bench reports both.

/// libtorch's `at::Context` oneDNN switch. tch has no binding for it; these
/// are the exported Itanium-ABI symbols the worker's `serve::sys` uses too.
mod ffi {
    extern "C" {
        #[link_name = "_ZN2at13globalContextEv"]
        pub fn at_global_context() -> *mut std::ffi::c_void;
        #[link_name = "_ZN2at7Context20setUserEnabledMkldnnEb"]
        pub fn at_context_set_user_enabled_mkldnn(context: *mut std::ffi::c_void, enabled: bool);
        #[link_name = "_ZNK2at7Context17userEnabledMkldnnEv"]
        pub fn at_context_user_enabled_mkldnn(context: *const std::ffi::c_void) -> bool;
    }
}

/// Switches oneDNN on or off for every later libtorch op in this process and
/// reports whether the switch now reads `enabled`.
pub fn set_onednn(enabled: bool) -> bool {
    // SAFETY: `at::globalContext()` returns libtorch's process-wide context,
    // valid for the life of the process; the setter and getter only write and
    // read a flag in it and do not throw. The benches call this between
    // generations, from the only thread that drives libtorch.
    unsafe {
        let context = ffi::at_global_context();
        if context.is_null() {
            return false;
        }
        ffi::at_context_set_user_enabled_mkldnn(context, enabled);
        ffi::at_context_user_enabled_mkldnn(context) == enabled
    }
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
