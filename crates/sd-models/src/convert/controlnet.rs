//! Single-file ControlNets (the `.pth` / `.safetensors` files of A1111's `models/ControlNet/`) → a diffusers
//! `ControlNetModel`: its state dict under diffusers' names and its `config.json`.
//!
//! Three layouts are read, told apart by marker keys, never by the file name:
//! - the original lllyasviel (cldm) names, bare (`control_v11p_sd15_canny.pth`: `input_hint_block.*`,
//!   `input_blocks.*`, `zero_convs.*`, `middle_block.*`, `middle_block_out.*`);
//! - the same under `control_model.` (ControlNet 1.0 files, which bundle the whole Stable Diffusion model they were
//!   trained beside; only the control model is taken, the rest is left out and counted);
//! - diffusers' own names in one file (`diffusers_xl_canny_full.safetensors`), copied as they are.
//!
//! The config comes from a diffusers `config.json` when the caller has one (it is then checked against the weights),
//! otherwise from the tensor shapes plus the values the original code fixes and its yaml files state: 32
//! normalisation groups, 8 heads for SD1-style models (convolutional `proj_in`), 64-channel heads for
//! linear-projection models (SD2, SDXL), SDXL's `text_time` added conditioning — the same config
//! `create_controlnet_diffusers_config_from_ldm` builds from those yaml files. A ControlNet whose widths do not fit
//! those rules (a tiny test model) needs its `config.json`: the error says so instead of guessing.
//! Reference: diffusers 0.42.1 `loaders/single_file_utils.py` (`convert_controlnet_checkpoint`).

use super::ldm;
use super::plan::{self, Component, Item, Op};
use super::source::TensorSource;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where the ControlNet's tensors are and how they are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// lllyasviel's names, under `prefix` (`""` or `"control_model."`).
    Original { prefix: &'static str },
    /// diffusers' names already.
    Diffusers,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Original { prefix: "" } => "original ControlNet layout",
            Layout::Original { .. } => "original ControlNet layout under `control_model.` (bundled with an SD model)",
            Layout::Diffusers => "diffusers ControlNetModel layout",
        }
    }
}

/// The prefix of ControlNet 1.0 bundles.
const BUNDLE_PREFIX: &str = "control_model.";

/// Which ControlNet layout `names` are in, if any.
pub fn detect(names: &[String]) -> Option<Layout> {
    let has = |k: &str| names.iter().any(|n| n == k);
    if has("control_model.input_hint_block.0.weight") {
        Some(Layout::Original { prefix: BUNDLE_PREFIX })
    } else if has("input_hint_block.0.weight") {
        Some(Layout::Original { prefix: "" })
    } else if has("controlnet_cond_embedding.conv_in.weight") {
        Some(Layout::Diffusers)
    } else {
        None
    }
}

/// A diffusers config supplied with a single file, and where it came from (for messages).
#[derive(Clone, Debug)]
pub struct GivenConfig {
    pub origin: PathBuf,
    pub config: Value,
}

impl GivenConfig {
    /// Read `path` as a ControlNetModel `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let class = config.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        if class != "ControlNetModel" {
            bail!(
                "{} is not a ControlNet config: its _class_name is {class:?}, expected \"ControlNetModel\"",
                path.display()
            );
        }
        Ok(Self { origin: path.to_path_buf(), config })
    }

    /// The `config.json` of a diffusers ControlNet folder the file sits in (a Hugging Face snapshot holding
    /// `diffusion_pytorch_model.fp16.safetensors`, or the file dropped into such a folder), as diffusers'
    /// `from_single_file(..., config=folder)` takes it. A `config.json` of another class is not one.
    pub fn beside(file: &Path) -> Result<Option<Self>> {
        let Some(dir) = file.parent() else { return Ok(None) };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let path = dir.join("config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("_class_name").and_then(|c| c.as_str()) == Some("ControlNetModel") => {
                Ok(Some(Self { origin: path, config: v }))
            }
            _ => Ok(None),
        }
    }
}

