//! Pickled (`torch.save` zip) embedding files, read with sd-models' safe pickle reader (no code runs):
//! A1111 `.pt` (`{"string_to_param": {"*": tensor}, "name": …, "step": …}`), diffusers `learned_embeds.bin`
//! (`{token: tensor}`) and SDXL `{"clip_l": …, "clip_g": …}`.

use super::embeddings::EmbeddingFile;
use anyhow::{anyhow, bail, Context, Result};
use sd_models::convert::pickle::{self, TensorRef, Value};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

pub fn read_pickled_embedding(path: &Path) -> Result<EmbeddingFile> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow!("{} is not a torch.save zip file ({e}); very old or corrupt embedding?", path.display())
    })?;
    let pkl = zip
        .file_names()
        .find(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .map(String::from)
        .ok_or_else(|| anyhow!("{} is a zip file but not a torch.save file (no data.pkl)", path.display()))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut data = Vec::new();
    zip.by_name(&pkl)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|mut f| f.read_to_end(&mut data).map_err(Into::into))
        .with_context(|| format!("cannot read {pkl} in {}", path.display()))?;
    let root = pickle::load(&data).with_context(|| format!("cannot read {}", path.display()))?;
    let Value::Dict(entries) = root else { bail!("{} does not hold a dict", path.display()) };
    let get = |d: &[(Value, Value)], key: &str| d.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone());
    let mut load = |r: &TensorRef| -> Result<Tensor> {
        let name = format!("{prefix}data/{}", r.storage.key);
        let mut f = zip.by_name(&name).map_err(|e| anyhow!("{}: storage `{name}` is missing ({e})", path.display()))?;
        let need = r.storage.numel as usize * r.storage.kind.elt_size_in_bytes();
        let mut bytes = vec![0u8; need];
        f.read_exact(&mut bytes).with_context(|| format!("{}: storage `{name}` is truncated", path.display()))?;
        let last = r.offset + r.size.iter().zip(&r.stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>();
        if last >= r.storage.numel.max(1) {
            bail!("{}: a tensor view reaches past its storage", path.display());
        }
        let storage = Tensor::f_from_data_size(&bytes, &[r.storage.numel], r.storage.kind)?;
        let t = storage.f_as_strided(&r.size, &r.stride, Some(r.offset))?.f_contiguous()?.f_to_kind(Kind::Float)?;
        match t.dim() {
            1 => Ok(t.unsqueeze(0)),
            2 => Ok(t),
            _ => bail!("{}: embedding tensor has shape {:?}; expected [vectors, width]", path.display(), t.size()),
        }
    };
    let tensor_of = |v: &Value| match v {
        Value::Tensor(r) => Some(r.clone()),
        _ => None,
    };
    if let Some(params) = get(&entries, "string_to_param") {
        let Value::Dict(params) = params else {
            bail!(
                "{}: `string_to_param` is not a plain dict (an old ParameterDict file? re-save it as .safetensors)",
                path.display()
            )
        };
        let [(_, v)] = params.as_slice() else {
            bail!("{}: `string_to_param` holds {} terms; an embedding file has one", path.display(), params.len())
        };
        let r = tensor_of(v).ok_or_else(|| anyhow!("{}: `string_to_param` does not hold a tensor", path.display()))?;
        return Ok(EmbeddingFile::Single(load(&r)?));
    }
    if let (Some(l), Some(g)) =
        (get(&entries, "clip_l").as_ref().and_then(tensor_of), get(&entries, "clip_g").as_ref().and_then(tensor_of))
    {
        let (clip_l, clip_g) = (load(&l)?, load(&g)?);
        return Ok(EmbeddingFile::Sdxl { clip_l, clip_g });
    }
    let tensors: Vec<TensorRef> = entries.iter().filter_map(|(_, v)| tensor_of(v)).collect();
    match tensors.as_slice() {
        [one] if entries.len() == 1 => Ok(EmbeddingFile::Single(load(one)?)),
        _ => bail!(
            "{}: not an embedding (expected `string_to_param`, `clip_l` + `clip_g`, or a single {{token: tensor}})",
            path.display()
        ),
    }
}
