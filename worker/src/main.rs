//! `weave-worker`: the sandboxed process that runs the diffusion models.
//! Started only by `weave-broker` (spawn contract in `docs/WORKER.md`).

mod serve;

fn main() -> std::process::ExitCode {
    serve::run()
}
