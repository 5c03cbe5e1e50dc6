//! Fused bf16 attention for x86-64 CPUs with AVX-512 BF16 (a CPU "flash attention").
//!
//! Why it exists: LibTorch's CPU `scaled_dot_product_attention` converts bf16 to f32 and runs sgemm, and the
//! batched-matmul path materialises the score matrix in memory; on a 2-core Zen 5 both spend ~300–450 ms on
//! SD1.5's 4096-token self-attention. Here each block of queries streams over blocks of keys with everything in
//! cache: scores via `vdpbf16ps` (bf16 pairs, f32 accumulation), an online softmax (running max and sum, the
//! accumulator rescaled when the max grows), then the bf16-rounded probabilities times the values, again with
//! `vdpbf16ps`. It has no backward pass: callers use a differentiable mode when gradients are needed.

use anyhow::{bail, Context, Result};
use sd_core::shared_out::SharedOut;
use tch::{Device, Kind, Tensor};

/// Whether this CPU can run the kernel (x86-64 with AVX-512 F/BW/VL and BF16).
pub fn available() -> bool {
    sd_core::device::CpuFeatures::bf16_kernels()
}

/// Whether [`attention`] accepts these inputs: bf16 CPU tensors on a capable CPU, none requiring grad (the kernel
/// has no backward, so training must take a differentiable path).
pub fn supports(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    available()
        && [q, k, v].iter().all(|t| t.kind() == Kind::BFloat16 && t.device() == Device::Cpu && !t.requires_grad())
}

/// softmax(q·kᵀ·scale)·v for bf16 q `[B, H, Lq, D]`, k `[B, H, Lk, D]`, v `[B, H, Lk, Dv]` (any strides) →
/// contiguous bf16 `[B, H, Lq, Dv]`. Fails if [`supports`] is false or the shapes disagree.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if !supports(q, k, v) {
        bail!("fused CPU attention needs bf16 CPU tensors without grad on a CPU with AVX-512 BF16");
    }
    let (qs, ks, vs) = (q.size(), k.size(), v.size());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        bail!("fused attention expects 4-D tensors, got q {qs:?}, k {ks:?}, v {vs:?}");
    }
    if ks[..2] != qs[..2] || vs[..3] != ks[..3] || ks[3] != qs[3] {
        bail!("fused attention: mismatched shapes q {qs:?}, k {ks:?}, v {vs:?}");
    }
    let dims = Dims::new(qs[0] * qs[1], qs[2], ks[2], qs[3], vs[3])?;
    let out = Tensor::f_empty([qs[0], qs[1], qs[2], vs[3]], (Kind::BFloat16, Device::Cpu))?;
    if dims.bh == 0 || dims.lq == 0 || dims.dv == 0 {
        return Ok(out);
    }
    if dims.lk == 0 || dims.d == 0 {
        bail!("fused attention: no keys or zero head dim (q {qs:?}, k {ks:?})");
    }
    let (q, k, v) = (q.f_contiguous()?, k.f_contiguous()?, v.f_contiguous()?);
    // SAFETY: each tensor is a contiguous CPU bf16 tensor (checked above) holding exactly `numel` 2-byte values,
    // kept alive by the bindings above for as long as the slices are used; bf16 has the size/alignment of u16.
    let (qd, kd, vd) = unsafe {
        (
            std::slice::from_raw_parts(q.data_ptr() as *const u16, q.numel()),
            std::slice::from_raw_parts(k.data_ptr() as *const u16, k.numel()),
            std::slice::from_raw_parts(v.data_ptr() as *const u16, v.numel()),
        )
    };
    let od = SharedOut::new(out.data_ptr() as *mut u16);
    #[cfg(target_arch = "x86_64")]
    {
        x86::run(&dims, qd, kd, vd, od, scale as f32).context("fused attention")?;
        Ok(out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (qd, kd, vd, od, scale);
        bail!("fused attention is only built for x86-64")
    }
}

/// Problem sizes and the blocking derived from them.
#[derive(Debug, Clone, Copy)]
struct Dims {
    bh: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    /// bf16 pairs per query/key row (D rounded up to even, /2).
    d2: usize,
    /// Keys per block (multiple of [`KEY_TILE`]).
    nk: usize,
    /// Key blocks per head.
    nblocks: usize,
    /// Dv rounded up to whole 16-lane vectors.
    dvp: usize,
}

