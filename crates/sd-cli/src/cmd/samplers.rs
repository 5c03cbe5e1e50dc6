//! `sd samplers`: every sampler with the model families it drives, its A1111 names, diffusers class, the schedules
//! and options it accepts.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Print the list as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let list = sd_schedulers::list();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|s| {
            [
                s.name.to_string(),
                s.models.to_string(),
                s.a1111.join(", "),
                s.diffusers_class.to_string(),
                s.options.join(" "),
                s.schedules.join(" "),
            ]
        })
        .collect();
    let head = ["NAME", "MODELS", "A1111 NAMES", "CLASS", "OPTIONS", "SCHEDULES"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut out = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i + 1 < c.len() {
                out.push_str(&format!("{:<width$}  ", cell, width = w[i]));
            } else {
                out.push_str(cell);
            }
        }
        out
    };
    println!("{}", line(head));
    for r in &rows {
        println!("{}", line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    println!();
    println!("A1111 names take a schedule suffix (\"DPM++ 2M Karras\"); --schedule overrides it.");
    println!("\"default\" uses the model's own scheduler class with its saved settings.");
    println!("MODELS: the families a sampler drives; UNet models (sd1 sd2 sdxl) and flow-matching models (sd3) each");
    println!("refuse the other kind's samplers.");
    println!("Classes named \"k-diffusion ...\" are k-diffusion samplers diffusers lacks, run over Euler's sigmas");
    println!("(flow-euler-a, ComfyUI's sample_euler_ancestral_RF, over flow-euler's).");
    Ok(())
}
