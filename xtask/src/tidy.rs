//! `cargo xtask tidy`: project rules that rustfmt and clippy cannot see, checked by reading the sources.
//!
//! | check | rule |
//! |---|---|
//! | `unwrap` | no `.unwrap()` / `.expect(` in library code, unless a `// invariant: <why>` comment vouches for it |
//! | `module map` | the `//! | [`module`] | what |` table at the top of each crate's `lib.rs` lists exactly its modules |
//! | `long file` | no source file over [`MAX_LINES`] lines, unless `// tidy: long-file: <reason>` is near its top |
//!
//! Library code is every `.rs` file under `crates/*/src/` minus `#[cfg(test)]` items; `tests/`, `benches/`,
//! `examples/`, build scripts and `xtask/` are not library code. Every violation is reported as `file:line: what`,
//! all at once, and the task fails if there is any.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Longest source file accepted without a stated reason. Past this a file usually holds two things that want to be
/// two modules, and reviewing a change means scrolling more than reading.
pub const MAX_LINES: usize = 1200;

/// The comment that vouches for an `.unwrap()` / `.expect(`: it must say why the value cannot be absent or an
/// error (e.g. `// invariant: the regex is a literal checked by the tests`).
const INVARIANT_MARKER: &str = "invariant:";

/// The comment that lets a file grow past [`MAX_LINES`]; it must be within the first [`LONG_FILE_HEAD`] lines.
const LONG_FILE_MARKER: &str = "tidy: long-file:";
const LONG_FILE_HEAD: usize = 20;

pub fn run(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("`cargo xtask tidy` takes no arguments");
    }
    let root = crate::util::root();
    let mut violations = Vec::new();
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "benches"] {
        collect_rs(&root.join(dir), &mut files)?;
    }
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let rel = file.strip_prefix(&root).unwrap_or(file);
        check_long_file(rel, &text, &mut violations);
        if is_library_code(rel) {
            check_unwrap(rel, &text, &mut violations);
        }
        if rel.file_name().is_some_and(|n| n == "lib.rs") && rel.starts_with("crates") {
            check_module_map(rel, &text, &mut violations);
        }
    }
    if violations.is_empty() {
        eprintln!("tidy: {} files checked, no violations", files.len());
        return Ok(());
    }
    let mut report = String::new();
    for v in &violations {
        let _ = writeln!(report, "{v}");
    }
    eprint!("{report}");
    bail!("tidy: {} violation(s) in {} files checked", violations.len(), files.len())
}

/// Every `.rs` file below `dir`, skipping build output.
fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `crates/<crate>/src/...`, not a build script; tests, benches and examples live outside `src/`.
fn is_library_code(rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    parts.len() >= 4 && parts[0] == "crates" && parts[2] == "src" && !parts.contains(&"build.rs")
}

fn check_long_file(rel: &Path, text: &str, out: &mut Vec<String>) {
    let lines = text.lines().count();
    if lines > MAX_LINES && !text.lines().take(LONG_FILE_HEAD).any(|l| l.contains(LONG_FILE_MARKER)) {
        out.push(format!(
            "{}:1: long file: {lines} lines > {MAX_LINES}; split it, or state why not with `// {LONG_FILE_MARKER} \
             <reason>` in its first {LONG_FILE_HEAD} lines",
            rel.display()
        ));
    }
}

/// One source line split into its code (string and char literal contents blanked) and its comment text.
#[derive(Default)]
struct Line {
    code: String,
    comment: String,
}

