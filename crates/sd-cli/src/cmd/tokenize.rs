//! `sd tokenize`: how CLIP sees a prompt — ids, tokens, and how many of the 75 usable slots it takes — and, for
//! prompts with editing (`[a:b:when]`, `[a|b]`) or `AND` parts, which text is in force over which steps.

use anyhow::{Context, Result};
use sd_models::clip::{ClipTokenizer, PadToken};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The prompt to tokenize
    prompt: String,
    /// Model folder (or HF cache repo id) whose tokenizer to use; a bare tokenizer folder works too.
    /// Without it: the real CLIP vocabulary from the BPE file, padded SD1-style
    #[arg(long)]
    model: Option<String>,
    /// Use the model's second tokenizer (`tokenizer_2/`, SDXL)
    #[arg(long)]
    second: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Sampler steps to lay prompt editing `[a:b:when]` / alternation `[a|b]` over (shown when the prompt has any)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=sd_core::limits::GENERATE_MAX_STEPS))]
    steps: u64,
}

/// The prompt's schedule when it has editing, alternation, `AND` or a weight; `None` for a plain prompt.
fn schedule(args: &Args) -> Result<Option<sd_pipeline::prompt::composable::PassSchedules>> {
    use sd_pipeline::prompt::composable::PromptPlan;
    let plan = PromptPlan::new(&args.prompt, "")?;
    let sched = plan.schedules(sd_pipeline::prompt::schedule::Pass::Base { steps: args.steps as usize });
    let edited = sched.parts.iter().any(|(_, s)| s.entries.len() > 1 || s.entries[0].text != args.prompt);
    Ok((edited || !plan.is_plain()).then_some(sched))
}

/// One line per span of steps and `AND` part: `steps 1-3  part 1 (weight 1.2)  text`, steps counted from 1.
fn schedule_table(out: &mut String, sched: &sd_pipeline::prompt::composable::PassSchedules) -> Result<()> {
    writeln!(out, "schedule   ({} AND part(s); steps counted from 1, A1111 timeline)", sched.parts.len())?;
    for (k, (w, s)) in sched.parts.iter().enumerate() {
        writeln!(out, "  part {} weight {w}", k + 1)?;
        let mut from = 1;
        for e in &s.entries {
            // Entry `end` is in force for loop steps 0..=end (A1111), i.e. steps 1..=end+1 counted from 1.
            let to = (e.end_at_step + 1).min(sched_steps(s));
            if to >= from {
                writeln!(out, "    steps {from:>3}-{to:<3} {:?}", e.text)?;
                from = to + 1;
            }
        }
    }
    Ok(())
}

fn sched_steps(s: &sd_pipeline::prompt::schedule::Schedule) -> usize {
    s.entries.last().map(|e| e.end_at_step).unwrap_or(0)
}

pub fn run(args: Args) -> Result<()> {
    let (tok, source) = open(&args)?;
    let raw = tok.encode_raw(&args.prompt)?;
    let ids = tok.encode(&args.prompt)?;
    let usable = tok.max_len() - 2;
    let kept = raw.len().min(usable);
    let tokens = tok.tokens(&raw);
    if args.json {
        let v = serde_json::json!({
            "tokenizer": source,
            "ids": ids,
            "tokens": tokens,
            "count": raw.len(),
            "usable": usable,
            "max_length": tok.max_len(),
            "truncated": raw.len() > usable,
            "dropped": &tokens[kept..],
            "bos": tok.bos(), "eos": tok.eos(), "pad": tok.pad(),
            "schedule": schedule(&args)?,
        });
        return emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut out = String::new();
    if let Some(sched) = schedule(&args)? {
        schedule_table(&mut out, &sched)?;
    }
    writeln!(out, "tokenizer  {source}")?;
    writeln!(out, "tokens     {} of {usable} usable ({} slots with start/end token)", raw.len(), tok.max_len())?;
    writeln!(out, "{:>4}  {:>6}  token", "pos", "id")?;
    let bos = tok.tokens(&[tok.bos()]);
    writeln!(out, "{:>4}  {:>6}  {}", 0, tok.bos(), bos[0])?;
    for (i, (id, t)) in raw.iter().zip(&tokens).enumerate().take(kept) {
        writeln!(out, "{:>4}  {:>6}  {t}", i + 1, id)?;
    }
    let eos = tok.tokens(&[tok.eos()]);
    writeln!(out, "{:>4}  {:>6}  {}", kept + 1, tok.eos(), eos[0])?;
    let pads = tok.max_len() - kept - 2;
    if pads > 0 {
        let pad = tok.tokens(&[tok.pad()]);
        writeln!(out, "      + {pads} × {} {} (padding)", tok.pad(), pad[0])?;
    }
    if raw.len() > usable {
        writeln!(
            out,
            "truncated: {} token(s) past the {usable}th are dropped: {}",
            raw.len() - usable,
            tokens[kept..].join(" ")
        )?;
    }
    emit(&out)
}

/// Print, treating a closed pipe (`sd tokenize … | head`) as success.
fn emit(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The tokenizer and a description of where it came from.
fn open(args: &Args) -> Result<(ClipTokenizer, String)> {
    let Some(spec) = &args.model else {
        if args.second {
            crate::cmd::usage!("--second needs --model (the BPE default is a single SD1-style tokenizer)");
        }
        let path = ClipTokenizer::default_bpe_path();
        let tok = ClipTokenizer::from_bpe_file(&path, PadToken::EndOfText)?;
        return Ok((tok, format!("CLIP BPE {} (pad <|endoftext|>)", path.display())));
    };
    let sub = if args.second { "tokenizer_2" } else { "tokenizer" };
    let dir: PathBuf = if is_tokenizer_dir(Path::new(spec)) && !args.second {
        PathBuf::from(spec)
    } else {
        let model = sd_core::model_dir::ModelDir::open(spec)?;
        model.component_dir(sub)?
    };
    let tok =
        ClipTokenizer::from_dir(&dir).with_context(|| format!("cannot load the tokenizer in {}", dir.display()))?;
    Ok((tok, dir.display().to_string()))
}

fn is_tokenizer_dir(p: &Path) -> bool {
    p.join("tokenizer.json").is_file() || p.join("vocab.json").is_file()
}
