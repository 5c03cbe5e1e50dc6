//! A1111's attention syntax: `(text)`, `[text]`, `(text:1.3)`, escapes and `BREAK`, turned into
//! (text, weight) runs exactly as `modules/prompt_parser.py::parse_prompt_attention` does.
//!
//! The reference walks the prompt with one ordered regex alternation; every character is consumed by exactly one
//! alternative, so a hand-written scanner with the same priority order gives the same segmentation. Weights are
//! kept as `f64` while parsing because the reference multiplies Python floats and merges neighbouring runs only
//! when their weights are bit-identical; rounding earlier would merge runs the reference keeps apart.

/// The weight A1111 gives its `BREAK` marker entry. Only an entry with text `BREAK` and exactly this weight starts
/// a new chunk; a `BREAK` inside brackets gets its weight multiplied and is then ordinary text, as in A1111.
pub const BREAK_WEIGHT: f64 = -1.0;

const ROUND_MULTIPLIER: f64 = 1.1;
/// A1111 multiplies by `1 / 1.1` rather than dividing by 1.1; the two differ in the last bit.
const SQUARE_MULTIPLIER: f64 = 1.0 / 1.1;

/// One lexical token of the attention syntax, in the priority order of A1111's `re_attention`.
#[derive(Debug, PartialEq)]
enum Lexeme<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\` or a lone `\`: the text after the backslash, literally.
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:<number>)`: the number text (may not be a valid float: `1.2.3`), and the whole lexeme.
    WeightClose(&'a str, &'a str),
    CloseRound,
    CloseSquare,
    /// Anything else: a run of ordinary characters, or a lone `:`.
    Text(&'a str),
}

fn next_lexeme(s: &str) -> Option<(Lexeme<'_>, usize)> {
    let mut chars = s.chars();
    let c = chars.next()?;
    match c {
        '\\' => {
            let after = &s[1..];
            match after.chars().next() {
                Some(n @ ('(' | ')' | '[' | ']' | '\\')) => Some((Lexeme::Escaped(&after[..n.len_utf8()]), 2)),
                _ => Some((Lexeme::Escaped(""), 1)),
            }
        }
        '(' => Some((Lexeme::OpenRound, 1)),
        '[' => Some((Lexeme::OpenSquare, 1)),
        ':' => {
            let rest = &s[1..];
            let sign = usize::from(rest.starts_with(['+', '-']));
            let digits = rest[sign..].chars().take_while(|c| *c == '.' || c.is_ascii_digit()).count();
            if digits > 0 && rest[sign + digits..].starts_with(')') {
                let len = 1 + sign + digits + 1;
                Some((Lexeme::WeightClose(&rest[..sign + digits], &s[..len]), len))
            } else {
                Some((Lexeme::Text(":"), 1))
            }
        }
        ')' => Some((Lexeme::CloseRound, 1)),
        ']' => Some((Lexeme::CloseSquare, 1)),
        _ => {
            let len = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            Some((Lexeme::Text(&s[..len]), len))
        }
    }
}

/// Python's `float()` on the strings the weight pattern admits (`[+-]?[.0-9]+`).
fn parse_weight(text: &str) -> Option<f64> {
    // Rust accepts everything Python does here (`1.`, `.5`, `+2`) and rejects the same malformed strings.
    text.parse::<f64>().ok()
}

