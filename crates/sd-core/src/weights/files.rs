//! Memory-mapped safetensors files (one file or the shards of an index): header validation with readable errors,
//! and copying tensors out without keeping the mapped pages resident.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where one tensor sits inside a mapped file.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// One or more safetensors files (a single file or the shards of an index), memory-mapped and validated.
pub struct SafeTensorsFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: BTreeMap<String, TensorEntry>,
}

impl SafeTensorsFiles {
    /// Map `paths` and validate their headers. Duplicate tensor names across shards are an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            bail!("no weight files given");
        }
        let mut maps = Vec::with_capacity(paths.len());
        let mut entries = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("cannot open weight file {}", path.display()))?;
            // SAFETY: the map is read-only; a file truncated by another process while mapped would fault, the
            // same risk every mmap-based loader (safetensors, candle, diffusers via safetensors) accepts.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))?;
            // The header length is the file's first 8 bytes; checked against the named bound before the JSON
            // behind it is parsed (the format's own reader has a bound too, but its message names neither).
            if let Some(len) = map.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) {
                let max = crate::limits::SAFETENSORS_MAX_HEADER_BYTES;
                if len > max {
                    bail!(
                        "{} is not a valid safetensors file: {}",
                        path.display(),
                        crate::limits::exceeded(
                            format!("its header length field ({len})"),
                            "safetensors header",
                            max,
                            "bytes"
                        )
                    );
                }
            }
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                anyhow!("{} is not a valid safetensors file: {}", path.display(), describe_st_error(&e, map.len()))
            })?;
            let (header_len, _) = SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow!("{}: bad safetensors header: {e:?}", path.display()))?;
            let data_start = 8 + header_len;
            let max = crate::limits::SAFETENSORS_MAX_TENSORS;
            if (entries.len() + st.len()) as u64 > max {
                bail!(
                    "{}: {}",
                    path.display(),
                    crate::limits::exceeded(
                        format!("{} tensors", entries.len() + st.len()),
                        "safetensors tensors",
                        max,
                        "tensors"
                    )
                );
            }
            for (name, view) in st.tensors() {
                // `data()` is a slice of the mapped buffer; recover its offsets to avoid re-parsing later.
                let data = view.data();
                let start = data.as_ptr() as usize - map.as_ptr() as usize;
                debug_assert!(start >= data_start);
                let entry = TensorEntry {
                    file: i,
                    dtype: view.dtype(),
                    shape: view.shape().iter().map(|&d| d as i64).collect(),
                    start,
                    end: start + data.len(),
                };
                if let Some(prev) = entries.insert(name.clone(), entry) {
                    bail!("tensor `{name}` appears in both {} and {}", paths[prev.file].display(), path.display());
                }
            }
            maps.push(map);
        }
        Ok(Self { paths: paths.to_vec(), maps, entries })
    }

    /// Open a diffusers component file or a sharded index (`*.safetensors.index.json`).
    pub fn open_path(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".index.json") {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{} has no `weight_map` object", path.display()))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            for f in &files {
                if !f.exists() {
                    bail!("shard {} listed in {} does not exist", f.display(), path.display());
                }
            }
            Self::open(&files)
        } else {
            Self::open(&[path.to_path_buf()])
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    pub fn path_of(&self, entry: &TensorEntry) -> &Path {
        &self.paths[entry.file]
    }

    /// Raw little-endian bytes of a tensor, straight from the map.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.maps[entry.file][entry.start..entry.end]
    }

    /// Read a tensor in its stored dtype onto the CPU (one copy out of the map).
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| anyhow!("no tensor `{name}` in {}", self.describe()))?;
        let kind = kind_of(entry.dtype).ok_or_else(|| {
            anyhow!(
                "tensor `{name}` in {} has dtype {:?}, which sd-rs does not load (supported: F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL)",
                self.path_of(entry).display(),
                entry.dtype
            )
        })?;
        let t = Tensor::f_from_data_size(self.bytes(entry), &entry.shape, kind)
            .with_context(|| format!("cannot read tensor `{name}` from {}", self.path_of(entry).display()))?;
        self.release_pages(entry);
        Ok(t)
    }

    /// Read a tensor converted to `kind` (floating-point tensors only; others keep their stored kind).
    ///
    /// A conversion reads the mapped bytes in place and writes the converted copy, so no full-precision temporary
    /// is allocated: loading an f32 file as bf16 costs about half the file, not one and a half.
    pub fn load_as(&self, name: &str, kind: Kind) -> Result<Tensor> {
        self.convert(name, kind, |view| owned_as(view, kind))
    }

    /// Like [`load_as`](Self::load_as), for a 4-D tensor laid out channels-last (see [`crate::layout`]).
    ///
    /// The conversion writes straight into a channels-last tensor (one strided copy): converting first and
    /// re-laying out afterwards would read and write every convolution weight twice and hold a second copy of it.
    pub fn load_as_channels_last(&self, name: &str, kind: Kind) -> Result<Tensor> {
        self.convert(name, kind, |view| {
            let [o, i, h, w] = view.size()[..] else {
                return owned_as(view, kind);
            };
            let mut out = Tensor::f_empty([o, h, w, i], (kind, Device::Cpu))?.f_permute([0, 3, 1, 2])?;
            out.f_copy_(view)?;
            Ok(out)
        })
    }

    /// Run `convert` on a read-only tensor view of the mapped bytes of `name` and return its result, which must
    /// not refer to the view. Falls back to [`load`](Self::load) and a plain conversion for data that is not a
    /// floating-point kind or not aligned for its kind (legal in safetensors, rare in practice).
    fn convert(
        &self,
        name: &str,
        kind: Kind,
        convert: impl FnOnce(&Tensor) -> Result<Tensor, tch::TchError>,
    ) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| anyhow!("no tensor `{name}` in {}", self.describe()))?;
        let stored = kind_of(entry.dtype);
        let bytes = self.bytes(entry);
        let convertible = matches!(stored, Some(k) if is_float_kind(k) && is_float_kind(kind));
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(stored.map_or(1, |k| k.elt_size_in_bytes()));
        if !convertible || !aligned || bytes.is_empty() {
            let t = self.load(name)?;
            return Ok(if convertible { convert(&t)? } else { t });
        }
        let stored = stored.unwrap_or(kind);
        let numel: i64 = entry.shape.iter().product();
        if bytes.len() as i64 != numel * stored.elt_size_in_bytes() as i64 {
            bail!("tensor `{name}` in {}: byte length does not match its shape", self.path_of(entry).display());
        }
        let mut strides = vec![1i64; entry.shape.len()];
        for i in (0..entry.shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * entry.shape[i + 1];
        }
        // SAFETY: `bytes` is a live, read-only slice of the map holding exactly `numel` elements of `stored`
        // (checked above) at an address aligned for that kind. The view is only read by `convert`, whose result is
        // a new tensor (a conversion or a copy), and is dropped before this function returns, while `self` (and so
        // the map) is borrowed.
        let converted = unsafe {
            let view = Tensor::f_from_blob(bytes.as_ptr(), &entry.shape, &strides, stored, Device::Cpu)?;
            convert(&view)
        }
        .with_context(|| format!("cannot convert tensor `{name}` from {}", self.path_of(entry).display()))?;
        self.release_pages(entry);
        Ok(converted)
    }

    /// Drop the mapped pages of a tensor that has just been copied out, so they stop counting as this process's
    /// memory. Without this, every page read through the map stays resident until the map is dropped, and loading
    /// a model costs the file size on top of the tensors themselves (measured: 1.96× the file for f32, see
    /// `examples/weights_rss.rs`). The pages stay in the kernel's page cache, so a second read is still cheap.
    fn release_pages(&self, entry: &TensorEntry) {
        #[cfg(unix)]
        {
            let map = &self.maps[entry.file];
            // SAFETY: the map is a read-only, file-backed mapping. MADV_DONTNEED only discards this process's page
            // table entries; a later read of the range (through `bytes`, or a neighbour tensor sharing a page)
            // faults the unchanged file contents back in. No data can be lost or altered.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, entry.start, entry.end - entry.start)
            };
        }
        #[cfg(not(unix))]
        let _ = entry;
    }

    /// Bytes these tensors take once loaded with floating-point weights converted to `kind` (other tensors keep
    /// their own width), read from the headers alone: what a load will cost before any of it is spent.
    pub fn loaded_bytes(&self, kind: Kind) -> u64 {
        self.entries
            .values()
            .map(|e| {
                let numel: u64 = e.shape.iter().map(|&d| d.max(0) as u64).product();
                let stored = kind_of(e.dtype).filter(|k| !is_float_kind(*k)).unwrap_or(kind);
                numel * stored.elt_size_in_bytes() as u64
            })
            .sum()
    }

    pub(crate) fn describe(&self) -> String {
        let names: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }
}

