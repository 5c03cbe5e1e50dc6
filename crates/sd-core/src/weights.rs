//! Weight loading: memory-mapped safetensors files turned into tensors on demand, through a [`VarBuilder`].
//!
//! Model code asks for each tensor by its diffusers state-dict name (`vb / "down_blocks" / 0 / ...`, then
//! `vb.get(&[320, 4, 3, 3], "weight")`). The builder converts to the compute dtype and device as each tensor is
//! read, so the whole model never exists twice in memory. Problems (missing tensor, wrong shape, unsupported
//! dtype) do not stop construction: they are collected, a zero placeholder is returned, and
//! [`VarBuilder::finish`] reports all of them at once, together with every tensor in the files the model never
//! asked for. That is how a user learns, in one message, that they pointed an SDXL UNet config at SD1.5 weights.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{nn, Device, Kind, Tensor};

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
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                anyhow!("{} is not a valid safetensors file: {}", path.display(), describe_st_error(&e, map.len()))
            })?;
            let (header_len, _) = SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow!("{}: bad safetensors header: {e:?}", path.display()))?;
            let data_start = 8 + header_len;
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
                    bail!(
                        "tensor `{name}` appears in both {} and {}",
                        paths[prev.file].display(),
                        path.display()
                    );
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
                "tensor `{name}` in {} has dtype {:?}, which sd-rs does not load (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)",
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
        let entry = self.entries.get(name).ok_or_else(|| anyhow!("no tensor `{name}` in {}", self.describe()))?;
        let stored = kind_of(entry.dtype);
        let bytes = self.bytes(entry);
        let convertible = matches!(stored, Some(k) if k != kind && is_float_kind(k) && is_float_kind(kind));
        let aligned = bytes.as_ptr() as usize % stored.map_or(1, |k| k.elt_size_in_bytes()) == 0;
        if !convertible || !aligned || bytes.is_empty() {
            let t = self.load(name)?;
            return Ok(if convertible { t.f_to_kind(kind)? } else { t });
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
        // (checked above) at an address aligned for that kind. The view is only read by `to_kind` and is dropped
        // before this function returns, while `self` (and so the map) is borrowed.
        let converted = unsafe {
            let view = Tensor::f_from_blob(bytes.as_ptr(), &entry.shape, &strides, stored, Device::Cpu)?;
            view.f_to_kind(kind)
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

    fn describe(&self) -> String {
        let names: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }
}

fn describe_st_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("the file is only {file_len} bytes, too short for a header"),
        E::HeaderTooLarge => "the header length field is larger than allowed (corrupt or not safetensors)".into(),
        E::InvalidHeaderLength => format!("the header length field points past the end of the {file_len}-byte file (truncated or corrupt)"),
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) => "the JSON header cannot be parsed (corrupt or not safetensors)".into(),
        E::InvalidHeaderStart => "the header does not start with `{` (not a safetensors file)".into(),
        E::MetadataIncompleteBuffer => format!("the header promises more tensor data than the {file_len}-byte file holds (truncated download?)"),
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
        E::InvalidOffset(name) => format!("tensor `{name}` has data offsets that overlap or leave gaps"),
        other => format!("{other:?}"),
    }
}

fn is_float_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double)
}

/// The tch kind for a safetensors dtype, if sd-rs can load it.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// How a tensor is initialised when the builder has no file behind it (training from a config).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    /// PyTorch's default for Linear/Conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)).
    KaimingUniform { fan_in: i64 },
    /// U(-bound, bound)
    Uniform { bound: f64 },
    Normal { std: f64 },
}

/// One problem found while building a model from weights.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    Missing { name: String, expected: Vec<i64> },
    Shape { name: String, expected: Vec<i64>, found: Vec<i64> },
    Unsupported { name: String, detail: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { name, expected } => write!(f, "missing tensor `{name}` (expected shape {expected:?})"),
            Problem::Shape { name, expected, found } => {
                write!(f, "tensor `{name}` has shape {found:?}, expected {expected:?}")
            }
            Problem::Unsupported { name, detail } => write!(f, "tensor `{name}`: {detail}"),
        }
    }
}

