//! A conversion plan: for every diffusers tensor, which checkpoint tensor it comes from and how it is reshaped.
//! Planning reads only names and shapes; executing the plan reads one source tensor at a time.

use super::source::TensorSource;
use anyhow::{bail, Result};
use tch::Tensor;

/// A diffusers pipeline component that receives weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
    TextEncoder2,
    /// A standalone ControlNetModel (`sd convert` of a single-file ControlNet); never part of a pipeline plan.
    ControlNet,
    /// SD3's MMDiT (`SD3Transformer2DModel`), only in SD3 plans ([`super::sd3`]).
    Transformer,
    /// SD3's T5 encoder (`T5EncoderModel`), only in SD3 plans.
    TextEncoder3,
}

impl Component {
    /// Folder name in a diffusers pipeline.
    pub fn folder(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::ControlNet => "controlnet",
            Component::Transformer => "transformer",
            Component::TextEncoder3 => "text_encoder_3",
        }
    }
    /// Weight file name diffusers/transformers look for.
    pub fn weights_file(self) -> &'static str {
        match self {
            Component::Unet | Component::Vae | Component::ControlNet | Component::Transformer => {
                "diffusion_pytorch_model.safetensors"
            }
            _ => "model.safetensors",
        }
    }
}

/// How a source tensor becomes the target tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Copy,
    /// 1×1 conv (or conv1d) weight used as a linear weight: trailing unit dims dropped (VAE attention).
    ConvToLinear,
    /// 2-D transpose (OpenCLIP `text_projection` is stored as x @ P, transformers as a Linear weight).
    Transpose,
    /// Rows `start..start+len` of dim 0 (q/k/v out of a fused `in_proj_weight`).
    Rows {
        start: i64,
        len: i64,
    },
    /// The two halves of dim 0 swapped: the original SD3 code's final (and `context_pre_only`) modulation emits
    /// (shift, scale), diffusers' `AdaLayerNormContinuous` reads (scale, shift).
    SwapHalves,
    /// An `n`×`n` identity in the source's dtype, the source read only for its kind: diffusers gives an SD3 file's
    /// CLIP-L this `text_projection`, since the original SD3 code pools CLIP-L unprojected.
    Identity {
        n: i64,
    },
}

/// One target tensor.
#[derive(Clone, Debug)]
pub struct Item {
    pub component: Component,
    pub name: String,
    /// Which opened file: 0 = the checkpoint, 1 = the `--vae` override.
    pub file: usize,
    pub source: String,
    pub op: Op,
    pub shape: Vec<i64>,
}

impl Item {
    pub fn new(
        component: Component,
        name: String,
        file: usize,
        source: &str,
        op: Op,
        src_shape: &[i64],
    ) -> Result<Self> {
        let shape = match op {
            Op::Copy => src_shape.to_vec(),
            Op::ConvToLinear => {
                let mut s = src_shape.to_vec();
                while s.len() > 2 {
                    if s.last() != Some(&1) {
                        bail!("`{source}` has shape {src_shape:?}; a 1×1 convolution weight was expected");
                    }
                    s.pop();
                }
                s
            }
            Op::Transpose => match src_shape {
                [a, b] => vec![*b, *a],
                _ => bail!("`{source}` has shape {src_shape:?}; a matrix was expected"),
            },
            Op::Rows { start, len } => {
                let mut s = src_shape.to_vec();
                if s.is_empty() || start + len > s[0] {
                    bail!("`{source}` has shape {src_shape:?}; rows {start}..{} do not fit", start + len);
                }
                s[0] = len;
                s
            }
            Op::SwapHalves => {
                if src_shape.first().is_none_or(|n| n % 2 != 0) {
                    bail!("`{source}` has shape {src_shape:?}; an even first dimension (shift and scale) was expected");
                }
                src_shape.to_vec()
            }
            Op::Identity { n } => vec![n, n],
        };
        Ok(Self { component, name, file, source: source.to_string(), op, shape })
    }

    /// Apply the op to the loaded source tensor.
    pub fn apply(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match self.op {
            Op::Copy => t.shallow_clone(),
            Op::ConvToLinear => {
                let mut t = t.shallow_clone();
                while t.dim() > 2 {
                    t = t.f_select(-1, 0)?;
                }
                t.f_contiguous()?
            }
            Op::Transpose => t.f_transpose(0, 1)?.f_contiguous()?,
            Op::Rows { start, len } => t.f_narrow(0, start, len)?.f_contiguous()?,
            Op::SwapHalves => {
                let half = t.size().first().copied().unwrap_or(0) / 2;
                Tensor::f_cat(&[t.f_narrow(0, half, half)?, t.f_narrow(0, 0, half)?], 0)?
            }
            Op::Identity { n } => Tensor::f_eye(n, (t.kind(), t.device()))?,
        })
    }
}

/// Execute items in order, reading each source once even when several items share it (q/k/v splits).
pub fn run(
    items: &[Item],
    sources: &[&dyn TensorSource],
    mut sink: impl FnMut(&Item, Tensor) -> Result<()>,
) -> Result<()> {
    let mut last: Option<(usize, String, Tensor)> = None;
    for item in items {
        let hit = last.as_ref().is_some_and(|(f, s, _)| *f == item.file && *s == item.source);
        if !hit {
            let src = sources.get(item.file).ok_or_else(|| anyhow::anyhow!("no source file {}", item.file))?;
            let t = src.load(&item.source)?;
            last = Some((item.file, item.source.clone(), t));
        }
        let src = &last.as_ref().ok_or_else(|| anyhow::anyhow!("internal: no tensor"))?.2;
        sink(item, item.apply(src)?)?;
    }
    Ok(())
}