/// Everything decided from names and shapes, before any tensor is read.
#[derive(Debug)]
pub struct ControlNetPlan {
    pub layout: Layout,
    pub items: Vec<Item>,
    /// The `config.json` to build / write the model with.
    pub config: Value,
    /// Where the config came from: a file, or `None` when inferred from the shapes.
    pub config_origin: Option<PathBuf>,
    /// Keys outside the control model (a ControlNet 1.0 bundle's SD model), left out.
    pub ignored: Vec<String>,
    /// Keys that fit no rule (dropped only with `allow_unknown`).
    pub unknown: Vec<String>,
}

/// `N.rest` → (N, rest), N already bounded by [`super::check_block_indices`].
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// The conditioning embedding's convolutions are `input_hint_block.0, 2, …, last` (SiLUs in between have no
/// weights): 0 is `conv_in`, `last` is `conv_out`, the others are `blocks.{n/2 - 1}`.
fn hint_name(rest: &str, last: usize) -> Option<String> {
    let (n, param) = index(rest)?;
    if n % 2 != 0 {
        return None;
    }
    let new = match n {
        0 => "conv_in".to_string(),
        n if n == last => "conv_out".to_string(),
        n => format!("blocks.{}", n / 2 - 1),
    };
    Some(format!("controlnet_cond_embedding.{new}.{param}"))
}

/// The diffusers name of one original-layout key (prefix removed).
fn original_name(local: &str, layers_per_block: usize, text_time: bool, hint_last: usize) -> Option<String> {
    if let Some(rest) = local.strip_prefix("input_hint_block.") {
        return hint_name(rest, hint_last);
    }
    if let Some(rest) = local.strip_prefix("zero_convs.") {
        let (i, rest) = index(rest)?;
        let param = rest.strip_prefix("0.")?;
        return Some(format!("controlnet_down_blocks.{i}.{param}"));
    }
    if let Some(param) = local.strip_prefix("middle_block_out.0.") {
        return Some(format!("controlnet_mid_block.{param}"));
    }
    let is_encoder =
        ["time_embed.", "label_emb.", "input_blocks.", "middle_block."].iter().any(|p| local.starts_with(p));
    if !is_encoder {
        return None;
    }
    ldm::unet_name(local, layers_per_block, text_time)
}

/// Distinct numbers `N` of keys `{prefix}N.…`, sorted.
fn indices<'a>(names: impl Iterator<Item = &'a String>, prefix: &str) -> BTreeSet<usize> {
    names.filter_map(|n| index(n.strip_prefix(prefix)?).map(|(i, _)| i)).collect()
}

/// `0..n` without gaps, else an error naming the blocks.
fn contiguous(set: &BTreeSet<usize>, what: &str, file: &str) -> Result<usize> {
    let n = set.len();
    if set.iter().copied().ne(0..n) {
        bail!("{file}: the {what} are numbered {set:?}; expected 0, 1, 2, … without gaps");
    }
    Ok(n)
}

