//! The float type a watermark path computes in: f64 on the uint8 path (pywt promotes uint8 to float64), f32 on
//! the SDXL float path (pywt and numpy keep float32 there).

use std::ops::{Add, Div, Mul, Neg, Rem, Sub};

pub trait Sample:
    Copy
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Rem<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    /// 1/√2 as pywt stores the Haar filter taps (0.7071067811865476, rounded to the type).
    const HAAR: Self;
    fn from_f64(v: f64) -> Self;
    fn abs(self) -> Self;
    fn floor(self) -> Self;
}

impl Sample for f64 {
    const ZERO: Self = 0.0;
    const HAAR: Self = std::f64::consts::FRAC_1_SQRT_2;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn floor(self) -> Self {
        f64::floor(self)
    }
}

impl Sample for f32 {
    const ZERO: Self = 0.0;
    const HAAR: Self = std::f32::consts::FRAC_1_SQRT_2;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn floor(self) -> Self {
        f32::floor(self)
    }
}

/// numpy's `floor_divide` for floats (`npy_divmod`): (a − fmod(a, b)) / b, then floored and nudged, which can
/// differ from floor(a / b) just below a multiple of b.
pub fn np_floor_div<T: Sample>(a: T, b: T) -> T {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != T::ZERO && ((b < T::ZERO) != (m < T::ZERO)) {
        div = div - T::from_f64(1.0);
    }
    if div == T::ZERO {
        return T::ZERO * (a / b); // keeps numpy's signed zero; value irrelevant for the watermark
    }
    let mut q = div.floor();
    if div - q > T::from_f64(0.5) {
        q = q + T::from_f64(1.0);
    }
    q
}

/// numpy's `remainder` for floats with a positive divisor.
pub fn np_mod<T: Sample>(a: T, b: T) -> T {
    let mut m = a % b;
    if m != T::ZERO && ((b < T::ZERO) != (m < T::ZERO)) {
        m = m + b;
    }
    m
}
