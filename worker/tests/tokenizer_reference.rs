//! The CLIP tokenizer against ids that transformers' `CLIPTokenizer`
//! (transformers 5.x) produced for tricky prompts with the real CLIP vocabulary
//! (`models/digits/tokenizer`): case, punctuation, apostrophes, accents,
//! digits, emoji, CJK, a literal special token, odd whitespace.
#![allow(clippy::unwrap_used)]

mod common;

use weave_worker::engine::text::tokenizer::ClipTokenizer;

/// (prompt, ids up to and including the `<|endoftext|>` that ends the text;
/// the rest of the 77 are `<|endoftext|>` padding).
const CASES: &[(&str, &[i64])] = &[
    (
        "A Photo of a CAT!!",
        &[49406, 320, 1125, 539, 320, 2368, 748, 49407],
    ),
    (
        "it's   a dog's life,\tisn't it?",
        &[
            49406, 585, 568, 320, 1929, 568, 970, 267, 2923, 713, 585, 286, 49407,
        ],
    ),
    (
        "café naïve résumé",
        &[49406, 15304, 1097, 35689, 563, 29106, 7054, 4166, 49407],
    ),
    (
        "3.14159 and 42 apples",
        &[
            49406, 274, 269, 272, 275, 272, 276, 280, 537, 275, 273, 14032, 49407,
        ],
    ),
    (
        "emoji 🐱🚀 test",
        &[49406, 16327, 35710, 13542, 1628, 49407],
    ),
    (
        "hello<|endoftext|>world",
        &[49406, 3306, 49407, 1002, 49407],
    ),
    (
        "  leading and trailing  ",
        &[49406, 3833, 537, 37427, 49407],
    ),
    (
        "日本語のテキスト",
        &[
            49406, 39121, 44353, 34002, 252, 21575, 2429, 228, 47121, 32421, 486, 49407,
        ],
    ),
    (
        "don't-stop_me (now)",
        &[49406, 847, 713, 268, 1691, 318, 614, 263, 692, 264, 49407],
    ),
    ("a b c", &[49406, 320, 321, 322, 49407]),
];

#[test]
fn matches_transformers_clip_tokenizer() {
    let dir = common::repo_root().join("models/digits/tokenizer");
    if !dir.join("vocab.json").exists() {
        assert!(!common::ci(), "{} is missing", dir.display());
        eprintln!("skipping: no CLIP vocabulary at {}", dir.display());
        return;
    }
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    for (prompt, expected) in CASES {
        let ids = tok.encode(prompt);
        assert_eq!(ids.len(), 77);
        assert_eq!(&ids[..expected.len()], *expected, "{prompt:?}");
        assert!(
            ids[expected.len()..].iter().all(|&i| i == 49407),
            "{prompt:?}: padding"
        );
    }
}
