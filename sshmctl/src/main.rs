fn main() {
    eprintln!("sshmctl: not built yet");
    std::process::exit(1);
}
