//! How sure a detection is, from the number of matching bits.
//!
//! Stability AI's detector for the 48-bit SDXL message says: ≤27 matching bits none, ≤33 partial, ≤35 likely,
//! more very likely. Under "no watermark" each decoded bit matches by chance with probability ½, so those cut-offs
//! are false-positive rates P(X ≥ 28), P(X ≥ 34), P(X ≥ 36) for X ~ Binomial(48, ½) (≈ 0.156, 2.8e-3 and 3.6e-4).
//! For a payload of n bits we use the smallest threshold t with P(X ≥ t) ≤ the same rate, X ~ Binomial(n, ½),
//! which reproduces 28/34/36 for n = 48 and gives 75/85/89 for the 136-bit `StableDiffusionV1` payload.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    None,
    Partial,
    Likely,
    VeryLikely,
}

impl Confidence {
    pub fn word(self) -> &'static str {
        match self {
            Confidence::None => "none",
            Confidence::Partial => "partial",
            Confidence::Likely => "likely",
            Confidence::VeryLikely => "very likely",
        }
    }
}

/// Stability's 48-bit cut-offs: the first matched count at each level above "none".
const REF_BITS: u32 = 48;
const REF_THRESHOLDS: [u32; 3] = [28, 34, 36];

/// P(X ≥ t) for X ~ Binomial(n, ½), computed in log space (exact enough for n up to thousands).
pub fn binomial_tail(n: u32, t: u32) -> f64 {
    if t == 0 {
        return 1.0;
    }
    if t > n {
        return 0.0;
    }
    let ln_fact = |k: u32| (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_fact(n);
    let ln_half_n = n as f64 * 0.5f64.ln();
    (t..=n).map(|k| (ln_n - ln_fact(k) - ln_fact(n - k) + ln_half_n).exp()).sum()
}

/// Matched-bit thresholds (partial, likely, very likely) for an n-bit payload.
pub fn thresholds(n: u32) -> [u32; 3] {
    let mut out = [u32::MAX; 3];
    for (slot, &r) in out.iter_mut().zip(REF_THRESHOLDS.iter()) {
        let rate = binomial_tail(REF_BITS, r) * (1.0 + 1e-9);
        *slot = (0..=n + 1).find(|&t| binomial_tail(n, t) <= rate).unwrap_or(n + 1);
    }
    out
}

pub fn classify(matched: u32, total: u32) -> Confidence {
    let [p, l, v] = thresholds(total);
    if matched >= v {
        Confidence::VeryLikely
    } else if matched >= l {
        Confidence::Likely
    } else if matched >= p {
        Confidence::Partial
    } else {
        Confidence::None
    }
}
