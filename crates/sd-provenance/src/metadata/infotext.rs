//! AUTOMATIC1111's generation-parameters text ("infotext", PNG text chunk `parameters`).
//!
//! Writer follows `modules/processing.py::create_infotext`: prompt, a `Negative prompt:` line, then one line of
//! `Key: value` pairs joined by ", ", where a value containing `,`, `:` or a newline is JSON-quoted
//! (`infotext_utils.quote`, `json.dumps(ensure_ascii=False)`). Unlike A1111 we always write the negative-prompt
//! line, even when empty, because some readers fail without it.
//! Reader follows `modules/infotext_utils.py::parse_generation_parameters`: the last line holds the parameters
//! only if the A1111 parameter pattern finds at least 3 pairs in it; prompt lines are stripped; everything after a
//! line starting with `Negative prompt:` is the negative prompt.

use regex::Regex;
use std::sync::OnceLock;

/// `infotext_utils.quote`.
pub fn quote(value: &str) -> String {
    if value.contains(',') || value.contains('\n') || value.contains(':') {
        // serde_json escapes like Python's json.dumps(ensure_ascii=False) for strings
        serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
    } else {
        value.to_string()
    }
}

/// `infotext_utils.unquote`.
pub fn unquote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(value) {
            return s;
        }
    }
    value.to_string()
}

/// Builds the text from a prompt, negative prompt and ordered key/value pairs (a pair whose key equals its value
/// is written as the bare key, like A1111 does).
pub fn build(prompt: &str, negative_prompt: &str, params: &[(String, String)]) -> String {
    let line = params
        .iter()
        .map(|(k, v)| if k == v { k.clone() } else { format!("{k}: {}", quote(v)) })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{prompt}\nNegative prompt: {negative_prompt}\n{line}").trim().to_string()
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: String,
    /// In file order; values unquoted. `Size: 512x768` stays one pair (A1111 splits it into `Size-1`/`Size-2`).
    pub params: Vec<(String, String)>,
}

impl Infotext {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn param_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // same pattern as A1111's re_param_code (Python `\w` is Unicode-aware, so is regex's)
    // invariant: the pattern is a literal, compiled by every test that parses infotext
    RE.get_or_init(|| Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).expect("static regex"))
}

pub fn parse(text: &str) -> Infotext {
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let mut last = lines.pop().unwrap_or("");
    if param_re().captures_iter(last).count() < 3 {
        lines.push(last);
        last = "";
    }
    let mut out = Infotext::default();
    let mut done_with_prompt = false;
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            done_with_prompt = true;
            line = rest.trim();
        }
        let target = if done_with_prompt { &mut out.negative_prompt } else { &mut out.prompt };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    for cap in param_re().captures_iter(last) {
        let k = cap[1].to_string();
        let v = &cap[2];
        let v = if v.starts_with('"') && v.ends_with('"') { unquote(v) } else { v.to_string() };
        out.params.push((k, v));
    }
    out
}
