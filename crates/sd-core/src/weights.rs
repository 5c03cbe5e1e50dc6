//! Weight loading: memory-mapped safetensors files turned into tensors on demand, through a [`VarBuilder`].
//!
//! Model code asks for each tensor by its diffusers state-dict name (`vb / "down_blocks" / 0 / ...`, then
//! `vb.get(&[320, 4, 3, 3], "weight")`). The builder converts to the compute dtype and device as each tensor is
//! read, so the whole model never exists twice in memory. Problems (missing tensor, wrong shape, unsupported
//! dtype) do not stop construction: they are collected, a zero placeholder is returned, and
//! [`VarBuilder::finish`] reports all of them at once, together with every tensor in the files the model never
//! asked for. That is how a user learns, in one message, that they pointed an SDXL UNet config at SD1.5 weights.

mod capture;
mod files;

pub use capture::{capture, forget as forget_captured, Captured};
pub use files::{is_float_kind, kind_of, SafeTensorsFiles, TensorEntry};

use crate::layout;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::Dtype;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tch::{nn, Device, Kind, Tensor};

/// How a tensor is initialised when the builder has no file behind it (training from a config).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    /// PyTorch's default for Linear/Conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)).
    KaimingUniform {
        fan_in: i64,
    },
    /// U(-bound, bound)
    Uniform {
        bound: f64,
    },
    Normal {
        std: f64,
    },
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
            Problem::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (expected shape {expected:?})")
            }
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
    Init {
        seed_offset: Mutex<i64>,
    },
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
    /// Hand out 4-D (convolution) weights in channels-last layout; see [`VarBuilder::with_channels_last`].
    channels_last: bool,
    /// Let layers pack their weights for oneDNN where [`VarBuilder::packs_weights`] allows it.
    packing: bool,
    /// Let packed 3×3 convolutions use Winograd's algorithm; see [`VarBuilder::with_winograd`].
    winograd: bool,
}

/// Hands out tensors by state-dict name; see the module docs.
#[derive(Clone)]
pub struct VarBuilder {
    /// Shared by every sub-builder (`vb / "down_blocks" / 0`); a model is built on one thread (tensors are not
    /// `Sync`), so a plain reference count suffices.
    inner: Rc<Inner>,
    prefix: Vec<String>,
}

impl VarBuilder {
    fn new(source: Source, origin: String, kind: Kind, device: Device) -> Self {
        Self {
            inner: Rc::new(Inner {
                source,
                origin,
                kind,
                device,
                used: Mutex::new(BTreeSet::new()),
                problems: Mutex::new(Vec::new()),
                varstore: None,
                channels_last: false,
                packing: true,
                winograd: false,
            }),
            prefix: Vec::new(),
        }
    }

    /// Builder over safetensors files (single file, shards, or an `.index.json`).
    pub fn from_safetensors(paths: &[PathBuf], kind: Kind, device: Device) -> Result<Self> {
        let files =
            if paths.len() == 1 { SafeTensorsFiles::open_path(&paths[0])? } else { SafeTensorsFiles::open(paths)? };
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
        let inner = Rc::try_unwrap(self.inner)
            .map_err(|_| anyhow!("VarBuilder::trainable must be called before the builder is shared"))?;
        Ok(Self { inner: Rc::new(Inner { varstore: Some(vs), ..inner }), prefix: self.prefix })
    }

    /// Convolution weights (every 4-D float tensor) in channels-last (NHWC) layout. oneDNN then runs every
    /// convolution of the model in NHWC, its fastest layout on CPUs, and the activations stay NHWC from layer to
    /// layer (PyTorch ops keep their input's layout), so the reshapes into attention tokens become free views
    /// instead of copies.
    pub fn with_channels_last(self, on: bool) -> Result<Self> {
        let inner = Rc::try_unwrap(self.inner)
            .map_err(|_| anyhow!("VarBuilder::with_channels_last must be called before the builder is shared"))?;
        Ok(Self { inner: Rc::new(Inner { channels_last: on, ..inner }), prefix: self.prefix })
    }

    /// Allow (the default) or forbid packed weights ([`Self::packs_weights`]); forbidding them gives the plain
    /// LibTorch kernels, which the packed ones are tested against.
    pub fn with_packing(self, on: bool) -> Result<Self> {
        let inner = Rc::try_unwrap(self.inner)
            .map_err(|_| anyhow!("VarBuilder::with_packing must be called before the builder is shared"))?;
        Ok(Self { inner: Rc::new(Inner { packing: on, ..inner }), prefix: self.prefix })
    }

    /// Let the packed 3×3 convolutions that gain from it ([`crate::winograd::worth_it`]) run Winograd's
    /// F(2×2, 3×3) ([`crate::winograd`]; off by default). The UNet and VAE loaders turn it on: a 512 px SD1.5 UNet
    /// step takes ~0.9× the time and a VAE decode ~0.65× (2-core Zen 5).
    pub fn with_winograd(self, on: bool) -> Result<Self> {
        let inner = Rc::try_unwrap(self.inner)
            .map_err(|_| anyhow!("VarBuilder::with_winograd must be called before the builder is shared"))?;
        Ok(Self { inner: Rc::new(Inner { winograd: on, ..inner }), prefix: self.prefix })
    }

    /// Whether packed 3×3 layers may use Winograd: [`Self::with_winograd`], [`Self::packs_weights`] and a CPU that
    /// runs [`crate::winograd`].
    pub fn uses_winograd(&self) -> bool {
        self.inner.winograd && self.packs_weights() && crate::winograd::available()
    }

