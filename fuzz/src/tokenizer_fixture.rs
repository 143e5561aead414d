//! Shared by the `tokenizer` and `tokenizer_merges` targets: a tokenizer
//! built once per process, and the properties every encoding must have.
//!
//! The vocabulary is a small built-in one (every byte symbol, with and
//! without `</w>`, a few merges), or the one in `$WEAVE_FUZZ_TOKENIZER_DIR`
//! (a model's `tokenizer/` folder) when set.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::tokenizer::{ClipTokenizer, MAX_LENGTH};

/// Merges of the built-in vocabulary: some complete, some whose result is
/// not in the vocabulary (a truncated vocab file).
const BUILTIN_MERGES: &str =
    "#version: 0.2\na t</w>\nc a\nc at</w>\nt h\nth e</w>\ni n\nin g</w>\n\u{120} a\n";

/// GPT-2's byte → printable character map (as the tokenizer builds it).
fn byte_symbols() -> Vec<char> {
    let mut extra = 0u32;
    (0..=255u32)
        .map(|b| {
            let printable = (0x21..=0x7e).contains(&b)
                || (0xa1..=0xac).contains(&b)
                || (0xae..=0xff).contains(&b);
            let code = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(code).expect("GPT-2 byte symbols are valid chars")
        })
        .collect()
}

fn builtin_vocab() -> HashMap<String, i64> {
    let symbols = byte_symbols();
    let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
    for token in [
        "ca",
        "cat</w>",
        "at</w>",
        "th",
        "the</w>",
        "in",
        "<|startoftext|>",
        "<|endoftext|>",
    ] {
        tokens.push(token.to_owned());
    }
    tokens.into_iter().zip(0..).collect()
}

pub struct Fixture {
    /// Folder whose merges.txt each `M` input rewrites.
    pub scratch: PathBuf,
    pub tokenizer: ClipTokenizer,
    pub ids: HashSet<i64>,
}

fn write_folder(dir: &Path, vocab_json: &str, merges: &str) {
    std::fs::create_dir_all(dir).expect("create tokenizer folder");
    std::fs::write(dir.join("vocab.json"), vocab_json).expect("write vocab.json");
    std::fs::write(dir.join("merges.txt"), merges).expect("write merges.txt");
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("weave-fuzz-tokenizer-{}", std::process::id()));
        let (dir, vocab_json) = match std::env::var_os("WEAVE_FUZZ_TOKENIZER_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                let json =
                    std::fs::read_to_string(dir.join("vocab.json")).expect("read vocab.json");
                (dir, json)
            }
            None => {
                let json = serde_json::to_string(&builtin_vocab()).expect("vocab to JSON");
                let dir = base.join("builtin");
                write_folder(&dir, &json, BUILTIN_MERGES);
                (dir, json)
            }
        };
        let scratch = base.join("scratch");
        write_folder(&scratch, &vocab_json, "");
        let vocab: HashMap<String, i64> = serde_json::from_str(&vocab_json).expect("vocab JSON");
        let tokenizer = ClipTokenizer::from_dir(&dir).expect("fixture tokenizer loads");
        Fixture {
            scratch,
            tokenizer,
            ids: vocab.into_values().collect(),
        }
    })
}

pub fn check_encoding(tokenizer: &ClipTokenizer, ids: &HashSet<i64>, text: &str) {
    let plain = tokenizer.encode_plain(text);
    assert!(
        plain.iter().all(|id| ids.contains(id)),
        "id outside the vocabulary"
    );
    let encoded = tokenizer.encode(text);
    assert_eq!(encoded.len(), MAX_LENGTH);
    assert_eq!(encoded[0], tokenizer.bos_id());
    let content = plain.len().min(MAX_LENGTH - 2);
    assert_eq!(&encoded[1..=content], &plain[..content]);
    assert_eq!(encoded[content + 1], tokenizer.eos_id());
    assert!(encoded[content + 2..]
        .iter()
        .all(|&id| id == tokenizer.pad_id()));
}
