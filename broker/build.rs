//! Records where libtorch's libraries are, so the broker can let the
//! sandboxed worker read them (landlock). The broker itself never links
//! libtorch.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=WEAVE_LIBDIR");
    let dir = std::env::var("WEAVE_LIBDIR").ok().or_else(|| {
        std::env::var("LIBTORCH").ok().map(|libtorch| {
            let lib = std::path::Path::new(&libtorch).join("lib");
            lib.canonicalize().unwrap_or(lib).display().to_string()
        })
    });
    if let Some(dir) = dir {
        println!("cargo:rustc-env=WEAVE_BUILD_LIBTORCH_LIB={dir}");
    }
}
