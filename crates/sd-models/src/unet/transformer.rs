//! The spatial transformer of the cross-attention blocks (diffusers `Transformer2DModel` on continuous inputs,
//! `BasicTransformerBlock`, `FeedForward` with GEGLU — `models/transformers/transformer_2d.py`, `models/attention.py`).

use super::Pass;
use crate::attention::Attention;
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use anyhow::Result;
use sd_core::onednn::Unary;
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// What one spatial transformer is built from.
#[derive(Clone, Copy, Debug)]
pub struct TransformerOpts {
    pub heads: i64,
    pub layers: i64,
    pub cross_attention_dim: i64,
    pub groups: i64,
    pub linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

/// GEGLU feed-forward: `net.0.proj` doubles the width into value and gate, value·gelu(gate), `net.2` projects back
/// (Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202).
#[derive(Debug)]
struct FeedForward {
    proj: GegluProj,
    out: Linear,
}

/// `net.0.proj` as stored (one matrix, value rows then gate rows), or, with packed weights, split into its value
/// and gate halves, so that the gate's kernel applies the GELU as it writes (no pass of its own over the
/// tokens × 4·dim activations, no strided half-tensor). SD1.5 at 512 px: 45 → 36 ms per feed-forward at 4096
/// tokens.
#[derive(Debug)]
enum GegluProj {
    Joint(Linear),
    Split { value: Linear, gate: Linear },
}

impl FeedForward {
    fn new(vb: &VarBuilder, dim: i64) -> Result<Self> {
        let inner = dim * 4;
        let proj_vb = vb / "net" / 0 / "proj";
        let proj = match Linear::split_rows(&proj_vb, dim, inner * 2, inner)? {
            Some((value, gate)) => GegluProj::Split { value, gate },
            None => GegluProj::Joint(Linear::new(&proj_vb, dim, inner * 2, true)?),
        };
        Ok(Self { proj, out: Linear::new(&(vb / "net" / 2), inner, dim, true)? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = match &self.proj {
            GegluProj::Joint(proj) => {
                let parts = proj.forward(x).f_chunk(2, -1)?;
                &parts[0] * parts[1].gelu("none")
            }
            GegluProj::Split { value, gate } => value.forward(x) * gate.forward_act(x, Unary::Gelu),
        };
        Ok(self.out.forward(&hidden))
    }
}

/// Pre-norm self-attention, cross-attention and feed-forward, each with a residual connection.
#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn new(vb: &VarBuilder, dim: i64, o: &TransformerOpts) -> Result<Self> {
        let head_dim = dim / o.heads;
        let attn1_ctx = if o.only_cross_attention { Some(o.cross_attention_dim) } else { None };
        Ok(Self {
            norm1: LayerNorm::new(&(vb / "norm1"), dim, 1e-5)?,
            attn1: Attention::new(&(vb / "attn1"), dim, attn1_ctx, o.heads, head_dim, false, o.upcast_attention)?,
            norm2: LayerNorm::new(&(vb / "norm2"), dim, 1e-5)?,
            attn2: Attention::new(
                &(vb / "attn2"),
                dim,
                Some(o.cross_attention_dim),
                o.heads,
                head_dim,
                false,
                o.upcast_attention,
            )?,
            norm3: LayerNorm::new(&(vb / "norm3"), dim, 1e-5)?,
            ff: FeedForward::new(&(vb / "ff"), dim)?,
            only_cross_attention: o.only_cross_attention,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, pass: &Pass) -> Result<Tensor> {
        let ctx1 = if self.only_cross_attention { Some(context) } else { None };
        let x = self.attn1.forward_hooked(&self.norm1.forward(x), ctx1, pass.mode, pass.hook)? + x;
        let x = self.attn2.forward_hooked(&self.norm2.forward(&x), Some(context), pass.mode, pass.hook)? + &x;
        Ok(self.ff.forward(&self.norm3.forward(&x))? + &x)
    }
}

/// 1×1 conv (SD1) or linear (SD2, SDXL: `use_linear_projection`) in/out projections around the blocks.
#[derive(Debug)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// GroupNorm → project in → N transformer blocks over the H·W tokens → project out, plus the input.
#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl Transformer2DModel {
    pub fn new(vb: &VarBuilder, channels: i64, o: &TransformerOpts) -> Result<Self> {
        let proj = |name: &str| -> Result<Proj> {
            Ok(if o.linear_projection {
                Proj::Linear(Linear::new(&(vb / name), channels, channels, true)?)
            } else {
                Proj::Conv(Conv2d::new(&(vb / name), channels, channels, 1, 1, 0, true)?)
            })
        };
        let blocks = (0..o.layers)
            .map(|i| BasicTransformerBlock::new(&(vb / "transformer_blocks" / i), channels, o))
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::new(&(vb / "norm"), o.groups, channels, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    /// Every attention layer, in diffusers' module order (`attn1` before `attn2` in each block).
    pub fn attentions_mut(&mut self) -> impl Iterator<Item = &mut Attention> {
        self.blocks.iter_mut().flat_map(|b| [&mut b.attn1, &mut b.attn2])
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor, pass: &Pass) -> Result<Tensor> {
        let (b, c, h, w) = x.size4()?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> { Ok(t.permute([0, 2, 3, 1]).f_reshape([b, h * w, c])?) };
        // Back to a feature map in the layout the block was given: a free view for channels-last activations.
        let keep_nhwc = sd_core::layout::is_channels_last(x);
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let map = t.f_reshape([b, h, w, c])?.permute([0, 3, 1, 2]);
            Ok(if keep_nhwc { map } else { map.contiguous() })
        };
        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Proj::Conv(conv) => to_tokens(&conv.forward(&normed))?,
            Proj::Linear(lin) => lin.forward(&to_tokens(&normed)?),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, pass)?;
        }
        let out = match &self.proj_out {
            Proj::Conv(conv) => conv.forward(&to_map(&tokens)?),
            Proj::Linear(lin) => to_map(&lin.forward(&tokens))?,
        };
        Ok(out + x)
    }
}
