//! Prompt editing as AUTOMATIC1111 reads it (`modules/prompt_parser.py`, `get_learned_conditioning_prompt_schedules`):
//! `[from:to:when]`, `[to:when]`, `[from::when]`, nesting, and alternation `[a|b|c]`, turned into a schedule of
//! `(end_at_step, text)` entries. The texts still carry emphasis, `BREAK` and embedding names; each is encoded once.
//!
//! A1111 uses an Earley grammar (lark); this is a small recursive-descent parser with the same outcomes, checked
//! against A1111's own code on its examples and on random bracket soup (`fixtures/prompt/schedules.json`):
//! - inside any bracket everything must be well formed; at the top level a `[`, `(`, `]`, `)` or `:` that does not
//!   open a well-formed group stays literal text;
//! - a `|` outside an alternation, or a `\` at the end of the text or before a line break, makes the whole prompt
//!   one literal entry (A1111's parse error fallback);
//! - emphasis groups `(a)`, `(a:1.2)`, `[a]` keep their brackets in the text (the attention parser reads them later).
//!
//! `when` (A1111 ≥ 1.6 "new" timeline): a number written with a `.` is a fraction of the steps, one without is a
//! step number; `int()` truncation, capped at the steps; values below 1 add no entry (the edit is already done at
//! the first step). For a hires second pass the integers count from the end of the first pass and the fractions
//! from 1.0 (`[a:b:1.5]` switches half-way through the second pass). The old timeline (`when < 1` is a fraction,
//! everything else a step) is kept for comparison.

use anyhow::{bail, Result};

/// Which of A1111's two timelines turns `when` into a step (`use_old_scheduling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeline {
    /// A1111 ≥ 1.6: `0.25` is a fraction because of its `.`, `3` a step number.
    New,
    /// A1111 < 1.6: any value below 1 is a fraction, the rest step numbers.
    Old,
}

/// The steps a schedule is laid over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// txt2img / img2img: `steps` as requested.
    Base { steps: usize },
    /// The hires fix's second pass of `steps`, after a first pass of `first_steps`.
    Hires { first_steps: usize, steps: usize },
}

impl Pass {
    pub fn steps(self) -> usize {
        match self {
            Pass::Base { steps } | Pass::Hires { steps, .. } => steps,
        }
    }
}

/// One element of a parsed prompt.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    /// `[before:after:when]`; `before` is empty for `[after:when]`.
    Scheduled {
        before: Vec<Part>,
        after: Vec<Part>,
        when: String,
    },
    Alternate(Vec<Vec<Part>>),
}

/// A prompt parsed for scheduling (or the literal text where A1111's grammar rejects it).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPrompt {
    parts: Vec<Part>,
    literal: Option<String>,
}

/// One entry of a schedule: `text` is in force for steps up to and including `end_at_step` (A1111 numbering: the
/// loop's step index counted from 0 is compared with `<=`, so `[a:b:3]` keeps `a` for the first four steps).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub end_at_step: usize,
    pub text: String,
}

/// A prompt's texts over the steps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Schedule {
    pub entries: Vec<Entry>,
}

impl Schedule {
    /// The text in force at loop step `index` (from 0): the first entry whose end is not before it. Past the last
    /// entry A1111 falls back to the first one; the pipeline never asks for that.
    pub fn at(&self, index: usize) -> &str {
        let hit = self.entries.iter().find(|e| index <= e.end_at_step).or(self.entries.first());
        hit.map(|e| e.text.as_str()).unwrap_or("")
    }
}

impl ParsedPrompt {
    /// Parse `text` (A1111's grammar, its fallbacks included). Errors only for nesting deeper than
    /// [`sd_core::limits::PROMPT_MAX_NESTING`].
    pub fn parse(text: &str) -> Result<Self> {
        let chars: Vec<char> = text.chars().collect();
        let mut p = Parser { s: &chars, pos: 0, depth: 0, too_deep: false };
        let parts = p.start();
        if p.too_deep {
            bail!(
                "{}",
                sd_core::limits::exceeded(
                    "the prompt's brackets",
                    "prompt nesting",
                    sd_core::limits::PROMPT_MAX_NESTING as u64,
                    "levels"
                )
            );
        }
        Ok(match parts {
            Some(parts) => Self { parts, literal: None },
            None => Self { parts: Vec::new(), literal: Some(text.to_string()) },
        })
    }