/// A small Rust lexer, enough to tell code from comments and literals across lines: line and (nested) block
/// comments, strings, raw strings, char literals versus lifetimes.
fn split_lines(text: &str) -> Vec<Line> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        Block(u32),
        Str,
        RawStr(usize),
    }
    let mut state = State::Code;
    let mut lines = Vec::new();
    for raw in text.lines() {
        let chars: Vec<char> = raw.chars().collect();
        let mut line = Line::default();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            match state {
                State::Block(depth) => {
                    if c == '*' && next == Some('/') {
                        state = if depth == 1 { State::Code } else { State::Block(depth - 1) };
                        i += 2;
                        continue;
                    }
                    if c == '/' && next == Some('*') {
                        state = State::Block(depth + 1);
                        i += 2;
                        continue;
                    }
                    line.comment.push(c);
                }
                State::Str => {
                    if c == '\\' {
                        i += 2;
                        continue;
                    }
                    if c == '"' {
                        line.code.push('"');
                        state = State::Code;
                    }
                }
                State::RawStr(hashes) => {
                    if c == '"' && chars[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes {
                        line.code.push('"');
                        state = State::Code;
                        i += 1 + hashes;
                        continue;
                    }
                }
                State::Code => {
                    if c == '/' && next == Some('/') {
                        line.comment.extend(&chars[i + 2..]);
                        break;
                    }
                    if c == '/' && next == Some('*') {
                        state = State::Block(1);
                        i += 2;
                        continue;
                    }
                    if c == '"' {
                        line.code.push('"');
                        state = State::Str;
                    } else if c == 'r'
                        && (i == 0
                            || !is_ident(chars[i - 1])
                            || (chars[i - 1] == 'b' && (i < 2 || !is_ident(chars[i - 2]))))
                        && matches!(next, Some('"') | Some('#'))
                    {
                        let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                        if chars.get(i + 1 + hashes) == Some(&'"') {
                            line.code.push('"');
                            state = State::RawStr(hashes);
                            i += 2 + hashes;
                            continue;
                        }
                        line.code.push(c);
                    } else if c == '\'' {
                        // 'x' or '\n' is a char literal; 'a (no closing quote right after) is a lifetime.
                        if next == Some('\\') {
                            let close = chars[i + 2..].iter().position(|&q| q == '\'').map(|p| i + 2 + p);
                            line.code.push_str("' '");
                            i = close.map_or(chars.len(), |p| p + 1);
                            continue;
                        }
                        if chars.get(i + 2) == Some(&'\'') {
                            line.code.push_str("' '");
                            i += 3;
                            continue;
                        }
                        line.code.push(c);
                    } else {
                        line.code.push(c);
                    }
                }
            }
            i += 1;
        }
        lines.push(line);
    }
    lines
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Which lines belong to a `#[cfg(test)]` item: from the attribute to the brace that closes the item (or to its `;`).
fn test_lines(lines: &[Line]) -> Vec<bool> {
    let mut in_test = vec![false; lines.len()];
    let mut depth: i64 = 0;
    // Some(d): inside a cfg(test) item whose body opened at depth d; pending: attribute seen, item not yet opened.
    let mut open_at: Option<i64> = None;
    let mut pending = false;
    for (n, line) in lines.iter().enumerate() {
        let squashed: String = line.code.chars().filter(|c| !c.is_whitespace()).collect();
        if open_at.is_none() && squashed.contains("#[cfg(test)]") {
            pending = true;
        }
        if pending || open_at.is_some() {
            in_test[n] = true;
        }
        for c in line.code.chars() {
            match c {
                '{' => {
                    if pending {
                        open_at = Some(depth);
                        pending = false;
                    }
                    depth += 1;
                }
                '}' => {
                    depth -= 1;
                    if open_at == Some(depth) {
                        open_at = None;
                    }
                }
                ';' if pending && !squashed.ends_with(']') => pending = false,
                _ => {}
            }
        }
    }
    in_test
}

fn check_unwrap(rel: &Path, text: &str, out: &mut Vec<String>) {
    let lines = split_lines(text);
    let in_test = test_lines(&lines);
    for (n, line) in lines.iter().enumerate() {
        if in_test[n] {
            continue;
        }
        let squashed: String = line.code.chars().filter(|c| !c.is_whitespace()).collect();
        let call = if squashed.contains(".unwrap()") {
            ".unwrap()"
        } else if squashed.contains(".expect(") {
            ".expect(...)"
        } else {
            continue;
        };
        if vouched(&lines, n) {
            continue;
        }
        out.push(format!(
            "{}:{}: {call} in library code: return an error with context (`?`, `.context(...)`), or state the \
             invariant that makes it safe in a `// {INVARIANT_MARKER} <why>` comment on this or the line above",
            rel.display(),
            n + 1
        ));
    }
}

/// A `// invariant:` comment on the line itself or in the comment lines directly above it.
fn vouched(lines: &[Line], n: usize) -> bool {
    if lines[n].comment.contains(INVARIANT_MARKER) {
        return true;
    }
    for line in lines[..n].iter().rev() {
        if !line.code.trim().is_empty() {
            return false;
        }
        if line.comment.contains(INVARIANT_MARKER) {
            return true;
        }
        if line.comment.trim().is_empty() {
            return false;
        }
    }
    false
}

