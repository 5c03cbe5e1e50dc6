//! The handful of layers every network here is made of, each loading its tensors through a [`VarBuilder`]
//! under the same names PyTorch's `nn.Linear`, `nn.Conv2d`, `nn.GroupNorm`, `nn.LayerNorm` and `nn.Embedding`
//! use (`weight`, `bias`), so diffusers/transformers state dicts load without renaming. Every layer reads its
//! tensors through [`crate::stream::weight`], which is free unless `--offload sequential` streams them.
//!
//! For bf16 inference on the CPU, [`Linear`] and [`Conv2d`] pack their weights once for oneDNN as they load
//! ([`VarBuilder::packs_weights`], [`sd_core::onednn`]); [`Linear::forward_act`] then folds an activation into
//! the kernel. Elsewhere it runs as a separate LibTorch op, with identical results up to one bf16 rounding of the
//! intermediate.

use crate::stream;
use anyhow::Result;
use sd_core::onednn::{self, Unary};
use sd_core::weights::{Init, VarBuilder};
use sd_core::winograd;
use tch::Tensor;

/// `nn.Linear`: y = x·Wᵀ + b.
#[derive(Debug)]
pub struct Linear {
    /// (out, in); packed for oneDNN when `packed` (see [`VarBuilder::packs_weights`]).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    packed: bool,
}

impl Linear {
    pub fn new(vb: &VarBuilder, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let layer = Self::load(vb, in_dim, out_dim, bias)?;
        Ok(if vb.packs_weights() { layer.packed() } else { layer })
    }

    /// The layer's tensors as stored, never packed (for layers that rearrange them first).
    fn load(vb: &VarBuilder, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let init = Init::KaimingUniform { fan_in: in_dim };
        let weight = vb.get_with_init(&[out_dim, in_dim], "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_init(&[out_dim], "bias", Init::Uniform { bound: 1.0 / (in_dim as f64).sqrt() })?)
        } else {
            None
        };
        Ok(Self { weight, bias, packed: false })
    }

    /// Whether the weight is packed for oneDNN.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// With packed weights only: the layer (with bias) split after output row `at` into two layers, each packed,
    /// so that each half can get its own fused epilogue (GEGLU's value and gate). `None` when the builder does not
    /// pack, and nothing is loaded then.
    pub fn split_rows(vb: &VarBuilder, in_dim: i64, out_dim: i64, at: i64) -> Result<Option<(Self, Self)>> {
        if !vb.packs_weights() {
            return Ok(None);
        }
        let whole = Self::load(vb, in_dim, out_dim, true)?;
        let half = |start: i64, len: i64| -> Result<Self> {
            let weight = whole.weight.f_narrow(0, start, len)?.f_contiguous()?;
            let bias = whole.bias.as_ref().map(|b| b.f_narrow(0, start, len)).transpose()?;
            Ok(Self { weight, bias, packed: false }.packed())
        };
        let halves = (half(0, at)?, half(at, out_dim - at)?);
        sd_core::weights::forget_captured(&whole.weight);
        Ok(Some(halves))
    }

