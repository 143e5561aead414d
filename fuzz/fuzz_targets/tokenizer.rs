//! The CLIP tokenizer on any prompt text.
//!
//! The tokenizer's source is included from the worker crate: it does not
//! depend on libtorch, which the worker crate links. Never panics; `encode`
//! always gives exactly 77 ids: BOS, at most 75 ids of the vocabulary, EOS,
//! then padding (see `src/tokenizer_fixture.rs`).
#![no_main]

#[allow(dead_code)]
#[path = "../../worker/src/engine/text/tokenizer.rs"]
mod tokenizer;
#[allow(dead_code)]
#[path = "../src/tokenizer_fixture.rs"]
mod tokenizer_fixture;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixture = tokenizer_fixture::fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        tokenizer_fixture::check_encoding(&fixture.tokenizer, &fixture.ids, text);
    }
});
