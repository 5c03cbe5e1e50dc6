//! Seeded noise that is bit-identical to PyTorch's CPU generator.
//!
//! Why not LibTorch's own generator through tch: tch exposes only the process-global generator, so two pipelines
//! (or two tests) in one process would disturb each other's streams. Users reproduce diffusers images from a seed,
//! which requires the exact values of `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`,
//! including the order in which consecutive draws consume the stream (latents first, then the per-step noise of
//! ancestral samplers). This module re-implements that generator as torch 2.13 does it
//! (`aten/src/ATen/native/cpu/DistributionTemplates.h`, `aten/src/ATen/core/DistributionsHelper.h`):
//!
//! * mt19937 seeded with the low 32 bits of the seed; uniform floats from 24 bits of one draw, doubles from 53 bits
//!   of two draws (first draw = high word).
//! * `randn` of 16 or more elements (contiguous, any float dtype): "normal_fill" — Box–Muller over blocks of 16
//!   uniforms (first 8 give the radius, last 8 the angle); a length that is not a multiple of 16 redraws 16 fresh
//!   uniforms for the last 16 outputs. float32 draws all uniforms first (so the unused leftovers still consume the
//!   stream); float16/bfloat16 draw block by block in float32 and round each block down (no leftovers); float64 works
//!   in double precision with libm.
//! * `randn` of fewer than 16 elements: serial Box–Muller in double precision, one output per call, keeping the
//!   second value of each pair in the generator for the next call, even across `randn` calls.
//! * float32 Box–Muller uses the AVX2 polynomial log/sincos on x86 builds ([`NormalKernel::Avx2`]) and libm only in
//!   builds that dispatch to the baseline kernel ([`NormalKernel::Default`]); see [`NormalKernel`].

mod avx_mathfun;
mod mt19937;

use anyhow::{bail, Result};
use half::{bf16, f16};
use tch::{Device, Kind, Tensor};

use mt19937::Mt19937;

/// Which of PyTorch's float32 Box–Muller kernels to reproduce.
///
/// torch picks one per process from the CPU: every x86-64 CPU with AVX2 (AVX512 CPUs too, because the normal kernel
/// has no AVX512 registration and falls back to AVX2) uses SIMD polynomial approximations of log/sin/cos; CPUs
/// without AVX2, non-x86 builds, and `ATEN_CPU_CAPABILITY=default` use libm's `logf`/`sinf`/`cosf`. The two differ
/// in the last bit of a few percent of the values. float64, float16/bfloat16 in the libm case, and all inputs with
/// fewer than 16 elements are unaffected by the choice except where stated in [`TorchGenerator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormalKernel {
    /// `normal_fill` with `log256_ps`/`sincos256_ps` (what almost every diffusers user on x86 gets).
    Avx2,
    /// `normal_fill` with scalar libm calls (`ATEN_CPU_CAPABILITY=default`, ARM builds).
    Default,
}

impl NormalKernel {
    /// The kernel torch would pick in this process: [`NormalKernel::Avx2`] unless the environment variable
    /// `ATEN_CPU_CAPABILITY` is `default` (the same switch torch honours).
    ///
    /// The host CPU is deliberately not consulted: a seed should give the same image on every machine, and the AVX2
    /// stream is the one reference images on the web were made with.
    pub fn from_env() -> Self {
        match std::env::var("ATEN_CPU_CAPABILITY") {
            Ok(v) if v.trim().eq_ignore_ascii_case("default") => NormalKernel::Default,
            _ => NormalKernel::Avx2,
        }
    }
}

