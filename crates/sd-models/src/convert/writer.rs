//! Writing a converted checkpoint as a diffusers folder, atomically: everything goes into a hidden temp folder
//! next to the destination, which is renamed into place only when every file is complete. Weight files are
//! streamed (header first from the plan's shapes, then one tensor at a time), so memory stays near one tensor.

use super::controlnet::ControlNetPlan;
use super::plan::{self, Component, Item};
use super::sd3::Sd3Plan;
use super::source::TensorSource;
use super::tokenizer;
use super::{Family, Plan};
use anyhow::{anyhow, bail, Context, Result};
use sd_core::weights::dtype_of;
use serde_json::{json, Map, Value};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tch::Kind;

pub struct WriteOptions {
    /// Float tensors are cast to this kind; None keeps each tensor's stored dtype.
    pub dtype: Option<Kind>,
    pub overwrite: bool,
    /// Tokenizer folders are copied from here when it has them (`--config-dir`).
    pub config_dir: Option<PathBuf>,
    /// The CLIP BPE file (`bpe_simple_vocab_16e6.txt.gz`) used to build tokenizers otherwise.
    pub vocab: Option<PathBuf>,
    /// Whether to write model_index.json, scheduler and tokenizers (false for `--only`).
    pub pipeline: bool,
}

/// Write `plan` as a diffusers folder at `out`. `progress(done, total, item)` is called after each tensor.
pub fn write_folder(
    plan: &Plan,
    sources: &[&dyn TensorSource],
    out: &Path,
    opts: &WriteOptions,
    mut progress: impl FnMut(usize, usize, &Item),
) -> Result<()> {
    in_temp_folder(out, opts.overwrite, |tmp| {
        let config = |c| component_config(c, plan.configs.get(&c).cloned().unwrap_or(Value::Null), plan.family);
        write_components(tmp, &plan.components(), &plan.items, sources, opts.dtype, config, &mut progress)?;
        if opts.pipeline {
            write_pipeline_files(plan, tmp, opts)?;
        }
        Ok(())
    })
}

/// Each component's folder under `tmp`: its `config.json` (from `config`) and its weights, the plan's items of that
/// component; `progress(done, total, item)` counts over every item of the plan.
fn write_components(
    tmp: &Path,
    components: &[Component],
    items: &[Item],
    sources: &[&dyn TensorSource],
    dtype: Option<Kind>,
    config: impl Fn(Component) -> Value,
    progress: &mut impl FnMut(usize, usize, &Item),
) -> Result<()> {
    let total = items.len();
    let mut done = 0;
    for &c in components {
        let dir = tmp.join(c.folder());
        fs::create_dir_all(&dir)?;
        write_json(&dir.join("config.json"), &config(c))?;
        let mine: Vec<Item> = items.iter().filter(|i| i.component == c).cloned().collect();
        write_safetensors(&mine, sources, &dir.join(c.weights_file()), dtype, |item| {
            done += 1;
            progress(done, total, item);
        })?;
    }
    Ok(())
}

/// Write a converted single-file ControlNet as a diffusers ControlNet folder (`config.json` +
/// `diffusion_pytorch_model.safetensors`) at `out`, atomically like [`write_folder`], after checking from the
/// shapes alone that the tensors build the model the config describes.
pub fn write_controlnet_folder(
    plan: &ControlNetPlan,
    src: &dyn TensorSource,
    out: &Path,
    dtype: Option<Kind>,
    overwrite: bool,
    mut progress: impl FnMut(usize, usize, &Item),
) -> Result<()> {
    if out.exists() && !overwrite {
        bail!("{} already exists (pass --overwrite to replace it)", out.display());
    }
    crate::controlnet::ControlNetModel::check_plan(plan, &src.describe())?;
    in_temp_folder(out, overwrite, |tmp| {
        write_json(&tmp.join("config.json"), &plan.config)?;
        let total = plan.items.len();
        let mut done = 0;
        write_safetensors(&plan.items, &[src], &tmp.join(Component::ControlNet.weights_file()), dtype, |item| {
            done += 1;
            progress(done, total, item);
        })
    })
}

