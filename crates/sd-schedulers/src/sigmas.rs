//! Sigma-schedule math shared by the samplers: interpolation of the training sigmas, Karras / exponential / beta
//! schedules, sigma → fractional timestep, and the Align-Your-Steps constants.

/// `np.interp(x, arange(len(fp)), fp)` (float64 result).
pub fn interp_index(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x <= 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    slope * (x - j as f64) + fp[j]
}

/// Karras et al. 2022 (arXiv 2206.00364, eq. 5) with rho = 7, from sigma_max down to sigma_min.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    crate::schedule::np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Log-linear (exponential) sigmas from sigma_max down to sigma_min.
pub fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    crate::schedule::np_linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect()
}

/// Beta-distribution sigmas (arXiv 2407.12173) with alpha = beta = 0.6, as diffusers' `_convert_to_beta`.
pub fn beta(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    crate::schedule::np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|t| sigma_min + beta_ppf(1.0 - t, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma matches, by linear interpolation in log space.
/// `log_sigmas` ascending in t (float32 values).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // cumsum(dists >= 0).argmax(): the last index whose log-sigma is <= log_sigma (0 if none), capped at n - 2.
    let count = log_sigmas.iter().filter(|ls| log_sigma - **ls >= 0.0).count();
    let mut low = if count == 0 { 0 } else { last_le(log_sigmas, log_sigma) };
    low = low.min(n - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// argmax of the cumulative count of `log_sigma - ls >= 0`: the first index where the count reaches its maximum.
fn last_le(log_sigmas: &[f64], log_sigma: f64) -> usize {
    let mut best = 0usize;
    let mut best_count = 0usize;
    let mut count = 0usize;
    for (i, ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
        }
        if count > best_count {
            best_count = count;
            best = i;
        }
    }
    best
}

/// Align Your Steps (arXiv 2404.14507) 10-step schedules, as diffusers' `AysSchedules`.
pub mod ays {
    pub const SD_TIMESTEPS: [f64; 10] = [999.0, 850.0, 736.0, 645.0, 545.0, 455.0, 343.0, 233.0, 124.0, 24.0];
    pub const SD_SIGMAS: [f64; 11] = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0];
    pub const SDXL_TIMESTEPS: [f64; 10] = [999.0, 845.0, 730.0, 587.0, 443.0, 310.0, 193.0, 116.0, 53.0, 13.0];
    pub const SDXL_SIGMAS: [f64; 11] = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.0];

    /// The AYS paper's recipe for other step counts: log-linear interpolation of the 10-step schedule
    /// (not in diffusers, which only ships the 10-step lists). Input/outputs exclude the final 0.
    pub fn loglinear_resample(sigmas: &[f64], n: usize) -> Vec<f64> {
        let m = sigmas.len();
        if n == m {
            return sigmas.to_vec();
        }
        let logs: Vec<f64> = sigmas.iter().map(|s| s.ln()).collect();
        (0..n)
            .map(|i| {
                let x = if n == 1 { 0.0 } else { i as f64 * (m - 1) as f64 / (n - 1) as f64 };
                super::interp_index(x, &logs).exp()
            })
            .collect()
    }
}

/// `ln Γ(x)` (Lanczos, g = 7, n = 9): plenty for the incomplete beta below.
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction for the regularized incomplete beta (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Regularized incomplete beta I_x(a, b).
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Inverse of `beta_cdf` by bisection (monotone; 200 halvings reach f64 resolution).
pub fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-17 {
            break;
        }
    }
    0.5 * (lo + hi)
}