/// Plan the conversion of a single-file ControlNet. `given` is a diffusers config for it, when the caller has one.
pub fn plan(src: &dyn TensorSource, given: Option<&GivenConfig>, allow_unknown: bool) -> Result<ControlNetPlan> {
    let file = src.describe();
    let names = src.names();
    let Some(layout) = detect(&names) else { bail!("{}", not_a_controlnet(&file, &names)) };
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    let mut mapped: BTreeMap<String, (String, Vec<i64>)> = BTreeMap::new();
    let shape_of = |k: &str| src.shape(k).ok_or_else(|| anyhow!("{file}: no shape for `{k}`"));
    match layout {
        Layout::Diffusers => {
            for k in &names {
                super::check_block_indices(k, &file)?;
                mapped.insert(k.clone(), (k.clone(), shape_of(k)?));
            }
        }
        Layout::Original { prefix } => {
            let mut locals = Vec::new();
            for k in &names {
                match k.strip_prefix(prefix) {
                    Some(local) if !prefix.is_empty() || !k.starts_with(BUNDLE_PREFIX) => {
                        super::check_block_indices(local, &file)?;
                        locals.push((k, local.to_string()));
                    }
                    _ => ignored.push(k.clone()),
                }
            }
            let local_names: Vec<String> = locals.iter().map(|(_, l)| l.clone()).collect();
            // The first downsampler is input block layers_per_block + 1; a one-level model has none.
            let blocks = indices(local_names.iter(), "input_blocks.");
            let first_op = local_names
                .iter()
                .filter(|n| n.ends_with(".0.op.weight"))
                .filter_map(|n| index(n.strip_prefix("input_blocks.")?).map(|(i, _)| i))
                .min();
            let layers_per_block = match (first_op, blocks.iter().next_back()) {
                (Some(op), _) if op >= 2 => op - 1,
                (None, Some(&last)) if last >= 1 => last,
                _ => bail!("{file}: the input blocks {blocks:?} are not a ControlNet's contracting path"),
            };
            let cross = local_names
                .iter()
                .find(|n| n.ends_with("attn2.to_k.weight"))
                .and_then(|n| locals.iter().find(|(_, l)| l == n))
                .and_then(|(k, _)| src.shape(k))
                .and_then(|s| s.get(1).copied());
            let text_time = matches!(cross, Some(1280 | 2048));
            let hint = indices(local_names.iter(), "input_hint_block.");
            let hint_last = hint.iter().next_back().copied().unwrap_or(0);
            let expected: BTreeSet<usize> = (0..=hint_last).step_by(2).collect();
            if hint != expected || hint_last < 2 || (hint_last / 2 - 1) % 2 != 0 {
                bail!(
                    "{file}: the conditioning embedding's convolutions are input_hint_block {hint:?}; expected \
                     0, 2, …, 4·levels − 2 (e.g. 0, 2, …, 14)"
                );
            }
            for (key, local) in &locals {
                match original_name(local, layers_per_block, text_time, hint_last) {
                    Some(name) => {
                        if let Some((other, _)) = mapped.get(&name) {
                            bail!("{file}: `{key}` and `{other}` both map to `{name}`");
                        }
                        mapped.insert(name, ((*key).clone(), shape_of(key)?));
                    }
                    None => unknown.push((*key).clone()),
                }
            }
        }
    }
    if !unknown.is_empty() && !allow_unknown {
        let shown: Vec<&str> = unknown.iter().take(20).map(String::as_str).collect();
        bail!(
            "{file} ({}) has {} tensor(s) that are not part of a ControlNet:\n  {}{}\n(pass --allow-unknown-keys \
             to drop them)",
            layout.describe(),
            unknown.len(),
            shown.join("\n  "),
            if unknown.len() > 20 { format!("\n  … and {} more", unknown.len() - 20) } else { String::new() }
        );
    }
    let shapes: BTreeMap<String, Vec<i64>> = mapped.iter().map(|(n, (_, s))| (n.clone(), s.clone())).collect();
    let (config, config_origin) = match given {
        Some(g) => {
            let inferred = infer_shapes(&shapes, &file)?;
            check_given(g, &inferred, &file)?;
            (g.config.clone(), Some(g.origin.clone()))
        }
        None => (infer_config(&shapes, &file)?, None),
    };
    let items = mapped
        .into_iter()
        .map(|(name, (source, shape))| Item::new(Component::ControlNet, name, 0, &source, Op::Copy, &shape))
        .collect::<Result<Vec<_>>>()?;
    Ok(ControlNetPlan { layout, items, config, config_origin, ignored, unknown })
}

/// Read the planned tensors into memory under their diffusers names (in the file's dtype).
pub fn load_tensors(src: &dyn TensorSource, plan: &ControlNetPlan) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(plan.items.len());
    plan::run(&plan.items, &[src], |item, t| {
        out.insert(item.name.clone(), t);
        Ok(())
    })?;
    Ok(out)
}

