//! Single-file Stable Diffusion 3 / 3.5 checkpoints (`sd3_medium_incl_clips.safetensors`, `sd3.5_large.safetensors`,
//! …) → the diffusers SD3 folder layout that `sd_pipeline::sd3` loads.
//!
//! Such a file holds the MMDiT under its original Stability names (`model.diffusion_model.*`, or bare), the VAE under
//! `first_stage_model.*` (LDM names, mapped by [`super::ldm`]) and, in some releases, the text encoders under
//! `text_encoders.{clip_l,clip_g,t5xxl}.transformer.*` (already in transformers' layout: only the prefix goes).
//! Four things differ from a plain rename, all as diffusers' single-file loader does them:
//! - the fused `qkv` projections are split into `to_q` / `to_k` / `to_v` (context stream: `add_*_proj`) by rows;
//! - the final layer's modulation, and that of the last block's context stream (`context_pre_only`: it has no
//!   output projection or MLP), emit (shift, scale) in the original code and (scale, shift) in diffusers, so the
//!   halves of those weights are swapped;
//! - CLIP-L gets an identity `text_projection` whatever the file holds: the original SD3 code pools CLIP-L
//!   unprojected, and diffusers' loader models that with the identity;
//! - the transformer config comes from the shapes: layer count from the `joint_blocks`, widths from the
//!   embedders, the positional grid from `pos_embed`, qk RMS norm where `ln_q` exists, dual attention (SD3.5
//!   Medium's MMDiT-X) where `attn2` exists. The head width is not in the shapes without qk norm: it is 64 in every
//!   released SD3 model, and a `--config-dir` config states it otherwise.
//!
//! Every block number and count read from the file is bounded before anything is planned or allocated.
//! Reference: diffusers 0.42.1 `loaders/single_file_utils.py` (`convert_sd3_transformer_checkpoint_to_diffusers`,
//! `create_diffusers_clip_model_from_ldm`, `convert_sd3_t5_checkpoint_to_diffusers`).

use super::configs::{canonical, patch_text};
use super::plan::{self, Component, Item, Op};
use super::source::TensorSource;
use super::{clip, family, ldm};
use crate::transformer_sd3::config::{SD3TransformerConfig, MAX_LAYERS};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where SD3 files keep the MMDiT (some tools write it bare).
pub const TRANSFORMER_PREFIX: &str = "model.diffusion_model.";
/// Where they keep the VAE.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// CLIP ViT-L/14, transformers layout.
pub const CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// OpenCLIP ViT-bigG/14, transformers layout.
pub const CLIP_G_PREFIX: &str = "text_encoders.clip_g.transformer.";
/// T5-XXL encoder, transformers layout.
pub const T5_PREFIX: &str = "text_encoders.t5xxl.transformer.";
/// The key that tells an SD3 MMDiT from anything else (diffusers' marker too).
const MARKER: &str = "joint_blocks.0.context_block.adaLN_modulation.1.bias";
/// How the note on a missing T5 tokenizer starts.
const T5_TOKENIZER_NOTE: &str = "the T5 tokenizer cannot be made from the weights";
/// The head width of every released SD3 / SD3.5 model, used when the shapes do not say (no qk norm).
const DEFAULT_HEAD_DIM: i64 = 64;

/// The prefix of the MMDiT's keys, if `names` hold one.
pub fn transformer_prefix(names: &[String]) -> Option<&'static str> {
    let has = |k: &str| names.iter().any(|n| n == k);
    if has(&format!("{TRANSFORMER_PREFIX}{MARKER}")) {
        Some(TRANSFORMER_PREFIX)
    } else if has(MARKER) {
        Some("")
    } else {
        None
    }
}

/// Whether `names` are an SD3 / SD3.5 single file.
pub fn detect(names: &[String]) -> bool {
    transformer_prefix(names).is_some()
}

