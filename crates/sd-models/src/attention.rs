//! Multi-head scaled-dot-product attention shared by every network, and the diffusers `Attention` module
//! (`to_q`, `to_k`, `to_v`, `to_out.0`) built on it.
//!
//! One entry point, [`attention`], takes queries/keys/values already split into heads and an [`AttentionMode`]
//! that decides how the softmax(q·kᵀ/√d)·v product is evaluated. All modes compute the same function; they differ
//! only in peak memory and speed. Every op used is differentiable (training backpropagates through it).

mod fused_cpu;

/// Whether this CPU runs [`AttentionMode::Fused`] with its own kernel (x86-64 with AVX-512 BF16); elsewhere that mode
/// is LibTorch's SDPA.
pub use fused_cpu::available as fused_kernel_available;

use crate::nn::Linear;
use anyhow::{bail, Context, Result};
use sd_core::weights::VarBuilder;
use tch::{Kind, Tensor};

/// How [`attention`] evaluates the attention product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionMode {
    /// LibTorch's fused `scaled_dot_product_attention` (flash / memory-efficient kernels where available).
    #[default]
    Sdpa,
    /// Explicit softmax(q·kᵀ)·v over chunks of `size` rows of the batch×heads dimension, so only
    /// `size × queries × keys` scores exist at once (diffusers' "attention slicing").
    SliceHeads(i64),
    /// Explicit softmax(q·kᵀ)·v over chunks of `size` queries: the score matrix is `size × keys` per head.
    SliceQueries(i64),
    /// Batched matrix products (`baddbmm` for the scaled scores, `bmm` with the values) over chunks of `size`
    /// queries, every head at once; `0` sizes the chunk so one chunk's scores take at most [`MATMUL_CHUNK_BYTES`].
    Matmul(i64),
    /// This crate's fused bf16 CPU kernel (AVX-512 BF16, online softmax; `attention/fused_cpu.rs`). Falls back to
    /// [`AttentionMode::Sdpa`] where it cannot run: other dtypes or devices, CPUs without AVX-512 BF16, or inputs
    /// that require grad (the kernel has no backward).
    Fused,
    /// Pick per call from the tensor shapes and dtype with [`AttentionMode::resolve`].
    Auto,
}

/// Score memory one [`AttentionMode::Matmul`] chunk may use when its size is `0` (automatic).
pub const MATMUL_CHUNK_BYTES: i64 = 64 << 20;