/// Write a converted single-file SD3 checkpoint as a diffusers `StableDiffusion3Pipeline` folder at `out`,
/// atomically like [`write_folder`]: each component's config and weights, text encoders the file lacks copied from
/// `--config-dir` when it has them, the scheduler, the tokenizers (CLIP ones from `--config-dir` or built from the
/// CLIP vocabulary; T5's from `--config-dir` or `--t5-tokenizer`, since it cannot be built from the weights) and
/// `model_index.json` naming exactly the components written.
pub fn write_sd3_folder(
    plan: &Sd3Plan,
    src: &dyn TensorSource,
    out: &Path,
    opts: &WriteOptions,
    mut progress: impl FnMut(usize, usize, &Item),
) -> Result<()> {
    in_temp_folder(out, opts.overwrite, |tmp| {
        let config = |c| {
            let mut cfg = plan.configs.get(&c).filter(|v| !v.is_null()).cloned().unwrap_or_else(|| json!({}));
            if matches!(c, Component::Transformer | Component::Vae) {
                cfg["_diffusers_version"] = json!("0.42.1");
            }
            cfg
        };
        write_components(tmp, &plan.components(), &plan.items, &[src], opts.dtype, config, &mut progress)?;
        for (c, from) in &plan.copied {
            copy_dir(from, &tmp.join(c.folder())).with_context(|| format!("copying {}", from.display()))?;
        }
        let sched_dir = tmp.join("scheduler");
        fs::create_dir_all(&sched_dir)?;
        let mut sched = plan.scheduler.clone();
        sched["_diffusers_version"] = json!("0.42.1");
        write_json(&sched_dir.join("scheduler_config.json"), &sched)?;
        let given = |folder: &str| opts.config_dir.as_ref().map(|d| d.join(folder)).filter(|d| d.is_dir());
        let mut toks = Vec::new();
        for (c, folder, pad) in [
            (Component::TextEncoder, "tokenizer", Some("<|endoftext|>")),
            (Component::TextEncoder2, "tokenizer_2", Some("!")),
            (Component::TextEncoder3, "tokenizer_3", None),
        ] {
            if !plan.has(c) {
                continue;
            }
            let dest = tmp.join(folder);
            // T5's tokenizer from `--t5-tokenizer` first, then from `--config-dir`
            let t5_given = if pad.is_none() { plan.t5_tokenizer.clone() } else { None };
            match (t5_given.or_else(|| given(folder)), pad, &opts.vocab) {
                (Some(d), _, _) => copy_dir_or_file(&d, &dest).with_context(|| format!("copying {}", d.display()))?,
                (None, Some(pad), Some(v)) => tokenizer::write_clip_tokenizer(v, &dest, pad)?,
                (None, Some(_), None) => bail!(
                    "the CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz) is needed to write {folder}/; run `cargo \
                     xtask setup` or pass --vocab"
                ),
                (None, None, _) => continue, // T5: noted in the plan
            }
            toks.push(folder);
        }
        let none = json!([null, null]);
        let entry = |c: Component, lib: &str, class: &str| {
            if plan.has(c) {
                json!([lib, class])
            } else {
                none.clone()
            }
        };
        let tok = |folder: &str, class: &str| {
            if toks.contains(&folder) {
                json!(["transformers", class])
            } else {
                none.clone()
            }
        };
        let sched_class = plan.scheduler["_class_name"].as_str().unwrap_or("FlowMatchEulerDiscreteScheduler");
        let idx = json!({
            "_class_name": "StableDiffusion3Pipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": none,
            "image_encoder": none,
            "scheduler": ["diffusers", sched_class],
            "text_encoder": entry(Component::TextEncoder, "transformers", "CLIPTextModelWithProjection"),
            "text_encoder_2": entry(Component::TextEncoder2, "transformers", "CLIPTextModelWithProjection"),
            "text_encoder_3": entry(Component::TextEncoder3, "transformers", "T5EncoderModel"),
            "tokenizer": tok("tokenizer", "CLIPTokenizer"),
            "tokenizer_2": tok("tokenizer_2", "CLIPTokenizer"),
            "tokenizer_3": tok("tokenizer_3", "T5Tokenizer"),
            "transformer": entry(Component::Transformer, "diffusers", "SD3Transformer2DModel"),
            "vae": entry(Component::Vae, "diffusers", "AutoencoderKL"),
        });
        write_json(&tmp.join("model_index.json"), &idx)
    })
}