/// Why a file is not a ControlNet, naming what it looks like instead.
fn not_a_controlnet(file: &str, names: &[String]) -> String {
    let any = |p: &str| names.iter().any(|n| n.starts_with(p) || n.contains(p));
    let looks = if any("lora_controlnet") {
        "it looks like a Control-LoRA, which sd-rs does not load yet"
    } else if any("model.diffusion_model.") {
        "it looks like a Stable Diffusion checkpoint (it has `model.diffusion_model.` keys but no control model)"
    } else if names.iter().any(|n| n.starts_with("input_blocks.")) {
        "it has UNet blocks but no conditioning embedding (`input_hint_block`)"
    } else if any("adapter.") || any("body.") {
        "it looks like a T2I-Adapter, which is not a ControlNet"
    } else {
        "it has neither `input_hint_block.*` (original layout) nor `controlnet_cond_embedding.*` (diffusers layout)"
    };
    format!("{file} is not a ControlNet: {looks}")
}

/// What the weights themselves say about the config (no fixed values yet).
#[derive(Debug, PartialEq)]
struct Shapes {
    in_channels: i64,
    conditioning_channels: i64,
    conditioning_embedding_out_channels: Vec<i64>,
    block_out_channels: Vec<i64>,
    layers_per_block: usize,
    attention: Vec<bool>,
    transformer_layers: Vec<usize>,
    cross_attention_dim: Option<i64>,
    use_linear_projection: bool,
    /// `add_embedding` (SDXL text_time) or `class_embedding` input width.
    added: Option<(&'static str, i64)>,
    mid_attention: bool,
}

fn infer_shapes(t: &BTreeMap<String, Vec<i64>>, file: &str) -> Result<Shapes> {
    let shape = |k: &str, rank: usize| -> Result<Vec<i64>> {
        let s = t.get(k).ok_or_else(|| anyhow!("{file}: the ControlNet tensor `{k}` is missing"))?;
        if s.len() != rank {
            bail!("{file}: `{k}` has shape {s:?}; a {rank}-dimensional tensor was expected");
        }
        Ok(s.clone())
    };
    let conv_in = shape("conv_in.weight", 4)?;
    let (c0, in_channels) = (conv_in[0], conv_in[1]);
    let time = shape("time_embedding.linear_1.weight", 2)?;
    if time[1] != c0 {
        bail!("{file}: `time_embedding.linear_1.weight` has shape {time:?}; its input width should be {c0} (conv_in)");
    }
    let cond_in = shape("controlnet_cond_embedding.conv_in.weight", 4)?;
    let blocks = indices(t.keys(), "controlnet_cond_embedding.blocks.");
    let n = contiguous(&blocks, "conditioning embedding blocks", file)?;
    if n % 2 != 0 {
        bail!("{file}: the conditioning embedding has {n} blocks; they come in pairs");
    }
    let mut cond_channels = vec![cond_in[0]];
    for j in (1..n).step_by(2) {
        cond_channels.push(shape(&format!("controlnet_cond_embedding.blocks.{j}.weight"), 4)?[0]);
    }
    let levels = contiguous(&indices(t.keys(), "down_blocks."), "down blocks", file)?;
    if levels == 0 {
        bail!("{file}: the ControlNet has no down blocks");
    }
    let layers_per_block = contiguous(&indices(t.keys(), "down_blocks.0.resnets."), "resnets of down block 0", file)?;
    let mut block_out_channels = Vec::new();
    let mut attention = Vec::new();
    let mut transformer_layers = Vec::new();
    for b in 0..levels {
        block_out_channels.push(shape(&format!("down_blocks.{b}.resnets.0.conv1.weight"), 4)?[0]);
        let p = format!("down_blocks.{b}.attentions.0.transformer_blocks.");
        let layers = indices(t.keys(), &p).len();
        attention.push(layers > 0);
        transformer_layers.push(layers.max(1));
    }
    let cross_attention_dim =
        t.iter().find(|(k, _)| k.ends_with("attn2.to_k.weight")).and_then(|(_, s)| s.get(1)).copied();
    let use_linear_projection = t.iter().any(|(k, s)| k.ends_with("proj_in.weight") && s.len() == 2);
    let added = if let Some(s) = t.get("add_embedding.linear_1.weight") {
        Some(("text_time", s.get(1).copied().unwrap_or(0)))
    } else {
        t.get("class_embedding.linear_1.weight").map(|s| ("projection", s.get(1).copied().unwrap_or(0)))
    };
    let mid_attention = t.keys().any(|k| k.starts_with("mid_block.attentions.0."));
    Ok(Shapes {
        in_channels,
        conditioning_channels: cond_in[1],
        conditioning_embedding_out_channels: cond_channels,
        block_out_channels,
        layers_per_block,
        attention,
        transformer_layers,
        cross_attention_dim,
        use_linear_projection,
        added,
        mid_attention,
    })
}

/// The config of a ControlNet from its shapes and the original code's fixed values (see the module docs).
fn infer_config(t: &BTreeMap<String, Vec<i64>>, file: &str) -> Result<Value> {
    let s = infer_shapes(t, file)?;
    let need_config = |why: String| {
        anyhow!(
            "{file}: cannot infer this ControlNet's config from its shapes ({why}); put its diffusers config.json \
             in the same folder (or pass --config-dir to `sd convert`)"
        )
    };
    for &c in &s.block_out_channels {
        if c % 32 != 0 {
            return Err(need_config(format!("width {c} does not take the original 32 normalisation groups")));
        }
    }
    let Some(cross) = s.cross_attention_dim else {
        return Err(need_config("it has no cross-attention".into()));
    };
    let heads = if s.use_linear_projection {
        let mut v = Vec::new();
        for &c in &s.block_out_channels {
            if c % 64 != 0 {
                return Err(need_config(format!("width {c} is not a whole number of 64-channel heads")));
            }
            v.push(c / 64);
        }
        json!(v)
    } else {
        json!(8)
    };
    let down: Vec<&str> = s.attention.iter().map(|&a| if a { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect();
    let layers = &s.transformer_layers;
    let transformer_layers_per_block =
        if layers.iter().all(|&l| l == layers[0]) { json!(layers[0]) } else { json!(layers) };
    let (class_embed_type, addition_embed_type, addition_time_embed_dim, projection_dim) = match s.added {
        Some(("text_time", d)) => (Value::Null, json!("text_time"), json!(256), json!(d)),
        Some((_, d)) => (json!("projection"), Value::Null, Value::Null, json!(d)),
        None => (Value::Null, Value::Null, Value::Null, Value::Null),
    };
    Ok(json!({
        "_class_name": "ControlNetModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "addition_embed_type": addition_embed_type,
        "addition_time_embed_dim": addition_time_embed_dim,
        "attention_head_dim": heads,
        "block_out_channels": s.block_out_channels,
        "class_embed_type": class_embed_type,
        "conditioning_channels": s.conditioning_channels,
        "conditioning_embedding_out_channels": s.conditioning_embedding_out_channels,
        "controlnet_conditioning_channel_order": "rgb",
        "cross_attention_dim": cross,
        "down_block_types": down,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "global_pool_conditions": false,
        "in_channels": s.in_channels,
        "layers_per_block": s.layers_per_block,
        "mid_block_type": if s.mid_attention { json!("UNetMidBlock2DCrossAttn") } else { json!("UNetMidBlock2D") },
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "only_cross_attention": false,
        "projection_class_embeddings_input_dim": projection_dim,
        "resnet_time_scale_shift": "default",
        "transformer_layers_per_block": transformer_layers_per_block,
        "upcast_attention": false,
        "use_linear_projection": s.use_linear_projection,
    }))
}

/// A supplied config must describe these weights: every field the shapes decide is compared.
fn check_given(g: &GivenConfig, s: &Shapes, file: &str) -> Result<()> {
    let c = &g.config;
    let int = |k: &str, default: i64| c.get(k).and_then(Value::as_i64).unwrap_or(default);
    let ints = |k: &str, default: &[i64]| -> Vec<i64> {
        c.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_else(|| default.to_vec())
    };
    let mut wrong = Vec::new();
    let mut cmp = |field: &str, there: String, weights: String| {
        if there != weights {
            wrong.push(format!("`{field}` is {there} there but {weights} in the weights"));
        }
    };
    cmp("in_channels", int("in_channels", 4).to_string(), s.in_channels.to_string());
    cmp("conditioning_channels", int("conditioning_channels", 3).to_string(), s.conditioning_channels.to_string());
    cmp(
        "conditioning_embedding_out_channels",
        format!("{:?}", ints("conditioning_embedding_out_channels", &[16, 32, 96, 256])),
        format!("{:?}", s.conditioning_embedding_out_channels),
    );
    cmp(
        "block_out_channels",
        format!("{:?}", ints("block_out_channels", &[320, 640, 1280, 1280])),
        format!("{:?}", s.block_out_channels),
    );
    cmp("layers_per_block", int("layers_per_block", 2).to_string(), s.layers_per_block.to_string());
    if let (Some(d), Some(there)) = (s.cross_attention_dim, c.get("cross_attention_dim").and_then(Value::as_i64)) {
        cmp("cross_attention_dim", there.to_string(), d.to_string());
    }
    if !wrong.is_empty() {
        bail!("{} does not describe {file}: {}", g.origin.display(), wrong.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes of an SD1.5 / SD2.1 / SDXL ControlNet in the original layout, as the released files have them.
    fn original(
        widths: &[i64],
        attn: &[bool],
        depth: &[usize],
        cross: i64,
        linear: bool,
        sdxl: bool,
    ) -> BTreeMap<String, Vec<i64>> {
        let mut t = BTreeMap::new();
        let c0 = widths[0];
        t.insert("time_embed.0.weight".to_string(), vec![4 * c0, c0]);
        t.insert("input_blocks.0.0.weight".to_string(), vec![c0, 4, 3, 3]);
        for (n, (i, o)) in [(0, (3, 16)), (2, (16, 16)), (4, (16, 32)), (6, (32, 32)), (8, (32, 96)), (10, (96, 96))]
            .into_iter()
            .chain([(12, (96, 256)), (14, (256, c0))])
        {
            t.insert(format!("input_hint_block.{n}.weight"), vec![o, i, 3, 3]);
        }
        if sdxl {
            t.insert("label_emb.0.0.weight".to_string(), vec![4 * c0, 2816]);
        }
        let mut i = 1;
        let mut zero = 1;
        let mut prev = c0;
        for (b, &w) in widths.iter().enumerate() {
            for _ in 0..2 {
                t.insert(format!("input_blocks.{i}.0.in_layers.2.weight"), vec![w, prev, 3, 3]);
                prev = w;
                if attn[b] {
                    let p = if linear { vec![w, w] } else { vec![w, w, 1, 1] };
                    t.insert(format!("input_blocks.{i}.1.proj_in.weight"), p);
                    for d in 0..depth[b] {
                        t.insert(
                            format!("input_blocks.{i}.1.transformer_blocks.{d}.attn2.to_k.weight"),
                            vec![w, cross],
                        );
                    }
                }
                i += 1;
                zero += 1;
            }
            if b + 1 < widths.len() {
                t.insert(format!("input_blocks.{i}.0.op.weight"), vec![w, w, 3, 3]);
                i += 1;
                zero += 1;
            }
        }
        for z in 0..zero {
            t.insert(format!("zero_convs.{z}.0.weight"), vec![1, 1, 1, 1]);
        }
        t.insert(
            "middle_block.1.proj_in.weight".to_string(),
            if linear { vec![prev, prev] } else { vec![prev, prev, 1, 1] },
        );
        t.insert("middle_block_out.0.weight".to_string(), vec![prev, prev, 1, 1]);
        t
    }

    struct Fake(BTreeMap<String, Vec<i64>>);
    impl TensorSource for Fake {
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn shape(&self, name: &str) -> Option<Vec<i64>> {
            self.0.get(name).cloned()
        }
        fn kind(&self, _: &str) -> Option<tch::Kind> {
            Some(tch::Kind::Float)
        }
        fn load(&self, name: &str) -> Result<Tensor> {
            bail!("shape-only source: {name}")
        }
        fn describe(&self) -> String {
            "fake.pth".into()
        }
    }

    #[test]
    fn infers_sd15_sd21_and_sdxl_configs_as_the_original_yaml_files_state() {
        let sd15 = original(&[320, 640, 1280, 1280], &[true, true, true, false], &[1, 1, 1, 0], 768, false, false);
        let c = plan(&Fake(sd15), None, false).unwrap().config;
        assert_eq!(c["block_out_channels"], json!([320, 640, 1280, 1280]));
        assert_eq!(c["attention_head_dim"], json!(8));
        assert_eq!(c["cross_attention_dim"], json!(768));
        assert_eq!(c["use_linear_projection"], json!(false));
        assert_eq!(c["layers_per_block"], json!(2));
        assert_eq!(c["transformer_layers_per_block"], json!(1));
        assert_eq!(c["conditioning_embedding_out_channels"], json!([16, 32, 96, 256]));
        assert_eq!(c["down_block_types"][3], json!("DownBlock2D"));

        let sd21 = original(&[320, 640, 1280, 1280], &[true, true, true, false], &[1, 1, 1, 0], 1024, true, false);
        let c = plan(&Fake(sd21), None, false).unwrap().config;
        assert_eq!(c["attention_head_dim"], json!([5, 10, 20, 20]));
        assert_eq!(c["use_linear_projection"], json!(true));
        assert_eq!(c["cross_attention_dim"], json!(1024));

        let mut sdxl = original(&[320, 640, 1280], &[false, true, true], &[0, 2, 10], 2048, true, true);
        let bundled: BTreeMap<String, Vec<i64>> =
            sdxl.iter().map(|(k, v)| (format!("control_model.{k}"), v.clone())).collect();
        sdxl.clear();
        sdxl.extend(bundled);
        sdxl.insert("model.diffusion_model.out.2.weight".into(), vec![4]);
        let p = plan(&Fake(sdxl), None, false).unwrap();
        assert_eq!(p.layout, Layout::Original { prefix: "control_model." });
        assert_eq!(p.ignored, vec!["model.diffusion_model.out.2.weight".to_string()]);
        let c = p.config;
        assert_eq!(c["attention_head_dim"], json!([5, 10, 20]));
        assert_eq!(c["transformer_layers_per_block"], json!([1, 2, 10]));
        assert_eq!(c["addition_embed_type"], json!("text_time"));
        assert_eq!(c["projection_class_embeddings_input_dim"], json!(2816));
        assert_eq!(c["down_block_types"], json!(["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]));
        assert!(p.items.iter().any(|i| i.name == "add_embedding.linear_1.weight"));
        assert!(p.items.iter().any(|i| i.name == "controlnet_cond_embedding.conv_out.weight"
            && i.source == "control_model.input_hint_block.14.weight"));
    }

    #[test]
    fn absurd_block_numbers_and_odd_layouts_are_refused() {
        let mut t = original(&[320, 640], &[true, true], &[1, 1], 768, false, false);
        t.insert("zero_convs.99999999999999999999999.0.weight".into(), vec![1]);
        let e = plan(&Fake(t), None, false).unwrap_err().to_string();
        assert!(e.contains("checkpoint block index limit of 1000"), "{e}");
        let mut t = original(&[320, 640], &[true, true], &[1, 1], 768, false, false);
        t.remove("input_hint_block.6.weight");
        let e = plan(&Fake(t), None, false).unwrap_err().to_string();
        assert!(e.contains("input_hint_block"), "{e}");
        let t: BTreeMap<String, Vec<i64>> =
            [("model.diffusion_model.input_blocks.0.0.weight".to_string(), vec![1])].into();
        let e = plan(&Fake(t), None, false).unwrap_err().to_string();
        assert!(e.contains("not a ControlNet") && e.contains("Stable Diffusion checkpoint"), "{e}");
    }
}
