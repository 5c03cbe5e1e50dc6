//! Pickled (`torch.save` zip) embedding files, read with sd-models' safe pickle reader (no code runs):
//! A1111 `.pt` (`{"string_to_param": {"*": tensor}, "name": …, "step": …}`), diffusers `learned_embeds.bin`
//! (`{token: tensor}`) and SDXL `{"clip_l": …, "clip_g": …}`.

use super::embeddings::EmbeddingFile;
use anyhow::{anyhow, bail, Context, Result};
use sd_models::convert::pickle::{self, TensorRef, Value};
use sd_models::convert::torch_zip::TorchZip;
use std::path::Path;
use tch::{Kind, Tensor};

pub fn read_pickled_embedding(path: &Path) -> Result<EmbeddingFile> {
    let mut zip = TorchZip::open(path, "torch.save file")?;
    let data = zip.read_pickle()?;
    let root = pickle::load(&data).with_context(|| format!("cannot read {}", path.display()))?;
    let Value::Dict(entries) = root else { bail!("{} does not hold a dict", path.display()) };
    let get = |d: &[(Value, Value)], key: &str| d.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone());
    let mut load = |r: &TensorRef| -> Result<Tensor> {
        let need = (r.storage.numel.max(0) as u64).saturating_mul(r.storage.kind.elt_size_in_bytes() as u64);
        if need > sd_core::limits::EMBEDDING_MAX_BYTES {
            bail!(
                "{}: {}",
                path.display(),
                sd_core::limits::exceeded(
                    format!("an embedding storage of {need} bytes"),
                    "embedding size",
                    sd_core::limits::EMBEDDING_MAX_BYTES,
                    "bytes"
                )
            );
        }
        let bytes = zip.read_storage(&r.storage.key, need)?;
        if r.end().is_none_or(|end| end > r.storage.numel) {
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
