fn main() {
    eprintln!("weave-broker: not built yet");
    std::process::exit(1);
}
