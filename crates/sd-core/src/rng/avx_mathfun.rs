//! Lane-exact scalar model of the AVX2 `log256_ps` and `sincos256_ps` that PyTorch's x86 builds use for
//! `torch.randn` on float tensors (`aten/src/ATen/native/cpu/avx_mathfun.h`, Cephes polynomials by way of
//! Julien Pommier's sse_mathfun).
//!
//! Why this exists: on every x86 CPU with AVX2 (AVX512 machines included: the normal kernel is registered without
//! an AVX512 variant, so dispatch falls back to AVX2) PyTorch computes the 16-wide Box–Muller with these
//! polynomial approximations, not with libm. Bit equality therefore needs the same operations in the same order.
//! PyTorch compiles this file with GCC and `-mfma` in GNU C++ mode, where floating-point contraction is on: a
//! multiplication whose only use is an addition becomes one fused multiply-add. The `mul_add` calls below are
//! exactly those places; every other product is rounded on its own. Verified against torch 2.13 on millions of
//! values (see `tests/it/rng_torch.rs`).

// The Cephes constants are written digit for digit as the C header has them: their f32 rounding is part of
// what must match, so clippy's "use FRAC_1_SQRT_2" / "excessive precision" suggestions do not apply.
#![allow(clippy::approx_constant, clippy::excessive_precision)]

/// C's `(float)<double literal>`: the constants are written as double literals and stored into float arrays.
const fn c(v: f64) -> f32 {
    v as f32
}

const SQRTHF: f32 = c(0.707106781186547524);
const LOG_P: [f32; 9] = [
    c(7.0376836292E-2),
    c(-1.1514610310E-1),
    c(1.1676998740E-1),
    c(-1.2420140846E-1),
    c(1.4249322787E-1),
    c(-1.6668057665E-1),
    c(2.0000714765E-1),
    c(-2.4999993993E-1),
    c(3.3333331174E-1),
];
const LOG_Q1: f32 = c(-2.12194440e-4);
const LOG_Q2: f32 = c(0.693359375);

const MINUS_DP1: f32 = c(-0.78515625);
const MINUS_DP2: f32 = c(-2.4187564849853515625e-4);
const MINUS_DP3: f32 = c(-3.77489497744594108e-8);
const SINCOF: [f32; 3] = [c(-1.9515295891E-4), c(8.3321608736E-3), c(-1.6666654611E-1)];
const COSCOF: [f32; 3] = [c(2.443315711809948E-005), c(-1.388731625493765E-003), c(4.166664568298827E-002)];
const FOPI: f32 = c(1.27323954473516);

/// One lane of `log256_ps` for a positive, normal `x` (Box–Muller only feeds it values in (0, 1]).
pub(crate) fn log(x: f32) -> f32 {
    let x = x.max(f32::from_bits(0x0080_0000));
    let exponent = (x.to_bits() >> 23) as i32 - 0x7f;
    let mut x = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for p in &LOG_P[1..] {
        y = y.mul_add(x, *p);
    }
    y *= x;
    let tmp = e * LOG_Q1;
    y = y.mul_add(z, tmp);
    y = (-z).mul_add(0.5, y);
    let x = x + y;
    e.mul_add(LOG_Q2, x)
}

/// One lane of `sincos256_ps` for a non-negative `x` below 2^24 (Box–Muller feeds it [0, 2π)): `(sin, cos)`.
pub(crate) fn sincos(x: f32) -> (f32, f32) {
    let sign_sin = x.to_bits() & 0x8000_0000;
    let x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let mut j = (x * FOPI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let use_sin_poly = j & 2 == 0;
    let x = y.mul_add(MINUS_DP1, x);
    let x = y.mul_add(MINUS_DP2, x);
    let x = y.mul_add(MINUS_DP3, x);
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sign_sin;

    let z = x * x;
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    let tmp = z * 0.5;
    yc = yc.mul_add(z, -tmp);
    yc += 1.0;

    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // Each lane keeps one polynomial for the sine and the other for the cosine.
    let (sin_part, cos_part) = if use_sin_poly { (ys, yc) } else { (yc, ys) };
    let sin = f32::from_bits((sin_part + 0.0).to_bits() ^ sign_sin);
    let cos = f32::from_bits((0.0 + cos_part).to_bits() ^ sign_cos);
    (sin, cos)
}
