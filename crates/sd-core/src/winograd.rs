//! 3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2×2, 3×3), bf16 on x86-64 CPUs with
//! AVX-512 BF16.
//!
//! Why it exists: a direct bf16 3×3 convolution already runs at the cores' bf16 dot-product limit (oneDNN's packed
//! kernels: 410–450 GFLOP/s on a 2-core Zen 5), so the only way to make it faster is to do fewer multiplications.
//! F(2×2, 3×3) computes each 2×2 block of outputs from a 4×4 block of inputs with 16 products per channel pair
//! instead of 36: the input tiles and the weights are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), the 16 transformed
//! positions become 16 independent matrix products over the channels (`M[p] = V[p] · U[p]`, LibTorch's bf16
//! `bmm`), and `Y = Aᵀ M A` folds each tile back. The transforms are additions only (exact in f32); the price is
//! that `V` and `M` are rounded to bf16, which roughly doubles the rounding error of a plain bf16 convolution (the
//! larger tiles F(4×4, 3×3) and F(3×3, 3×3) multiply it by 6–8 in bf16 and are not offered). Measured against the
//! packed direct kernels, per layer shape, in [`worth_it`].
//!
//! Work is done in chunks of tile rows, so the transformed input never exceeds [`MAX_CHUNK_TILES`] tiles whatever
//! the image size.

use crate::shared_out::SharedOut;
use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

/// Tiles per chunk: as many as keep the larger of `V` and `M` (`16 · tiles · channels` bf16 values) near 1.5 MiB, so
/// both stay in cache between the transforms and the products (measured on SD shapes: 1–2 MiB best, 4 MiB 5–30 %
/// slower, unchunked up to 2× slower), but at least [`MIN_CHUNK_TILES`], so that the weights, read again for every
/// chunk, are read for enough tiles.
const CHUNK_BYTES: usize = 1536 * 1024;
/// Fewest tiles per chunk, so that the weights, read again for every chunk, are read for enough tiles.
pub const MIN_CHUNK_TILES: usize = 256;
/// Most tiles per chunk, whatever the channels: bounds the scratch.
pub const MAX_CHUNK_TILES: usize = 4096;

/// Whether this CPU runs the kernel: x86-64 with AVX-512 F/BW/VL and BF16 (native bf16 `bmm` and rounding), and no
/// AMX, where the direct kernels run on the tile units and Winograd was not measured.
/// `SD_RS_WINOGRAD=0` turns it off (the switch the benchmarks use to compare).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let features = crate::device::CpuFeatures::detect();
        std::env::var("SD_RS_WINOGRAD").map_or(true, |v| v != "0")
            && cfg!(target_arch = "x86_64")
            && features.avx512_bf16
            && !features.amx_bf16
            && simd_available()
    })
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a 3×3 convolution from `cin` to `cout` channels gains from Winograd here. Measured on a 2-core Zen 5
/// (`cargo run --release -p sd-benches --example conv_call`, alternated, medians): the VAE decoder's 256- and
/// 512-channel layers at 64²–256² take 0.73–0.82 of oneDNN's direct time, its 128-channel layers at 512² 1.1 (few
/// channels: the 4× larger transformed input costs more than the products save). Which models use it at all is the
/// loader's choice (`VarBuilder::with_winograd`).
pub fn worth_it(cin: i64, cout: i64) -> bool {
    cin >= 256 && cout >= 256 && cin % 16 == 0 && cout % 16 == 0
}

/// G of F(2, 3): the weight transform.
const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// Transforms a `[O, C, 3, 3]` weight (any dtype, any layout) into the `[16, C, O]` bf16 matrices the products use:
/// `U[4ξ + ν] = (G g Gᵀ)[ξ][ν]`, computed in f32 and rounded once.
pub fn transform_weight(weight: &Tensor) -> Result<Tensor> {
    let size = weight.size();
    ensure!(
        size.len() == 4 && size[2] == 3 && size[3] == 3,
        "Winograd weight transform: expected a [out, in, 3, 3] weight, got {size:?}"
    );
    let g = Tensor::from_slice(G.as_flattened()).reshape([4, 3]);
    let w = weight.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
    let u = Tensor::f_einsum("ij,ocjk,lk->ilco", &[&g, &w, &g], None::<&[i64]>)?;
    Ok(u.f_reshape([16, size[1], size[0]])?.f_to_kind(Kind::BFloat16)?.f_contiguous()?)
}