/// Query rows per work item (multiple of the micro-kernels' [`ROWS`]).
const MQ: usize = 48;
/// Rows handled together by the micro-kernels.
const ROWS: usize = 6;
/// Keys per score micro-kernel tile (four 16-lane vectors).
const KEY_TILE: usize = 64;
/// Largest key block: its scores (MQ × 256 f32) and packed keys/values stay in L2 next to each other.
const NK_MAX: usize = 256;

impl Dims {
    fn new(bh: i64, lq: i64, lk: i64, d: i64, dv: i64) -> Result<Self> {
        let u = |x: i64| usize::try_from(x).context("negative dimension");
        let (bh, lq, lk, d, dv) = (u(bh)?, u(lq)?, u(lk)?, u(d)?, u(dv)?);
        let nk = NK_MAX.min(lk.div_ceil(KEY_TILE) * KEY_TILE).max(KEY_TILE);
        Ok(Self { bh, lq, lk, d, dv, d2: d.div_ceil(2), nk, nblocks: lk.div_ceil(nk), dvp: dv.div_ceil(16) * 16 })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Dims, KEY_TILE, MQ, ROWS};
    use anyhow::{bail, Result};
    use rayon::prelude::*;
    use sd_core::shared_out::SharedOut;
    use std::arch::x86_64::*;

    /// Per-worker buffers, reused across work items.
    struct Scratch {
        /// Query block as bf16 pairs, `[MQ][d2]`.
        q: Vec<u32>,
        /// Scaled scores (log2 domain), `[MQ][nk]`.
        s: Vec<f32>,
        /// Probabilities as bf16 pairs, `[MQ][nk/2]`.
        p: Vec<u32>,
        /// Unnormalised output accumulator, `[MQ][dvp]`.
        o: Vec<f32>,
        /// Running row maxima and sums of the online softmax.
        m: [f32; MQ],
        l: [f32; MQ],
    }

    impl Scratch {
        fn new(d: &Dims) -> Self {
            Self {
                q: vec![0; MQ * d.d2],
                s: vec![0.0; MQ * d.nk],
                p: vec![0; MQ * d.nk / 2],
                o: vec![0.0; MQ * d.dvp],
                m: [f32::NEG_INFINITY; MQ],
                l: [0.0; MQ],
            }
        }
    }