    /// This layer with its weight packed for oneDNN, or unchanged if packing fails (the plain kernels then run).
    fn packed(self) -> Self {
        match onednn::pack_linear_weight(&self.weight, None) {
            Ok(weight) => {
                sd_core::weights::forget_captured(&self.weight);
                Self { weight, bias: self.bias, packed: true }
            }
            Err(_) => self,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.packed {
            if let Ok(y) = onednn::linear(x, &self.weight, self.bias.as_ref(), Unary::None) {
                return y;
            }
        }
        self.plain(x)
    }

    /// `act(forward(x))`, the activation fused into the kernel when the weight is packed.
    pub fn forward_act(&self, x: &Tensor, act: Unary) -> Tensor {
        if self.packed {
            if let Ok(y) = onednn::linear(x, &self.weight, self.bias.as_ref(), act) {
                return y;
            }
        }
        activate(self.plain(x), act)
    }

    /// The unpacked kernel: LibTorch's `linear`, reading a packed weight back into a plain one if need be (a
    /// packed kernel refused its input, e.g. a dtype it was not packed for).
    fn plain(&self, x: &Tensor) -> Tensor {
        let (w, b) = (stream::weight(&self.weight), stream::weight_opt(self.bias.as_ref()));
        if self.packed {
            return x.linear(&w.to_dense(None, false), b.as_deref());
        }
        x.linear(&w, b.as_deref())
    }
}

fn activate(y: Tensor, act: Unary) -> Tensor {
    match act {
        Unary::None => y,
        Unary::Silu => y.silu(),
        Unary::Gelu => y.gelu("none"),
    }
}

/// Whether convolutions should run channels-last by default: bf16 on the CPU, where oneDNN's NHWC kernels were
/// measured faster (SD1.5 at 512 px: UNet step 3.96 s vs 4.17 s, VAE decode 3.84 s vs 5.02 s); elsewhere NCHW, so
/// f32 stays bit-comparable with diffusers.
pub fn channels_last_by_default(device: tch::Device, kind: tch::Kind) -> bool {
    device == tch::Device::Cpu && kind == tch::Kind::BFloat16
}

/// `nn.Conv2d` with square kernels, symmetric padding and groups = 1.
#[derive(Debug)]
pub struct Conv2d {
    /// (out, in, k, k), channels-last when the builder says so; packed for oneDNN when `packed`.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
    packed: bool,
    /// The weight transformed for Winograd's F(2×2, 3×3) where that is faster ([`winograd::worth_it`]); `weight`
    /// is then an empty placeholder.
    winograd: Option<Box<winograd::Weight>>,
}

impl Conv2d {
    pub fn new(
        vb: &VarBuilder,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        bias: bool,
    ) -> Result<Self> {
        let fan_in = in_ch * kernel * kernel;
        // Channels-last when the builder says so (it lays the weight out while converting it).
        let weight = vb.get_with_init(&[out_ch, in_ch, kernel, kernel], "weight", Init::KaimingUniform { fan_in })?;
        let bias = if bias {
            Some(vb.get_with_init(&[out_ch], "bias", Init::Uniform { bound: 1.0 / (fan_in as f64).sqrt() })?)
        } else {
            None
        };
        let conv = Self { weight, bias, stride, padding, packed: false, winograd: None };
        Ok(if vb.packs_weights() { conv.packed(vb.uses_winograd()) } else { conv })
    }

