//! Makes the worker (and its test binaries) find libtorch through an rpath,
//! so neither users nor tests need LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=WEAVE_TORCH_FLAVOR");
    // The build tree's libtorch; `make deb`/`make rpm` rewrite the packaged
    // copy's rpath to /usr/lib/weave with patchelf.
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    // Then `<prefix>/lib/weave` next to `<prefix>/bin/weave-worker`: the
    // tests' staged copy (tests/src/staged.rs), for uids that cannot reach
    // a checkout under a private folder (the loader skips a folder it may
    // not enter and tries the next).
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/weave");
    if std::env::var("WEAVE_TORCH_FLAVOR").as_deref() == Ok("cuda") {
        // libtorch_cuda registers the CUDA backend from static constructors;
        // nothing references it by symbol, so --as-needed would drop it.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-lc10_cuda,--as-needed");
    }
}
