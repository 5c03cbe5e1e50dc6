//! 3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2×2, 3×3), bf16 on x86-64 CPUs with
//! AVX-512 BF16.
//!
//! Why it exists: a direct bf16 3×3 convolution already runs at the cores' bf16 dot-product limit (oneDNN's packed
//! kernels), so the only way to make it faster is to do fewer multiplications. F(2×2, 3×3) computes each 2×2 block
//! of outputs from a 4×4 block of inputs with 16 products per channel pair instead of 36: the input tiles and the
//! weights are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), the 16 transformed positions become 16 independent matrix
//! products over the channels (`M[p] = V[p] · U[p]`, one grouped 1×1 oneDNN convolution), and `Y = Aᵀ M A` folds
//! each tile back with the bias. The transforms are additions only (exact in f32, AVX-512, on LibTorch's threads);
//! the price is that `V` and `M` are rounded to bf16: 1.3–2.2× the rounding error of a direct bf16 convolution (the
//! larger tiles F(3×3, 3×3) and F(4×4, 3×3) multiply it by 5–8 in bf16 and are not offered). [`worth_it`] has the
//! measured speeds.
//!
//! Work is done in chunks of a fixed number of tiles per channel count, so the transformed input stays in cache
//! and never exceeds [`MAX_CHUNK_TILES`] tiles whatever the image size, and the grouped kernel always sees the
//! input size its weight was packed for.

use crate::shared_out::SharedOut;
use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

/// Tiles per chunk: as many as keep the larger of `V` and `M` (`16 · tiles · channels` bf16 values) near 1.5 MiB, so
/// both stay in cache between the transforms and the products (measured on SD shapes: 1–2 MiB best, 4 MiB 5–30 %
/// slower, unchunked up to 2× slower), but at least [`MIN_CHUNK_TILES`].
const CHUNK_BYTES: usize = 1536 * 1024;
/// Fewest tiles per chunk, so that the weights, read again for every chunk, are read for enough tiles.
pub const MIN_CHUNK_TILES: usize = 256;
/// Most tiles per chunk, whatever the channels: bounds the scratch.
pub const MAX_CHUNK_TILES: usize = 4096;

/// Whether this CPU and LibTorch run the kernel: x86-64 with AVX-512 F/BW/VL and BF16, LibTorch's packed oneDNN
/// kernels ([`crate::onednn::supported`]), and no AMX, where the direct kernels run on the tile units and Winograd
/// was not measured. `SD_RS_WINOGRAD=0` turns it off (the switch the benchmarks use to compare).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("SD_RS_WINOGRAD").map_or(true, |v| v != "0")
            && crate::device::CpuFeatures::bf16_kernels()
            && !crate::device::CpuFeatures::detect().amx_bf16
            && crate::onednn::supported()
    })
}

