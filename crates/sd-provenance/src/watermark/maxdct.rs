//! invisible-watermark's "dwtDct" block rule (`imwatermark/maxDct.py`), applied to the LL band of the U plane.
//!
//! Despite the name, no DCT is computed: in every 4×4 block of the band, the coefficient with the largest
//! magnitude (ignoring the top-left one, first index wins ties like `np.argmax`) is quantised with step 36 so that
//! |v| mod 36 lands at 9 (bit 0) or 27 (bit 1). Block n (row-major) carries payload bit n mod L.

use super::sample::{np_floor_div, np_mod, Sample};
use rayon::prelude::*;

pub const BLOCK: usize = 4;
pub const STEP: f64 = 36.0;

/// Index (0..16) of the largest |v| among positions 1..16 of a row-major 4×4 block.
fn argmax_abs<T: Sample>(vals: &[T; 16]) -> usize {
    let mut best = 1;
    let mut best_v = vals[1].abs();
    for (k, v) in vals.iter().enumerate().skip(2) {
        let a = v.abs();
        if a > best_v {
            best = k;
            best_v = a;
        }
    }
    best
}

fn gather<T: Sample>(band: &[T], w: usize, bi: usize, bj: usize) -> [T; 16] {
    let mut out = [T::ZERO; 16];
    for r in 0..BLOCK {
        for c in 0..BLOCK {
            out[r * BLOCK + c] = band[(bi * BLOCK + r) * w + bj * BLOCK + c];
        }
    }
    out
}

/// Embeds `bits` into an h×w band in place.
pub fn encode_band<T: Sample>(band: &mut [T], h: usize, w: usize, bits: &[bool]) {
    let (nbr, nbc) = (h / BLOCK, w / BLOCK);
    if bits.is_empty() || nbc == 0 {
        return;
    }
    let scale = T::from_f64(STEP);
    let quarter = T::from_f64(0.25);
    // Each band row of blocks spans BLOCK rows of the band: split the band into such strips for rayon.
    band[..nbr * BLOCK * w].par_chunks_mut(BLOCK * w).enumerate().for_each(|(bi, strip)| {
        for bj in 0..nbc {
            let vals = gather(strip, w, 0, bj);
            let pos = argmax_abs(&vals);
            let bit = bits[(bi * nbc + bj) % bits.len()];
            let half_bit = T::from_f64(if bit { 0.5 } else { 0.0 });
            let val = vals[pos];
            let idx = (pos / BLOCK) * w + bj * BLOCK + pos % BLOCK;
            strip[idx] = if val >= T::ZERO {
                (np_floor_div(val, scale) + quarter + half_bit) * scale
            } else {
                let m = val.abs();
                (-(np_floor_div(m, scale) + quarter + half_bit)) * scale
            };
        }
    });
}

/// Per-block votes: `votes[k]` = (ones, blocks) for payload bit k.
pub fn decode_band<T: Sample>(band: &[T], h: usize, w: usize, len: usize) -> Vec<(u32, u32)> {
    let (nbr, nbc) = (h / BLOCK, w / BLOCK);
    let mut votes = vec![(0u32, 0u32); len];
    if len == 0 {
        return votes;
    }
    let scale = T::from_f64(STEP);
    let half = T::from_f64(STEP * 0.5);
    let per_block: Vec<bool> = (0..nbr * nbc)
        .into_par_iter()
        .map(|n| {
            let vals = gather(band, w, n / nbc, n % nbc);
            let v = vals[argmax_abs(&vals)].abs();
            np_mod(v, scale) > half
        })
        .collect();
    for (n, one) in per_block.into_iter().enumerate() {
        let slot = &mut votes[n % len];
        slot.0 += one as u32;
        slot.1 += 1;
    }
    votes
}