    /// The schedule over `pass` with the given timeline.
    pub fn schedule(&self, pass: Pass, timeline: Timeline) -> Schedule {
        let steps = pass.steps();
        if let Some(text) = &self.literal {
            return Schedule { entries: vec![Entry { end_at_step: steps, text: text.clone() }] };
        }
        let mut ends = vec![steps as i64];
        let mut alternates = false;
        collect(&self.parts, pass, timeline, &mut ends, &mut alternates);
        if alternates {
            ends.extend(1..=steps as i64);
        }
        ends.sort_unstable();
        ends.dedup();
        let entries = ends
            .into_iter()
            .map(|end| {
                let mut text = String::new();
                render(&self.parts, end, pass, timeline, &mut text);
                Entry { end_at_step: end.max(0) as usize, text }
            })
            .collect();
        Schedule { entries }
    }
}

/// A1111's `when` → step: the number as written, the timeline and pass, truncated, capped at the steps.
fn when_step(when: &str, pass: Pass, timeline: Timeline) -> i64 {
    let v: f64 = when.parse().unwrap_or(0.0);
    let steps = pass.steps() as f64;
    let v = match (timeline, pass) {
        (Timeline::Old, _) if v < 1.0 => v * steps,
        (Timeline::Old, _) => v,
        (Timeline::New, Pass::Base { .. }) if when.contains('.') => v * steps,
        (Timeline::New, Pass::Base { .. }) => v,
        (Timeline::New, Pass::Hires { .. }) if when.contains('.') => (v - 1.0) * steps,
        (Timeline::New, Pass::Hires { first_steps, .. }) => v - first_steps as f64,
    };
    // `as` saturates: ±inf from an exponent like 1e999 stays ordered (A1111 would raise on int(inf)).
    (v.trunc() as i64).min(pass.steps() as i64)
}

fn collect(parts: &[Part], pass: Pass, timeline: Timeline, ends: &mut Vec<i64>, alternates: &mut bool) {
    for part in parts {
        match part {
            Part::Text(_) => {}
            Part::Scheduled { before, after, when } => {
                let w = when_step(when, pass, timeline);
                if w >= 1 {
                    ends.push(w);
                }
                collect(before, pass, timeline, ends, alternates);
                collect(after, pass, timeline, ends, alternates);
            }
            Part::Alternate(options) => {
                *alternates = true;
                for o in options {
                    collect(o, pass, timeline, ends, alternates);
                }
            }
        }
    }
}

