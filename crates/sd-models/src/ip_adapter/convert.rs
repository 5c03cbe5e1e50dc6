//! The original IP-Adapter file layout (tencent-ailab's `ip-adapter*.safetensors` / `.bin`) → diffusers' names.
//!
//! An original file holds two groups: `image_proj.*` (the image projection: a linear map and a norm for base
//! adapters, a small MLP for "full", a perceiver resampler for "plus") and `ip_adapter.<id>.to_k_ip/to_v_ip.weight`
//! (one key/value pair per cross-attention layer, ids 1, 3, 5, … in `attn_processors` order, which counted
//! self- and cross-attention alike). The projection is renamed to the modules of diffusers' `ImageProjection`,
//! `IPAdapterFullImageProjection` and `IPAdapterPlusImageProjection` (the resampler's fused `to_kv` split in two),
//! as `_convert_ip_adapter_image_proj_to_diffusers` does, so our modules carry diffusers' state-dict names.

use crate::convert::source::TensorSource;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use tch::Tensor;

/// Which projection a file's `image_proj` group describes (diffusers decides by the same marker keys, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionKind {
    /// `ImageProjection`: `image_embeds` → 4 tokens (ip-adapter_sd15, ip-adapter_sdxl, …).
    Base,
    /// `IPAdapterFullImageProjection`: every penultimate-layer token through an MLP (ip-adapter-full-face).
    Full,
    /// `IPAdapterPlusImageProjection`: a perceiver resampler over the penultimate layer (ip-adapter-plus*).
    Plus,
}

/// An original file read and renamed: the projection under diffusers' names, and the per-layer key/value weights.
pub struct Converted {
    pub kind: ProjectionKind,
    pub image_proj: HashMap<String, Tensor>,
    /// Original key id → (`to_k_ip.weight`, `to_v_ip.weight`).
    pub layers: BTreeMap<usize, (Tensor, Tensor)>,
}

/// Read every tensor of an original IP-Adapter file.
pub fn convert(src: &dyn TensorSource) -> Result<Converted> {
    let mut proj = HashMap::new();
    let mut halves: BTreeMap<usize, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let mut stray = Vec::new();
    for name in src.names() {
        if let Some(rest) = name.strip_prefix("image_proj.") {
            proj.insert(rest.to_string(), src.load(&name)?);
        } else if let Some(rest) = name.strip_prefix("ip_adapter.") {
            let (id, what) = rest.split_once('.').unwrap_or((rest, ""));
            let id: usize = match id.parse() {
                Ok(id) => id,
                Err(_) => {
                    stray.push(name);
                    continue;
                }
            };
            let slot = halves.entry(id).or_default();
            match what {
                "to_k_ip.weight" => slot.0 = Some(src.load(&name)?),
                "to_v_ip.weight" => slot.1 = Some(src.load(&name)?),
                _ => stray.push(name),
            }
        } else {
            stray.push(name);
        }
    }
    if proj.is_empty() || halves.is_empty() {
        bail!(
            "{} is not an IP-Adapter file: expected `image_proj.*` and `ip_adapter.<n>.to_k_ip.weight` / \
             `to_v_ip.weight` tensors (the original ip-adapter*.safetensors layout), found {} image_proj and {} \
             ip_adapter tensors",
            src.describe(),
            proj.len(),
            halves.len()
        );
    }
    if let Some(first) = stray.first() {
        bail!("{}: unexpected tensor `{first}` ({} in all) in an IP-Adapter file", src.describe(), stray.len());
    }
    let mut layers = BTreeMap::new();
    for (id, (k, v)) in halves {
        let (Some(k), Some(v)) = (k, v) else {
            bail!("{}: layer {id} has only one of `to_k_ip.weight` and `to_v_ip.weight`", src.describe());
        };
        layers.insert(id, (k, v));
    }
    let (kind, image_proj) = rename(proj).with_context(|| format!("the image projection of {}", src.describe()))?;
    Ok(Converted { kind, image_proj, layers })
}

fn rename(proj: HashMap<String, Tensor>) -> Result<(ProjectionKind, HashMap<String, Tensor>)> {
    if proj.contains_key("proj.weight") {
        let out = proj.into_iter().map(|(k, v)| (k.replacen("proj", "image_embeds", 1), v)).collect();
        return Ok((ProjectionKind::Base, out));
    }
    if proj.contains_key("proj.3.weight") {
        let mut out = HashMap::new();
        for (k, v) in proj {
            let name = match k.split_once('.') {
                Some(("proj", rest)) => match rest.split_once('.') {
                    Some(("0", p)) => format!("ff.net.0.proj.{p}"),
                    Some(("2", p)) => format!("ff.net.2.{p}"),
                    Some(("3", p)) => format!("norm.{p}"),
                    _ => bail!("unexpected tensor `{k}`"),
                },
                _ => bail!("unexpected tensor `{k}`"),
            };
            out.insert(name, v);
        }
        return Ok((ProjectionKind::Full, out));
    }
    // diffusers' order of marker keys: base and full first, then the FaceID layouts (`norm.weight` alone).
    if proj.contains_key("perceiver_resampler.proj_in.weight") || proj.contains_key("norm.weight") {
        bail!("this is an IP-Adapter FaceID file, whose face-embedding inputs sd-rs does not compute");
    }
    if !proj.contains_key("latents") {
        bail!("found neither `proj.weight` (base), `proj.3.weight` (full) nor `latents` (plus)");
    }
    let mut out = HashMap::new();
    for (k, v) in proj {
        let Some(rest) = k.strip_prefix("layers.") else {
            out.insert(k, v);
            continue;
        };
        let (i, rest) = rest.split_once('.').with_context(|| format!("unexpected tensor `{k}`"))?;
        let p = format!("layers.{i}");
        match rest.split_once('.') {
            Some(("0", r)) => {
                if let Some(p2) = r.strip_prefix("norm1.") {
                    out.insert(format!("{p}.ln0.{p2}"), v);
                } else if let Some(p2) = r.strip_prefix("norm2.") {
                    out.insert(format!("{p}.ln1.{p2}"), v);
                } else if let Some(p2) = r.strip_prefix("to_q.") {
                    out.insert(format!("{p}.attn.to_q.{p2}"), v);
                } else if let Some(p2) = r.strip_prefix("to_out.") {
                    out.insert(format!("{p}.attn.to_out.0.{p2}"), v);
                } else if let Some(p2) = r.strip_prefix("to_kv.") {
                    let rows = v.size().first().copied().unwrap_or(0);
                    if rows % 2 != 0 {
                        bail!("`{k}` has {rows} rows; the fused key/value weight needs an even count");
                    }
                    let halves = v.f_chunk(2, 0)?;
                    let [kk, vv] = halves.as_slice() else { bail!("`{k}` did not split in two") };
                    out.insert(format!("{p}.attn.to_k.{p2}"), kk.shallow_clone());
                    out.insert(format!("{p}.attn.to_v.{p2}"), vv.shallow_clone());
                } else {
                    bail!("unexpected tensor `{k}`");
                }
            }
            Some(("1", r)) => {
                let name = match r.split_once('.') {
                    Some(("0", p2)) => format!("{p}.ff.0.{p2}"),
                    Some(("1", p2)) => format!("{p}.ff.1.net.0.proj.{p2}"),
                    Some(("3", p2)) => format!("{p}.ff.1.net.2.{p2}"),
                    _ => bail!("unexpected tensor `{k}`"),
                };
                out.insert(name, v);
            }
            _ => bail!("unexpected tensor `{k}`"),
        }
    }
    Ok((ProjectionKind::Plus, out))
}