/// What a finished load looked like.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub unused: Vec<String>,
}

enum Source {
    Files(SafeTensorsFiles),
    Tensors(HashMap<String, Tensor>),
    /// No weights: tensors are created from their [`Init`] (training from scratch, shape-only tests).
    Init { seed_offset: Mutex<i64> },
}

struct Inner {
    source: Source,
    origin: String,
    kind: Kind,
    device: Device,
    used: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<Problem>>,
    /// When set, every tensor becomes a trainable variable registered under its dotted name.
    varstore: Option<Arc<nn::VarStore>>,
}

/// Hands out tensors by state-dict name; see the module docs.
#[derive(Clone)]
pub struct VarBuilder {
    inner: Arc<Inner>,
    prefix: Vec<String>,
}

impl VarBuilder {
    fn new(source: Source, origin: String, kind: Kind, device: Device) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                origin,
                kind,
                device,
                used: Mutex::new(BTreeSet::new()),
                problems: Mutex::new(Vec::new()),
                varstore: None,
            }),
            prefix: Vec::new(),
        }
    }

    /// Builder over safetensors files (single file, shards, or an `.index.json`).
    pub fn from_safetensors(paths: &[PathBuf], kind: Kind, device: Device) -> Result<Self> {
        let files = if paths.len() == 1 {
            SafeTensorsFiles::open_path(&paths[0])?
        } else {
            SafeTensorsFiles::open(paths)?
        };
        let origin = files.describe();
        Ok(Self::new(Source::Files(files), origin, kind, device))
    }

    /// Builder over tensors already in memory (a converted checkpoint, a test).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &str, kind: Kind, device: Device) -> Self {
        Self::new(Source::Tensors(tensors), origin.to_string(), kind, device)
    }

    /// Builder with no weights behind it: every tensor comes from its [`Init`], drawn from LibTorch's global
    /// generator (call `tch::manual_seed` first for reproducible initialisation).
    pub fn from_init(kind: Kind, device: Device) -> Self {
        Self::new(Source::Init { seed_offset: Mutex::new(0) }, "(fresh initialisation)".into(), kind, device)
    }

    /// Register every tensor handed out as a trainable variable of `vs` (for `sd train`).
    /// Must be called before any tensor is requested.
    pub fn trainable(self, vs: Arc<nn::VarStore>) -> Result<Self> {
        let inner = Arc::try_unwrap(self.inner)
            .map_err(|_| anyhow!("VarBuilder::trainable must be called before the builder is shared"))?;
        Ok(Self { inner: Arc::new(Inner { varstore: Some(vs), ..inner }), prefix: self.prefix })
    }

    pub fn kind(&self) -> Kind {
        self.inner.kind
    }

    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// Where the weights come from, for messages.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// A builder one level deeper: `vb.pp("down_blocks").pp(0)`; `vb / "down_blocks" / 0` is the same.
    pub fn pp(&self, name: impl ToString) -> Self {
        let mut prefix = self.prefix.clone();
        prefix.push(name.to_string());
        Self { inner: self.inner.clone(), prefix }
    }

    /// Full dotted name of `name` under this builder's prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix.join("."), name)
        }
    }

    /// The stored shape of a tensor, if present (lets configs be checked against weights).
    pub fn shape_of(&self, name: &str) -> Option<Vec<i64>> {
        let full = self.path(name);
        match &self.inner.source {
            Source::Files(f) => f.entry(&full).map(|e| e.shape.clone()),
            Source::Tensors(t) => t.get(&full).map(|t| t.size()),
            Source::Init { .. } => None,
        }
    }

    /// Whether a tensor exists (for alternative legacy names, e.g. VAE `query` vs `to_q`).
    /// Always false without weights, so fresh models take the modern names.
    pub fn contains(&self, name: &str) -> bool {
        self.shape_of(name).is_some()
    }

    /// Fetch a float tensor, converted to the builder's dtype and device. Missing or mis-shaped tensors are
    /// recorded and replaced by zeros, so that [`finish`](Self::finish) can report all problems together.
    pub fn get(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        self.get_with_init(shape, name, Init::Zeros)
    }

    /// Like [`get`](Self::get), with the initialisation used when there are no weights.
    pub fn get_with_init(&self, shape: &[i64], name: &str, init: Init) -> Result<Tensor> {
        let t = self.fetch(shape, name, init, Some(self.inner.kind))?;
        self.register(name, t)
    }

    /// Fetch a tensor keeping its stored dtype (integer buffers such as `position_ids`).
    pub fn get_raw(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        self.fetch(shape, name, Init::Zeros, None)
    }

    fn fetch(&self, shape: &[i64], name: &str, init: Init, kind: Option<Kind>) -> Result<Tensor> {
        let full = self.path(name);
        let inner = &self.inner;
        let target_kind = kind.unwrap_or(inner.kind);
        let placeholder = || Tensor::zeros(shape, (target_kind, inner.device));
        let loaded = match &inner.source {
            Source::Files(files) => match files.entry(&full) {
                None => None,
                Some(entry) => {
                    if kind_of(entry.dtype).is_none() {
                        self.problem(Problem::Unsupported {
                            name: full.clone(),
                            detail: format!(
                                "dtype {:?} is not supported (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)",
                                entry.dtype
                            ),
                        });
                        inner.used.lock().expect("poisoned").insert(full);
                        return Ok(placeholder());
                    }
                    Some(match kind {
                        Some(k) => files.load_as(&full, k)?,
                        None => files.load(&full)?,
                    })
                }
            },
            Source::Tensors(map) => map.get(&full).map(|t| t.shallow_clone()),
            Source::Init { seed_offset } => {
                *seed_offset.lock().expect("poisoned") += 1;
                return Ok(init_tensor(shape, init, target_kind, inner.device));
            }
        };
        let Some(t) = loaded else {
            self.problem(Problem::Missing { name: full, expected: shape.to_vec() });
            return Ok(placeholder());
        };
        inner.used.lock().expect("poisoned").insert(full.clone());
        if t.size() != shape {
            self.problem(Problem::Shape { name: full, expected: shape.to_vec(), found: t.size() });
            return Ok(placeholder());
        }
        let t = match kind {
            Some(k) if t.kind() != k && t.is_floating_point() => t.to_kind(k),
            _ => t,
        };
        Ok(t.to_device(inner.device))
    }

    fn register(&self, name: &str, t: Tensor) -> Result<Tensor> {
        let Some(vs) = &self.inner.varstore else { return Ok(t) };
        let mut path = vs.root();
        for p in &self.prefix {
            path = path / p.as_str();
        }
        path.f_var_copy(name, &t).with_context(|| format!("cannot register trainable variable `{}`", self.path(name)))
    }

    fn problem(&self, p: Problem) {
        self.inner.problems.lock().expect("poisoned").push(p);
    }

    /// Problems recorded so far.
    pub fn problems(&self) -> Vec<Problem> {
        self.inner.problems.lock().expect("poisoned").clone()
    }

    /// Tensors in the source that no module asked for, ignoring names matching any of `ignore`
    /// (a name matches when it equals the pattern, or starts with it when the pattern ends in `.`/`*`,
    /// or ends with it when the pattern starts with `*`).
    pub fn unused(&self, ignore: &[&str]) -> Vec<String> {
        let used = self.inner.used.lock().expect("poisoned");
        let names: Vec<String> = match &self.inner.source {
            Source::Files(f) => f.names().map(String::from).collect(),
            Source::Tensors(t) => t.keys().cloned().collect(),
            Source::Init { .. } => Vec::new(),
        };
        let mut out: Vec<String> =
            names.into_iter().filter(|n| !used.contains(n) && !ignore.iter().any(|p| pattern_matches(p, n))).collect();
        out.sort();
        out
    }

    /// End of construction: an error listing every problem and every unused tensor, or a report.
    pub fn finish(&self, what: &str, ignore_unused: &[&str]) -> Result<LoadReport> {
        let problems = self.problems();
        let unused = self.unused(ignore_unused);
        if problems.is_empty() && unused.is_empty() {
            let loaded = self.inner.used.lock().expect("poisoned").len();
            return Ok(LoadReport { loaded, unused });
        }
        let mut msg = format!("cannot load {what} from {}:", self.inner.origin);
        const MAX: usize = 40;
        for p in problems.iter().take(MAX) {
            msg.push_str(&format!("\n  - {p}"));
        }
        if problems.len() > MAX {
            msg.push_str(&format!("\n  … and {} more problems", problems.len() - MAX));
        }
        if !unused.is_empty() {
            msg.push_str(&format!("\n  - {} tensor(s) in the file were not used by the model:", unused.len()));
            for u in unused.iter().take(MAX) {
                msg.push_str(&format!("\n      {u}"));
            }
            if unused.len() > MAX {
                msg.push_str(&format!("\n      … and {} more", unused.len() - MAX));
            }
        }
        msg.push_str("\n(do the weights belong to this model family and this config.json?)");
        bail!(msg)
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        name.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        name.starts_with(prefix)
    } else if pattern.ends_with('.') {
        name.starts_with(pattern)
    } else {
        name == pattern
    }
}

