//! The CLIP tokenizer loading a hostile `merges.txt` from a model folder
//! (the input up to the first NUL byte), then encoding the rest as text.
//!
//! Slow by nature: every load compiles the tokenizer's Unicode regex.
#![no_main]

#[allow(dead_code)]
#[path = "../../worker/src/engine/text/tokenizer.rs"]
mod tokenizer;
#[allow(dead_code)]
#[path = "../src/tokenizer_fixture.rs"]
mod tokenizer_fixture;

use libfuzzer_sys::fuzz_target;
use tokenizer::ClipTokenizer;

fuzz_target!(|data: &[u8]| {
    let fixture = tokenizer_fixture::fixture();
    let (merges, text) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    std::fs::write(fixture.scratch.join("merges.txt"), merges).expect("write merges.txt");
    match ClipTokenizer::from_dir(&fixture.scratch) {
        Ok(tokenizer) => {
            if let Ok(text) = std::str::from_utf8(text) {
                tokenizer_fixture::check_encoding(&tokenizer, &fixture.ids, text);
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