    /// The 32 bf16 lanes of an integer vector (same bits; the BF16 intrinsics take their own vector type).
    #[inline]
    fn as_bf16x32(x: __m512i) -> __m512bh {
        // SAFETY: both are plain 64-byte SIMD vectors; every bit pattern is valid for either.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    }

    /// The 16 bf16 lanes as an integer vector, for the integer (masked) stores.
    #[inline]
    fn as_i16x16(x: __m256bh) -> __m256i {
        // SAFETY: both are plain 32-byte SIMD vectors; every bit pattern is valid for either.
        unsafe { std::mem::transmute::<__m256bh, __m256i>(x) }
    }

    /// Packs bf16 `lo`, `hi` into the pair layout `vdpbf16ps` reads (first element in the low half).
    fn pair(lo: u16, hi: u16) -> u32 {
        lo as u32 | (hi as u32) << 16
    }

    pub(super) fn run(d: &Dims, q: &[u16], k: &[u16], v: &[u16], out: SharedOut, scale: f32) -> Result<()> {
        if q.len() != d.bh * d.lq * d.d || k.len() != d.bh * d.lk * d.d || v.len() != d.bh * d.lk * d.dv {
            bail!("internal: tensor sizes disagree with {d:?}");
        }
        if !super::available() {
            bail!("CPU lacks AVX-512 BF16");
        }
        let lkp = d.nblocks * d.nk;
        // Keys per head: `[block][pair of dims][key]`, so one 16-lane load holds one dim pair of 16 keys.
        let kblock = d.d2 * d.nk;
        let mut kp = vec![0u32; d.bh * d.nblocks * kblock];
        kp.par_chunks_mut(d.nblocks * kblock).enumerate().for_each(|(bh, dst)| {
            let src = &k[bh * d.lk * d.d..(bh + 1) * d.lk * d.d];
            for (key, row) in src.chunks_exact(d.d).enumerate() {
                let (blk, j) = (key / d.nk, key % d.nk);
                for p in 0..d.d2 {
                    let hi = if 2 * p + 1 < d.d { row[2 * p + 1] } else { 0 };
                    dst[blk * kblock + p * d.nk + j] = pair(row[2 * p], hi);
                }
            }
        });
        // Values per head: `[pair of keys][dim]`, so one 16-lane load holds 16 dims of two consecutive keys.
        let vhead = lkp / 2 * d.dvp;
        let mut vp = vec![0u32; d.bh * vhead];
        vp.par_chunks_mut(vhead).enumerate().for_each(|(bh, dst)| {
            let src = &v[bh * d.lk * d.dv..(bh + 1) * d.lk * d.dv];
            for jp in 0..d.lk.div_ceil(2) {
                let r0 = &src[2 * jp * d.dv..(2 * jp + 1) * d.dv];
                let r1 = if 2 * jp + 1 < d.lk { Some(&src[(2 * jp + 1) * d.dv..(2 * jp + 2) * d.dv]) } else { None };
                for c in 0..d.dv {
                    dst[jp * d.dvp + c] = pair(r0[c], r1.map_or(0, |r| r[c]));
                }
            }
        });
        let nqb = d.lq.div_ceil(MQ);
        // exp(x·scale) = 2^(x·scale·log2 e): scores are kept in the log2 domain so the softmax uses exp2.
        let c = scale * std::f32::consts::LOG2_E;
        // On LibTorch's threads (`sd_core::parallel`), which are awake between its operations anyway.
        let item_of = |s: &mut Scratch, item: usize| {
            let (bh, qb) = (item / nqb, item % nqb);
            let q0 = qb * MQ;
            let rows = MQ.min(d.lq - q0);
            s.q.fill(0);
            for i in 0..rows {
                let row = &q[(bh * d.lq + q0 + i) * d.d..][..d.d];
                for p in 0..d.d2 {
                    let hi = if 2 * p + 1 < d.d { row[2 * p + 1] } else { 0 };
                    s.q[i * d.d2 + p] = pair(row[2 * p], hi);
                }
            }
            s.o.fill(0.0);
            s.m = [f32::NEG_INFINITY; MQ];
            s.l = [0.0; MQ];
            for blk in 0..d.nblocks {
                let valid = d.nk.min(d.lk - blk * d.nk);
                let kb = &kp[(bh * d.nblocks + blk) * kblock..][..kblock];
                let vb = &vp[bh * vhead + blk * d.nk / 2 * d.dvp..][..d.nk / 2 * d.dvp];
                // SAFETY: `available()` checked the CPU features; every buffer has the sizes the kernels index
                // (`Scratch::new`, the packing above), and `valid ≤ nk`.
                unsafe {
                    scores(&s.q, d.d2, kb, d.nk, valid.div_ceil(KEY_TILE) * KEY_TILE, &mut s.s, c);
                    softmax(&s.s, &mut s.p, d.nk, valid, &mut s.m, &mut s.l, &mut s.o, d.dvp);
                    weighted_values(&s.p, d.nk / 2, vb, d.dvp, valid.div_ceil(2), &mut s.o);
                }
            }
            // SAFETY: as above; rows `q0..q0+rows` of head `bh` belong to this work item alone and lie inside
            // the `[bh, lq, dv]` output.
            unsafe {
                let dst = out.get().add((bh * d.lq + q0) * d.dv);
                finish(&s.o, &s.l, rows, d.dvp, d.dv, dst);
            }
        };
        sd_core::parallel::parallel_for(d.bh * nqb, 1, |begin, end| {
            let mut s = Scratch::new(d);
            for item in begin..end {
                item_of(&mut s, item);
            }
        })
    }

    /// S = Q·Kᵀ·c for the block's first `ncols` keys (a multiple of [`KEY_TILE`]); tiles of ROWS × 64 scores
    /// stay in 24 zmm accumulators while the D/2 dim pairs stream past.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn scores(q: &[u32], d2: usize, kb: &[u32], nk: usize, ncols: usize, s: &mut [f32], c: f32) {
        debug_assert!(q.len() >= MQ * d2 && kb.len() >= d2 * nk && s.len() >= MQ * nk && ncols <= nk);
        let cv = _mm512_set1_ps(c);
        let (qp, kp, sp) = (q.as_ptr(), kb.as_ptr(), s.as_mut_ptr());
        for i0 in (0..MQ).step_by(ROWS) {
            for j0 in (0..ncols).step_by(KEY_TILE) {
                let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
                for p in 0..d2 {
                    // Raw accesses: p < d2, j0 + 64 ≤ ncols ≤ nk, i0 + ROWS ≤ MQ, within the asserted sizes.
                    let mut kv: [__m512bh; 4] = [as_bf16x32(_mm512_setzero_si512()); 4];
                    for (t, x) in kv.iter_mut().enumerate() {
                        *x = as_bf16x32(_mm512_loadu_si512(kp.add(p * nk + j0 + 16 * t) as *const _));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let qv: __m512bh = as_bf16x32(_mm512_set1_epi32(*qp.add((i0 + r) * d2 + p) as i32));
                        for t in 0..4 {
                            acc_r[t] = _mm512_dpbf16_ps(acc_r[t], qv, kv[t]);
                        }
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    for (t, a) in acc_r.iter().enumerate() {
                        _mm512_storeu_ps(sp.add((i0 + r) * nk + j0 + 16 * t), _mm512_mul_ps(*a, cv));
                    }
                }
            }
        }
    }

    /// Online-softmax step for one key block: per row, the new running max over the `valid` scores, the
    /// accumulator and running sum rescaled by 2^(m_old − m_new), and the probabilities 2^(s − m_new) rounded to
    /// bf16 (zero for padded keys).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn softmax(
        s: &[f32],
        p: &mut [u32],
        nk: usize,
        valid: usize,
        m: &mut [f32; MQ],
        l: &mut [f32; MQ],
        o: &mut [f32],
        dvp: usize,
    ) {
        debug_assert!(s.len() >= MQ * nk && p.len() >= MQ * nk / 2 && o.len() >= MQ * dvp && valid <= nk);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mask_of = |t: usize| -> u16 {
            let lanes = valid.saturating_sub(16 * t).min(16);
            if lanes == 16 {
                u16::MAX
            } else {
                (1u16 << lanes) - 1
            }
        };
        for i in 0..MQ {
            let (row, prow) = (s.as_ptr().add(i * nk), (p.as_mut_ptr() as *mut u16).add(i * nk));
            let mut mx = ninf;
            for t in 0..valid.div_ceil(16) {
                mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, mask_of(t), row.add(16 * t)));
            }
            let m_new = m[i].max(_mm512_reduce_max_ps(mx));
            let alpha = (m[i] - m_new).exp2();
            let mv = _mm512_set1_ps(m_new);
            let mut sum = _mm512_setzero_ps();
            for t in 0..nk / 16 {
                let mask = mask_of(t);
                let e = if mask == 0 {
                    _mm512_setzero_ps()
                } else {
                    let x = _mm512_mask_loadu_ps(ninf, mask, row.add(16 * t));
                    _mm512_maskz_mov_ps(mask, exp2(_mm512_sub_ps(x, mv)))
                };
                sum = _mm512_add_ps(sum, e);
                _mm256_storeu_si256(prow.add(16 * t) as *mut __m256i, as_i16x16(_mm512_cvtneps_pbh(e)));
            }
            l[i] = l[i] * alpha + _mm512_reduce_add_ps(sum);
            m[i] = m_new;
            if alpha != 1.0 {
                let av = _mm512_set1_ps(alpha);
                let orow = o.as_mut_ptr().add(i * dvp);
                for t in 0..dvp / 16 {
                    _mm512_storeu_ps(orow.add(16 * t), _mm512_mul_ps(_mm512_loadu_ps(orow.add(16 * t)), av));
                }
            }
        }
    }

    /// 2^x for x ≤ 0 (−∞ gives 0): x = n + f with |f| ≤ ½, 2^f by a degree-4 polynomial fitted for least
    /// maximum relative error (2.9e-6, against the 2e-3 of the bf16 rounding every probability gets next; a
    /// degree-6 Taylor polynomial's 1e-7 bought nothing and cost two more FMAs per score), times 2^n with
    /// `vscalefps`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp2(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-200.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm512_sub_ps(x, n);
        // c4 … c0 (Horner order), c0 = 1 exactly so that 2^0 = 1.
        #[allow(clippy::excessive_precision)]
        let coef = [9.585_634e-3, 5.590_590_5e-2, 2.402_404_1e-1, 6.931_243e-1, 1.0];
        let mut y = _mm512_set1_ps(coef[0]);
        for c in &coef[1..] {
            y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(*c));
        }
        _mm512_scalef_ps(y, n)
    }

    /// O += P·V for the block: `npairs` key pairs, all Dv vectors, in tiles of ROWS rows × up to 4 vectors.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn weighted_values(p: &[u32], pstride: usize, vb: &[u32], dvp: usize, npairs: usize, o: &mut [f32]) {
        debug_assert!(p.len() >= MQ * pstride && vb.len() >= npairs * dvp && o.len() >= MQ * dvp && npairs <= pstride);
        let nv = dvp / 16;
        for i0 in (0..MQ).step_by(ROWS) {
            let mut v0 = 0;
            while v0 < nv {
                let (pp, vp, op) =
                    (p.as_ptr().add(i0 * pstride), vb.as_ptr().add(16 * v0), o.as_mut_ptr().add(i0 * dvp + 16 * v0));
                match nv - v0 {
                    1 => pv_tile::<1>(pp, pstride, vp, dvp, npairs, op),
                    2 => pv_tile::<2>(pp, pstride, vp, dvp, npairs, op),
                    3 => pv_tile::<3>(pp, pstride, vp, dvp, npairs, op),
                    _ => pv_tile::<4>(pp, pstride, vp, dvp, npairs, op),
                }
                v0 += 4;
            }
        }
    }

    /// ROWS × NV output vectors: accumulators loaded from `o`, `npairs` broadcast probability pairs times value
    /// pairs added, stored back.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pv_tile<const NV: usize>(
        p: *const u32,
        pstride: usize,
        v: *const u32,
        dvp: usize,
        npairs: usize,
        o: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; ROWS];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (t, a) in acc_r.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(o.add(r * dvp + 16 * t));
            }
        }
        for jp in 0..npairs {
            // Raw accesses: jp < npairs rows of `v`, t < NV vectors inside dvp, r < ROWS rows.
            let mut vv: [__m512bh; NV] = [as_bf16x32(_mm512_setzero_si512()); NV];
            for (t, x) in vv.iter_mut().enumerate() {
                *x = as_bf16x32(_mm512_loadu_si512(v.add(jp * dvp + 16 * t) as *const _));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let pv: __m512bh = as_bf16x32(_mm512_set1_epi32(*p.add(r * pstride + jp) as i32));
                for t in 0..NV {
                    acc_r[t] = _mm512_dpbf16_ps(acc_r[t], pv, vv[t]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (t, a) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(o.add(r * dvp + 16 * t), *a);
            }
        }
    }

    /// out = O / l rounded to bf16 for the block's `rows` valid rows (Dv columns each, masked tail store).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn finish(o: &[f32], l: &[f32; MQ], rows: usize, dvp: usize, dv: usize, out: *mut u16) {
        debug_assert!(o.len() >= MQ * dvp && rows <= MQ);
        for (i, li) in l.iter().enumerate().take(rows) {
            let inv = _mm512_set1_ps(1.0 / li);
            for t in 0..dvp / 16 {
                let lanes = (dv - 16 * t).min(16);
                let mask = if lanes == 16 { u16::MAX } else { (1u16 << lanes) - 1 };
                let x = _mm512_mul_ps(_mm512_loadu_ps(o.as_ptr().add(i * dvp + 16 * t)), inv);
                _mm256_mask_storeu_epi16(out.add(i * dv + 16 * t) as *mut i16, mask, as_i16x16(_mm512_cvtneps_pbh(x)));
            }
        }
    }
}
