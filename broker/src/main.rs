//! `weave-broker` entry point; see `weave_broker::daemon`.

use weave_broker::modes::{Invocation, USAGE};

fn main() {
    use weave_broker::syscalls;
    if let Err(error) = syscalls::close_inherited_fds(syscalls::activation_fd_count()) {
        eprintln!("weave-broker: cannot close inherited file descriptors: {error}");
        std::process::exit(1);
    }
    weave_broker::syscalls::limit_malloc_retention();
    let euid = weave_broker::syscalls::effective_uid();
    let options = match Invocation::parse(std::env::args().skip(1), euid) {
        Ok(Invocation::Run(options)) => options,
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return;
        }
        Ok(Invocation::Version) => {
            println!("weave-broker {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    weave_broker::background_log::divert_if_backgrounded();
    if let Err(error) = weave_broker::daemon::run(&options) {
        eprintln!("weave-broker: {error}");
        std::process::exit(1);
    }
}
