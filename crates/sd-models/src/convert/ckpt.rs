//! PyTorch zip checkpoints (`torch.save` since 1.6, the `.ckpt`/`.pt`/`.bin` files of model sites):
//! `<archive>/data.pkl` describes the object, `<archive>/data/<key>` holds each storage's raw bytes.
//! The pickle is read by [`super::pickle`], which never runs code; tensors are views (offset, size, stride) into
//! storages, so shared storages and non-contiguous views are rebuilt exactly as torch would.

use super::pickle::{self, TensorRef, Value};
use super::source::TensorSource;
use super::torch_zip::TorchZip;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// An opened torch zip checkpoint: the tensor table is parsed, storages are read on demand.
pub struct CkptFile {
    path: PathBuf,
    zip: Mutex<TorchZip>,
    tensors: BTreeMap<String, TensorRef>,
    global_step: Option<i64>,
    /// Non-tensor entries found inside the state dict (reported, never used).
    pub non_tensors: Vec<String>,
    /// The most recently read storage, so views sharing one are read once.
    cache: Mutex<Option<(String, Tensor)>>,
}

impl CkptFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut zip = TorchZip::open(path, "zip checkpoint")?;
        let prefix = zip.prefix.clone();
        if let Some(s) = zip.read_small_text(&format!("{prefix}byteorder")) {
            if s.trim() != "little" {
                bail!(
                    "{} stores tensors in `{}` byte order; only little-endian checkpoints are supported",
                    path.display(),
                    s.trim()
                );
            }
        }
        let data = zip.read_pickle()?;
        let root = pickle::load(&data).with_context(|| format!("cannot read {}", path.display()))?;
        let (dict, global_step) = unwrap_state_dict(root).with_context(|| format!("in {}", path.display()))?;
        let mut tensors = BTreeMap::new();
        let mut non_tensors = Vec::new();
        let mut groups = Vec::new();
        for (k, v) in dict {
            let Value::Str(name) = k else {
                bail!("{}: a state dict key is a {}, not a string", path.display(), k.type_name())
            };
            match v {
                Value::Tensor(t) => {
                    tensors.insert(name, t);
                }
                Value::Dict(inner) => groups.push((name, inner)),
                _ => non_tensors.push(name),
            }
        }
        // A file of named state dicts and no loose tensors (IP-Adapter's `.bin`: `{"image_proj": {...},
        // "ip_adapter": {...}}`) reads as one state dict with `group.` prefixes, the names its safetensors
        // form uses. One level only: deeper nesting is not a state dict.
        if tensors.is_empty() {
            for (group, inner) in groups {
                for (k, v) in inner {
                    match (k, v) {
                        (Value::Str(name), Value::Tensor(t)) => {
                            tensors.insert(format!("{group}.{name}"), t);
                        }
                        (Value::Str(name), _) => non_tensors.push(format!("{group}.{name}")),
                        (k, _) => bail!("{}: a key in `{group}` is a {}, not a string", path.display(), k.type_name()),
                    }
                }
            }
        } else {
            non_tensors.extend(groups.into_iter().map(|(name, _)| name));
        }
        Ok(Self {
            path: path.to_path_buf(),
            zip: Mutex::new(zip),
            tensors,
            global_step,
            non_tensors,
            cache: Mutex::new(None),
        })
    }

    fn storage(&self, r: &TensorRef) -> Result<Tensor> {
        let mut cache = self.cache.lock().map_err(|_| anyhow!("storage cache poisoned"))?;
        if let Some((key, t)) = cache.as_ref() {
            if *key == r.storage.key {
                return Ok(t.shallow_clone());
            }
        }
        let mut zip = self.zip.lock().map_err(|_| anyhow!("zip reader poisoned"))?;
        let need = storage_bytes(r).with_context(|| format!("in {}", self.path.display()))?;
        let bytes = zip.read_storage(&r.storage.key, need)?;
        let t = Tensor::f_from_data_size(&bytes, &[r.storage.numel], r.storage.kind)?;
        *cache = Some((r.storage.key.clone(), t.shallow_clone()));
        Ok(t)
    }
}

/// Follow `state_dict` keys down (as diffusers does) and pick up `global_step` on the way.
type Entries = Vec<(Value, Value)>;

fn unwrap_state_dict(mut v: Value) -> Result<(Entries, Option<i64>)> {
    let mut step = None;
    loop {
        let Value::Dict(d) = v else { bail!("the checkpoint holds a {}, not a dict of tensors", v.type_name()) };
        if step.is_none() {
            step = d.iter().find(|(k, _)| k.as_str() == Some("global_step")).and_then(|(_, v)| v.as_int());
        }
        match d.iter().position(|(k, _)| k.as_str() == Some("state_dict")) {
            Some(i) => v = d.into_iter().nth(i).map(|(_, v)| v).unwrap_or(Value::None),
            None => return Ok((d, step)),
        }
    }
}

impl TensorSource for CkptFile {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(|t| t.size.clone())
    }
    fn kind(&self, name: &str) -> Option<Kind> {
        self.tensors.get(name).map(|t| t.storage.kind)
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let r = self.tensors.get(name).ok_or_else(|| anyhow!("no tensor `{name}` in {}", self.path.display()))?;
        if r.end().is_none_or(|end| end > r.storage.numel) {
            bail!(
                "{}: tensor `{name}` (size {:?}, stride {:?}, offset {}) reaches past its storage of {} elements",
                self.path.display(),
                r.size,
                r.stride,
                r.offset,
                r.storage.numel
            );
        }
        let storage = self.storage(r)?;
        let view = storage
            .f_as_strided(&r.size, &r.stride, Some(r.offset))
            .with_context(|| format!("{}: cannot rebuild tensor `{name}`", self.path.display()))?;
        Ok(view.f_contiguous()?)
    }
    fn global_step(&self) -> Option<i64> {
        self.global_step
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Bytes a storage's elements take, refusing counts that do not fit in memory arithmetic.
pub(crate) fn storage_bytes(r: &TensorRef) -> Result<u64> {
    u64::try_from(r.storage.numel)
        .ok()
        .and_then(|n| n.checked_mul(r.storage.kind.elt_size_in_bytes() as u64))
        .ok_or_else(|| anyhow!("storage `{}` declares {} elements", r.storage.key, r.storage.numel))
}