/// A 3×3 weight transformed for [`conv`]: the `[16, C, O]` bf16 matrices of [`transform_weight`].
#[derive(Debug)]
pub struct Weight {
    u: Tensor,
    cin: i64,
    cout: i64,
}

impl Weight {
    /// Transforms a `[O, C, 3, 3]` weight; its memory is 16/9 of the plain bf16 weight's.
    pub fn new(weight: &Tensor) -> Result<Self> {
        let u = transform_weight(weight)?;
        let (cin, cout) = (u.size()[1], u.size()[2]);
        Ok(Self { u, cin, cout })
    }

    /// Input and output channels.
    pub fn channels(&self) -> (i64, i64) {
        (self.cin, self.cout)
    }

    /// The `[O, C, 3, 3]` f32 weight back from the transformed one, for a caller whose input [`conv`] cannot take:
    /// `L U Lᵀ` with `L = [[1, 0, 0, 0], [0, 1, −1, 0], [0, 0, 0, 1]]`, G's left inverse (exact but for `U`'s bf16
    /// rounding).
    pub fn plain(&self) -> Tensor {
        let l = Tensor::from_slice(&[1f32, 0., 0., 0., 0., 1., -1., 0., 0., 0., 0., 1.]).reshape([3, 4]);
        let u = self.u.to_kind(Kind::Float).reshape([4, 4, self.cin, self.cout]);
        Tensor::einsum("ij,jkco,lk->ocil", &[&l, &u, &l], None::<&[i64]>)
    }
}

