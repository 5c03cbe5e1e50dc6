//! Single-file checkpoints (`.safetensors` / `.ckpt` from model sites, LDM layout) → diffusers state dicts.
//!
//! | module | what |
//! |---|---|
//! | [`pickle`] | pickle reader that never executes code |
//! | [`allow`] | the globals a pickle may name (tensor rebuild, OrderedDict, storages, numpy scalars), modelled not called |
//! | [`ckpt`] | the torch zip container (`archive/data.pkl` + `archive/data/<key>` storages) |
//! | [`torch_zip`] | opening that zip with bounds: member count, inflated sizes, inflation ratio |
//! | [`source`] | [`TensorSource`]: safetensors (mmap) or ckpt, one tensor at a time; format sniffing |
//! | [`fp8`] | float8 files: plain ones pass through, ComfyUI's scaled ones read as weight × scale |
//! | [`ldm`] | UNet and VAE name mapping |
//! | [`clip`] | CLIP-L and OpenCLIP-H/bigG text encoder mapping |
//! | [`sd3`] | single-file SD3 / SD3.5 (original MMDiT names, VAE, CLIP-L, CLIP-G, T5) and the configs inferred from shapes |
//! | [`sd3_encoders`] | SD3 text encoders in files of their own (ComfyUI's `clip_l`, `clip_g`, `t5xxl`) joined to an MMDiT file |
//! | [`controlnet`] | single-file ControlNets (original lllyasviel layout, 1.0 bundles, diffusers layout) and their config |
//! | [`plan`] | the per-tensor conversion plan and its executor |
//! | [`family`] | model family detection, ignore table, text-encoder planning |
//! | [`configs`] | component configs: `--config-dir` or canonical JSON patched from shapes |
//! | [`writer`] | streaming safetensors writer and the diffusers folder writer |
//!
//! Reference: diffusers 0.42.1 `loaders/single_file_utils.py`.

pub mod allow;
pub mod ckpt;
pub mod clip;
pub mod configs;
pub mod controlnet;
pub mod family;
pub mod fp8;
pub mod ldm;
pub mod pickle;
pub mod plan;
pub mod sd3;
pub mod sd3_encoders;
pub mod source;
pub mod tokenizer;
pub mod torch_zip;
pub mod writer;

pub use family::{Family, IGNORED_KEYS};
pub use plan::{Component, Item, Op};
pub use source::{open, TensorSource};

use anyhow::{bail, Result};
use sd_core::limits;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tch::Tensor;

/// `--prediction`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Prediction {
    /// SD2 checkpoints are v-prediction unless `global_step` is 875000 (SD2-base), as diffusers decides.
    #[default]
    Auto,
    Epsilon,
    V,
}

/// `--only`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Only {
    Unet,
    Vae,
    Text,
}

#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// None = detect from marker keys.
    pub family: Option<Family>,
    pub prediction: Prediction,
    /// Take the UNet from the `model_ema.` copy.
    pub ema: bool,
    pub only: Option<Only>,
    /// A diffusers folder whose component configs (and tokenizers) describe the checkpoint.
    pub config_dir: Option<PathBuf>,
    /// Keys that fit no rule and are not in [`IGNORED_KEYS`] are an error unless this is set.
    pub allow_unknown: bool,
}

