//! Running the UNet's block stack in two parts around a point of its up path, for feature caching between
//! sampler steps (DeepCache, arXiv 2312.00858): a full evaluation can hand back the hidden state that enters a
//! given up layer, and a later *shallow* evaluation runs only what is still needed around such a stored state:
//! `conv_in`, the down layers whose skips the remaining up layers consume, those up layers and the output head.
//! The mid block and everything deeper than the split point do not run.
//!
//! The split point is expressed in the UNet's own terms (up block, layer); which point a caching scheme picks and
//! when it reuses a feature is the caller's business (`sd_pipeline::step_cache`).

use super::{Pass, UNet2DConditionModel, UNetInputs};
use anyhow::{bail, Context, Result};
use tch::Tensor;

/// A point on the up path: the hidden state entering layer `layer` (resnet, plus its transformer if any) of
/// `up_blocks[up_block]`, before it is concatenated with that layer's skip. Layer 0 of an up block is its input,
/// i.e. the previous up block's output (the mid block's output for up block 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPoint {
    pub up_block: usize,
    pub layer: usize,
}

/// How one evaluation runs: the whole stack; the whole stack, handing back the state at a split point; or only the
/// shallow part around a stored state.
#[derive(Clone, Copy)]
pub(super) enum Route<'a> {
    Full,
    Capture(SplitPoint),
    Reuse(SplitPoint, &'a Tensor),
}

impl UNet2DConditionModel {
    /// Layers (resnets) per up block, in `up_blocks` order: what a [`SplitPoint`] indexes.
    pub fn up_block_layers(&self) -> Vec<usize> {
        self.up_blocks.iter().map(|b| b.layers()).collect()
    }

    /// Refuse a split point outside this UNet's up path.
    pub fn check_split(&self, at: SplitPoint) -> Result<()> {
        let layers = self.up_block_layers();
        match layers.get(at.up_block) {
            Some(&n) if at.layer < n => Ok(()),
            Some(&n) => bail!("split point: up block {} has {n} layers, not a layer {}", at.up_block, at.layer),
            None => bail!("split point: this UNet has {} up blocks, not an up block {}", layers.len(), at.up_block),
        }
    }

    /// Skips the layers from `at` to the end of the up path consume: the first that many skips of the down path
    /// (conv_in's output first) are all a shallow pass needs.
    fn skips_from(&self, at: SplitPoint) -> usize {
        let here = self.up_blocks.get(at.up_block).map_or(0, |b| b.layers().saturating_sub(at.layer));
        here + self.up_blocks.iter().skip(at.up_block + 1).map(|b| b.layers()).sum::<usize>()
    }

    /// [`Self::forward_with`], also returning the hidden state at `at` (see [`SplitPoint`]) for later
    /// [`Self::forward_shallow`] calls. The output is the plain forward's, bit for bit.
    pub fn forward_capture(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        inputs: &UNetInputs,
        at: SplitPoint,
    ) -> Result<(Tensor, Tensor)> {
        self.check_split(at)?;
        let (out, deep) = self.forward_routed(sample, timestep, encoder_hidden_states, inputs, Route::Capture(at))?;
        let deep = deep.context("split point not reached (inconsistent up path)")?;
        Ok((out, deep))
    }

    /// The shallow evaluation around `deep`, a state captured at `at` by [`Self::forward_capture`] for a sample of
    /// the same shape: `conv_in`, the down layers whose skips the up layers from `at` on consume, those up layers
    /// and the output head, at this `timestep` and with these text states. ControlNet and T2I-Adapter residuals
    /// are refused (their deep parts would be dropped silently); attention hooks run as usual.
    pub fn forward_shallow(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        inputs: &UNetInputs,
        at: SplitPoint,
        deep: &Tensor,
    ) -> Result<Tensor> {
        self.check_split(at)?;
        if inputs.down_block_additional_residuals.is_some()
            || inputs.mid_block_additional_residual.is_some()
            || inputs.down_intrablock_additional_residuals.is_some()
        {
            bail!("a shallow UNet pass does not take ControlNet or T2I-Adapter residuals");
        }
        let (out, _) = self.forward_routed(sample, timestep, encoder_hidden_states, inputs, Route::Reuse(at, deep))?;
        Ok(out)
    }

    /// The body of [`Self::forward_shallow`] once the inputs are prepared (`sample` in the model's dtype,
    /// `emb` the time embedding, `ctx` the text states).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shallow_pass(
        &self,
        sample: &Tensor,
        emb: &Tensor,
        ctx: &Tensor,
        pass: &Pass,
        at: SplitPoint,
        deep: &Tensor,
    ) -> Result<Tensor> {
        let (batch, deep_batch) = (sample.size()[0], deep.size().first().copied().unwrap_or(0));
        if deep.dim() != 4 || deep_batch != batch {
            bail!("the stored deep feature {:?} does not belong to a batch of {batch}", deep.size());
        }
        let needed = self.skips_from(at);
        let h = self.encoder.conv_in.forward(sample);
        let (_, mut skips) = self.encoder.down_path(h, emb, ctx, pass, None, needed)?;
        if skips.len() != needed {
            bail!("the down path gave {} skips, the up path from {at:?} needs {needed}", skips.len());
        }
        let deep = deep.to_kind(sample.kind());
        let mut h = deep;
        for (i, block) in self.up_blocks.iter().enumerate().skip(at.up_block) {
            let first = if i == at.up_block { at.layer } else { 0 };
            h = block
                .forward_layers(&h, first..block.layers(), emb, ctx, pass, &mut skips)
                .with_context(|| format!("UNet up block {i} (shallow pass)"))?;
        }
        Ok(self.finish(&h))
    }
}