/// `conv2d(x, W, bias, stride 1, padding 1)` with `weight = Weight::new(W)`: bf16 `x` `[N, C, H, W]` (any layout)
/// → bf16 `[N, O, H, W]` in channels-last memory.
pub fn conv(x: &Tensor, weight: &Weight, bias: Option<&Tensor>) -> Result<Tensor> {
    if !available() {
        bail!("Winograd convolution needs a CPU with AVX-512 BF16");
    }
    let xs = x.size();
    ensure!(
        x.device() == Device::Cpu && x.kind() == Kind::BFloat16 && xs.len() == 4,
        "Winograd convolution: expected a 4-D bf16 CPU input, got {:?} {xs:?} on {:?}",
        x.kind(),
        x.device()
    );
    ensure!(xs[1] == weight.cin, "Winograd convolution: weight for {} input channels, input {xs:?}", weight.cin);
    let dim = |v: i64| usize::try_from(v).context("negative dimension");
    let (n, c, h, w, o) = (dim(xs[0])?, dim(xs[1])?, dim(xs[2])?, dim(xs[3])?, dim(weight.cout)?);
    ensure!(c % 16 == 0 && o % 16 == 0, "Winograd convolution: channels {c} → {o} are not multiples of 16");
    let bias = match bias {
        Some(b) => {
            ensure!(b.size() == [weight.cout], "Winograd convolution: bias {:?} for {o} outputs", b.size());
            Vec::<f32>::try_from(b.f_to_kind(Kind::Float)?.f_contiguous()?)?
        }
        None => vec![0.0; o],
    };
    // NHWC input, NHWC output (returned as the NCHW view of it).
    let xin = x.f_permute([0, 2, 3, 1])?.f_contiguous()?;
    let out = Tensor::f_empty([xs[0], xs[2], xs[3], weight.cout], (Kind::BFloat16, Device::Cpu))?;
    if n == 0 || h == 0 || w == 0 || o == 0 {
        return Ok(out.f_permute([0, 3, 1, 2])?);
    }
    let d = Dims { n, c, h, w, o, th: h.div_ceil(2), tw: w.div_ceil(2) };
    // Whole tile rows per chunk, at least one.
    let chunk = (CHUNK_BYTES / (32 * d.c.max(d.o))).clamp(MIN_CHUNK_TILES, MAX_CHUNK_TILES);
    let rows_per_chunk = (chunk / d.tw).max(1).min(d.n * d.th);
    let chunk_tiles = rows_per_chunk * d.tw;
    let v = Tensor::f_empty([16, chunk_tiles as i64, xs[1]], (Kind::BFloat16, Device::Cpu))?;
    let m = Tensor::f_empty([16, chunk_tiles as i64, weight.cout], (Kind::BFloat16, Device::Cpu))?;
    let total_rows = d.n * d.th;
    let mut row0 = 0;
    while row0 < total_rows {
        let rows = rows_per_chunk.min(total_rows - row0);
        let tiles = (rows * d.tw) as i64;
        let vc = v.f_narrow(1, 0, tiles)?;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `xin` is a contiguous bf16 NHWC tensor of `n·h·w·c` values; `v` holds `16 · chunk_tiles · c`
        // values of which rows `row0..row0+rows` (≤ chunk_tiles tiles) are written; `available()` checked the CPU.
        unsafe {
            x86::input_transform(
                &d,
                xin.data_ptr() as *const u16,
                SharedOut::new(v.data_ptr() as *mut u16),
                row0,
                rows,
                chunk_tiles,
            );
        }
        // The 16 products `[tiles, O]`, `chunk_tiles` rows apart.
        let _ = vc.f_bmm_out(&m.f_narrow(1, 0, tiles)?, &weight.u)?;
        let mut addrs = [0usize; 16];
        for (p, a) in addrs.iter_mut().enumerate() {
            *a = m.data_ptr() as usize + p * chunk_tiles * o * 2;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: each address holds a `[tiles, o]` bf16 product inside `m`; `out` is a contiguous
        // `n·h·w·o` bf16 tensor; each tile row writes only its own two output rows.
        unsafe {
            x86::output_transform(&d, &addrs, &bias, SharedOut::new(out.data_ptr() as *mut u16), row0, rows);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (&addrs, &bias, &xin);
        row0 += rows;
    }
    Ok(out.f_permute([0, 3, 1, 2])?)
}

/// Problem sizes: batch, channels in, height, width, channels out, tile rows and columns (2×2 outputs each).
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    th: usize,
    tw: usize,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Dims;
    use crate::shared_out::SharedOut;
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// 16 bf16 values → f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn load(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
    }

    /// 16 f32 → bf16 (round to nearest even).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn store(p: *mut u16, v: __m512) {
        let b = _mm512_cvtneps_pbh(v);
        // SAFETY: both are plain 32-byte SIMD vectors; every bit pattern is valid for either.
        let bits = std::mem::transmute::<__m256bh, __m256i>(b);
        _mm256_storeu_si256(p as *mut __m256i, bits);
    }

    /// V = Bᵀ d B for every tile of tile rows `row0..row0+rows` (row `r` = image `r / th`, tile row `r % th`), written
    /// to `v[p][tile][c]` with `tile` counted from the chunk's first tile and `stride` tiles per position.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn input_transform(
        d: &Dims,
        x: *const u16,
        v: SharedOut,
        row0: usize,
        rows: usize,
        stride: usize,
    ) {
        let xp = x as usize;
        let d = *d;
        (0..rows).into_par_iter().for_each(move |i| {
            let r = row0 + i;
            let (img, ty) = (r / d.th, r % d.th);
            // SAFETY: the caller's contract; reads stay inside image `img`, writes inside this row's tiles.
            unsafe { input_row(&d, xp as *const u16, v.get(), img, ty, i * d.tw, stride) }
        });
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn input_row(d: &Dims, x: *const u16, v: *mut u16, img: usize, ty: usize, tile0: usize, stride: usize) {
        let zero = _mm512_setzero_ps();
        let image = x.add(img * d.h * d.w * d.c);
        for tx in 0..d.tw {
            let t = tile0 + tx;
            for c0 in (0..d.c).step_by(16) {
                // The 4×4 input block starting one row and column before the tile's first output (zero padding).
                let mut b = [[zero; 4]; 4];
                for (a, row) in b.iter_mut().enumerate() {
                    let y = (2 * ty + a) as isize - 1;
                    if y < 0 || y >= d.h as isize {
                        continue;
                    }
                    for (e, val) in row.iter_mut().enumerate() {
                        let xx = (2 * tx + e) as isize - 1;
                        if xx >= 0 && xx < d.w as isize {
                            *val = load(image.add((y as usize * d.w + xx as usize) * d.c + c0));
                        }
                    }
                }
                // Bᵀ on the rows, then B on the columns: rows (0 − 2, 1 + 2, 2 − 1, 1 − 3).
                let mut r = [[zero; 4]; 4];
                for e in 0..4 {
                    r[0][e] = _mm512_sub_ps(b[0][e], b[2][e]);
                    r[1][e] = _mm512_add_ps(b[1][e], b[2][e]);
                    r[2][e] = _mm512_sub_ps(b[2][e], b[1][e]);
                    r[3][e] = _mm512_sub_ps(b[1][e], b[3][e]);
                }
                for (a, row) in r.iter().enumerate() {
                    let vals = [
                        _mm512_sub_ps(row[0], row[2]),
                        _mm512_add_ps(row[1], row[2]),
                        _mm512_sub_ps(row[2], row[1]),
                        _mm512_sub_ps(row[1], row[3]),
                    ];
                    for (e, val) in vals.iter().enumerate() {
                        store(v.add(((4 * a + e) * stride + t) * d.c + c0), *val);
                    }
                }
            }
        }
    }

    /// Y = Aᵀ M A + bias for the tiles of tile rows `row0..row0+rows`, from the products at `m[p]` (`[tile][o]` each),
    /// written into the NHWC output.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn output_transform(
        d: &Dims,
        m: &[usize; 16],
        bias: &[f32],
        out: SharedOut,
        row0: usize,
        rows: usize,
    ) {
        let m = *m;
        let d = *d;
        (0..rows).into_par_iter().for_each(move |i| {
            let r = row0 + i;
            let (img, ty) = (r / d.th, r % d.th);
            // SAFETY: the caller's contract; this row writes output rows 2ty and 2ty + 1 of image `img` only.
            unsafe { output_row(&d, &m, bias, out.get(), img, ty, i * d.tw) }
        });
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn output_row(d: &Dims, m: &[usize; 16], bias: &[f32], out: *mut u16, img: usize, ty: usize, tile0: usize) {
        let image = out.add(img * d.h * d.w * d.o);
        for tx in 0..d.tw {
            let t = tile0 + tx;
            for o0 in (0..d.o).step_by(16) {
                let mut s = [[_mm512_setzero_ps(); 4]; 2];
                // Aᵀ on the rows: (0 + 1 + 2, 1 − 2 − 3).
                for e in 0..4 {
                    let at = |a: usize| (m[4 * a + e] as *const u16).add(t * d.o + o0);
                    let (m0, m1, m2, m3) = (load(at(0)), load(at(1)), load(at(2)), load(at(3)));
                    s[0][e] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    s[1][e] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                let bv = _mm512_loadu_ps(bias.as_ptr().add(o0));
                for (a, row) in s.iter().enumerate() {
                    let y = 2 * ty + a;
                    if y >= d.h {
                        continue;
                    }
                    let vals = [
                        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]), bv),
                        _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]), bv),
                    ];
                    for (e, val) in vals.iter().enumerate() {
                        let xx = 2 * tx + e;
                        if xx < d.w {
                            store(image.add((y * d.w + xx) * d.o + o0), *val);
                        }
                    }
                }
            }
        }
    }
}