/// Everything decided before any tensor is read.
#[derive(Debug)]
pub struct Plan {
    pub family: Family,
    pub inpainting: bool,
    pub prediction_type: String,
    pub items: Vec<Item>,
    /// Component configs (`config.json` contents) for the components in `items`.
    pub configs: BTreeMap<Component, serde_json::Value>,
    pub scheduler: serde_json::Value,
    /// Source keys left out on purpose, with the reason (from the ignore table).
    pub ignored: Vec<(String, &'static str)>,
    /// Source keys that fit no rule (allowed only with `allow_unknown`).
    pub unknown: Vec<String>,
}

impl Plan {
    pub fn components(&self) -> Vec<Component> {
        let set: BTreeSet<Component> = self.items.iter().map(|i| i.component).collect();
        set.into_iter().collect()
    }
}

/// A converted checkpoint held in memory (tests, small models). [`writer`] streams instead.
pub struct Converted {
    pub family: Family,
    pub inpainting: bool,
    pub prediction_type: String,
    pub unet: Vec<(String, Tensor)>,
    pub vae: Vec<(String, Tensor)>,
    pub text_encoder: Vec<(String, Tensor)>,
    pub text_encoder_2: Vec<(String, Tensor)>,
    pub ignored: Vec<(String, &'static str)>,
    pub unknown: Vec<String>,
}

/// Convert a checkpoint into diffusers-named tensors (in memory).
pub fn convert_checkpoint(src: &dyn TensorSource, opts: &ConvertOptions) -> Result<Converted> {
    convert_with_vae(src, None, opts)
}

/// Like [`convert_checkpoint`], taking the VAE from a separate file when given.
pub fn convert_with_vae(
    src: &dyn TensorSource,
    vae: Option<&dyn TensorSource>,
    opts: &ConvertOptions,
) -> Result<Converted> {
    let plan = plan_checkpoint(src, vae, opts)?;
    let mut out = Converted {
        family: plan.family,
        inpainting: plan.inpainting,
        prediction_type: plan.prediction_type.clone(),
        unet: Vec::new(),
        vae: Vec::new(),
        text_encoder: Vec::new(),
        text_encoder_2: Vec::new(),
        ignored: plan.ignored.clone(),
        unknown: plan.unknown.clone(),
    };
    let mut sources: Vec<&dyn TensorSource> = vec![src];
    if let Some(v) = vae {
        sources.push(v);
    }
    plan::run(&plan.items, &sources, |item, t| {
        let list = match item.component {
            Component::Unet => &mut out.unet,
            Component::Vae => &mut out.vae,
            Component::TextEncoder => &mut out.text_encoder,
            Component::TextEncoder2 => &mut out.text_encoder_2,
            Component::ControlNet | Component::Transformer | Component::TextEncoder3 => {
                bail!("internal: a checkpoint plan holds {} tensors", item.component.folder())
            }
        };
        list.push((item.name.clone(), t));
        Ok(())
    })?;
    Ok(out)
}

/// Decide family, configs and the per-tensor plan from names and shapes only.
pub fn plan_checkpoint(
    src: &dyn TensorSource,
    vae_src: Option<&dyn TensorSource>,
    opts: &ConvertOptions,
) -> Result<Plan> {
    let names = src.names();
    let family = match opts.family {
        Some(f) => f,
        None => family::detect(src, &names),
    };
    let unet_prefix = ldm::unet_prefix(&names);
    let inpainting = unet_prefix
        .and_then(|p| src.shape(&format!("{p}input_blocks.0.0.weight")))
        .is_some_and(|s| s.get(1) == Some(&9));
    let want = |c: Component| match opts.only {
        None => true,
        Some(Only::Unet) => c == Component::Unet,
        Some(Only::Vae) => c == Component::Vae,
        Some(Only::Text) => matches!(c, Component::TextEncoder | Component::TextEncoder2),
    };
    let configs = family::Configs::load(family, opts, src, &names)?;
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut items = Vec::new();

    if let Some(prefix) = unet_prefix {
        let lpb = configs.unet["layers_per_block"].as_u64().unwrap_or(2) as usize;
        let text_time = configs.unet["addition_embed_type"].as_str() == Some("text_time");
        let it = ldm::plan_unet(src, &names, prefix, lpb, text_time, opts.ema, &mut used, &mut unknown)?;
        if want(Component::Unet) {
            items.extend(it);
        }
    } else if opts.ema {
        bail!("--ema: {} has no UNet", src.describe());
    }
    if opts.ema && !names.iter().any(|n| n.starts_with("model_ema.")) {
        bail!("--ema: {} has no EMA weights (no `model_ema.` keys)", src.describe());
    }

    if let Some(prefix) = ldm::vae_prefix(&names).filter(|_| vae_src.is_none()) {
        let it = ldm::plan_vae(src, &names, prefix, 0, &mut used, &mut unknown)?;
        if want(Component::Vae) {
            items.extend(it);
        }
    }
    if let Some(v) = vae_src {
        let vnames = v.names();
        let Some(prefix) = ldm::vae_prefix(&vnames) else { bail!("--vae {} holds no VAE weights", v.describe()) };
        let mut vused = BTreeSet::new();
        let mut vunknown = Vec::new();
        let it = ldm::plan_vae(v, &vnames, prefix, 1, &mut vused, &mut vunknown)?;
        for k in vunknown.into_iter().chain(vnames.iter().filter(|n| !vused.contains(*n)).cloned()) {
            if !ldm::is_vae_loss(k.strip_prefix(prefix).unwrap_or(&k)) && family::ignored_reason(&k).is_none() {
                unknown.push(format!("{} (in --vae file)", k));
            }
        }
        if want(Component::Vae) {
            items.extend(it);
        }
    }

    let te = family::plan_text_encoders(src, &names, family, &configs, &mut used, &mut unknown)?;
    items.extend(te.into_iter().filter(|i| want(i.component)));

    let mut ignored = Vec::new();
    for n in &names {
        if used.contains(n) || unknown.contains(n) {
            continue;
        }
        match family::ignored_reason(n).or_else(|| family::family_ignored(n, family, opts.ema, vae_src.is_some())) {
            Some(r) => ignored.push((n.clone(), r)),
            None => unknown.push(n.clone()),
        }
    }
    unknown.sort();
    unknown.dedup();
    if !unknown.is_empty() && !opts.allow_unknown {
        let shown: Vec<&str> = unknown.iter().take(30).map(|s| s.as_str()).collect();
        bail!(
            "{} has {} tensor(s) that fit no {} mapping rule and are not in the ignore table:\n  {}{}\n\
             (is --family right? pass --allow-unknown-keys to convert anyway and drop them)",
            src.describe(),
            unknown.len(),
            family.name(),
            shown.join("\n  "),
            if unknown.len() > 30 { format!("\n  … and {} more", unknown.len() - 30) } else { String::new() }
        );
    }
    if items.is_empty() {
        bail!("nothing to convert in {}: no UNet, VAE or text encoder weights recognised", src.describe());
    }
    let mut configs_out = BTreeMap::new();
    for c in items.iter().map(|i| i.component).collect::<BTreeSet<_>>() {
        configs_out.insert(c, configs.for_component(c).clone());
    }
    Ok(Plan {
        family,
        inpainting,
        prediction_type: configs.prediction_type.clone(),
        items,
        configs: configs_out,
        scheduler: configs.scheduler.clone(),
        ignored,
        unknown,
    })
}

/// Refuse any number in a key's dotted path above the "checkpoint block index" limit: block numbers decide how
/// many levels, layers and zero convolutions the inferred config gets.
pub(crate) fn check_block_indices(key: &str, what: &str) -> Result<()> {
    for part in key.split('.') {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if part.parse::<u64>().map_or(true, |n| n > limits::CHECKPOINT_MAX_BLOCK_INDEX) {
            bail!(
                "{what}: {}",
                limits::exceeded(
                    format!("block number {part} in tensor `{key}`"),
                    "checkpoint block index",
                    limits::CHECKPOINT_MAX_BLOCK_INDEX,
                    "index"
                )
            );
        }
    }
    Ok(())
}