    pub fn kind(&self) -> Kind {
        self.inner.kind
    }

    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// Whether layers should pack their weights for oneDNN as they load them ([`crate::onednn`]): inference
    /// (not [`Self::trainable`]) in bf16 on a CPU that computes bf16 natively, for a channels-last model (the
    /// layout the packed kernels are fastest in). A packed weight can only be used through `onednn`'s kernels.
    pub fn packs_weights(&self) -> bool {
        let i = &self.inner;
        i.packing
            && i.channels_last
            && i.varstore.is_none()
            && i.kind == Kind::BFloat16
            && i.device == Device::Cpu
            && crate::onednn::supported()
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

    /// This builder's dotted prefix (`down_blocks.0.attentions.1`), empty at the root.
    pub fn prefix(&self) -> String {
        self.prefix.join(".")
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
        capture::record(&t);
        self.register(name, t)
    }

    /// Fetch a tensor keeping its stored dtype (integer buffers such as `position_ids`).
    pub fn get_raw(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        let t = self.fetch(shape, name, Init::Zeros, None)?;
        capture::record(&t);
        Ok(t)
    }

    fn fetch(&self, shape: &[i64], name: &str, init: Init, kind: Option<Kind>) -> Result<Tensor> {
        let full = self.path(name);
        let inner = &self.inner;
        let target_kind = kind.unwrap_or(inner.kind);
        // Convolution weights (4-D, float) in channels-last order when asked for; see `with_channels_last`.
        let nhwc = inner.channels_last && shape.len() == 4 && kind.is_some();
        // A stand-in for a tensor that could not be loaded: one zero broadcast to the expected shape, so a config
        // that describes a far bigger model than its weights costs no memory before `finish` reports it.
        let placeholder =
            || -> Result<Tensor> { Ok(Tensor::f_zeros([], (target_kind, inner.device))?.f_expand(shape, false)?) };
        let loaded = match &inner.source {
            Source::Files(files) => match files.entry(&full) {
                None => None,
                Some(entry) => {
                    // Dtype and shape come from the header: a mismatch is recorded before anything is read.
                    let stored = kind_of(entry.dtype);
                    let detail = match stored {
                        None => Some(format!(
                            "dtype {:?} is not supported (supported: F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL)",
                            entry.dtype
                        )),
                        Some(k) if kind.is_some() && !files::is_float_kind(k) => Some(format!(
                            "stored as {:?}, but the model needs floating-point weights here (F32, F16, BF16, F64 or float8)",
                            entry.dtype
                        )),
                        _ => None,
                    };
                    if let Some(detail) = detail {
                        self.problem(Problem::Unsupported { name: full.clone(), detail });
                        lock(&inner.used).insert(full);
                        return placeholder();
                    }
                    if entry.shape != shape {
                        self.problem(Problem::Shape {
                            name: full.clone(),
                            expected: shape.to_vec(),
                            found: entry.shape.clone(),
                        });
                        lock(&inner.used).insert(full);
                        return placeholder();
                    }
                    Some(match kind {
                        Some(k) if nhwc => files.load_as_channels_last(&full, k)?,
                        Some(k) => files.load_as(&full, k)?,
                        None => files.load(&full)?,
                    })
                }
            },
            Source::Tensors(map) => map.get(&full).map(|t| t.shallow_clone()),
            Source::Init { seed_offset } => {
                *lock(seed_offset) += 1;
                let t = init_tensor(shape, init, target_kind, inner.device);
                return Ok(if nhwc { layout::to_channels_last(&t) } else { t });
            }
        };
        let Some(t) = loaded else {
            self.problem(Problem::Missing { name: full, expected: shape.to_vec() });
            return placeholder();
        };
        lock(&inner.used).insert(full.clone());
        if t.size() != shape {
            self.problem(Problem::Shape { name: full, expected: shape.to_vec(), found: t.size() });
            return placeholder();
        }
        let t = match kind {
            Some(k) if t.kind() != k && t.is_floating_point() => t.to_kind(k),
            Some(_) if !files::is_float_kind(t.kind()) => {
                self.problem(Problem::Unsupported {
                    name: full,
                    detail: format!("holds {:?} values, but the model needs floating-point weights here", t.kind()),
                });
                return placeholder();
            }
            _ => t,
        };
        let t = if nhwc && !layout::is_channels_last(&t) { layout::to_channels_last(&t) } else { t };
        Ok(t.to_device(inner.device))
    }

    fn register(&self, name: &str, t: Tensor) -> Result<Tensor> {
        let Some(vs) = &self.inner.varstore else {
            return Ok(t);
        };
        let mut path = vs.root();
        for p in &self.prefix {
            path = path / p.as_str();
        }
        path.f_var_copy(name, &t).with_context(|| format!("cannot register trainable variable `{}`", self.path(name)))
    }

    fn problem(&self, p: Problem) {
        lock(&self.inner.problems).push(p);
    }

    /// Problems recorded so far.
    pub fn problems(&self) -> Vec<Problem> {
        lock(&self.inner.problems).clone()
    }

    /// Tensors in the source that no module asked for, ignoring names matching any of `ignore`
    /// (a name matches when it equals the pattern, or starts with it when the pattern ends in `.`/`*`,
    /// or ends with it when the pattern starts with `*`).
    pub fn unused(&self, ignore: &[&str]) -> Vec<String> {
        let used = lock(&self.inner.used);
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
            let loaded = lock(&self.inner.used).len();
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
        Kind::Float8e4m3fn => Dtype::F8_E4M3,
        Kind::Float8e5m2 => Dtype::F8_E5M2,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The bookkeeping behind a [`VarBuilder`] (used names, problems, the init seed offset) is only ever appended to or
/// incremented while locked, so a panic elsewhere that poisoned the lock cannot leave it half-updated: keep using it
/// rather than turning one panic into two.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
