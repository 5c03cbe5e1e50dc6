//! LoRAs chosen for a run: A1111's `<lora:name:weight>` prompt tags (`modules/extra_networks.py`: the tag is
//! removed from the text before encoding, the prompt is recorded as typed), files given directly
//! (`--lora FILE:WEIGHT`), their merge into component weights at load time, and A1111's `Lora hashes`.

use crate::prompt::lora::{load_lora, merge_lora, Lora, LoraTarget};
use anyhow::{bail, Context, Result};
use sd_core::weights::{SafeTensorsFiles, VarBuilder};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One `<lora:name:weight>` tag (weight optional, 1.0 as A1111's default multiplier).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub weight: f64,
}

/// File extensions a LoRA name may resolve to, in lookup order.
const LORA_EXTENSIONS: [&str; 1] = ["safetensors"];

/// Remove every `<lora:…>` tag from `prompt` (A1111's `<(\w+):([^>]+)>` with type `lora`), returning the text
/// to encode and the tags. Other `<type:…>` tags are left as text: they name networks this program lacks.
pub fn strip_lora_tags(prompt: &str) -> Result<(String, Vec<LoraTag>)> {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let body = after.find('>').map(|end| &after[..end]);
        match body.and_then(|b| b.split_once(':')) {
            Some((kind, args)) if kind == "lora" && !args.is_empty() => {
                let mut parts = args.split(':');
                let name = parts.next().unwrap_or_default().trim().to_string();
                let weight = match parts.next() {
                    None => 1.0,
                    Some(w) => w
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|w| w.is_finite())
                        .with_context(|| format!("prompt tag <lora:{args}>: weight `{w}` is not a number"))?,
                };
                if parts.next().is_some() {
                    bail!("prompt tag <lora:{args}>: separate text-encoder/UNet weights are not supported; use <lora:name:weight>");
                }
                if name.is_empty() {
                    bail!("prompt tag <lora:{args}> names no LoRA");
                }
                text.push_str(&rest[..start]);
                tags.push(LoraTag { name, weight });
                rest = &after[body.map(str::len).unwrap_or(0) + 1..];
            }
            _ => {
                text.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    Ok((text, tags))
}

/// The LoRA files in `dir` (sorted names with extension), for error messages.
fn lora_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| LORA_EXTENSIONS.iter().any(|ext| n.to_ascii_lowercase().ends_with(&format!(".{ext}"))))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Find the file of a `<lora:name>` tag in `dir` (`name.safetensors`).
pub fn resolve_lora(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let Some(dir) = dir else {
        bail!("the prompt uses <lora:{name}> but no LoRA folder was given (--lora-dir DIR)");
    };
    if !dir.is_dir() {
        bail!("--lora-dir {} is not a folder", dir.display());
    }
    // A tag names a file *in* the folder: no separators, no `..`, nothing absolute (prompts can come from a network).
    if name.is_empty() || name.contains(['/', '\\', '\0']) || name == ".." || name.starts_with('.') {
        bail!("<lora:{name}>: a LoRA name is a file name inside the LoRA folder, without `/`, `\\` or a leading `.`");
    }
    for ext in LORA_EXTENSIONS {
        let p = dir.join(format!("{name}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let found = lora_files(dir);
    let list = if found.is_empty() { "none".to_string() } else { found.join(", ") };
    bail!("unknown LoRA `{name}` in <lora:{name}>: LoRA files found in {}: {list}", dir.display())
}

/// Parse `FILE:WEIGHT` (weight optional = 1.0; the last `:` splits, so Windows-style paths still work).
pub fn parse_lora_arg(arg: &str) -> Result<(PathBuf, f64)> {
    if let Some((file, w)) = arg.rsplit_once(':') {
        if let Ok(weight) = w.trim().parse::<f64>() {
            if !weight.is_finite() {
                bail!("--lora {arg}: weight must be a finite number");
            }
            return Ok((PathBuf::from(file), weight));
        }
    }
    Ok((PathBuf::from(arg), 1.0))
}

/// A LoRA merged into a loaded model.
#[derive(Clone, Debug)]
pub struct MergedLora {
    /// File name without extension: the name `<lora:…>` tags use.
    pub name: String,
    pub path: PathBuf,
    pub weight: f64,
    /// Keys that matched nothing (unknown layout, or modules this model lacks).
    pub ignored: Vec<String>,
    /// A1111's short hash ([`lora_short_hash`]), taken once when merged so that each image's metadata does not
    /// read the file again; `None` if it could not be read (then the metadata leaves it out).
    pub short_hash: Option<String>,
}

/// LoRA files read once, merged component by component.
pub struct LoraMerger {
    loras: Vec<(Lora, f64)>,
    matched: Vec<usize>,
    ignored: Vec<Vec<String>>,
}

impl LoraMerger {
    pub fn open(list: &[(PathBuf, f64)]) -> Result<Self> {
        let loras = list.iter().map(|(p, w)| Ok((load_lora(p)?, *w))).collect::<Result<Vec<_>>>()?;
        let ignored = loras.iter().map(|(l, _)| l.unknown_keys.clone()).collect();
        Ok(Self { matched: vec![0; loras.len()], ignored, loras })
    }

    /// Read a component's weights (f32), merge every LoRA's layers for `target`, and hand back a builder over
    /// the result in the compute dtype.
    pub fn component(&mut self, weights: &Path, target: LoraTarget, kind: Kind, device: Device) -> Result<VarBuilder> {
        let files = SafeTensorsFiles::open_path(weights)?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for name in files.names() {
            let t = files.load(name)?;
            let t = if t.is_floating_point() { t.to_kind(Kind::Float) } else { t };
            map.insert(name.to_string(), t);
        }
        for (i, (lora, weight)) in self.loras.iter().enumerate() {
            let report = merge_lora(&mut map, target, lora, *weight)?;
            self.matched[i] += report.merged.len();
            self.ignored[i].extend(report.unmatched);
        }
        Ok(VarBuilder::from_tensors(map, &format!("{} (+ LoRA)", weights.display()), kind, device))
    }

    /// Layers for components the model does not have count as ignored; a file none of whose layers matched is an
    /// error (a LoRA for another architecture).
    pub fn finish(self, present: &[LoraTarget]) -> Result<Vec<MergedLora>> {
        let mut out = Vec::new();
        for ((lora, weight), (matched, mut ignored)) in
            self.loras.into_iter().zip(self.matched.into_iter().zip(self.ignored))
        {
            for layer in lora.layers.iter().filter(|l| !present.contains(&l.target)) {
                ignored.push(format!("{:?}:{}", layer.target, layer.module));
            }
            if matched == 0 {
                let first = lora.layers.first().map(|l| l.module.as_str()).unwrap_or("?");
                bail!(
                    "LoRA {} matches none of this model's weights (first layer `{first}` has no matching tensor of that shape): \
                     is it made for another model family?",
                    lora.path.display()
                );
            }
            let name = lora.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let short_hash = lora_short_hash(&lora.path).ok();
            out.push(MergedLora { name, path: lora.path, weight, ignored, short_hash });
        }
        Ok(out)
    }
}

/// A1111's LoRA short hash: the first 12 hex digits of the SHA-256 of the safetensors file without its header
/// (`modules/hashes.py` `addnet_hash_safetensors`, used for `.safetensors` LoRAs).
pub fn lora_short_hash(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_context(|| format!("{} is too short for safetensors", path.display()))?;
    let header = u64::from_le_bytes(len);
    std::io::copy(&mut (&mut f).take(header), &mut std::io::sink())?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex12(&h.finalize()))
}

/// First 12 hex digits of the SHA-256 of the whole file (A1111's textual-inversion `shorthash`).
pub fn file_short_hash(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex12(&h.finalize()))
}

fn hex12(d: &[u8]) -> String {
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_removed_and_parsed() {
        let (text, tags) = strip_lora_tags("a cat <lora:x:0.8>, <lora:y> in <b> a<hat").unwrap();
        assert_eq!(text, "a cat ,  in <b> a<hat");
        assert_eq!(tags, vec![LoraTag { name: "x".into(), weight: 0.8 }, LoraTag { name: "y".into(), weight: 1.0 }]);
        assert!(strip_lora_tags("<lora:x:abc>").is_err());
        assert_eq!(parse_lora_arg("dir/a.safetensors:0.5").unwrap(), (PathBuf::from("dir/a.safetensors"), 0.5));
        assert_eq!(parse_lora_arg("a.safetensors").unwrap(), (PathBuf::from("a.safetensors"), 1.0));
    }
}
