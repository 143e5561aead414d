//! CLIP's byte-level BPE tokenizer, giving the same ids as transformers'
//! `CLIPTokenizer` (the tokenizers-backed one): NFC, whitespace runs collapsed
//! to one space, lowercase; CLIP's pre-tokenizer regex; bytes mapped to
//! unicode as GPT-2 does; BPE with `</w>` marking the end of a word; then
//! `<|startoftext|>` + at most 75 tokens + `<|endoftext|>`, padded to 77.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// The context length of every SD text encoder.
pub const MAX_LENGTH: usize = 77;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer file {path} is invalid: {reason}; use the vocab.json/merges.txt that ship with the model")]
    Invalid { path: PathBuf, reason: String },
}

/// Bounds on vocabulary files so a hostile model folder cannot exhaust memory.
pub const MAX_VOCAB_FILE_BYTES: u64 = 64 * 1024 * 1024;

pub struct ClipTokenizer {
    encoder: HashMap<String, i64>,
    merge_ranks: HashMap<(String, String), usize>,
    byte_to_char: [char; 256],
    pattern: Regex,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
}

/// GPT-2's reversible byte → printable unicode character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let code = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    map
}

pub fn read_limited(path: &Path) -> Result<String, TokenizerError> {
    let io = |source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_VOCAB_FILE_BYTES {
        return Err(TokenizerError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is larger than {MAX_VOCAB_FILE_BYTES}"),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

impl ClipTokenizer {
    /// Loads `vocab.json` and `merges.txt` from `dir`; the pad token is read
    /// from `special_tokens_map.json` or `tokenizer_config.json` when present
    /// (SD 2.x pads with `!`), else it is `<|endoftext|>` as in SD 1.x.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_dir_with(dir, &read_limited)
    }

    /// [`Self::from_dir`] with the files' text from `read` (a pinned model's
    /// bytes, read once and checked against its pin).
    pub fn from_dir_with(
        dir: &Path,
        read: &dyn Fn(&Path) -> Result<String, TokenizerError>,
    ) -> Result<Self, TokenizerError> {
        let vocab_path = dir.join("vocab.json");
        let vocab: HashMap<String, i64> =
            serde_json::from_str(&read(&vocab_path)?).map_err(|e| TokenizerError::Invalid {
                path: vocab_path.clone(),
                reason: e.to_string(),
            })?;
        let merges = read(&dir.join("merges.txt"))?;
        let pad_token = pad_token_from_configs(dir, read);
        Self::new(vocab, &merges, pad_token.as_deref(), &vocab_path)
    }

    fn new(
        encoder: HashMap<String, i64>,
        merges: &str,
        pad_token: Option<&str>,
        origin: &Path,
    ) -> Result<Self, TokenizerError> {
        let invalid = |reason: String| TokenizerError::Invalid {
            path: origin.to_path_buf(),
            reason,
        };
        let mut merge_ranks = HashMap::new();
        for line in merges.lines() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(invalid(format!("merges line {line:?} is not two symbols")));
            };
            let rank = merge_ranks.len();
            merge_ranks
                .entry((a.to_string(), b.to_string()))
                .or_insert(rank);
        }
        let id = |tok: &str| {
            encoder
                .get(tok)
                .copied()
                .ok_or_else(|| invalid(format!("the vocabulary lacks {tok:?}")))
        };
        let bos_id = id("<|startoftext|>")?;
        let eos_id = id("<|endoftext|>")?;
        let pad_id = match pad_token {
            Some(tok) => id(tok)?,
            None => eos_id,
        };
        let pattern = Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            encoder,
            merge_ranks,
            byte_to_char: bytes_to_unicode(),
            pattern,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }
    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }
    /// The id of `,` as a word of its own, where A1111 prefers to start a
    /// new chunk.
    pub fn comma_id(&self) -> Option<i64> {
        self.encoder.get(",</w>").copied()
    }

    /// The BPE ids of `text` without special tokens.
    pub fn encode_plain(&self, text: &str) -> Vec<i64> {
        let normalized: String = text.nfc().collect();
        let collapsed = normalized.split_whitespace().collect::<Vec<_>>().join(" ");
        let lowered = collapsed.to_lowercase();
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&lowered) {
            let piece = piece.as_str();
            if let Some(&special) = self.encoder.get(piece).filter(|_| piece.starts_with("<|")) {
                ids.push(special);
                continue;
            }
            let mapped: String = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize])
                .collect();
            for token in self.bpe(&mapped) {
                // Every single byte symbol (with and without </w>) is in the
                // CLIP vocabulary, so a miss means a truncated vocab file.
                if let Some(&id) = self.encoder.get(&token) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// `[BOS] + ids[..75] + [EOS]`, padded with the pad id to 77.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(self.bos_id);
        ids.extend(self.encode_plain(text).into_iter().take(MAX_LENGTH - 2));
        ids.push(self.eos_id);
        ids.resize(MAX_LENGTH, self.pad_id);
        ids
    }

    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let Some((last, rest)) = chars.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<String> = rest.iter().map(|c| c.to_string()).collect();
        symbols.push(format!("{last}</w>"));
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| {
                    self.merge_ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|&rank| (rank, i))
                })
                .min();
            let Some((_, at)) = best else { break };
            let (a, b) = (symbols[at].clone(), symbols[at + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
            if symbols.len() == 1 {
                break;
            }
        }
        symbols
    }
}