fn describe_st_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("the file is only {file_len} bytes, too short for a header"),
        E::HeaderTooLarge => "the header length field is larger than allowed (corrupt or not safetensors)".into(),
        E::InvalidHeaderLength => {
            format!("the header length field points past the end of the {file_len}-byte file (truncated or corrupt)")
        }
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) => {
            "the JSON header cannot be parsed (corrupt or not safetensors)".into()
        }
        E::InvalidHeaderStart => "the header does not start with `{` (not a safetensors file)".into(),
        E::MetadataIncompleteBuffer => {
            format!("the header promises more tensor data than the {file_len}-byte file holds (truncated download?)")
        }
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
        E::InvalidOffset(name) => format!("tensor `{name}` has data offsets that overlap or leave gaps"),
        other => format!("{other:?}"),
    }
}

/// `t` converted to `kind` in storage of its own, never a view of `t`: `to_kind` hands back `t` itself when the kind
/// already matches, which for a view of the map would outlive the map.
fn owned_as(t: &Tensor, kind: Kind) -> Result<Tensor, tch::TchError> {
    if t.kind() != kind {
        return t.f_to_kind(kind);
    }
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}

/// Floating-point kinds a weight may be stored in and converted from. The two float8 kinds are storage only
/// (ComfyUI's `*_fp8_e4m3fn` files): every value is exact in bf16 and f32, so loading one widens it exactly.
pub fn is_float_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double | Kind::Float8e4m3fn | Kind::Float8e5m2)
}

/// The tch kind for a safetensors dtype, if sd-rs can load it.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}