/// Everything decided from names and shapes, before any tensor is read.
#[derive(Debug)]
pub struct Sd3Plan {
    pub items: Vec<Item>,
    /// `config.json` of each component in `items`.
    pub configs: BTreeMap<Component, Value>,
    pub scheduler: Value,
    /// Text encoders the file lacks that the `--config-dir` folder has (weights and tokenizer folders copied).
    pub copied: Vec<(Component, PathBuf)>,
    /// Where the transformer config came from: a file, or `None` when inferred from the shapes.
    pub config_origin: Option<PathBuf>,
    /// Source keys left out on purpose, with the reason.
    pub ignored: Vec<(String, &'static str)>,
    /// Source keys that fit no rule (dropped only with `allow_unknown`).
    pub unknown: Vec<String>,
    /// What the user should know about the result (text encoders missing, a tokenizer to supply).
    pub notes: Vec<String>,
    /// A T5 tokenizer file, or a folder whose files are, to write as `tokenizer_3/` (see
    /// [`Sd3Plan::use_t5_tokenizer`]).
    pub t5_tokenizer: Option<PathBuf>,
}

impl Sd3Plan {
    pub fn components(&self) -> Vec<Component> {
        let set: BTreeSet<Component> = self.items.iter().map(|i| i.component).collect();
        set.into_iter().collect()
    }

    /// Take the T5 tokenizer from `path` (`--t5-tokenizer`): a `tokenizer.json` or `spiece.model` file, or a
    /// folder holding one (ComfyUI's `t5_tokenizer/`, a diffusers `tokenizer_3/`), whose files are copied.
    pub fn use_t5_tokenizer(&mut self, path: &Path) -> Result<()> {
        const NAMES: [&str; 2] = ["tokenizer.json", "spiece.model"];
        let shown = path.display();
        if path.is_dir() {
            if !NAMES.iter().any(|n| path.join(n).is_file()) {
                bail!("--t5-tokenizer {shown}: the folder has neither tokenizer.json nor spiece.model");
            }
        } else if !path.is_file() {
            bail!("--t5-tokenizer {shown}: no such file or folder");
        } else if !path.file_name().is_some_and(|n| NAMES.iter().any(|k| n == *k)) {
            bail!("--t5-tokenizer {shown}: a tokenizer.json or spiece.model file (or a folder with one) was expected");
        }
        if !self.has(Component::TextEncoder3) {
            bail!("--t5-tokenizer {shown} was given, but the result has no T5 encoder (pass --t5 with its weights)");
        }
        self.notes.retain(|n| !n.starts_with(T5_TOKENIZER_NOTE));
        self.t5_tokenizer = Some(path.to_path_buf());
        Ok(())
    }