fn render(parts: &[Part], step: i64, pass: Pass, timeline: Timeline, out: &mut String) {
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Scheduled { before, after, when } => {
                let chosen = if step <= when_step(when, pass, timeline) { before } else { after };
                render(chosen, step, pass, timeline, out);
            }
            Part::Alternate(options) => {
                let i = (step - 1).rem_euclid(options.len() as i64) as usize;
                render(&options[i], step, pass, timeline, out);
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [char],
    pos: usize,
    depth: usize,
    too_deep: bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    /// The top level: prompts and stray `[]():` characters; `None` = no parse at all (A1111 keeps the prompt literal).
    fn start(&mut self) -> Option<Vec<Part>> {
        let mut parts = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '[' | '(' => {
                    let at = self.pos;
                    match self.group() {
                        Some(mut g) => parts.append(&mut g),
                        None if self.too_deep => return None,
                        None => {
                            self.pos = at + 1;
                            push_text(&mut parts, c);
                        }
                    }
                }
                ']' | ')' | ':' => {
                    self.pos += 1;
                    push_text(&mut parts, c);
                }
                '|' => return None,
                _ => self.plain(&mut parts)?,
            }
        }
        Some(parts)
    }

    /// Plain text up to the next special character; an escape takes the character after the backslash along.
    fn plain(&mut self, parts: &mut Vec<Part>) -> Option<()> {
        while let Some(c) = self.peek() {
            match c {
                '[' | ']' | '(' | ')' | ':' | '|' => break,
                '\\' => {
                    let next = self.s.get(self.pos + 1).copied()?;
                    if next == '\n' {
                        return None;
                    }
                    push_text(parts, '\\');
                    push_text(parts, next);
                    self.pos += 2;
                }
                _ => {
                    push_text(parts, c);
                    self.pos += 1;
                }
            }
        }
        Some(())
    }

    /// A prompt inside a group: text and well-formed groups, up to the next `]`, `)`, `:` or `|` (not consumed).
    fn prompt(&mut self) -> Option<Vec<Part>> {
        let mut parts = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '[' | '(' => parts.append(&mut self.group()?),
                ']' | ')' | ':' | '|' => break,
                _ => self.plain(&mut parts)?,
            }
        }
        Some(parts)
    }

    /// A group at `[` or `(`: emphasis (kept as text), a scheduled edit or an alternation.
    fn group(&mut self) -> Option<Vec<Part>> {
        if self.depth >= sd_core::limits::PROMPT_MAX_NESTING {
            self.too_deep = true;
            return None;
        }
        self.depth += 1;
        let r = self.group_inner();
        self.depth -= 1;
        r
    }

    fn group_inner(&mut self) -> Option<Vec<Part>> {
        let open = self.peek()?;
        self.pos += 1;
        let first = self.prompt()?;
        if open == '(' {
            let mut out = vec![Part::Text("(".into())];
            out.extend(first);
            match self.peek()? {
                ')' => {}
                ':' => {
                    self.pos += 1;
                    out.push(Part::Text(":".into()));
                    out.extend(self.prompt()?);
                    if self.peek()? != ')' {
                        return None;
                    }
                }
                _ => return None,
            }
            self.pos += 1;
            out.push(Part::Text(")".into()));
            return Some(out);
        }
        match self.peek()? {
            ']' => {
                self.pos += 1;
                let mut out = vec![Part::Text("[".into())];
                out.extend(first);
                out.push(Part::Text("]".into()));
                Some(out)
            }
            '|' => {
                let mut options = vec![first];
                while self.peek() == Some('|') {
                    self.pos += 1;
                    options.push(self.prompt()?);
                }
                if self.peek()? != ']' {
                    return None;
                }
                self.pos += 1;
                Some(vec![Part::Alternate(options)])
            }
            ':' => {
                self.pos += 1;
                let after_colon = self.pos;
                if let Some(when) = self.when_tail() {
                    return Some(vec![Part::Scheduled { before: Vec::new(), after: first, when }]);
                }
                self.pos = after_colon;
                let second = self.prompt()?;
                if self.peek()? != ':' {
                    return None;
                }
                self.pos += 1;
                let when = self.when_tail()?;
                Some(vec![Part::Scheduled { before: first, after: second, when }])
            }
            _ => None,
        }
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"`, consuming it, with the number as written.
    fn when_tail(&mut self) -> Option<String> {
        self.skip_ws();
        let number = self.number()?;
        self.skip_ws();
        if self.peek()? != ']' {
            return None;
        }
        self.pos += 1;
        Some(number)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - from
    }

    /// lark's `SIGNED_NUMBER`: `[+-]? (INT | INT "." INT? | "." INT) ([eE] [+-]? INT)?`.
    fn number(&mut self) -> Option<String> {
        let from = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.pos += 1;
        }
        let int = self.digits();
        let mut frac = 0;
        if self.peek() == Some('.') {
            let at = self.pos;
            self.pos += 1;
            frac = self.digits();
            if int == 0 && frac == 0 {
                self.pos = at;
            }
        }
        if int == 0 && frac == 0 {
            self.pos = from;
            return None;
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let at = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                self.pos = at;
            }
        }
        Some(self.s[from..self.pos].iter().collect())
    }
}

