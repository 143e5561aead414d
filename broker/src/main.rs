//! `weave-broker` entry point; see `weave_broker::daemon`.

fn main() {
    use weave_broker::syscalls;
    if let Err(error) = syscalls::close_inherited_fds(syscalls::activation_fd_count()) {
        eprintln!("weave-broker: cannot close inherited file descriptors: {error}");
        std::process::exit(1);
    }
    weave_broker::syscalls::limit_malloc_retention();
    let euid = weave_broker::syscalls::effective_uid();
    let options = match weave_broker::modes::Options::parse(std::env::args().skip(1), euid) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    if let Err(error) = weave_broker::daemon::run(&options) {
        eprintln!("weave-broker: {error}");
        std::process::exit(1);
    }
}