    /// Whether the written folder will have `c` (from the file or copied from `--config-dir`).
    pub fn has(&self, c: Component) -> bool {
        self.items.iter().any(|i| i.component == c) || self.copied.iter().any(|(k, _)| *k == c)
    }
}

/// A diffusers target of one original MMDiT key: its name and how the tensor is cut.
type Target = (String, Op);

/// The diffusers names of one MMDiT key (prefix removed). `width` = the model width (the qkv split); `last` =
/// whether block `i` is the last one (its context stream is `context_pre_only`).
fn transformer_targets(local: &str, width: i64, layers: usize) -> Option<Vec<Target>> {
    let one = |n: String, op: Op| Some(vec![(n, op)]);
    if local == "pos_embed" {
        return one("pos_embed.pos_embed".into(), Op::Copy);
    }
    let (base, what) = local.rsplit_once('.')?;
    if what != "weight" && what != "bias" {
        return None;
    }
    let top = match base {
        "x_embedder.proj" => Some(("pos_embed.proj", Op::Copy)),
        "t_embedder.mlp.0" => Some(("time_text_embed.timestep_embedder.linear_1", Op::Copy)),
        "t_embedder.mlp.2" => Some(("time_text_embed.timestep_embedder.linear_2", Op::Copy)),
        "y_embedder.mlp.0" => Some(("time_text_embed.text_embedder.linear_1", Op::Copy)),
        "y_embedder.mlp.2" => Some(("time_text_embed.text_embedder.linear_2", Op::Copy)),
        "context_embedder" => Some(("context_embedder", Op::Copy)),
        "final_layer.linear" => Some(("proj_out", Op::Copy)),
        "final_layer.adaLN_modulation.1" => Some(("norm_out.linear", Op::SwapHalves)),
        _ => None,
    };
    if let Some((n, op)) = top {
        return one(format!("{n}.{what}"), op);
    }
    let rest = base.strip_prefix("joint_blocks.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let last = i + 1 == layers;
    let b = format!("transformer_blocks.{i}");
    let qkv = |names: [&str; 3]| {
        Some(
            names
                .iter()
                .enumerate()
                .map(|(k, n)| (format!("{b}.{n}.{what}"), Op::Rows { start: k as i64 * width, len: width }))
                .collect(),
        )
    };
    let norm = |n: &str| if what == "weight" { one(format!("{b}.{n}.weight"), Op::Copy) } else { None };
    let plain = |n: &str| one(format!("{b}.{n}.{what}"), Op::Copy);
    match rest {
        "x_block.attn.qkv" => qkv(["attn.to_q", "attn.to_k", "attn.to_v"]),
        "context_block.attn.qkv" => qkv(["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
        "x_block.attn2.qkv" => qkv(["attn2.to_q", "attn2.to_k", "attn2.to_v"]),
        "x_block.attn.ln_q" => norm("attn.norm_q"),
        "x_block.attn.ln_k" => norm("attn.norm_k"),
        "context_block.attn.ln_q" => norm("attn.norm_added_q"),
        "context_block.attn.ln_k" => norm("attn.norm_added_k"),
        "x_block.attn2.ln_q" => norm("attn2.norm_q"),
        "x_block.attn2.ln_k" => norm("attn2.norm_k"),
        "x_block.attn.proj" => plain("attn.to_out.0"),
        "x_block.attn2.proj" => plain("attn2.to_out.0"),
        "context_block.attn.proj" if !last => plain("attn.to_add_out"),
        "x_block.adaLN_modulation.1" => plain("norm1.linear"),
        "context_block.adaLN_modulation.1" if last => one(format!("{b}.norm1_context.linear.{what}"), Op::SwapHalves),
        "context_block.adaLN_modulation.1" => plain("norm1_context.linear"),
        "x_block.mlp.fc1" => plain("ff.net.0.proj"),
        "x_block.mlp.fc2" => plain("ff.net.2"),
        "context_block.mlp.fc1" if !last => plain("ff_context.net.0.proj"),
        "context_block.mlp.fc2" if !last => plain("ff_context.net.2"),
        _ => None,
    }
}

/// Every diffusers tensor an `SD3Transformer2DModel` of `cfg` has, so a file that lacks one is refused by name
/// before anything is written.
fn expected_transformer_names(cfg: &SD3TransformerConfig) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let wb = |out: &mut BTreeSet<String>, n: &str| {
        out.insert(format!("{n}.weight"));
        out.insert(format!("{n}.bias"));
    };
    out.insert("pos_embed.pos_embed".into());
    for n in [
        "pos_embed.proj",
        "time_text_embed.timestep_embedder.linear_1",
        "time_text_embed.timestep_embedder.linear_2",
        "time_text_embed.text_embedder.linear_1",
        "time_text_embed.text_embedder.linear_2",
        "context_embedder",
        "proj_out",
        "norm_out.linear",
    ] {
        wb(&mut out, n);
    }
    let qk = cfg.qk_norm.is_some();
    for i in 0..cfg.num_layers {
        let b = format!("transformer_blocks.{i}");
        let last = i + 1 == cfg.num_layers;
        let mut linear = vec!["attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj"];
        linear.extend(["attn.add_v_proj", "attn.to_out.0", "norm1.linear", "norm1_context.linear"]);
        linear.extend(["ff.net.0.proj", "ff.net.2"]);
        if !last {
            linear.extend(["attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2"]);
        }
        let dual = cfg.dual_attention_layers.contains(&i);
        if dual {
            linear.extend(["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]);
        }
        for n in linear {
            wb(&mut out, &format!("{b}.{n}"));
        }
        if qk {
            for n in ["attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k"] {
                out.insert(format!("{b}.{n}.weight"));
            }
            if dual {
                for n in ["attn2.norm_q", "attn2.norm_k"] {
                    out.insert(format!("{b}.{n}.weight"));
                }
            }
        }
    }
    out
}

/// What the MMDiT's shapes say about its config (head width where qk norm states it).
struct Inferred {
    config: Value,
    head_dim: Option<i64>,
    width: i64,
}

fn infer_transformer(src: &dyn TensorSource, prefix: &str, layers: usize, file: &str) -> Result<Inferred> {
    let shape = |k: &str, rank: usize| -> Result<Vec<i64>> {
        let key = format!("{prefix}{k}");
        let s = src.shape(&key).ok_or_else(|| anyhow!("{file}: the SD3 tensor `{key}` is missing"))?;
        if s.len() != rank || s.iter().any(|&d| d < 1) {
            bail!("{file}: `{key}` has shape {s:?}; a {rank}-dimensional tensor was expected");
        }
        Ok(s)
    };
    let proj = shape("x_embedder.proj.weight", 4)?;
    let (width, in_channels, patch) = (proj[0], proj[1], proj[2]);
    if proj[3] != patch {
        bail!("{file}: `x_embedder.proj.weight` has shape {proj:?}; a square patch was expected");
    }
    let pos = shape("pos_embed", 3)?;
    if pos[0] != 1 || pos[2] != width {
        bail!("{file}: `pos_embed` has shape {pos:?}; [1, grid², {width}] was expected");
    }
    let max = crate::transformer_sd3::config::MAX_POS_EMBED_SIZE;
    if pos[1] > max * max {
        bail!(
            "{file}: `pos_embed` holds {} positions, more than the {max}×{max} grid accepted (MAX_POS_EMBED_SIZE)",
            pos[1]
        );
    }
    let side = (pos[1] as f64).sqrt().round() as i64;
    if side * side != pos[1] {
        bail!("{file}: `pos_embed` holds {} positions, which is not a square grid", pos[1]);
    }
    let ctx = shape("context_embedder.weight", 2)?;
    let pooled = shape("y_embedder.mlp.0.weight", 2)?;
    let out = shape("final_layer.linear.weight", 2)?;
    let per_patch = patch.checked_mul(patch).filter(|&p| p > 0 && out[0] % p == 0);
    let Some(per_patch) = per_patch else {
        bail!("{file}: `final_layer.linear.weight` has shape {out:?}; a multiple of {patch}² rows was expected")
    };
    let mut dual = Vec::new();
    let mut qk = false;
    for i in 0..layers {
        let qkv = shape(&format!("joint_blocks.{i}.x_block.attn.qkv.weight"), 2)?;
        if qkv[0] != 3 * width || qkv[1] != width {
            bail!("{file}: `joint_blocks.{i}.x_block.attn.qkv.weight` has shape {qkv:?}; [3·{width}, {width}] was expected");
        }
        let a2 = format!("{prefix}joint_blocks.{i}.x_block.attn2.qkv.weight");
        if src.shape(&a2).is_some() {
            dual.push(i);
        }
        qk |= src.shape(&format!("{prefix}joint_blocks.{i}.x_block.attn.ln_q.weight")).is_some();
    }
    let head_dim = if qk { Some(shape("joint_blocks.0.x_block.attn.ln_q.weight", 1)?[0]) } else { None };
    let config = json!({
        "_class_name": "SD3Transformer2DModel",
        "_diffusers_version": "0.42.1",
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": layers,
        "attention_head_dim": head_dim.unwrap_or(DEFAULT_HEAD_DIM),
        "num_attention_heads": width / head_dim.unwrap_or(DEFAULT_HEAD_DIM).max(1),
        "joint_attention_dim": ctx[1],
        "caption_projection_dim": ctx[0],
        "pooled_projection_dim": pooled[1],
        "out_channels": out[0] / per_patch,
        "pos_embed_max_size": side,
        "dual_attention_layers": dual,
        "qk_norm": if qk { json!("rms_norm") } else { Value::Null },
    });
    Ok(Inferred { config, head_dim, width })
}

/// The transformer config: the supplied one (checked against every field the shapes decide) or the inferred one.
fn transformer_config(inf: &Inferred, given: Option<(&Path, Value)>, file: &str) -> Result<Value> {
    let Some((origin, given)) = given else {
        let head = inf.config["attention_head_dim"].as_i64().unwrap_or(DEFAULT_HEAD_DIM);
        if inf.width % head != 0 {
            bail!(
                "{file}: the MMDiT is {} wide, not a whole number of {head}-channel heads, and without qk norm the \
                 shapes do not state the head width; pass --config-dir with the model's diffusers folder \
                 (transformer/config.json)",
                inf.width
            );
        }
        return Ok(inf.config.clone());
    };
    let mut wrong = Vec::new();
    for field in [
        "patch_size",
        "in_channels",
        "num_layers",
        "joint_attention_dim",
        "caption_projection_dim",
        "pooled_projection_dim",
        "out_channels",
        "pos_embed_max_size",
        "dual_attention_layers",
        "qk_norm",
    ] {
        let there = given.get(field).cloned().unwrap_or(Value::Null);
        let weights = &inf.config[field];
        let same = match (&there, weights) {
            (Value::Null, Value::Array(a)) => a.is_empty(),
            (a, b) => a == b,
        };
        if !same {
            wrong.push(format!("`{field}` is {there} there but {weights} in the weights"));
        }
    }
    let heads = given["num_attention_heads"].as_i64().unwrap_or(0);
    let head_dim = given["attention_head_dim"].as_i64().unwrap_or(0);
    if heads.checked_mul(head_dim) != Some(inf.width) {
        wrong.push(format!("{heads} heads × {head_dim} channels is not the weights' width {}", inf.width));
    }
    if let Some(h) = inf.head_dim.filter(|&h| h != head_dim) {
        wrong.push(format!("`attention_head_dim` is {head_dim} there but the qk norms are {h} wide"));
    }
    if !wrong.is_empty() {
        bail!("{} does not describe {file}: {}", origin.display(), wrong.join("; "));
    }
    let mut cfg = given;
    cfg["_class_name"] = json!("SD3Transformer2DModel");
    Ok(cfg)
}

/// A component config from `--config-dir`, if the folder has it.
fn read_config(dir: Option<&Path>, rel: &str) -> Result<Option<(PathBuf, Value)>> {
    let Some(dir) = dir else { return Ok(None) };
    let p = dir.join(rel);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let v = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))?;
    Ok(Some((p, v)))
}

/// Whether `--config-dir` has weights for `c` (a text encoder the file lacks, to copy).
fn supplied(dir: Option<&Path>, c: Component) -> Option<PathBuf> {
    let d = dir?.join(c.folder());
    let has_weights = std::fs::read_dir(&d).ok()?.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json")
    });
    has_weights.then_some(d)
}

/// Plan the conversion of a single-file SD3 checkpoint. `config_dir` is a diffusers SD3 folder whose configs
/// (and tokenizers, and text encoders the file lacks) go with it.
pub fn plan(src: &dyn TensorSource, config_dir: Option<&Path>, allow_unknown: bool) -> Result<Sd3Plan> {
    let file = src.describe();
    let names = src.names();
    let Some(prefix) = transformer_prefix(&names) else {
        bail!("{file} is not an SD3 checkpoint: it has no `{TRANSFORMER_PREFIX}{MARKER}`")
    };
    let others = [VAE_PREFIX, "text_encoders."];
    let is_transformer =
        |n: &str| n.starts_with(prefix) && (!prefix.is_empty() || !others.iter().any(|o| n.starts_with(o)));
    let mut blocks = BTreeSet::new();
    for n in names.iter().filter(|n| is_transformer(n)) {
        super::check_block_indices(n, &file)?;
        if let Some((i, _)) = n[prefix.len()..].strip_prefix("joint_blocks.").and_then(|r| r.split_once('.')) {
            if let Ok(i) = i.parse::<u64>() {
                blocks.insert(i);
            }
        }
    }
    let layers = blocks.len();
    if layers as i64 > MAX_LAYERS {
        bail!("{file}: {layers} joint blocks, more than the {MAX_LAYERS} layers accepted (MAX_LAYERS)");
    }
    if blocks.iter().copied().ne(0..layers as u64) {
        bail!("{file}: the joint blocks are numbered {blocks:?}; expected 0, 1, 2, … without gaps");
    }
    let inferred = infer_transformer(src, prefix, layers, &file)?;
    let given = read_config(config_dir, "transformer/config.json")?;
    let config_origin = given.as_ref().map(|(p, _)| p.clone());
    let tcfg = transformer_config(&inferred, given.as_ref().map(|(p, v)| (p.as_path(), v.clone())), &file)?;
    let parsed: SD3TransformerConfig =
        serde_json::from_value(tcfg.clone()).with_context(|| format!("{file}: the transformer config"))?;
    parsed.validate().with_context(|| format!("{file}: the transformer config"))?;

    let mut items = Vec::new();
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut ignored = Vec::new();
    let mut mapped = BTreeSet::new();
    for key in names.iter().filter(|n| is_transformer(n)) {
        let local = &key[prefix.len()..];
        let Some(targets) = transformer_targets(local, inferred.width, layers) else {
            unknown.push(key.clone());
            continue;
        };
        let shape = src.shape(key).ok_or_else(|| anyhow!("{file}: no shape for `{key}`"))?;
        for (name, op) in targets {
            if !mapped.insert(name.clone()) {
                bail!("{file}: two tensors map to `{name}`");
            }
            let item = Item::new(Component::Transformer, name, 0, key, op, &shape).with_context(|| file.clone())?;
            items.push(item);
        }
        used.insert(key.clone());
    }
    let missing: Vec<String> = expected_transformer_names(&parsed).difference(&mapped).cloned().collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        bail!(
            "{file}: the SD3 transformer ({layers} blocks) lacks {} tensor(s): {}{} (is the file truncated?)",
            missing.len(),
            shown.join(", "),
            if missing.len() > 10 { ", …" } else { "" }
        );
    }
    let mut configs = BTreeMap::new();
    configs.insert(Component::Transformer, tcfg);