/// Python `\s` on `str` (`Py_UNICODE_ISSPACE`): Rust's White_Space plus the four ASCII separators 0x1C..0x1F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `\w` on `str`: alphanumerics and underscore.
fn is_py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`: the pieces between BREAK keywords (with their surrounding whitespace).
pub(crate) fn split_break(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map(|(b, _)| *b).unwrap_or(text.len());
    let is_word_at = |i: usize| chars.get(i).is_some_and(|(_, c)| is_py_word(*c));
    let break_at = |i: usize| -> bool {
        let word = ['B', 'R', 'E', 'A', 'K'];
        (0..5).all(|k| chars.get(i + k).is_some_and(|(_, c)| *c == word[k]))
            && (i == 0 || !is_word_at(i - 1))
            && !is_word_at(i + 5)
    };
    let mut pieces = Vec::new();
    let (mut piece_start, mut s) = (0usize, 0usize);
    while s < chars.len() {
        // A match starting at `s` takes the whole whitespace run from `s`, then needs `BREAK` on word boundaries.
        let mut b = s;
        while b < chars.len() && is_py_space(chars[b].1) {
            b += 1;
        }
        if break_at(b) {
            let mut end = b + 5;
            while end < chars.len() && is_py_space(chars[end].1) {
                end += 1;
            }
            pieces.push(&text[byte_at(piece_start)..byte_at(s)]);
            piece_start = end;
            s = end;
        } else {
            s += 1;
        }
    }
    pieces.push(&text[byte_at(piece_start)..]);
    pieces
}

/// The reference algorithm with Python-float weights; [`parse_prompt_attention`] rounds them to `f32`.
pub fn parse_prompt_attention_f64(text: &str) -> Vec<(String, f64)> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply_range = |res: &mut Vec<(String, f64)>, start: usize, m: f64| {
        for entry in res.iter_mut().skip(start) {
            entry.1 *= m;
        }
    };
    let push_text = |res: &mut Vec<(String, f64)>, t: &str| {
        for (i, part) in split_break(t).into_iter().enumerate() {
            if i > 0 {
                res.push(("BREAK".to_string(), BREAK_WEIGHT));
            }
            res.push((part.to_string(), 1.0));
        }
    };
    let mut rest = text;
    while let Some((lexeme, len)) = next_lexeme(rest) {
        rest = &rest[len..];
        match lexeme {
            Lexeme::Escaped(t) => res.push((t.to_string(), 1.0)),
            Lexeme::OpenRound => round.push(res.len()),
            Lexeme::OpenSquare => square.push(res.len()),
            Lexeme::WeightClose(number, whole) => match (parse_weight(number), round.is_empty()) {
                (Some(w), false) => {
                    let start = round.pop().unwrap_or(0);
                    multiply_range(&mut res, start, w);
                }
                // A1111 raises ValueError on `(x:1.2.3)`; keeping the characters as text is the gentler failure.
                _ => push_text(&mut res, whole),
            },
            Lexeme::CloseRound if !round.is_empty() => {
                let start = round.pop().unwrap_or(0);
                multiply_range(&mut res, start, ROUND_MULTIPLIER);
            }
            Lexeme::CloseSquare if !square.is_empty() => {
                let start = square.pop().unwrap_or(0);
                multiply_range(&mut res, start, SQUARE_MULTIPLIER);
            }
            Lexeme::CloseRound => push_text(&mut res, ")"),
            Lexeme::CloseSquare => push_text(&mut res, "]"),
            Lexeme::Text(t) => push_text(&mut res, t),
        }
    }
    // Unclosed brackets still apply, from where they opened (in A1111's order: all round, then all square).
    for pos in round {
        multiply_range(&mut res, pos, ROUND_MULTIPLIER);
    }
    for pos in square {
        multiply_range(&mut res, pos, SQUARE_MULTIPLIER);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    merged
}

/// A1111's `parse_prompt_attention`: the prompt as runs of (text, weight). A `BREAK` keyword becomes the entry
/// `("BREAK", -1.0)`, as in A1111. Never fails: unbalanced or malformed brackets fall back as A1111 does.
pub fn parse_prompt_attention(text: &str) -> Vec<(String, f32)> {
    parse_prompt_attention_f64(text).into_iter().map(|(t, w)| (t, w as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[(&str, f64)]) {
        let got = parse_prompt_attention_f64(text);
        let want: Vec<(String, f64)> = expected.iter().map(|(t, w)| (t.to_string(), *w)).collect();
        assert_eq!(got, want, "prompt {text:?}");
    }

    /// Every example of the reference docstring, with Python's exact float values.
    #[test]
    fn a1111_docstring_examples() {
        check("normal text", &[("normal text", 1.0)]);
        check("an (important) word", &[("an ", 1.0), ("important", 1.1), (" word", 1.0)]);
        check("(unbalanced", &[("unbalanced", 1.1)]);
        check("\\(literal\\]", &[("(literal]", 1.0)]);
        check("(unnecessary)(parens)", &[("unnecessaryparens", 1.1)]);
        check(
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            &[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        );
    }

    #[test]
    fn break_markers() {
        check("a BREAK b", &[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]);
        check("a BREAK BREAK b", &[("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)]);
        check("aBREAK b", &[("aBREAK b", 1.0)]);
        check("a,BREAK,b", &[("a,", 1.0), ("BREAK", -1.0), (",b", 1.0)]);
        // Inside brackets the marker's weight is multiplied, so it is no longer a marker (A1111 quirk).
        check("(a BREAK b)", &[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]);
        assert_eq!(split_break("x \t BREAK\n y"), vec!["x", "y"]);
        assert_eq!(split_break("BREAK"), vec!["", ""]);
    }

    #[test]
    fn malformed_input_never_fails() {
        check("", &[("", 1.0)]);
        check(")", &[(")", 1.0)]);
        check("]x[", &[("]x", 1.0)]);
        check("a:1.2)", &[("a:1.2)", 1.0)]);
        check("(a:1.2.3)", &[("a:1.2.3)", 1.1)]);
        check("(a:)", &[("a:", 1.1)]);
        check("\\", &[("", 1.0)]);
        check("a\\\\b", &[("a\\b", 1.0)]);
        check("[[a]", &[("a", 1.0 / 1.1 * (1.0 / 1.1))]);
        check("(a:-0.5)", &[("a", -0.5)]);
        check("(a:.5) (b:2.)", &[("a", 0.5), (" ", 1.0), ("b", 2.0)]);
    }
}