impl AttentionMode {
    /// The concrete mode used for q `[B, H, Lq, D]` against `lk` keys in `kind` on `device` (identity for every
    /// mode but `Auto`).
    ///
    /// Measured on an idle 2-core Zen 5 (avx512_bf16, LibTorch 2.13, batch 2 × 8 heads, SD1.5 shapes; ms per call,
    /// `scripts/bench/attention.py`): in bf16 the fused SDPA kernel wins only the 4096-token self-attention
    /// (297 ms vs 390–450 ms for batched matmuls); everywhere else batched matmuls win: 1024×1024 tokens, D 80:
    /// 13.2 vs 29.7; 1024×1024, D 40: 9.1 vs 18.0; 256×256, D 160: 1.3 vs 4.2; cross-attention (77 keys): 7.1 vs
    /// 9.2 at 4096 queries, 2.0 vs 3.6 at 1024. In f32 SDPA wins or ties at every shape. Padding D 40 to 48/64/80
    /// makes the fused kernel slower (328/400/465 ms). The matmul chunks chosen keep the score matrix at
    /// 2·8·256·1024 values (8 MB in bf16) for self-attention and 2·8·1024·77 for cross-attention. Other devices
    /// keep SDPA, whose GPU kernels are fused.
    ///
    /// Where the CPU has AVX-512 BF16, self-attention over 1024 tokens or more (lq ≥ 1024, lk > 256) uses this
    /// crate's [`AttentionMode::Fused`] kernel instead: 88 ms vs SDPA's 290 ms per call on the same machine (q/k/v
    /// `[2, 8, 4096, 40]` as `Attention::forward` passes them, medians of 9 alternating calls,
    /// `cargo run --release -p sd-benches --example attention_call`), which takes a 512-px SD1.5 bf16 UNet step
    /// from 3.7 s to 2.5 s. Fused also beat the matmul chunks at 1024×1024 tokens in that harness (D 80: 16 vs
    /// 30 ms; D 40: 12 vs 23; whole UNet step 2.33–2.40 s vs 2.41–2.43 s with matmuls at that level) but lost at
    /// 256 tokens (3.2 vs 1.8) and against 77 keys (8.8 vs 7.9, keys padded to 128); those shapes keep the table
    /// above.
    ///
    /// CPUs with AMX (`amx_bf16`) turn this around: LibTorch's SDPA kernel runs its blocks on the tile unit and
    /// wins at every shape. Full-size SD1.5 bf16 UNet step at 512 px on a 2-core Xeon with AMX (medians of 4
    /// steps, `examples/unet_step --attention …`, idle machine): SDPA everywhere 1.92–1.99 s, the per-shape choice
    /// above 3.11 s, matmul everywhere 3.25 s, fused everywhere 3.23 s.
    pub fn resolve(self, q: &[i64], lk: i64, kind: Kind, device: tch::Device) -> AttentionMode {
        match self {
            AttentionMode::Auto if device == tch::Device::Cpu && kind == Kind::BFloat16 && cpu_has_amx() => {
                AttentionMode::Sdpa
            }
            AttentionMode::Auto if device == tch::Device::Cpu && kind == Kind::BFloat16 => {
                let lq = q.get(2).copied().unwrap_or(0);
                if lk <= 256 {
                    AttentionMode::Matmul(1024)
                } else if lq >= 1024 && fused_cpu::available() {
                    AttentionMode::Fused
                } else if lq <= 1024 {
                    AttentionMode::Matmul(256)
                } else {
                    AttentionMode::Sdpa
                }
            }
            AttentionMode::Auto => AttentionMode::Sdpa,
            other => other,
        }
    }
}

/// Whether the CPU has AMX tiles for bf16 (read once: `resolve` runs for every attention call).
fn cpu_has_amx() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(|| sd_core::device::CpuFeatures::detect().amx_bf16)
}

impl std::str::FromStr for AttentionMode {
    type Err = anyhow::Error;

    /// `sdpa`, `fused`, `matmul[:N]`, `sliced[:N]` (query chunks of N, default 1024) or `auto`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, n) = match s.split_once(':') {
            Some((a, b)) => match b.parse::<i64>() {
                Ok(v) if v > 0 => (a, Some(v)),
                _ => bail!("attention mode {s:?}: the chunk size after ':' must be a positive integer"),
            },
            None => (s, None),
        };
        Ok(match name {
            "sdpa" if n.is_none() => AttentionMode::Sdpa,
            "auto" if n.is_none() => AttentionMode::Auto,
            "fused" if n.is_none() => AttentionMode::Fused,
            "matmul" => AttentionMode::Matmul(n.unwrap_or(0)),
            "sliced" => AttentionMode::SliceQueries(n.unwrap_or(1024)),
            _ => bail!("unknown attention mode {s:?}: expected sdpa, fused, matmul[:N], sliced[:N] or auto"),
        })
    }
}

