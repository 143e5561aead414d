//! The attention syntax AUTOMATIC1111 users write in prompts, parsed into
//! weighted pieces of text.
//!
//! What the syntax means (A1111 wiki, "Attention/emphasis" and "BREAK"):
//! * `(text)` multiplies the attention to `text` by 1.1; nesting multiplies
//!   again, so `((text))` is 1.21.
//! * `[text]` divides it by 1.1.
//! * `(text:1.5)` sets a multiplier of 1.5 for `text` (multiplied by any
//!   brackets around it).
//! * `\(`, `\)`, `\[`, `\]` and `\\` are the literal characters.
//! * A bracket that is never closed applies to the rest of the prompt; a
//!   closing bracket that closes nothing is ordinary text, and so is
//!   `:1.5)` outside round brackets.
//! * `BREAK` (upper case, standing as a word of its own) ends the current
//!   75-token chunk; the text after it starts a new one.
//!
//! Pure and libtorch-free, so it can be fuzzed (`fuzz_targets/prompt_syntax.rs`).
#![forbid(unsafe_code)]

/// The multiplier one pair of round brackets applies (A1111's value).
pub const ROUND_MULTIPLIER: f64 = 1.1;

/// A weight an explicit `(text:w)` may carry. A1111 sets no bound; this one
/// keeps a typo such as `(cat:120)` from turning the embedding into noise.
pub const MAX_EXPLICIT_WEIGHT: f64 = 100.0;

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptPiece {
    /// Text to tokenize, with the attention multiplier of all its tokens.
    Text { text: String, weight: f64 },
    /// `BREAK`: pad the current chunk and start a new one.
    Break,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptSyntaxError {
    /// `(text:w)` where `w` looks like a number but is not one (`1.2.3`).
    #[error("the weight `{text}` in `(...:{text})` is not a number; write it like `(red:1.2)`, or `\\(` and `\\)` for literal brackets")]
    BadWeight { text: String },
    #[error("the weight {weight} in `(...:{weight})` is outside -{max}..{max}; A1111 weights are usually between 0.5 and 1.5")]
    WeightOutOfRange { weight: f64, max: f64 },
}

/// The pieces of `prompt`, with adjacent pieces of equal weight merged and
/// empty ones dropped. A prompt with no syntax is one piece of weight 1.
pub fn parse_prompt(prompt: &str) -> Result<Vec<PromptPiece>, PromptSyntaxError> {
    let mut out = Parsed::default();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mut text = String::new();
    let mut rest = prompt;
    while let Some(c) = rest.chars().next() {
        match c {
            '\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(escaped @ ('(' | ')' | '[' | ']' | '\\')) => {
                        text.push(escaped);
                        rest = &rest[2..];
                    }
                    // A backslash before anything else is itself.
                    _ => {
                        text.push('\\');
                        rest = &rest[1..];
                    }
                }
            }
            '(' | '[' => {
                out.push_text(&mut text);
                if c == '(' {
                    round.push(out.pieces.len());
                } else {
                    square.push(out.pieces.len());
                }
                rest = &rest[1..];
            }
            ':' => match explicit_weight(rest) {
                Some((weight, len)) if !round.is_empty() => {
                    let weight = check_weight(weight?)?;
                    out.push_text(&mut text);
                    if let Some(start) = round.pop() {
                        out.multiply_from(start, weight);
                    }
                    rest = &rest[len..];
                }
                _ => {
                    text.push(':');
                    rest = &rest[1..];
                }
            },
            ')' if !round.is_empty() => {
                out.push_text(&mut text);
                if let Some(start) = round.pop() {
                    out.multiply_from(start, ROUND_MULTIPLIER);
                }
                rest = &rest[1..];
            }
            ']' if !square.is_empty() => {
                out.push_text(&mut text);
                if let Some(start) = square.pop() {
                    out.multiply_from(start, 1.0 / ROUND_MULTIPLIER);
                }
                rest = &rest[1..];
            }
            _ => {
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out.push_text(&mut text);
    for start in round {
        out.multiply_from(start, ROUND_MULTIPLIER);
    }
    for start in square {
        out.multiply_from(start, 1.0 / ROUND_MULTIPLIER);
    }
    Ok(out.finish())
}

/// `:` `\s*` number `\s*` `)` at the start of `s`: the number (or why it is
/// not one) and the length matched. `None` when `s` does not have that shape.
fn explicit_weight(s: &str) -> Option<(Result<f64, PromptSyntaxError>, usize)> {
    let after_colon = &s[1..];
    let number_start = after_colon.trim_start();
    let digits_len = number_start
        .char_indices()
        .take_while(|&(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-')))
        .map(|(i, c)| i + c.len_utf8())
        .last()?;
    let number = &number_start[..digits_len];
    if !number.chars().any(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let after_number = &number_start[digits_len..];
    let close = after_number.trim_start();
    if !close.starts_with(')') {
        return None;
    }
    let len = s.len() - close.len() + 1;
    let value = number
        .parse::<f64>()
        .map_err(|_| PromptSyntaxError::BadWeight {
            text: number.to_string(),
        });
    Some((value, len))
}

fn check_weight(weight: f64) -> Result<f64, PromptSyntaxError> {
    if weight.is_finite() && weight.abs() <= MAX_EXPLICIT_WEIGHT {
        Ok(weight)
    } else {
        Err(PromptSyntaxError::WeightOutOfRange {
            weight,
            max: MAX_EXPLICIT_WEIGHT,
        })
    }
}

#[derive(Default)]
struct Parsed {
    pieces: Vec<PromptPiece>,
}

impl Parsed {
    /// Moves `text` out as pieces of weight 1, split at each `BREAK`.
    fn push_text(&mut self, text: &mut String) {
        if text.is_empty() {
            return;
        }
        let taken = std::mem::take(text);
        let mut parts = split_breaks(&taken).into_iter();
        if let Some(first) = parts.next() {
            self.push_plain(first);
        }
        for part in parts {
            self.pieces.push(PromptPiece::Break);
            self.push_plain(part);
        }
    }

    fn push_plain(&mut self, text: &str) {
        self.pieces.push(PromptPiece::Text {
            text: text.to_string(),
            weight: 1.0,
        });
    }

    fn multiply_from(&mut self, start: usize, by: f64) {
        for piece in &mut self.pieces[start..] {
            if let PromptPiece::Text { weight, .. } = piece {
                *weight *= by;
            }
        }
    }

    fn finish(self) -> Vec<PromptPiece> {
        let mut merged: Vec<PromptPiece> = Vec::with_capacity(self.pieces.len());
        for piece in self.pieces {
            match (&piece, merged.last_mut()) {
                (PromptPiece::Text { text, .. }, _) if text.is_empty() => {}
                (
                    PromptPiece::Text { text, weight },
                    Some(PromptPiece::Text {
                        text: last,
                        weight: last_weight,
                    }),
                ) if *last_weight == *weight => last.push_str(text),
                _ => merged.push(piece),
            }
        }
        if merged.is_empty() {
            merged.push(PromptPiece::Text {
                text: String::new(),
                weight: 1.0,
            });
        }
        merged
    }
}

/// `text` split at each `BREAK` that stands as a word of its own, with the
/// whitespace around it removed (A1111 splits on `\s*\bBREAK\b\s*`).
fn split_breaks(text: &str) -> Vec<&str> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut parts = Vec::new();
    let mut part_start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let at = search + found;
        let end = at + "BREAK".len();
        let before_ok = !text[..at].chars().next_back().is_some_and(is_word);
        let after_ok = !text[end..].chars().next().is_some_and(is_word);
        if before_ok && after_ok {
            parts.push(text[part_start..at].trim_end());
            let after = &text[end..];
            part_start = end + (after.len() - after.trim_start().len());
            search = part_start;
        } else {
            search = end;
        }
    }
    parts.push(&text[part_start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str, weight: f64) -> PromptPiece {
        PromptPiece::Text {
            text: text.to_string(),
            weight,
        }
    }

    fn parsed(s: &str) -> Vec<PromptPiece> {
        parse_prompt(s).expect("parses")
    }

    fn assert_pieces(s: &str, want: &[PromptPiece]) {
        let got = parsed(s);
        assert_eq!(got.len(), want.len(), "{s:?}: {got:?}");
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (
                    PromptPiece::Text { text, weight },
                    PromptPiece::Text {
                        text: wt,
                        weight: ww,
                    },
                ) => {
                    assert_eq!(text, wt, "{s:?}: {got:?}");
                    assert!((weight - ww).abs() < 1e-12, "{s:?}: {got:?}");
                }
                _ => assert_eq!(g, w, "{s:?}"),
            }
        }
    }

    // The examples of the A1111 wiki's "Attention/emphasis" section.
    #[test]
    fn plain_text_is_one_piece_of_weight_one() {
        assert_pieces("a cat on a mat", &[t("a cat on a mat", 1.0)]);
        assert_pieces("", &[t("", 1.0)]);
    }

    #[test]
    fn round_brackets_multiply_by_1_1_and_nest() {
        assert_pieces(
            "a (cat) here",
            &[t("a ", 1.0), t("cat", 1.1), t(" here", 1.0)],
        );
        assert_pieces("((cat))", &[t("cat", 1.21)]);
        assert_pieces("(((cat)))", &[t("cat", 1.1 * 1.1 * 1.1)]);
    }

    #[test]
    fn square_brackets_divide_by_1_1() {
        assert_pieces("a [cat]", &[t("a ", 1.0), t("cat", 1.0 / 1.1)]);
        assert_pieces("[[cat]]", &[t("cat", 1.0 / 1.21)]);
    }

    #[test]
    fn explicit_weights_and_their_nesting() {
        assert_pieces("(cat:1.5)", &[t("cat", 1.5)]);
        assert_pieces("(cat: 0.25 )", &[t("cat", 0.25)]);
        assert_pieces("((cat:1.5))", &[t("cat", 1.65)]);
        assert_pieces(
            "(a (cat:2) dog:0.5)",
            &[t("a ", 0.5), t("cat", 1.0), t(" dog", 0.5)],
        );
        assert_pieces("(cat:-1)", &[t("cat", -1.0)]);
        assert_pieces("(cat:.5)", &[t("cat", 0.5)]);
    }

    #[test]
    fn escaped_brackets_are_literal() {
        assert_pieces(r"a \(cat\) \[x\]", &[t("a (cat) [x]", 1.0)]);
        assert_pieces(r"\\(cat)", &[t("\\", 1.0), t("cat", 1.1)]);
        assert_pieces(r"a\b", &[t(r"a\b", 1.0)]);
    }

    #[test]
    fn unclosed_brackets_apply_to_the_rest() {
        assert_pieces("a (cat dog", &[t("a ", 1.0), t("cat dog", 1.1)]);
        assert_pieces("a [cat", &[t("a ", 1.0), t("cat", 1.0 / 1.1)]);
    }

    #[test]
    fn stray_closers_and_colons_are_text() {
        assert_pieces("a) b] c", &[t("a) b] c", 1.0)]);
        assert_pieces("ratio 16:9", &[t("ratio 16:9", 1.0)]);
        assert_pieces("cat:1.2)", &[t("cat:1.2)", 1.0)]);
        // A colon inside round brackets that is not `:number)` stays text.
        assert_pieces("(time: noon)", &[t("time: noon", 1.1)]);
    }

    #[test]
    fn mixed_brackets_close_independently() {
        // `]` closes the square bracket although a round one opened after it.
        assert_pieces(
            "[a (b] c)",
            &[t("a ", 1.0 / 1.1), t("b", 1.0), t(" c", 1.1)],
        );
    }

    #[test]
    fn break_splits_chunks_as_a_word_of_its_own() {
        assert_pieces(
            "a cat BREAK a dog",
            &[t("a cat", 1.0), PromptPiece::Break, t("a dog", 1.0)],
        );
        assert_pieces("BREAKING news", &[t("BREAKING news", 1.0)]);
        assert_pieces("a break b", &[t("a break b", 1.0)]);
        assert_pieces("BREAK cat", &[PromptPiece::Break, t("cat", 1.0)]);
        assert_pieces(
            "(red BREAK blue)",
            &[t("red", 1.1), PromptPiece::Break, t("blue", 1.1)],
        );
    }

    #[test]
    fn bad_weights_are_typed_errors() {
        assert_eq!(
            parse_prompt("(cat:1.2.3)"),
            Err(PromptSyntaxError::BadWeight {
                text: "1.2.3".into()
            })
        );
        assert!(matches!(
            parse_prompt("(cat:1000)"),
            Err(PromptSyntaxError::WeightOutOfRange { .. })
        ));
    }

    #[test]
    fn multibyte_text_survives() {
        assert_pieces("(café:1.3) ☕", &[t("café", 1.3), t(" ☕", 1.0)]);
    }
}