fn push_text(parts: &mut Vec<Part>, c: char) {
    match parts.last_mut() {
        Some(Part::Text(t)) => t.push(c),
        _ => parts.push(Part::Text(c.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str, steps: usize) -> Vec<(usize, String)> {
        ParsedPrompt::parse(p)
            .unwrap()
            .schedule(Pass::Base { steps }, Timeline::New)
            .entries
            .into_iter()
            .map(|e| (e.end_at_step, e.text))
            .collect()
    }

    fn e(v: &[(usize, &str)]) -> Vec<(usize, String)> {
        v.iter().map(|(s, t)| (*s, t.to_string())).collect()
    }

    #[test]
    fn a1111_docstring_examples() {
        assert_eq!(g("test", 10), e(&[(10, "test")]));
        assert_eq!(g("a [b:3]", 10), e(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [b: 3]", 10), e(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [[[b]]:2]", 10), e(&[(2, "a "), (10, "a [[b]]")]));
        assert_eq!(g("[(a:2):3]", 10), e(&[(3, ""), (10, "(a:2)")]));
        assert_eq!(g("a [b : c : 1] d", 10), e(&[(1, "a b  d"), (10, "a  c  d")]));
        assert_eq!(g("a[b:[c:d:2]:1]e", 10), e(&[(1, "abe"), (2, "ace"), (10, "ade")]));
        assert_eq!(g("a [unbalanced", 10), e(&[(10, "a [unbalanced")]));
        assert_eq!(g("a [b:.5] c", 10), e(&[(5, "a  c"), (10, "a b c")]));
        assert_eq!(g("((a][:b:c [d:3]", 10), e(&[(3, "((a][:b:c "), (10, "((a][:b:c d")]));
        let alt = g("[fe|]male", 4);
        assert_eq!(alt, e(&[(1, "female"), (2, "male"), (3, "female"), (4, "male")]));
    }

    #[test]
    fn hires_and_old_timelines() {
        let p = ParsedPrompt::parse("a [b:1.5] c").unwrap();
        let s = p.schedule(Pass::Hires { first_steps: 10, steps: 10 }, Timeline::New);
        assert_eq!(
            s.entries,
            vec![Entry { end_at_step: 5, text: "a  c".into() }, Entry { end_at_step: 10, text: "a b c".into() }]
        );
        let p = ParsedPrompt::parse("[a:b:0.5]").unwrap();
        assert_eq!(p.schedule(Pass::Hires { first_steps: 10, steps: 10 }, Timeline::New).entries.len(), 1);
        let p = ParsedPrompt::parse("[a:b:1]").unwrap();
        assert_eq!(p.schedule(Pass::Base { steps: 10 }, Timeline::Old).entries[0].end_at_step, 1);
        let p = ParsedPrompt::parse("[a:b:1.0]").unwrap();
        assert_eq!(p.schedule(Pass::Base { steps: 10 }, Timeline::Old).entries[0].end_at_step, 1);
        assert_eq!(p.schedule(Pass::Base { steps: 10 }, Timeline::New).entries[0].end_at_step, 10);
    }

    #[test]
    fn lookup_per_step_follows_a1111() {
        let s = ParsedPrompt::parse("[a:b:2]").unwrap().schedule(Pass::Base { steps: 5 }, Timeline::New);
        let per_step: Vec<&str> = (0..5).map(|i| s.at(i)).collect();
        assert_eq!(per_step, ["a", "a", "a", "b", "b"]);
        let s = ParsedPrompt::parse("[a|b]").unwrap().schedule(Pass::Base { steps: 5 }, Timeline::New);
        let per_step: Vec<&str> = (0..5).map(|i| s.at(i)).collect();
        assert_eq!(per_step, ["a", "a", "b", "a", "b"]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(5000) + "a" + &"]".repeat(5000);
        let err = ParsedPrompt::parse(&deep).unwrap_err().to_string();
        assert!(err.contains("prompt nesting"), "{err}");
        let huge = "[a:b:1e999] [c:d:-1e999]";
        assert_eq!(g(huge, 4), e(&[(4, "a d")]));
    }
}