/// softmax(q·kᵀ·scale)·v for q `[B, H, Lq, D]`, k and v `[B, H, Lk, D]` (v may have another last dimension);
/// returns `[B, H, Lq, Dv]`. `scale` defaults to 1/√D. With `upcast`, the computation runs in f32 and the result is
/// cast back (diffusers' `upcast_attention`, needed by SD2.1 in f16).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    upcast: bool,
    mode: AttentionMode,
) -> Result<Tensor> {
    let (qs, ks) = (q.size(), k.size());
    if qs.len() != 4 || ks.len() != 4 || v.dim() != 4 {
        bail!("attention expects [batch, heads, tokens, head_dim] tensors, got q {qs:?}, k {ks:?}, v {:?}", v.size());
    }
    let kind = q.kind();
    let compute = if upcast && kind != Kind::Float && kind != Kind::Double { Some(Kind::Float) } else { None };
    let (q, k, v) = match compute {
        Some(c) => (q.to_kind(c), k.to_kind(c), v.to_kind(c)),
        None => (q.shallow_clone(), k.shallow_clone(), v.shallow_clone()),
    };
    let scale = scale.unwrap_or(1.0 / (qs[3] as f64).sqrt());
    let out = match mode.resolve(&qs, ks[2], q.kind(), q.device()) {
        AttentionMode::Auto => bail!("internal: AttentionMode::Auto did not resolve"),
        AttentionMode::Matmul(size) => matmul_chunks(&q, &k, &v, scale, size)?,
        AttentionMode::Fused if fused_cpu::supports(&q, &k, &v) => fused_cpu::attention(&q, &k, &v, scale)?,
        AttentionMode::Sdpa | AttentionMode::Fused => {
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, scale, false)
                .context("scaled_dot_product_attention failed")?
        }
        AttentionMode::SliceHeads(size) => {
            let (b, h) = (qs[0], qs[1]);
            let flat = |t: &Tensor| t.flatten(0, 1);
            let (qf, kf, vf) = (flat(&q), flat(&k), flat(&v));
            let size = size.max(1);
            let mut parts = Vec::new();
            let mut start = 0;
            while start < b * h {
                let len = size.min(b * h - start);
                parts.push(math(
                    &qf.narrow(0, start, len),
                    &kf.narrow(0, start, len),
                    &vf.narrow(0, start, len),
                    scale,
                )?);
                start += len;
            }
            let out = Tensor::f_cat(&parts, 0)?;
            let rest = out.size();
            out.f_reshape([b, h, rest[1], rest[2]])?
        }
        AttentionMode::SliceQueries(size) => {
            let lq = qs[2];
            let size = size.max(1);
            let mut parts = Vec::new();
            let mut start = 0;
            while start < lq {
                let len = size.min(lq - start);
                parts.push(math(&q.narrow(2, start, len), &k, &v, scale)?);
                start += len;
            }
            Tensor::f_cat(&parts, 2)?
        }
    };
    Ok(match compute {
        Some(_) => out.to_kind(kind),
        None => out,
    })
}

/// The textbook product, softmax taken in the input dtype (as diffusers' classic `AttnProcessor` does).
fn math(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = q.f_matmul(&k.transpose(-1, -2))? * scale;
    Ok(scores.f_softmax(-1, scores.kind())?.f_matmul(v)?)
}

/// Every head at once as batched products over chunks of queries: scores `[B·H, chunk, Lk]` from one `baddbmm`
/// (scale folded into alpha), softmax in place, then one `bmm` with the values written into the output slice.
fn matmul_chunks(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, size: i64) -> Result<Tensor> {
    let (qs, dv) = (q.size(), v.size()[3]);
    let (bh, lq, lk) = (qs[0] * qs[1], qs[2], k.size()[2]);
    let elem = q.kind().elt_size_in_bytes() as i64;
    let chunk = if size > 0 { size } else { (MATMUL_CHUNK_BYTES / (bh * lk * elem).max(1)).max(1) }.min(lq);
    let qf = q.f_reshape([bh, lq, qs[3]])?;
    let kt = k.f_reshape([bh, lk, qs[3]])?.transpose(1, 2);
    let vf = v.f_reshape([bh, lk, dv])?;
    let empty = Tensor::f_empty([1, 1, 1], (q.kind(), q.device()))?;
    let mut parts = Vec::with_capacity((lq / chunk + 1) as usize);
    let mut start = 0;
    while start < lq {
        let len = chunk.min(lq - start);
        let scores = empty.f_baddbmm(&qf.narrow(1, start, len), &kt, 0.0, scale)?;
        parts.push(scores.f_softmax(-1, q.kind())?.f_bmm(&vf)?);
        start += len;
    }
    let out = if parts.len() == 1 { parts.remove(0) } else { Tensor::f_cat(&parts, 1)? };
    Ok(out.f_reshape([qs[0], qs[1], lq, dv])?)
}