    /// Whether the weight is packed for oneDNN.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// This layer with its weight packed for oneDNN, or unchanged if packing fails (the plain kernels then run).
    /// With `winograd`, 3×3 stride-1 layers that [`winograd::worth_it`] picks are transformed for it instead.
    fn packed(self, winograd: bool) -> Self {
        let size = self.weight.size();
        if winograd
            && size[2..] == [3, 3]
            && (self.stride, self.padding) == (1, 1)
            && winograd::worth_it(size[1], size[0])
        {
            if let Ok(w) = winograd::Weight::new(&self.weight) {
                sd_core::weights::forget_captured(&self.weight);
                let placeholder = Tensor::empty([0], (self.weight.kind(), self.weight.device()));
                return Self { weight: placeholder, packed: true, winograd: Some(Box::new(w)), ..self };
            }
        }
        // oneDNN picks the weight layout from an example input; without one it picks a layout that is 4× slower for
        // 1×1 convolutions. Any input size then runs on the packed layout (measured 8×8 to 64×64 latents).
        let example = [2, self.weight.size()[1], 64, 64];
        match onednn::pack_conv_weight(&self.weight, self.padding, self.stride, Some(example)) {
            Ok(weight) => {
                sd_core::weights::forget_captured(&self.weight);
                Self { weight, packed: true, ..self }
            }
            Err(_) => self,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(w) = &self.winograd {
            return match winograd::conv(x, w, self.bias.as_ref()) {
                Ok(y) => y,
                // Only an input the kernel cannot take (not bf16) gets here: the plain kernel on the recovered weight.
                Err(_) => {
                    let weight = w.plain().to_kind(x.kind());
                    x.conv2d(&weight, self.bias.as_ref().map(|b| b.to_kind(x.kind())).as_ref(), [1], [1], [1], 1)
                }
            };
        }
        if self.packed {
            if let Ok(y) = onednn::conv(x, &self.weight, self.bias.as_ref(), self.padding, self.stride, Unary::None) {
                return y;
            }
        }
        self.plain(x)
    }

    /// The unpacked kernel (see [`Linear::plain`]).
    fn plain(&self, x: &Tensor) -> Tensor {
        let (w, b) = (stream::weight(&self.weight), stream::weight_opt(self.bias.as_ref()));
        let dense;
        let w = if self.packed {
            dense = sd_core::layout::to_channels_last(&w.to_dense(None, false));
            &dense
        } else {
            &*w
        };
        x.conv2d(w, b.as_deref(), [self.stride], [self.padding], [1], 1)
    }
}

/// `nn.GroupNorm` (statistics computed by LibTorch in the input dtype, as PyTorch does).
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: i64,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(vb: &VarBuilder, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_init(&[channels], "weight", Init::Ones)?,
            bias: vb.get_with_init(&[channels], "bias", Init::Zeros)?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (w, b) = (stream::weight(&self.weight), stream::weight(&self.bias));
        x.group_norm(self.groups, Some(&*w), Some(&*b), self.eps, true)
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub dim: i64,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: &VarBuilder, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Some(vb.get_with_init(&[dim], "weight", Init::Ones)?),
            bias: Some(vb.get_with_init(&[dim], "bias", Init::Zeros)?),
            dim,
            eps,
        })
    }

    /// `elementwise_affine=False` (no tensors to load).
    pub fn no_affine(dim: i64, eps: f64) -> Self {
        Self { weight: None, bias: None, dim, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (w, b) = (stream::weight_opt(self.weight.as_ref()), stream::weight_opt(self.bias.as_ref()));
        x.layer_norm([self.dim], w.as_deref(), b.as_deref(), self.eps, true)
    }
}

/// `nn.Embedding`.
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(vb: &VarBuilder, num: i64, dim: i64) -> Result<Self> {
        Ok(Self { weight: vb.get_with_init(&[num, dim], "weight", Init::Normal { std: 1.0 })? })
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&stream::weight(&self.weight), ids, -1, false, false)
    }
}

/// Activation functions named as in diffusers/transformers configs (`act_fn`, `hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Gelu,
    GeluTanh,
    QuickGelu,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Self::Silu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_tanh" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            other => anyhow::bail!(
                "unsupported activation `{other}` (supported: silu, gelu, gelu_pytorch_tanh, quick_gelu, relu)"
            ),
        })
    }

    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::Silu => x.silu(),
            Self::Gelu => x.gelu("none"),
            Self::GeluTanh => x.gelu("tanh"),
            Self::QuickGelu => x * (x * 1.702).sigmoid(),
            Self::Relu => x.relu(),
        }
    }

    /// [`Self::forward`] on a tensor the caller no longer needs: applied in place when nothing records gradients
    /// through it, so a norm → activation pair holds one activation-sized buffer instead of two (at a 512 px VAE
    /// decode's top level that is 64–128 MiB less at the peak).
    pub fn forward_owned(self, mut x: Tensor) -> Tensor {
        if x.requires_grad() {
            return self.forward(&x);
        }
        match self {
            Self::Silu => drop(x.silu_()),
            Self::Gelu => drop(x.gelu_("none")),
            Self::GeluTanh => drop(x.gelu_("tanh")),
            Self::Relu => drop(x.relu_()),
            Self::QuickGelu => return self.forward(&x),
        }
        x
    }
}