/// A seeded CPU generator that produces the same stream as `torch.Generator("cpu").manual_seed(seed)`.
#[derive(Clone)]
pub struct TorchGenerator {
    seed: u64,
    mt: Mt19937,
    kernel: NormalKernel,
    /// The second value of the last serial Box–Muller pair (`CPUGeneratorImpl::next_double_normal_sample`).
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`, with the float32 kernel from [`NormalKernel::from_env`].
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, NormalKernel::from_env())
    }

    /// Like [`TorchGenerator::new`] but reproducing a chosen float32 Box–Muller kernel.
    pub fn with_kernel(seed: u64, kernel: NormalKernel) -> Self {
        Self { seed, mt: Mt19937::new(seed), kernel, next_double_normal: None }
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The float32 Box–Muller kernel this generator reproduces.
    pub fn kernel(&self) -> NormalKernel {
        self.kernel
    }

    /// `generator.random()` in PyTorch: one 32-bit draw.
    pub fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `generator.random64()`: two 32-bit draws, the first one as the high word.
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.mt.next_u32() as u64;
        let lo = self.mt.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled into [0, 1).
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits of a 64-bit draw scaled into [0, 1).
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `normal_distribution<double>(0, 1)`: Box–Muller in double precision, caching the second value.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        // `val * std + mean` with std 1 and mean 0 only turns -0 into +0.
        r * theta.cos() + 0.0
    }

    /// Standard-normal values in the exact order `torch.randn(n)` (float32, contiguous) produces them.
    pub fn randn_f32_vec(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let kernel = self.kernel;
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16_f32(block, kernel);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16_f32(tail, kernel);
        }
        data
    }

    /// Standard-normal values of `torch.randn(n, dtype=torch.float64)`.
    pub fn randn_f64_vec(&mut self, n: usize) -> Vec<f64> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64()).collect();
        }
        let mut data: Vec<f64> = (0..n).map(|_| self.uniform_f64()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16_f64(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f64();
            }
            normal_fill_16_f64(tail);
        }
        data
    }

    /// Standard-normal values of `torch.randn(n, dtype=torch.float16 / bfloat16)` as float32 before the final
    /// rounding, which [`round_reduced`] does (float32 → T for 16+ elements, float64 → T below that).
    fn randn_reduced_wide(&mut self, n: usize) -> Wide {
        if n < 16 {
            return Wide::F64((0..n).map(|_| self.normal_f64()).collect());
        }
        let kernel = self.kernel;
        let mut out = vec![0f32; n];
        let mut block = [0f32; 16];
        let fill = |g: &mut Self, block: &mut [f32; 16]| {
            for v in block.iter_mut() {
                *v = g.uniform_f32();
            }
            normal_fill_16_f32(block, kernel);
        };
        for chunk in out.chunks_exact_mut(16) {
            fill(self, &mut block);
            chunk.copy_from_slice(&block);
        }
        if !n.is_multiple_of(16) {
            fill(self, &mut block);
            out[n - 16..].copy_from_slice(&block);
        }
        Wide::F32(out)
    }

    /// `torch.randn(shape, generator=g, dtype=kind)` on the CPU, then moved to `device`.
    ///
    /// float32/float64/float16/bfloat16 are exact; torch refuses other kinds, so for them this returns the float32
    /// values converted (use [`TorchGenerator::try_randn`] to get an error instead).
    pub fn randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        match self.try_randn(shape, kind, device) {
            Ok(t) => t,
            Err(_) => {
                let n = numel(shape).unwrap_or(0);
                Tensor::from_slice(&self.randn_f32_vec(n)).reshape(shape).to_kind(kind).to_device(device)
            }
        }
    }

    /// [`TorchGenerator::randn`] that reports an unsupported kind or a bad shape instead of working around it.
    pub fn try_randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let n = numel(shape)?;
        let cpu = match kind {
            Kind::Float => Tensor::from_slice(&self.randn_f32_vec(n)),
            Kind::Double => Tensor::from_slice(&self.randn_f64_vec(n)),
            Kind::Half | Kind::BFloat16 => {
                let wide = self.randn_reduced_wide(n);
                round_reduced(wide, kind)?
            }
            other => bail!("randn: PyTorch draws normal noise only for float kinds, not {other:?}"),
        };
        Ok(cpu.f_reshape(shape)?.f_to_device(device)?)
    }

    /// `torch.rand(shape, generator=g, dtype=kind)` on the CPU, then moved to `device` (float kinds; other kinds get
    /// the float32 values converted).
    pub fn rand(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let n = numel(shape).unwrap_or(0);
        let cpu = match kind {
            Kind::Double => Tensor::from_slice(&(0..n).map(|_| self.uniform_f64()).collect::<Vec<_>>()),
            Kind::Half | Kind::BFloat16 => {
                // Drawn in float32, then rounded; a value that rounds up to 1 becomes 0 so the range stays [0, 1).
                let bits: Vec<i16> = (0..n)
                    .map(|_| {
                        let u = self.uniform_f32();
                        let b =
                            if kind == Kind::Half { f16::from_f32(u).to_bits() } else { bf16::from_f32(u).to_bits() };
                        let one = if kind == Kind::Half { f16::ONE.to_bits() } else { bf16::ONE.to_bits() };
                        (if b == one { 0 } else { b }) as i16
                    })
                    .collect();
                Tensor::from_slice(&bits).view_dtype(kind)
            }
            _ => Tensor::from_slice(&(0..n).map(|_| self.uniform_f32()).collect::<Vec<_>>()).to_kind(kind),
        };
        cpu.reshape(shape).to_device(device)
    }
}

/// Noise before rounding to a 16-bit float kind.
enum Wide {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Round to float16/bfloat16 as torch's `static_cast` does: nearest-even from float32; a double goes through float32
/// first (c10's Half/BFloat16 only have float constructors).
fn round_reduced(wide: Wide, kind: Kind) -> Result<Tensor> {
    let f32s: Vec<f32> = match wide {
        Wide::F32(v) => v,
        Wide::F64(v) => v.into_iter().map(|x| x as f32).collect(),
    };
    let bits: Vec<i16> = match kind {
        Kind::Half => f32s.iter().map(|&x| f16::from_f32(x).to_bits() as i16).collect(),
        Kind::BFloat16 => f32s.iter().map(|&x| bf16::from_f32(x).to_bits() as i16).collect(),
        other => bail!("round_reduced: {other:?} is not a 16-bit float kind"),
    };
    Ok(Tensor::from_slice(&bits).f_view_dtype(kind)?)
}

fn numel(shape: &[i64]) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            bail!("random tensor shape {shape:?} has a negative dimension");
        }
        n = n.checked_mul(d as usize).ok_or_else(|| anyhow::anyhow!("random tensor shape {shape:?} is too large"))?;
    }
    Ok(n)
}

/// `NormalFill16<float>`: Box–Muller on 16 uniforms in place; the first 8 give the radius, the last 8 the angle.
fn normal_fill_16_f32(data: &mut [f32], kernel: NormalKernel) {
    // The angle is formed in double (`2.0f * c10::pi<double> * u2`) and then rounded, in both kernels.
    let two_pi = 2.0 * std::f64::consts::PI;
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let (radius, sin, cos) = match kernel {
            NormalKernel::Avx2 => {
                let radius = (-2.0f32 * avx_mathfun::log(u1)).sqrt();
                let (sin, cos) = avx_mathfun::sincos(two_pi as f32 * u2);
                (radius, sin, cos)
            }
            NormalKernel::Default => {
                let radius = (-2.0f32 * u1.ln()).sqrt();
                let theta = (two_pi * u2 as f64) as f32;
                (radius, theta.sin(), theta.cos())
            }
        };
        // `fma(x, std, mean)` with std 1 and mean 0 only turns -0 into +0.
        data[j] = radius * cos + 0.0;
        data[j + 8] = radius * sin + 0.0;
    }
}

/// `NormalFill16<double>`: the same transform in double precision with libm.
fn normal_fill_16_f64(data: &mut [f64]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        data[j] = radius * theta.cos() + 0.0;
        data[j + 8] = radius * theta.sin() + 0.0;
    }
}