/// Whether a 3×3 convolution from `cin` to `cout` channels should run here rather than on oneDNN's direct kernel.
/// Measured on a 2-core Zen 5 (`cargo run --release -p sd-benches --example conv_call`, alternated, medians):
/// 0.52–0.58 of the direct time for the VAE's 256- and 512-channel layers at 64²–256² and the UNet's 320- and
/// 640-channel layers at 32²–64² (batch 2), 0.67 for the VAE's 128-channel layers at 512². Not for 1280-channel
/// outputs: those sit at SD UNets' smallest latents, where a chunk is mostly empty (16² at batch 2: 1.02; 8²: 3.8).
pub fn worth_it(cin: i64, cout: i64) -> bool {
    cin >= 128 && (128..=640).contains(&cout) && cin % 16 == 0 && cout % 16 == 0
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

/// A 3×3 weight transformed for [`conv`]: the 16 `[C, O]` bf16 matrices of [`transform_weight`] as one 1×1
/// convolution weight with 16 groups (`[16·O, C, 1, 1]`, group `p` holding `U[p]ᵀ`), packed by oneDNN for the chunk
/// size [`conv`] runs it at. One grouped oneDNN kernel runs the 16 products 10–15 % faster than LibTorch's `bmm`.
#[derive(Debug)]
pub struct Weight {
    packed: Tensor,
    cin: i64,
    cout: i64,
}

impl Weight {
    /// Transforms a `[O, C, 3, 3]` weight (channels multiples of 16); its memory is 16/9 of the plain bf16
    /// weight's.
    pub fn new(weight: &Tensor) -> Result<Self> {
        if !available() {
            bail!("Winograd convolution needs a CPU with AVX-512 BF16 and LibTorch's oneDNN kernels");
        }
        let u = transform_weight(weight)?;
        let (cin, cout) = (u.size()[1], u.size()[2]);
        ensure!(
            cin % 16 == 0 && cout % 16 == 0,
            "Winograd convolution: channels {cin} → {cout} are not multiples of 16"
        );
        let grouped = u.f_transpose(1, 2)?.f_contiguous()?.f_reshape([16 * cout, cin, 1, 1])?;
        let tiles = chunk_tiles_for(cin as usize, cout as usize) as i64;
        let packed = crate::onednn::pack_grouped_conv_weight(&grouped, 16, [1, 16 * cin, tiles, 1])?;
        Ok(Self { packed, cin, cout })
    }

    /// Input and output channels.
    pub fn channels(&self) -> (i64, i64) {
        (self.cin, self.cout)
    }

    /// The `[16, C, O]` transformed matrices, unpacked.
    fn matrices(&self) -> Tensor {
        self.packed.to_dense(None, false).reshape([16, self.cout, self.cin]).transpose(1, 2)
    }

    /// The `[O, C, 3, 3]` f32 weight back from the transformed one, for a caller whose input [`conv`] cannot take:
    /// `L U Lᵀ` with `L = [[1, 0, 0, 0], [0, 1, −1, 0], [0, 0, 0, 1]]`, G's left inverse (exact but for `U`'s bf16
    /// rounding).
    pub fn plain(&self) -> Tensor {
        let l = Tensor::from_slice(&[1f32, 0., 0., 0., 0., 1., -1., 0., 0., 0., 0., 1.]).reshape([3, 4]);
        let u = self.matrices().to_kind(Kind::Float).reshape([4, 4, self.cin, self.cout]);
        Tensor::einsum("ij,jkco,lk->ocil", &[&l, &u, &l], None::<&[i64]>)
    }
}

/// Tiles per chunk for these channel counts; see [`CHUNK_BYTES`].
fn chunk_tiles_for(c: usize, o: usize) -> usize {
    (CHUNK_BYTES / (32 * c.max(o))).clamp(MIN_CHUNK_TILES, MAX_CHUNK_TILES)
}

/// `conv2d(x, W, bias, stride 1, padding 1)` with `weight = Weight::new(W)`: bf16 `x` `[N, C, H, W]` (any layout)
/// → bf16 `[N, O, H, W]` in channels-last memory.
pub fn conv(x: &Tensor, weight: &Weight, bias: Option<&Tensor>) -> Result<Tensor> {
    // A `Weight` exists only where `available()` held and its channels are multiples of 16 (`Weight::new`).
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
    // Chunks of a fixed number of tiles for these channels (rows of tiles may straddle two chunks), so the grouped
    // convolution always runs on the input size its weight was packed for: oneDNN re-lays out the weight, or falls to
    // far slower kernels (180× at 32 tiles), for other sizes.
    let total = d.n * d.th * d.tw;
    let chunk_tiles = chunk_tiles_for(c, o);
    let ct = chunk_tiles as i64;
    // The transformed input, tile-major `[tile][16][C]`: a channels-last `[1, 16·C, tiles, 1]`.
    let v = Tensor::f_empty([1, ct, 1, 16 * xs[1]], (Kind::BFloat16, Device::Cpu))?.f_permute([0, 3, 1, 2])?;
    let vstride = Strides { p: c, t: 16 * c };
    let mut t0 = 0;
    while t0 < total {
        let tiles = chunk_tiles.min(total - t0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `xin` is a contiguous bf16 NHWC tensor of `n·h·w·c` values; `v` holds `16 · chunk_tiles · c`
        // values, of which the first `tiles ≤ chunk_tiles` tiles are written; `Weight::new` checked the CPU.
        unsafe {
            let (x, vp) = (xin.data_ptr() as *const u16, SharedOut::new(v.data_ptr() as *mut u16));
            x86::input_transform(&d, x, vp, vstride, t0, tiles)?;
        }
        // The 16 products, tile-major `[tile][16][O]`.
        if tiles < chunk_tiles {
            // The last chunk's unused tiles: zeros rather than stale values (their products are not read).
            let _ = v.f_narrow(2, tiles as i64, ct - tiles as i64)?.f_zero_()?;
        }
        let product = crate::onednn::conv_grouped(&v, &weight.packed, 16)?;
        let product =
            if crate::layout::is_channels_last(&product) { product } else { crate::layout::to_channels_last(&product) };
        let mstride = Strides { p: o, t: 16 * o };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `product` holds the 16 `[tiles, o]` bf16 products at `mstride`; `out` is a contiguous `n·h·w·o`
        // bf16 tensor; each tile writes only its own 2×2 outputs.
        unsafe {
            let (m, out) = (product.data_ptr() as *const u16, SharedOut::new(out.data_ptr() as *mut u16));
            x86::output_transform(&d, m, mstride, &bias, out, t0, tiles)?;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (&product, mstride, &bias, &xin);
        t0 += tiles;
    }
    Ok(out.f_permute([0, 3, 1, 2])?)
}

/// Where position `p` of tile `t` starts in a transformed buffer: `p · p_stride + t · t_stride` elements.
#[derive(Debug, Clone, Copy)]
struct Strides {
    p: usize,
    t: usize,
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

impl Dims {
    /// Image, tile row and tile column of tile `t` (numbered image by image, row by row).
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.th * self.tw;
        let rem = t % per_image;
        (t / per_image, rem / self.tw, rem % self.tw)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Dims, Strides};
    use crate::shared_out::SharedOut;
    use anyhow::Result;
    use std::arch::x86_64::*;

    /// Runs `body(image, tile row, tile column, i)` for tiles `t0 + i`, `i < count`, in parallel on LibTorch's
    /// threads (see `crate::parallel`: 5 % faster decodes than on rayon's).
    fn each_tile(d: &Dims, t0: usize, count: usize, body: impl Fn(usize, usize, usize, usize) + Sync) -> Result<()> {
        crate::parallel::parallel_for(count, 16, |begin, end| {
            for i in begin..end {
                let (img, ty, tx) = d.tile(t0 + i);
                body(img, ty, tx, i);
            }
        })
    }

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

    /// V = Bᵀ d B for tiles `t0..t0+count` (tiles numbered image by image, row by row), tile `t0 + i` written at
    /// `v + p · s.p + i · s.t`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn input_transform(
        d: &Dims,
        x: *const u16,
        v: SharedOut,
        s: Strides,
        t0: usize,
        count: usize,
    ) -> Result<()> {
        let xp = x as usize;
        each_tile(d, t0, count, |img, ty, tx, i| {
            // SAFETY: the caller's contract; reads stay inside image `img`, writes inside tile `i`'s slots.
            unsafe { input_tile(d, xp as *const u16, v.get(), s, img, ty, tx, i) }
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn input_tile(d: &Dims, x: *const u16, v: *mut u16, s: Strides, img: usize, ty: usize, tx: usize, t: usize) {
        let zero = _mm512_setzero_ps();
        let image = x.add(img * d.h * d.w * d.c);
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
                    store(v.add((4 * a + e) * s.p + t * s.t + c0), *val);
                }
            }
        }
    }

    /// Y = Aᵀ M A + bias for tiles `t0..t0+count`, tile `t0 + i`'s products at `m + p · s.p + i · s.t`, written
    /// into the NHWC output.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn output_transform(
        d: &Dims,
        m: *const u16,
        s: Strides,
        bias: &[f32],
        out: SharedOut,
        t0: usize,
        count: usize,
    ) -> Result<()> {
        let mp = m as usize;
        each_tile(d, t0, count, |img, ty, tx, i| {
            // SAFETY: the caller's contract; tile `i` writes only its own 2×2 outputs of image `img`.
            unsafe { output_tile(d, mp as *const u16, s, bias, out.get(), img, ty, tx, i) }
        })
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn output_tile(
        d: &Dims,
        m: *const u16,
        s: Strides,
        bias: &[f32],
        out: *mut u16,
        img: usize,
        ty: usize,
        tx: usize,
        t: usize,
    ) {
        let image = out.add(img * d.h * d.w * d.o);
        for o0 in (0..d.o).step_by(16) {
            let mut rows = [[_mm512_setzero_ps(); 4]; 2];
            let [top, bottom] = &mut rows;
            // Aᵀ on the rows: (0 + 1 + 2, 1 − 2 − 3).
            for (e, (top, bottom)) in top.iter_mut().zip(bottom.iter_mut()).enumerate() {
                let at = |a: usize| m.add((4 * a + e) * s.p + t * s.t + o0);
                let (m0, m1, m2, m3) = (load(at(0)), load(at(1)), load(at(2)), load(at(3)));
                *top = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                *bottom = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            let bv = _mm512_loadu_ps(bias.as_ptr().add(o0));
            for (a, row) in rows.iter().enumerate() {
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
