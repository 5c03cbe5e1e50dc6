//! invisible-watermark's "dwtDctSvd" block rule (`imwatermark/dwtDctSvd.py`), applied to the LL band of the U
//! plane.
//!
//! The package takes the 2-D DCT of every 4×4 block, its SVD, moves the largest singular value s₀ so that
//! s₀ mod 36 lands at 9 (bit 0) or 27 (bit 1), rebuilds the block and inverts the DCT. OpenCV's DCT is orthonormal,
//! so the block and its DCT share singular values and the change is the rank-one update
//! `block += (s₀' − s₀) · u₀ v₀ᵀ` with u₀, v₀ the block's own top singular vectors: that is what we compute, with a
//! one-sided Jacobi SVD (accurate to a few ulps, so values land on the same side of every integer as LAPACK's do
//! before the uint8 truncation). The mark rides on the block's energy rather than on one coefficient, which is why
//! it survives JPEG where dwtDct does not.

use super::maxdct::BLOCK;
use super::sample::{np_floor_div, np_mod};
use rayon::prelude::*;

pub const STEP: f64 = 36.0;
const N: usize = BLOCK;

/// Largest singular value of a row-major 4×4 block with its left and right singular vectors. A zero block gives
/// s₀ = 0 with the DCT's DC basis vector on both sides, which is what LAPACK returns for it (identity factors).
fn top_singular(b: &[f64; N * N]) -> (f64, [f64; N], [f64; N]) {
    // columns of `a` are rotated until mutually orthogonal; `v` accumulates the rotations
    let mut a = *b;
    let mut v = [0.0; N * N];
    for k in 0..N {
        v[k * N + k] = 1.0;
    }
    for _sweep in 0..30 {
        let mut rotated = false;
        for p in 0..N - 1 {
            for q in p + 1..N {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for r in 0..N {
                    let (x, y) = (a[r * N + p], a[r * N + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for m in [&mut a, &mut v] {
                    for r in 0..N {
                        let (x, y) = (m[r * N + p], m[r * N + q]);
                        m[r * N + p] = c * x - s * y;
                        m[r * N + q] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..N).map(|k| (0..N).map(|r| a[r * N + k] * a[r * N + k]).sum::<f64>().sqrt()).collect();
    let mut best = 0;
    for k in 1..N {
        if norms[k] > norms[best] {
            best = k;
        }
    }
    let s0 = norms[best];
    if s0 == 0.0 {
        // the inverse DCT of e₀e₀ᵀ: every entry 1/4, i.e. both vectors (½, ½, ½, ½)
        return (0.0, [0.5; N], [0.5; N]);
    }
    let mut u = [0.0; N];
    let mut w = [0.0; N];
    for r in 0..N {
        u[r] = a[r * N + best] / s0;
        w[r] = v[r * N + best];
    }
    (s0, u, w)
}

fn gather(band: &[f64], w: usize, row0: usize, col0: usize) -> [f64; N * N] {
    let mut out = [0.0; N * N];
    for r in 0..N {
        out[r * N..r * N + N].copy_from_slice(&band[(row0 + r) * w + col0..(row0 + r) * w + col0 + N]);
    }
    out
}

/// Embeds `bits` into an h×w band in place (block n, row-major, carries bit n mod L).
pub fn encode_band(band: &mut [f64], h: usize, w: usize, bits: &[bool]) {
    let (nbr, nbc) = (h / N, w / N);
    if bits.is_empty() || nbc == 0 {
        return;
    }
    band[..nbr * N * w].par_chunks_mut(N * w).enumerate().for_each(|(bi, strip)| {
        for bj in 0..nbc {
            let blk = gather(strip, w, 0, bj * N);
            let (s0, u, v) = top_singular(&blk);
            let bit = bits[(bi * nbc + bj) % bits.len()];
            let target = (np_floor_div(s0, STEP) + 0.25 + if bit { 0.5 } else { 0.0 }) * STEP;
            let delta = target - s0;
            for r in 0..N {
                for c in 0..N {
                    strip[r * w + bj * N + c] = blk[r * N + c] + delta * u[r] * v[c];
                }
            }
        }
    });
}

/// Per-block votes: `votes[k]` = (ones, blocks) for payload bit k.
pub fn decode_band(band: &[f64], h: usize, w: usize, len: usize) -> Vec<(u32, u32)> {
    let (nbr, nbc) = (h / N, w / N);
    let mut votes = vec![(0u32, 0u32); len];
    if len == 0 {
        return votes;
    }
    let per_block: Vec<bool> = (0..nbr * nbc)
        .into_par_iter()
        .map(|n| {
            let (s0, _, _) = top_singular(&gather(band, w, (n / nbc) * N, (n % nbc) * N));
            np_mod(s0, STEP) > STEP * 0.5
        })
        .collect();
    for (n, one) in per_block.into_iter().enumerate() {
        let slot = &mut votes[n % len];
        slot.0 += one as u32;
        slot.1 += 1;
    }
    votes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_singular_reconstructs_rank_one_part() {
        // a rank-one block s·u vᵀ plus nothing: the pair must come back exactly up to sign
        let u = [0.5, -0.5, 0.5, 0.5];
        let v = [0.1, 0.7, 0.7, 0.1f64];
        let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut b = [0.0; 16];
        for r in 0..4 {
            for c in 0..4 {
                b[r * 4 + c] = 40.0 * u[r] * v[c] / nv;
            }
        }
        let (s0, uu, vv) = top_singular(&b);
        assert!((s0 - 40.0).abs() < 1e-12, "{s0}");
        for r in 0..4 {
            for c in 0..4 {
                assert!((s0 * uu[r] * vv[c] - b[r * 4 + c]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn encoded_blocks_decode_to_their_bits() {
        let (h, w) = (8, 8);
        let mut band: Vec<f64> = (0..h * w).map(|k| 200.0 + ((k * 37) % 23) as f64).collect();
        let bits = [true, false, false, true];
        encode_band(&mut band, h, w, &bits);
        let votes = decode_band(&band, h, w, 4);
        for (k, (ones, n)) in votes.iter().enumerate() {
            assert_eq!(*n, 1);
            assert_eq!(*ones == 1, bits[k], "bit {k}");
        }
    }
}