    if names.iter().any(|n| n.starts_with(VAE_PREFIX)) {
        items.extend(ldm::plan_vae(src, &names, VAE_PREFIX, 0, &mut used, &mut unknown)?);
        let cfg = match read_config(config_dir, "vae/config.json")? {
            Some((_, v)) => v,
            None => {
                let mut v = canonical(include_str!("configs/vae_sd3.json"));
                if let Some(s) = src.shape(&format!("{VAE_PREFIX}decoder.conv_in.weight")) {
                    v["latent_channels"] = json!(s.get(1).copied().unwrap_or(16));
                }
                let has = |k: &str| names.iter().any(|n| n.starts_with(&format!("{VAE_PREFIX}{k}")));
                v["use_quant_conv"] = json!(has("quant_conv."));
                v["use_post_quant_conv"] = json!(has("post_quant_conv."));
                v
            }
        };
        configs.insert(Component::Vae, cfg);
    }

    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    let layers_of = |p: &str| clip::count_layers(&names, p);
    let clip_config = |p: &str, text: &str, rel: &str, proj: Option<i64>| -> Result<Value> {
        if let Some((_, v)) = read_config(config_dir, rel)? {
            return Ok(v);
        }
        let t = format!("{p}text_model.");
        let mut cfg = patch_text(
            canonical(text),
            src,
            &format!("{t}embeddings.token_embedding.weight"),
            &format!("{t}embeddings.position_embedding.weight"),
            &format!("{t}encoder.layers.0.mlp.fc1.weight"),
            layers_of(p),
        );
        cfg["architectures"] = json!(["CLIPTextModelWithProjection"]);
        cfg["projection_dim"] = json!(proj.unwrap_or_else(|| cfg["hidden_size"].as_i64().unwrap_or(768)));
        Ok(cfg)
    };
    if has(CLIP_L_PREFIX) {
        let pos = format!("{CLIP_L_PREFIX}text_model.embeddings.position_embedding.weight");
        let width = match src.shape(&pos).as_deref() {
            Some([_, w]) if *w > 0 => *w,
            s => bail!("{file}: CLIP-L's `{pos}` has shape {s:?}; [positions, width] was expected"),
        };
        let proj_key = format!("{CLIP_L_PREFIX}text_projection.weight");
        for item in clip::plan_clip_l(src, &names, CLIP_L_PREFIX, Component::TextEncoder, &mut used)? {
            if item.source == proj_key {
                ignored.push((
                    proj_key.clone(),
                    "CLIP-L projection: diffusers uses the identity (SD3 pools CLIP-L unprojected)",
                ));
            } else {
                items.push(item);
            }
        }
        let eye = Item::new(
            Component::TextEncoder,
            "text_projection.weight".into(),
            0,
            &pos,
            Op::Identity { n: width },
            &[],
        )?;
        items.push(eye);
        configs.insert(
            Component::TextEncoder,
            clip_config(CLIP_L_PREFIX, include_str!("configs/clip_l.json"), "text_encoder/config.json", Some(width))?,
        );
    }
    if has(CLIP_G_PREFIX) {
        let proj_key = format!("{CLIP_G_PREFIX}text_projection.weight");
        let proj = match src.shape(&proj_key).as_deref() {
            Some([p, _]) => *p,
            s => bail!("{file}: CLIP-G needs its `{proj_key}` (a matrix); found {s:?}"),
        };
        items.extend(clip::plan_clip_l(src, &names, CLIP_G_PREFIX, Component::TextEncoder2, &mut used)?);
        configs.insert(
            Component::TextEncoder2,
            clip_config(
                CLIP_G_PREFIX,
                include_str!("configs/open_clip_bigg.json"),
                "text_encoder_2/config.json",
                Some(proj),
            )?,
        );
    }
    if has(T5_PREFIX) {
        let mut t5 = Vec::new();
        for key in names.iter().filter(|n| n.starts_with(T5_PREFIX)) {
            super::check_block_indices(key, &file)?;
            let shape = src.shape(key).ok_or_else(|| anyhow!("{file}: no shape for `{key}`"))?;
            used.insert(key.clone());
            t5.push(Item::new(Component::TextEncoder3, key[T5_PREFIX.len()..].to_string(), 0, key, Op::Copy, &shape)?);
        }
        let cfg = match read_config(config_dir, "text_encoder_3/config.json")? {
            Some((_, v)) => v,
            None => t5_config(src, &names, &file)?,
        };
        items.extend(t5);
        configs.insert(Component::TextEncoder3, cfg);
    }

