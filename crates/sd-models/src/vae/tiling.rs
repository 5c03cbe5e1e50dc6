//! Tiled VAE encode/decode (diffusers `AutoencoderKL.enable_tiling`): the input is cut into overlapping tiles,
//! each run through the network alone, and every tile's top and left overlap is cross-faded linearly with its
//! neighbour (`blend_v`, `blend_h`) before the tiles are stitched. Memory then depends on the tile size, not on the
//! image size. Blending order and in-place updates follow diffusers exactly, so results match it.

use anyhow::{Context, Result};
use tch::Tensor;

/// Tile geometry, in image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct TilingConfig {
    /// Largest image side processed in one piece (diffusers default: the config's `sample_size`).
    pub tile_sample_min_size: i64,
    /// Fraction of a tile shared with its neighbour (diffusers: 0.25).
    pub tile_overlap_factor: f64,
}

impl TilingConfig {
    /// diffusers' defaults for a VAE config: tiles of `sample_size` pixels, overlap 0.25.
    pub fn for_config(cfg: &super::VaeConfig) -> Self {
        Self { tile_sample_min_size: cfg.sample_size, tile_overlap_factor: 0.25 }
    }

    /// The tile size in latent pixels (`int(sample_size / scale_factor)` in diffusers).
    pub fn tile_latent_min_size(&self, scale_factor: i64) -> i64 {
        (self.tile_sample_min_size as f64 / scale_factor as f64) as i64
    }
}

/// Python's `int(a * f)` for non-negative values.
fn frac(a: i64, f: f64) -> i64 {
    (a as f64 * f) as i64
}

/// Run `f` on overlapping tiles of `x` (`tile` wide, starting every `stride`), blend and stitch.
fn tiled(
    x: &Tensor,
    tile: i64,
    stride: i64,
    blend_extent: i64,
    row_limit: i64,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (h, w) = (x.size()[2], x.size()[3]);
    let stride = stride.max(1);
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..h).step_by(stride as usize) {
        let mut row = Vec::new();
        for j in (0..w).step_by(stride as usize) {
            let t = x.narrow(2, i, tile.min(h - i)).narrow(3, j, tile.min(w - j));
            row.push(f(&t)?);
        }
        rows.push(row);
    }
    // Blend in place, in diffusers' order: each tile first takes its (already blended) upper neighbour's
    // bottom rows, then its (already blended) left neighbour's right columns.
    let mut result_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut kept = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            if i > 0 {
                blend(&rows[i - 1][j], &rows[i][j], blend_extent, 2)?;
            }
            if j > 0 {
                blend(&rows[i][j - 1], &rows[i][j], blend_extent, 3)?;
            }
            let t = &rows[i][j];
            let th = t.size()[2].min(row_limit);
            let tw = t.size()[3].min(row_limit);
            kept.push(t.narrow(2, 0, th).narrow(3, 0, tw));
        }
        result_rows.push(Tensor::f_cat(&kept, 3).context("stitching VAE tiles")?);
    }
    Tensor::f_cat(&result_rows, 2).context("stitching VAE tile rows")
}

/// `b[k] = a[len(a) - extent + k] · (1 - k/extent) + b[k] · (k/extent)` along `dim` for k < extent, written into
/// `b`'s storage (later blends must see it, as in diffusers).
fn blend(a: &Tensor, b: &Tensor, extent: i64, dim: i64) -> Result<()> {
    let extent = extent.min(a.size()[dim as usize]).min(b.size()[dim as usize]);
    let a_len = a.size()[dim as usize];
    for k in 0..extent {
        let w = k as f64 / extent as f64;
        let mixed = a.select(dim, a_len - extent + k) * (1.0 - w) + b.select(dim, k) * w;
        let mut row = b.select(dim, k);
        row.f_copy_(&mixed).context("blending VAE tiles")?;
    }
    Ok(())
}

/// diffusers `_tiled_encode`: tiles of `tile_sample_min_size` image pixels; blending happens in latent space.
pub fn tiled_encode(
    x: &Tensor,
    t: &TilingConfig,
    scale: i64,
    f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let latent_tile = t.tile_latent_min_size(scale);
    let stride = frac(t.tile_sample_min_size, 1.0 - t.tile_overlap_factor);
    let blend_extent = frac(latent_tile, t.tile_overlap_factor);
    tiled(x, t.tile_sample_min_size, stride, blend_extent, latent_tile - blend_extent, f)
}

/// diffusers `tiled_decode`: tiles of `tile_latent_min_size` latent pixels; blending happens in image space.
pub fn tiled_decode(
    z: &Tensor,
    t: &TilingConfig,
    scale: i64,
    f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let latent_tile = t.tile_latent_min_size(scale);
    let stride = frac(latent_tile, 1.0 - t.tile_overlap_factor);
    let blend_extent = frac(t.tile_sample_min_size, t.tile_overlap_factor);
    tiled(z, latent_tile, stride, blend_extent, t.tile_sample_min_size - blend_extent, f)
}
