//! libtorch's oneDNN (mkldnn) switch: the one place weave-compute calls
//! libtorch's C++ API directly.
//!
//! oneDNN JIT-compiles a kernel for every new convolution shape into
//! `PROT_READ|PROT_WRITE|PROT_EXEC` memory; with it off, libtorch uses its
//! native kernels and no executable mapping appears after the worker's
//! seccomp boundary (measured in docs/SANDBOX.md), so the allowlist can
//! refuse `PROT_EXEC`. The benches switch it both ways to compare.

// tch has no binding for this switch; these are the exported Itanium-ABI
// symbols of `at::globalContext()` and
// `at::Context::{setUserEnabledMkldnn, userEnabledMkldnn}` in libtorch_cpu.
// A member function takes `this` as its first argument; `bool` is C's
// `_Bool` on every ABI Rust and libtorch share.
extern "C" {
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut std::ffi::c_void;
    #[link_name = "_ZN2at7Context20setUserEnabledMkldnnEb"]
    fn at_context_set_user_enabled_mkldnn(context: *mut std::ffi::c_void, enabled: bool);
    #[link_name = "_ZNK2at7Context17userEnabledMkldnnEv"]
    fn at_context_user_enabled_mkldnn(context: *const std::ffi::c_void) -> bool;
}

/// Switches oneDNN on or off for every later libtorch op in this process
/// and reports whether the switch now reads `enabled`.
pub fn set_enabled(enabled: bool) -> bool {
    // SAFETY: `at::globalContext()` returns a reference to libtorch's
    // process-wide context, valid for the life of the process; the setter
    // and getter only write and read a flag in it and do not throw. Callers
    // switch it between generations, from the thread that drives libtorch.
    unsafe {
        let context = at_global_context();
        if context.is_null() {
            return false;
        }
        at_context_set_user_enabled_mkldnn(context, enabled);
        at_context_user_enabled_mkldnn(context) == enabled
    }
}

/// Whether oneDNN is switched on now (libtorch's default is on; the worker
/// switches it off unless `seccomp_exec_mappings`).
pub fn enabled() -> bool {
    // SAFETY: as in `set_enabled`: the process-wide context outlives every
    // caller, and the getter only reads a flag.
    unsafe {
        let context = at_global_context();
        !context.is_null() && at_context_user_enabled_mkldnn(context)
    }
}