    for n in &names {
        if used.contains(n) || unknown.contains(n) || ignored.iter().any(|(k, _)| k == n) {
            continue;
        }
        match family::ignored_reason(n) {
            Some(r) => ignored.push((n.clone(), r)),
            None => unknown.push(n.clone()),
        }
    }
    unknown.sort();
    unknown.dedup();
    if !unknown.is_empty() && !allow_unknown {
        let shown: Vec<&str> = unknown.iter().take(30).map(String::as_str).collect();
        bail!(
            "{file} (SD3) has {} tensor(s) that fit no SD3 mapping rule and are not in the ignore table:\n  {}{}\n\
             (pass --allow-unknown-keys to convert anyway and drop them)",
            unknown.len(),
            shown.join("\n  "),
            if unknown.len() > 30 { format!("\n  … and {} more", unknown.len() - 30) } else { String::new() }
        );
    }

    let mut copied = Vec::new();
    let mut notes = Vec::new();
    let in_file = |c: Component| items.iter().any(|i: &Item| i.component == c);
    for (c, what) in [(Component::TextEncoder, "CLIP-L"), (Component::TextEncoder2, "CLIP-G")] {
        if in_file(c) {
            continue;
        }
        match supplied(config_dir, c) {
            Some(d) => copied.push((c, d)),
            None => notes.push(format!(
                "the file has no {what} text encoder: SD3 needs it, so copy {}/ and {}/ from a diffusers SD3 folder \
                 into the result (or pass that folder as --config-dir)",
                c.folder(),
                if c == Component::TextEncoder { "tokenizer" } else { "tokenizer_2" }
            )),
        }
    }
    if !in_file(Component::TextEncoder3) {
        match supplied(config_dir, Component::TextEncoder3) {
            Some(d) => copied.push((Component::TextEncoder3, d)),
            None => notes.push(
                "the file has no T5 encoder: the model runs without it (as `--no-t5`); to use T5, copy \
                 text_encoder_3/ and tokenizer_3/ from a diffusers SD3 folder into the result"
                    .into(),
            ),
        }
    } else if config_dir.is_none_or(|d| !d.join("tokenizer_3").is_dir()) {
        notes.push(format!(
            "{T5_TOKENIZER_NOTE}: pass --t5-tokenizer (ComfyUI's t5_tokenizer/ folder, a tokenizer.json or \
             spiece.model), or a diffusers SD3 folder as --config-dir, or copy tokenizer_3/ from one into the result \
             later; until then run it with --no-t5"
        ));
    }
    let scheduler = match read_config(config_dir, "scheduler/scheduler_config.json")? {
        Some((_, v)) => v,
        None => canonical(include_str!("configs/scheduler_sd3.json")),
    };
    Ok(Sd3Plan { items, configs, scheduler, copied, config_origin, ignored, unknown, notes, t5_tokenizer: None })
}