/// Where an attention layer sits in its network, given to [`AttentionHook`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttentionSite {
    /// The diffusers module path, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2`.
    pub path: String,
    /// Position in diffusers' `attn_processors` order (down blocks, then up blocks, then the mid block; `attn1`
    /// before `attn2` in each transformer block): the numbering IP-Adapter weight files use, where
    /// `"1.to_k_ip.weight"` belongs to the first cross-attention layer.
    pub index: usize,
    /// Keys and values come from the text states (`attn2`) rather than from the image tokens.
    pub cross: bool,
}

/// Code that joins an attention layer's computation, as diffusers' attention processors do: IP-Adapter's
/// decoupled cross-attention adds a second attention over image-prompt tokens with the same queries.
///
/// Called once per attention layer and evaluation, after softmax(q·kᵀ)·v and before the output projection
/// `to_out`; `query` and `out` are `[batch, heads, tokens, head_dim]` in the layer's dtype. What the hook returns
/// replaces `out` and must keep its shape. A hook that returns `out` unchanged leaves the network's output
/// bit-identical (tested).
pub trait AttentionHook {
    fn after_attention(&self, site: &AttentionSite, query: &Tensor, out: Tensor, mode: AttentionMode)
        -> Result<Tensor>;
}

/// diffusers `Attention` as used by transformer blocks: bias-free q/k/v projections, an output projection with bias,
/// `heads` heads of `dim_head` each. Keys/values come from `context` (cross-attention) or the input (self-attention).
#[derive(Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: i64,
    pub dim_head: i64,
    pub upcast: bool,
    /// Filled in by the network that owns the layer (see [`AttentionSite`]).
    pub site: AttentionSite,
}

impl Attention {
    /// `context_dim`: width of the key/value source (`None` = self-attention, same width as the query).
    pub fn new(
        vb: &VarBuilder,
        query_dim: i64,
        context_dim: Option<i64>,
        heads: i64,
        dim_head: i64,
        qkv_bias: bool,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let kv_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::new(&(vb / "to_q"), query_dim, inner, qkv_bias)?,
            to_k: Linear::new(&(vb / "to_k"), kv_dim, inner, qkv_bias)?,
            to_v: Linear::new(&(vb / "to_v"), kv_dim, inner, qkv_bias)?,
            to_out: Linear::new(&(vb / "to_out" / 0), inner, query_dim, true)?,
            heads,
            dim_head,
            upcast,
            site: AttentionSite { path: vb.prefix(), index: 0, cross: context_dim.is_some() },
        })
    }

    /// `x` `[B, L, query_dim]`, `context` `[B, S, context_dim]` (or `None` for self-attention) → `[B, L, query_dim]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, mode: AttentionMode) -> Result<Tensor> {
        self.forward_hooked(x, context, mode, None)
    }

    /// [`Self::forward`] with a hook that joins the computation before `to_out`.
    pub fn forward_hooked(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mode: AttentionMode,
        hook: Option<&dyn AttentionHook>,
    ) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor| -> Result<Tensor> {
            let n = t.size()[1];
            Ok(t.f_reshape([b, n, self.heads, self.dim_head])?.transpose(1, 2))
        };
        let q = split(self.to_q.forward(x))?;
        let k = split(self.to_k.forward(ctx))?;
        let v = split(self.to_v.forward(ctx))?;
        let out = attention(&q, &k, &v, None, self.upcast, mode)?;
        let out = match hook {
            Some(h) => {
                let shape = out.size();
                let hooked = h.after_attention(&self.site, &q, out, mode)?;
                if hooked.size() != shape {
                    bail!(
                        "attention hook at {} changed the output shape {shape:?} to {:?}",
                        self.site.path,
                        hooked.size()
                    );
                }
                hooked
            }
            None => out,
        };
        let out = out.transpose(1, 2).f_reshape([b, l, self.heads * self.dim_head])?;
        Ok(self.to_out.forward(&out))
    }
}
