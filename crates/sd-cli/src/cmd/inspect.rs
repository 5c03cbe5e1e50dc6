//! `sd inspect`: generation parameters, AI labels, C2PA presence and the invisible-watermark verdict of images
//! (PNG or JPEG, from any tool). Every image is reported; the exit code is 1 if any could not be read.

use anyhow::{bail, Result};
use sd_provenance::inspect::{inspect_file, render};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Images to inspect (PNG or JPEG)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print a JSON array (one object per image; unreadable ones carry `error`)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut failed = 0usize;
    let mut json = Vec::new();
    for path in &args.images {
        match inspect_file(path) {
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