/// T5-XXL's config patched with what the weights say (widths, heads, depth, vocabulary, position buckets).
fn t5_config(src: &dyn TensorSource, names: &[String], file: &str) -> Result<Value> {
    let mut cfg = canonical(include_str!("configs/t5_xxl.json"));
    let shape = |k: &str| src.shape(&format!("{T5_PREFIX}{k}"));
    let (vocab, d_model) = match shape("shared.weight").as_deref() {
        Some([v, d]) => (*v, *d),
        s => bail!(
            "{file}: the T5 encoder's `{T5_PREFIX}shared.weight` has shape {s:?}; [vocabulary, width] was expected"
        ),
    };
    cfg["vocab_size"] = json!(vocab);
    cfg["d_model"] = json!(d_model);
    let layers = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(T5_PREFIX)?.strip_prefix("encoder.block.")?.split('.').next()?.parse::<u64>().ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    cfg["num_layers"] = json!(layers);
    cfg["num_decoder_layers"] = json!(layers);
    if let Some(s) = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") {
        if let [buckets, heads] = s[..] {
            cfg["relative_attention_num_buckets"] = json!(buckets);
            cfg["num_heads"] = json!(heads);
            if let Some(q) = shape("encoder.block.0.layer.0.SelfAttention.q.weight") {
                if heads > 0 && q[0] % heads == 0 {
                    cfg["d_kv"] = json!(q[0] / heads);
                }
            }
        }
    }
    if let Some(s) = shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight") {
        cfg["d_ff"] = json!(s[0]);
    }
    Ok(cfg)
}

/// Read the planned tensors into memory under their diffusers names, per component (tests, small models).
pub fn load_tensors(src: &dyn TensorSource, plan: &Sd3Plan) -> Result<BTreeMap<Component, Vec<(String, Tensor)>>> {
    let mut out: BTreeMap<Component, Vec<(String, Tensor)>> = BTreeMap::new();
    plan::run(&plan.items, &[src], |item, t| {
        out.entry(item.component).or_default().push((item.name.clone(), t));
        Ok(())
    })?;
    Ok(out)
}
