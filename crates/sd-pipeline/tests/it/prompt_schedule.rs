//! Prompt editing, alternation and `AND` splits against AUTOMATIC1111's own `prompt_parser.py`
//! (fixtures/prompt/schedules.json from scripts/fixtures/gen_71_prompt_schedules.py, A1111 at commit 28bd8e14):
//! A1111's examples, malformed syntax and 300 random bracket strings under both timelines and a hires pass. Exact.
use sd_pipeline::prompt::composable::split_and;
use sd_pipeline::prompt::schedule::{ParsedPrompt, Pass, Timeline};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/prompt/schedules.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn schedules_match_a1111() {
    let f = fixture();
    let cases = f["schedules"].as_array().unwrap();
    assert!(cases.len() >= 800);
    let mut failures = Vec::new();
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        let steps = c["steps"].as_u64().unwrap() as usize;
        let pass = match c["pass_kind"].as_str().unwrap() {
            "base" => Pass::Base { steps },
            _ => Pass::Hires { first_steps: c["first_steps"].as_u64().unwrap() as usize, steps },
        };
        let timeline = if c["old"].as_bool().unwrap() { Timeline::Old } else { Timeline::New };
        let expected: Vec<(u64, String)> = c["schedule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_u64().unwrap(), e[1].as_str().unwrap().to_string()))
            .collect();
        let ours: Vec<(u64, String)> = ParsedPrompt::parse(prompt)
            .unwrap()
            .schedule(pass, timeline)
            .entries
            .into_iter()
            .map(|e| (e.end_at_step as u64, e.text))
            .collect();
        if ours != expected {
            failures.push(format!("{prompt:?} {pass:?} {timeline:?}: ours {ours:?}, A1111 {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn and_splits_match_a1111() {
    let f = fixture();
    for c in f["and_splits"].as_array().unwrap() {
        let prompt = c["prompt"].as_str().unwrap();
        let expected: Vec<(String, f64)> = c["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["text"].as_str().unwrap().to_string(), p["weight"].as_f64().unwrap()))
            .collect();
        let ours: Vec<(String, f64)> = split_and(prompt).unwrap().into_iter().map(|p| (p.text, p.weight)).collect();
        assert_eq!(ours, expected, "{prompt:?}");
    }
}