/// Fill a hidden temp folder beside `out` and rename it into place only when `fill` succeeded; on error the temp
/// folder is removed and `out` (old contents included) is untouched.
fn in_temp_folder(out: &Path, overwrite: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() && !overwrite {
        bail!("{} already exists (pass --overwrite to replace it)", out.display());
    }
    let name = out.file_name().ok_or_else(|| anyhow!("{} has no folder name", out.display()))?.to_string_lossy();
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result =
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display())).and_then(|_| fill(&tmp));
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(out, &old).with_context(|| format!("cannot move the old {} aside", out.display()))?;
        if let Err(e) = fs::rename(&tmp, out) {
            let _ = fs::rename(&old, out);
            let _ = fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| format!("cannot move the converted model to {}", out.display()));
        }
        let _ = fs::remove_dir_all(&old);
    } else if let Err(e) = fs::rename(&tmp, out) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("cannot move the converted model to {}", out.display()));
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn component_config(c: Component, mut cfg: Value, family: Family) -> Value {
    if cfg.is_null() {
        cfg = json!({});
    }
    if matches!(c, Component::Unet | Component::Vae) {
        cfg["_diffusers_version"] = json!("0.42.1");
    }
    if c == Component::TextEncoder2 || (c == Component::TextEncoder && family == Family::SdxlRefiner) {
        cfg["architectures"] = json!(["CLIPTextModelWithProjection"]);
    }
    cfg
}

/// The kind a tensor is written as.
fn target_kind(stored: Kind, dtype: Option<Kind>) -> Kind {
    match dtype {
        Some(k) if sd_core::weights::is_float_kind(stored) => k,
        _ => stored,
    }
}

/// Stream `items` into one safetensors file (header computed from the planned shapes).
pub fn write_safetensors(
    items: &[Item],
    sources: &[&dyn TensorSource],
    path: &Path,
    dtype: Option<Kind>,
    mut on_tensor: impl FnMut(&Item),
) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    let mut kinds = Vec::with_capacity(items.len());
    for item in items {
        let src = sources.get(item.file).ok_or_else(|| anyhow!("internal: no source {}", item.file))?;
        let stored = src.kind(&item.source).ok_or_else(|| anyhow!("`{}` has an unsupported dtype", item.source))?;
        let kind = target_kind(stored, dtype);
        let st = dtype_of(kind).ok_or_else(|| anyhow!("cannot store `{}` as {kind:?}", item.name))?;
        let bytes = item.shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
        header.insert(
            item.name.clone(),
            json!({"dtype": st, "shape": item.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
        kinds.push(kind);
    }
    let mut text = serde_json::to_vec(&Value::Object(header))?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)?;
    let mut i = 0;
    plan::run(items, sources, |item, t| {
        let kind = kinds[i];
        i += 1;
        if t.size() != item.shape {
            bail!("`{}` has shape {:?}, the plan said {:?}", item.source, t.size(), item.shape);
        }
        let t = t.f_to_kind(kind)?.f_contiguous()?;
        let numel = t.numel();
        let mut buf = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, numel)?;
        w.write_all(&buf).with_context(|| format!("cannot write {}", path.display()))?;
        on_tensor(item);
        Ok(())
    })?;
    let file = w.into_inner().map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error()))?;
    file.sync_all()?;
    Ok(())
}

