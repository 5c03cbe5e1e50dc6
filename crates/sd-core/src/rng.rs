//! Seeded noise that is bit-identical to PyTorch's CPU generator.
//!
//! Why not LibTorch's own generator through tch: tch exposes only the process-global generator, so two pipelines
//! (or two tests) in one process would disturb each other's streams. Users reproduce diffusers images from a seed,
//! which requires the exact values of `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`,
//! including the order in which consecutive draws consume the stream. This module re-implements that generator:
//! mt19937 as PyTorch seeds it, PyTorch's uniform transformation, and its two normal paths (the 16-wide
//! Box–Muller fill used for contiguous float tensors of 16+ elements, and the cached serial Box–Muller in double
//! precision used otherwise).

use tch::{Device, Kind, Tensor};

const N: usize = 624;
const M: usize = 397;

/// PyTorch's `at::mt19937` (the standard 32-bit Mersenne Twister, seeded with the low 32 bits of the seed).
#[derive(Clone)]
struct Mt19937 {
    state: [u32; N],
    next: usize,
    left: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: 0, left: 1 }
    }

    fn next_state(&mut self) {
        const MATRIX_A: u32 = 0x9908_b0df;
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        let mix = |u: u32, v: u32| (u & UPPER) | (v & LOWER);
        let twist = |u: u32, v: u32| (mix(u, v) >> 1) ^ (if v & 1 != 0 { MATRIX_A } else { 0 });
        self.left = N;
        self.next = 0;
        let s = &mut self.state;
        for j in 0..N - M {
            s[j] = s[j + M] ^ twist(s[j], s[j + 1]);
        }
        for j in N - M..N - 1 {
            s[j] = s[j + M - N] ^ twist(s[j], s[j + 1]);
        }
        s[N - 1] = s[M - 1] ^ twist(s[N - 1], s[0]);
    }

    fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.next_state();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// A seeded CPU generator that produces the same stream as `torch.Generator("cpu").manual_seed(seed)`.
#[derive(Clone)]
pub struct TorchGenerator {
    seed: u64,
    mt: Mt19937,
    next_double_normal: Option<f64>,
    next_float_normal: Option<f32>,
}

impl TorchGenerator {
    pub fn new(seed: u64) -> Self {
        Self { seed, mt: Mt19937::new(seed), next_double_normal: None, next_float_normal: None }
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
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

    /// PyTorch's `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled into [0, 1).
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// PyTorch's `uniform_real_distribution<double>(0, 1)`: 53 random bits scaled into [0, 1).
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// PyTorch's `normal_distribution<double>`: Box–Muller in double precision, caching the second value.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (1.0 - u2).ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// Standard-normal values in the exact order `torch.randn(n)` (float32, contiguous) produces them.
    pub fn randn_f32_vec(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        let mut i = 0;
        while i + 16 <= n {
            normal_fill_16(&mut data[i..i + 16]);
            i += 16;
        }
        if n % 16 != 0 {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }

    /// `torch.randn(shape, generator=g, dtype=kind)` on the CPU, then moved to `device`.
    pub fn randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        let values = match kind {
            Kind::Double => {
                let v: Vec<f64> = (0..n).map(|_| self.normal_f64()).collect();
                return Tensor::from_slice(&v).reshape(shape).to_device(device);
            }
            _ => self.randn_f32_vec(n as usize),
        };
        Tensor::from_slice(&values).reshape(shape).to_kind(kind).to_device(device)
    }

    /// `torch.rand(shape, generator=g)` (float32) on the CPU.
    pub fn rand(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        Tensor::from_slice(&v).reshape(shape).to_kind(kind).to_device(device)
    }
}

/// Box–Muller on 16 uniforms in place: the first 8 are u1, the last 8 u2 (PyTorch's `normal_fill_16`).
fn normal_fill_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * u1.ln()).sqrt();
        let theta = (2.0f64 * std::f64::consts::PI * u2 as f64) as f32;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}
