//! `sd inspect`: generation parameters, AI labels, C2PA presence and the invisible-watermark verdict of images
//! (PNG, JPEG or WebP, from any tool); for a model folder, the training-data summary of its model card. Every
//! path is reported; the exit code is 1 if any could not be read.

use anyhow::{bail, Result};
use sd_provenance::inspect::{inspect_file, render};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Images to inspect (PNG, JPEG or WebP), or model folders (their model card's training-data summary)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print a JSON array (one object per image; unreadable ones carry `error`)
    #[arg(long)]
    json: bool,
    /// PEM file of C2PA trust anchors (root certificates): signers that chain to one read as trusted
    #[arg(long, value_name = "ROOTS.pem")]
    trust_anchors: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let anchors = match &args.trust_anchors {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read trust anchors {}: {e}", p.display()))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                bail!("trust anchors {}: no PEM certificate in it", p.display());
            }
            Some(text)
        }
        None => None,
    };
    let mut failed = 0usize;
    let mut json = Vec::new();
    for path in &args.images {
        if path.is_dir() {
            match model_summary(path) {
                Ok(summary) if args.json => {
                    json.push(serde_json::json!({"path": path.display().to_string(), "model_card": summary}))
                }
                Ok(summary) => print!("{}", summary),
                Err(e) => {
                    failed += 1;
                    if args.json {
                        json.push(serde_json::json!({"path": path.display().to_string(), "error": format!("{e:#}")}));
                    }
                    eprintln!("error: {e:#}");
                }
            }
            continue;
        }
        match inspect_file(path, anchors.as_deref()) {
            Ok(report) => {
                if args.json {
                    json.push(serde_json::to_value(&report)?);
                } else {
                    print!("{}", render(&report));
                }
            }
            Err(e) => {
                failed += 1;
                if args.json {
                    json.push(serde_json::json!({"path": path.display().to_string(), "error": format!("{e:#}")}));
                }
                eprintln!("error: {e:#}");
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if failed > 0 {
        bail!("{failed} of {} image(s) could not be inspected", args.images.len());
    }
    Ok(())
}

/// The training-data summary of a model folder's card (written by `sd train`).
fn model_summary(dir: &std::path::Path) -> Result<String> {
    let card = dir.join(sd_train::record::CARD_FILE);
    let text = std::fs::read_to_string(&card).map_err(|e| {
        anyhow::anyhow!(
            "{} is a folder without a model card ({}: {e}); expected an sd train output",
            dir.display(),
            card.display()
        )
    })?;
    let Some(summary) = sd_train::record::card_summary(&text) else {
        bail!("{}: no YAML front matter and `## Training data` section (not a card sd train wrote)", card.display());
    };
    Ok(format!("{} (model card {})\n{summary}", dir.display(), card.display()))
}