/// Copy the file `from` into the folder `to`, or, for a folder, its files ([`copy_dir`]).
fn copy_dir_or_file(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        return copy_dir(from, to);
    }
    let name = from.file_name().ok_or_else(|| anyhow!("{} has no file name", from.display()))?;
    fs::create_dir_all(to)?;
    fs::copy(from, to.join(name))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn write_pipeline_files(plan: &Plan, tmp: &Path, opts: &WriteOptions) -> Result<()> {
    let sched_dir = tmp.join("scheduler");
    fs::create_dir_all(&sched_dir)?;
    let mut sched = plan.scheduler.clone();
    sched["_diffusers_version"] = json!("0.42.1");
    write_json(&sched_dir.join("scheduler_config.json"), &sched)?;

    let comps = plan.components();
    let has = |c| comps.contains(&c);
    // (folder, pad token) for each tokenizer the pipeline needs.
    let mut toks: Vec<(&str, &str)> = Vec::new();
    match plan.family {
        Family::Sd1 => toks.push(("tokenizer", "<|endoftext|>")),
        Family::Sd2 => toks.push(("tokenizer", "!")),
        Family::Sdxl => toks.extend([("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")]),
        Family::SdxlRefiner => toks.push(("tokenizer_2", "!")),
    }
    for (folder, pad) in &toks {
        let dest = tmp.join(folder);
        let from = opts.config_dir.as_ref().map(|d| d.join(folder)).filter(|d| d.is_dir());
        match (from, &opts.vocab) {
            (Some(d), _) => copy_dir(&d, &dest)?,
            (None, Some(v)) => tokenizer::write_clip_tokenizer(v, &dest, pad)?,
            (None, None) => bail!("the CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz) is needed to write the tokenizer; run `cargo xtask setup` or pass --vocab"),
        }
    }

    let class = match (plan.family, plan.inpainting) {
        (Family::Sd1 | Family::Sd2, false) => "StableDiffusionPipeline",
        (Family::Sd1 | Family::Sd2, true) => "StableDiffusionInpaintPipeline",
        (Family::Sdxl, false) => "StableDiffusionXLPipeline",
        (Family::Sdxl, true) => "StableDiffusionXLInpaintPipeline",
        (Family::SdxlRefiner, _) => "StableDiffusionXLImg2ImgPipeline",
    };
    let sched_class = plan.scheduler["_class_name"].as_str().unwrap_or("PNDMScheduler");
    let none = json!([null, null]);
    let mut idx = json!({
        "_class_name": class,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", sched_class],
        "unet": if has(Component::Unet) { json!(["diffusers", "UNet2DConditionModel"]) } else { none.clone() },
        "vae": if has(Component::Vae) { json!(["diffusers", "AutoencoderKL"]) } else { none.clone() },
    });
    match plan.family {
        Family::Sd1 | Family::Sd2 => {
            idx["text_encoder"] = json!(["transformers", "CLIPTextModel"]);
            idx["tokenizer"] = json!(["transformers", "CLIPTokenizer"]);
            idx["safety_checker"] = none.clone();
            idx["feature_extractor"] = none.clone();
            idx["requires_safety_checker"] = json!(false);
        }
        Family::Sdxl => {
            idx["text_encoder"] = json!(["transformers", "CLIPTextModel"]);
            idx["tokenizer"] = json!(["transformers", "CLIPTokenizer"]);
            idx["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
            idx["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
            idx["force_zeros_for_empty_prompt"] = json!(true);
        }
        Family::SdxlRefiner => {
            idx["text_encoder"] = none.clone();
            idx["tokenizer"] = none.clone();
            idx["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
            idx["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
            idx["requires_aesthetics_score"] = json!(true);
            idx["force_zeros_for_empty_prompt"] = json!(false);
        }
    }
    if matches!(plan.family, Family::Sdxl | Family::SdxlRefiner) {
        // The SDXL pipelines' optional IP-Adapter components: diffusers' save_pretrained lists them as absent, so
        // the index matches the one a hub SDXL / refiner folder has.
        idx["image_encoder"] = none.clone();
        idx["feature_extractor"] = none.clone();
    }
    write_json(&tmp.join("model_index.json"), &idx)
}