/// The modules a `lib.rs` declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`, inline `mod x { ... }`).
fn declared_modules(lines: &[Line]) -> BTreeSet<String> {
    let in_test = test_lines(lines);
    let mut out = BTreeSet::new();
    for (n, line) in lines.iter().enumerate() {
        if in_test[n] {
            continue;
        }
        let code = line.code.trim();
        let rest = code
            .strip_prefix("pub ")
            .or_else(|| code.strip_prefix("pub(crate) "))
            .or_else(|| code.strip_prefix("pub(super) "))
            .unwrap_or(code);
        if let Some(name) = rest.strip_prefix("mod ") {
            let name: String = name.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The modules the map names: every backticked name in the first cell of each table row of the leading `//!`
/// comment, reduced to its first path segment (`samplers/mod.rs` → `samplers`, `a::B` → `a`).
fn mapped_modules(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(doc) = line.trim_start().strip_prefix("//!") else {
            if line.trim().is_empty() {
                continue;
            }
            break;
        };
        let doc = doc.trim();
        let Some(row) = doc.strip_prefix('|') else { continue };
        let first = row.split('|').next().unwrap_or("");
        if first.trim().chars().all(|c| c == '-' || c == ':') {
            continue;
        }
        for (k, part) in first.split('`').enumerate() {
            if k % 2 == 1 {
                let name: String = part.chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    out.push((n + 1, name));
                }
            }
        }
    }
    out
}

fn check_module_map(rel: &Path, text: &str, out: &mut Vec<String>) {
    let declared = declared_modules(&split_lines(text));
    let mapped = mapped_modules(text);
    if mapped.is_empty() {
        if !declared.is_empty() {
            out.push(format!(
                "{}:1: no module map: open lib.rs with a `//! | module | what |` table listing {}",
                rel.display(),
                declared.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        return;
    }
    let header = mapped.first().map_or(1, |(line, _)| *line);
    let mut seen = BTreeSet::new();
    for (line, name) in &mapped {
        // The header row (`| module | what |`) has no backticks, so every name here is meant as a module.
        if !declared.contains(name) {
            out.push(format!("{}:{line}: module map lists `{name}`, which lib.rs does not declare", rel.display()));
        }
        seen.insert(name.clone());
    }
    for name in declared.difference(&seen) {
        out.push(format!(
            "{}:{header}: module map does not list `{name}` (declared in lib.rs): add a row saying what it holds",
            rel.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(rel: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        if rel.ends_with("lib.rs") {
            check_module_map(Path::new(rel), text, &mut out);
        }
        check_unwrap(Path::new(rel), text, &mut out);
        out
    }

    #[test]
    fn unwrap_outside_tests_is_reported_with_its_line() {
        let src = "fn a() {\n    let x = f().unwrap();\n    let y = g().expect(\"y\");\n}\n";
        let v = violations("crates/x/src/a.rs", src);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with("crates/x/src/a.rs:2: .unwrap()"), "{v:?}");
        assert!(v[1].starts_with("crates/x/src/a.rs:3: .expect"), "{v:?}");
    }

    #[test]
    fn tests_comments_strings_and_markers_are_not_reported() {
        let src = r##"
/// `x.unwrap()` in a doc comment
fn a() {
    let s = "call .unwrap() here";
    let r = r#"also .expect( here"#;
    let c = '"';
    // invariant: the table is a literal with at least one row
    let first = TABLE.first().unwrap();
    let n = v.iter().max().expect("non-empty"); // invariant: v was checked non-empty above
    let o = x.unwrap_or(0).unwrap_or_else(|| 1);
}
#[cfg(test)]
mod tests {
    fn t() { let y = f().unwrap(); if true { g().unwrap(); } }
}
fn b<'a>(x: &'a str) { x.parse::<u8>().unwrap(); }
"##;
        let v = violations("crates/x/src/a.rs", src);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("crates/x/src/a.rs:16: .unwrap()"), "{v:?}");
    }

    #[test]
    fn marker_must_be_adjacent() {
        let src = "// invariant: far away\n\nfn a() { f().unwrap(); }\n";
        assert_eq!(violations("crates/x/src/a.rs", src).len(), 1);
    }

    #[test]
    fn module_map_must_match_declared_modules() {
        let src =
            "//! crate\n//!\n//! | module | what |\n//! |---|---|\n//! | [`a`] | A |\n//! | `b/*.rs`, `gone` | B |\n\
                   \npub mod a;\nmod b;\npub(crate) mod c;\n";
        let v = violations("crates/x/src/lib.rs", src);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains(":6: module map lists `gone`"), "{v:?}");
        assert!(v[1].contains(":5: module map does not list `c`"), "{v:?}");
    }

    #[test]
    fn lib_without_a_map_is_reported() {
        let v = violations("crates/x/src/lib.rs", "//! crate\n\npub mod a;\n");
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("no module map"), "{v:?}");
    }

    #[test]
    fn long_files_need_a_reason() {
        let long = "fn a() {}\n".repeat(MAX_LINES + 1);
        let mut out = Vec::new();
        check_long_file(Path::new("crates/x/src/a.rs"), &long, &mut out);
        assert_eq!(out.len(), 1);
        let reasoned = format!("// {LONG_FILE_MARKER} generated table\n{long}");
        let mut out = Vec::new();
        check_long_file(Path::new("crates/x/src/a.rs"), &reasoned, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn library_code_is_crate_sources_only() {
        assert!(is_library_code(Path::new("crates/sd-core/src/weights.rs")));
        assert!(is_library_code(Path::new("crates/sd-cli/src/cmd/generate.rs")));
        assert!(!is_library_code(Path::new("crates/sd-core/tests/it/weights_errors.rs")));
        assert!(!is_library_code(Path::new("crates/sd-train/examples/train_demo.rs")));
        assert!(!is_library_code(Path::new("crates/sd-core/build.rs")));
        assert!(!is_library_code(Path::new("xtask/src/main.rs")));
        assert!(!is_library_code(Path::new("benches/lib.rs")));
    }
}