fn init_tensor(shape: &[i64], init: Init, kind: Kind, device: Device) -> Tensor {
    let opts = (Kind::Float, device);
    let t = match init {
        Init::Zeros => Tensor::zeros(shape, opts),
        Init::Ones => Tensor::ones(shape, opts),
        Init::KaimingUniform { fan_in } => {
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            Tensor::empty(shape, opts).uniform_(-bound, bound)
        }
        Init::Uniform { bound } => Tensor::empty(shape, opts).uniform_(-bound, bound),
        Init::Normal { std } => Tensor::empty(shape, opts).normal_(0.0, std),
    };
    t.to_kind(kind)
}

impl<T: ToString> std::ops::Div<T> for &VarBuilder {
    type Output = VarBuilder;
    fn div(self, rhs: T) -> VarBuilder {
        self.pp(rhs)
    }
}

impl<T: ToString> std::ops::Div<T> for VarBuilder {
    type Output = VarBuilder;
    fn div(self, rhs: T) -> VarBuilder {
        self.pp(rhs)
    }
}

/// Write tensors to a safetensors file atomically (used by conversion, training checkpoints and tests).
pub fn save_safetensors(
    tensors: &[(String, Tensor)],
    path: &Path,
    metadata: Option<HashMap<String, String>>,
    overwrite: crate::atomic::Overwrite,
) -> Result<()> {
    use safetensors::tensor::{serialize_to_file, TensorView};
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).ok_or_else(|| anyhow!("cannot save tensor `{name}` of kind {:?}", t.kind()))?;
        let numel = t.numel();
        let nbytes = numel * t.kind().elt_size_in_bytes();
        let mut bytes = vec![0u8; nbytes];
        t.f_copy_data_u8(&mut bytes, numel).with_context(|| format!("cannot read tensor `{name}`"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!("cannot build safetensors view: {e:?}"))?;
    let tmp = crate::atomic::temp_path_for(path);
    if overwrite == crate::atomic::Overwrite::Refuse && path.exists() {
        bail!("{} already exists", path.display());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    serialize_to_file(views, metadata, &tmp).map_err(|e| anyhow!("cannot write {}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}

/// The safetensors dtype for a tch kind.
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Double => Dtype::F64,
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}
