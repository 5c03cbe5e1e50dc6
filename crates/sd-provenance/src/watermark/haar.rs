//! One-level 2-D Haar transform with PyWavelets' exact floating-point operation order (`pywt.dwt2` /
//! `pywt.idwt2`, mode irrelevant because inputs always have even sides), so that the inverse lands on the same
//! side of every integer as the reference before uint8 truncation.
//!
//! Forward along an axis, for a pair (x0, x1): low = c·x1 + c·x0, high = −c·x1 + c·x0 (pywt's downsampling
//! convolution with dec_lo = [c, c], dec_hi = [−c, c]). pywt transforms rows (axis 0) first, then columns.
//! Inverse: even = c·a + c·d, odd = c·a − c·d, columns (axis 1) first, then rows.

use super::sample::Sample;

/// Sub-bands named like pywt's `dwtn` keys: first letter axis 0 (rows), second axis 1 (columns).
pub struct Bands<T> {
    pub h: usize,
    pub w: usize,
    pub aa: Vec<T>,
    pub ad: Vec<T>,
    pub da: Vec<T>,
    pub dd: Vec<T>,
}

/// `x` is an (2h)×(2w) plane, row-major.
pub fn dwt2<T: Sample>(x: &[T], rows: usize, cols: usize) -> Bands<T> {
    let (h, w) = (rows / 2, cols / 2);
    let c = T::HAAR;
    // along axis 0
    let mut l0 = vec![T::ZERO; h * cols];
    let mut h0 = vec![T::ZERO; h * cols];
    for i in 0..h {
        for j in 0..cols {
            let x0 = x[(2 * i) * cols + j];
            let x1 = x[(2 * i + 1) * cols + j];
            l0[i * cols + j] = c * x1 + c * x0;
            h0[i * cols + j] = (-c) * x1 + c * x0;
        }
    }
    let mut b = Bands {
        h,
        w,
        aa: vec![T::ZERO; h * w],
        ad: vec![T::ZERO; h * w],
        da: vec![T::ZERO; h * w],
        dd: vec![T::ZERO; h * w],
    };
    for i in 0..h {
        for j in 0..w {
            let (l_0, l_1) = (l0[i * cols + 2 * j], l0[i * cols + 2 * j + 1]);
            let (h_0, h_1) = (h0[i * cols + 2 * j], h0[i * cols + 2 * j + 1]);
            b.aa[i * w + j] = c * l_1 + c * l_0;
            b.ad[i * w + j] = (-c) * l_1 + c * l_0;
            b.da[i * w + j] = c * h_1 + c * h_0;
            b.dd[i * w + j] = (-c) * h_1 + c * h_0;
        }
    }
    b
}

/// Inverse of [`dwt2`] given bands keyed like pywt's `idwtn` (`aa`, `ad`, `da`, `dd`); returns a (2h)×(2w) plane.
pub fn idwt2<T: Sample>(b: &Bands<T>) -> Vec<T> {
    let (h, w) = (b.h, b.w);
    let c = T::HAAR;
    let cols = 2 * w;
    // along axis 1: prefix 'a' from (aa, ad), prefix 'd' from (da, dd)
    let mut la = vec![T::ZERO; h * cols];
    let mut ld = vec![T::ZERO; h * cols];
    for i in 0..h {
        for j in 0..w {
            let k = i * w + j;
            la[i * cols + 2 * j] = c * b.aa[k] + c * b.ad[k];
            la[i * cols + 2 * j + 1] = c * b.aa[k] + (-c) * b.ad[k];
            ld[i * cols + 2 * j] = c * b.da[k] + c * b.dd[k];
            ld[i * cols + 2 * j + 1] = c * b.da[k] + (-c) * b.dd[k];
        }
    }
    let mut out = vec![T::ZERO; 2 * h * cols];
    for i in 0..h {
        for j in 0..cols {
            let (a, d) = (la[i * cols + j], ld[i * cols + j]);
            out[(2 * i) * cols + j] = c * a + c * d;
            out[(2 * i + 1) * cols + j] = c * a + (-c) * d;
        }
    }
    out
}
