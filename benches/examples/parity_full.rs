//! sd-rs against diffusers/transformers on a FULL-SIZE model folder (random weights), for
//! `cargo xtask parity --full`: reads the inputs and reference outputs written by `scripts/bench/parity_full.py`,
//! runs our UNet (or, for an SD3 folder, the MMDiT transformer), VAE decoder and text encoder(s) in f32 and prints
//! each max abs error. Exits non-zero when any error exceeds the tolerance (1e-3, f32: full-size networks
//! accumulate more rounding than the tiny fixtures).
//!
//! usage: cargo run --release -p sd-benches --example parity_full -- --model DIR --reference FILE [--tolerance 1e-3]

use anyhow::{bail, Context, Result};
use sd_models::clip::ClipTextModel;
use sd_models::transformer_sd3::SD3Transformer2DModel;
use sd_models::unet::{AddedCond, UNet2DConditionModel};
use sd_models::vae::AutoencoderKL;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// (max abs error, max abs reference value): the second shows the comparison is not between empty outputs.
fn max_err(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    if a.size() != b.size() {
        bail!("shape {:?} vs reference {:?}", a.size(), b.size());
    }
    let err = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[]);
    if !err.is_finite() {
        bail!("non-finite difference (NaN or infinity in an output)");
    }
    Ok((err, b.abs().max().double_value(&[])))
}

fn main() -> Result<()> {
    let (mut model, mut reference, mut tol) = (None, None, 1e-3);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--reference" => reference = Some(PathBuf::from(value)),
            "--tolerance" => tol = value.parse().context("--tolerance")?,
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(model), Some(reference)) = (model, reference) else {
        bail!("--model DIR and --reference FILE are required")
    };
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(&reference)
        .with_context(|| format!("cannot read {}", reference.display()))?
        .into_iter()
        .collect();
    let get = |k: &str| r.get(k).with_context(|| format!("{} has no tensor {k}", reference.display()));
    let (cpu, f32) = (Device::Cpu, Kind::Float);
    let mut results: Vec<(String, (f64, f64))> = Vec::new();
    tch::no_grad(|| -> Result<()> {
        if model.join("transformer").is_dir() {
            let tr = SD3Transformer2DModel::load(&model.join("transformer"), f32, cpu)?;
            let out = tr.forward(
                get("transformer.in.sample")?,
                get("transformer.in.timestep")?,
                get("transformer.in.context")?,
                get("transformer.in.pooled")?,
                &[],
            )?;
            results.push(("transformer (MMDiT)".into(), max_err(&out, get("transformer.out")?)?));
            drop(tr);
            let vae = AutoencoderKL::load(&model.join("vae"), f32, cpu)?;
            results.push(("vae decode".into(), max_err(&vae.decode(get("vae.in.latents")?)?, get("vae.out")?)?));
            return Ok(());
        }
        let unet = UNet2DConditionModel::load(&model.join("unet"), f32, cpu)?;
        let added = match (r.get("unet.in.text_embeds"), r.get("unet.in.time_ids")) {
            (Some(te), Some(ti)) => Some(AddedCond { text_embeds: te.shallow_clone(), time_ids: ti.shallow_clone() }),
            _ => None,
        };
        let out = unet.forward(
            get("unet.in.sample")?,
            get("unet.in.timestep")?,
            get("unet.in.context")?,
            added.as_ref(),
            None,
        )?;
        results.push(("unet".into(), max_err(&out, get("unet.out")?)?));
        drop(unet);
        let vae = AutoencoderKL::load(&model.join("vae"), f32, cpu)?;
        results.push(("vae decode".into(), max_err(&vae.decode(get("vae.in.latents")?)?, get("vae.out")?)?));
        drop(vae);
        for name in ["text_encoder", "text_encoder_2"] {
            let Some(ids) = r.get(&format!("{name}.in.ids")) else { continue };
            let enc = ClipTextModel::load(&model.join(name), f32, cpu)?;
            let out = enc.forward(&ids.to_kind(Kind::Int64))?;
            results.push((
                format!("{name} last_hidden_state"),
                max_err(&out.last_hidden_state, get(&format!("{name}.out.last_hidden_state"))?)?,
            ));
            let n = out.hidden_states.len();
            let pen = out.hidden_states.get(n.saturating_sub(2)).context("no hidden states")?;
            results.push((format!("{name} penultimate"), max_err(pen, get(&format!("{name}.out.penultimate"))?)?));
        }
        Ok(())
    })?;
    println!("| component ({}) | max abs error | max abs reference | tolerance |", model.display());
    println!("|---|---|---|---|");
    let mut failed = false;
    for (name, (err, magnitude)) in &results {
        let ok = *err <= tol;
        failed |= !ok;
        println!("| {name} | {err:.3e} | {magnitude:.3e} | {} {tol:e} |", if ok { "≤" } else { "> FAIL" });
    }
    if failed {
        bail!("parity --full: some errors exceed {tol:e}");
    }
    Ok(())
}