/// The pad token named by the tokenizer's config files, if any.
fn pad_token_from_configs(
    dir: &Path,
    read: &dyn Fn(&Path) -> Result<String, TokenizerError>,
) -> Option<String> {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(text) = read(&dir.join(file)) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match value.get("pad_token") {
            Some(serde_json::Value::String(s)) => return Some(s.clone()),
            Some(obj) => {
                if let Some(s) = obj.get("content").and_then(|c| c.as_str()) {
                    return Some(s.to_string());
                }
            }
            None => {}
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A hand-made vocabulary exercising merges and `</w>`.
    fn tiny() -> ClipTokenizer {
        let chars = bytes_to_unicode();
        let mut vocab = HashMap::new();
        for c in chars {
            let n = vocab.len() as i64;
            vocab.insert(c.to_string(), n);
        }
        for c in chars {
            let n = vocab.len() as i64;
            vocab.insert(format!("{c}</w>"), n);
        }
        for tok in [
            "ca",
            "cat</w>",
            "at</w>",
            "<|startoftext|>",
            "<|endoftext|>",
        ] {
            let n = vocab.len() as i64;
            vocab.insert(tok.to_string(), n);
        }
        let merges = "#version: 0.2\na t</w>\nc a\nc at</w>\n";
        ClipTokenizer::new(vocab, merges, None, Path::new("test")).unwrap()
    }

    #[test]
    fn merges_by_rank() {
        let t = tiny();
        let cat = t.encoder["cat</w>"];
        assert_eq!(t.encode_plain("cat"), vec![cat]);
        assert_eq!(t.encode_plain("  CAT\n\tcat "), vec![cat, cat]);
        let ids = t.encode("cat");
        assert_eq!(ids.len(), MAX_LENGTH);
        assert_eq!(&ids[..3], &[t.bos_id, cat, t.eos_id]);
        assert!(ids[3..].iter().all(|&i| i == t.eos_id));
    }

    #[test]
    fn truncates_to_77() {
        let t = tiny();
        let ids = t.encode(&"cat ".repeat(200));
        assert_eq!(ids.len(), MAX_LENGTH);
        assert_eq!(ids[76], t.eos_id);
        assert_eq!(ids[75], t.encoder["cat</w>"]);
    }

    #[test]
    fn punctuation_and_digits_split() {
        let t = tiny();
        // "7" is one \p{N} piece; "!!" one punctuation piece of two symbols.
        let seven = t.encoder["7</w>"];
        assert_eq!(t.encode_plain("77"), vec![seven, seven]);
        assert_eq!(t.encode_plain("!!").len(), 2);
    }

    /// Real CLIP vocabulary, when the project's demo model is present.
    #[test]
    fn real_vocab_known_ids() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits/tokenizer");
        if !dir.join("vocab.json").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} is missing under CI",
                dir.display()
            );
            eprintln!("skipping: {} not present", dir.display());
            return;
        }
        let t = ClipTokenizer::from_dir(&dir).unwrap();
        let ids = t.encode("a photo of a cat");
        assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    }
}
