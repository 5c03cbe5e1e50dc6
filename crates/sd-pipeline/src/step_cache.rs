//! Opt-in step caching (`--cache MODE[:params]`): reusing what a UNet evaluation computed at one sampler step for
//! the next ones, trading a little fidelity for speed. Off by default; the mode is recorded in the image metadata.
//!
//! One mode today, **DeepCache** (Ma et al., arXiv 2312.00858), as its `DeepCacheSDHelper` (PyPI `DeepCache`
//! 0.1.1) does on diffusers' UNet: every `interval`-th step (counted from the first step of the loop, "uniform"
//! mode) runs the whole UNet and keeps the hidden state that enters the up path at the point the `branch` names;
//! the steps in between run only the shallow part around that kept state ([`sd_models::unet::split`]): `conv_in`,
//! the down layers before the branch, the matching last up layers and the output head. A guided batch (CFG) is one
//! evaluation, so its halves share one cache, as in the helper.
//!
//! Branch ids are DeepCache's: `branch = 3 · level + layer`, the level counted from the shallowest, the layer from
//! the end of that level's up block. Branch 0 (the default, the helper's README's recommendation with interval 3)
//! keeps only the last up layer of the shallowest level live.

use anyhow::{bail, Context, Result};
use sd_models::unet::{SplitPoint, UNet2DConditionModel, UNetInputs};
use std::fmt;
use std::str::FromStr;
use tch::Tensor;

/// DeepCache's recommended interval (its README: `cache_interval=3, cache_branch_id=0`).
pub const DEFAULT_INTERVAL: usize = 3;
/// The largest interval accepted: beyond it a run of the usual step counts is one full step and nothing else.
pub const MAX_INTERVAL: usize = 1000;
/// DeepCache's ids address 3 layers per level; 4 levels (SD1/SD2) give 12 ids, the most any UNet here has.
pub const MAX_BRANCH: usize = 11;

/// Which step cache a generation uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepCache {
    /// Every step runs the whole network.
    #[default]
    Off,
    /// DeepCache: a full UNet evaluation every `interval` steps, shallow ones at `branch` in between.
    DeepCache { interval: usize, branch: usize },
}

/// What `--cache` accepts, for error messages.
pub const SYNTAX: &str = "off | deepcache[:interval=N,branch=B]";

impl FromStr for StepCache {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (mode, params) = match s.split_once(':') {
            Some((m, p)) => (m.trim(), Some(p)),
            None => (s.trim(), None),
        };
        match mode.to_ascii_lowercase().as_str() {
            "off" | "none" if params.is_none() => Ok(Self::Off),
            "deepcache" => {
                let (mut interval, mut branch) = (DEFAULT_INTERVAL, 0);
                for kv in params.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (k, v) = kv.split_once('=').with_context(|| format!("`{kv}` is not key=value ({SYNTAX})"))?;
                    let n: usize = v.trim().parse().with_context(|| format!("`{kv}`: not a whole number"))?;
                    match k.trim() {
                        "interval" => interval = n,
                        "branch" => branch = n,
                        other => bail!("deepcache takes `interval` and `branch`, not `{other}` ({SYNTAX})"),
                    }
                }
                if !(2..=MAX_INTERVAL).contains(&interval) {
                    bail!(
                        "deepcache interval must be within 2..={MAX_INTERVAL} (1 would cache nothing), got {interval}"
                    );
                }
                if branch > MAX_BRANCH {
                    bail!("deepcache branch must be within 0..={MAX_BRANCH} (3 · level + layer), got {branch}");
                }
                Ok(Self::DeepCache { interval, branch })
            }
            _ => bail!("unknown step cache `{s}`: expected {SYNTAX}"),
        }
    }
}

impl fmt::Display for StepCache {
    /// The form `--cache` reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => write!(f, "off"),
            Self::DeepCache { interval, branch } => write!(f, "deepcache:interval={interval},branch={branch}"),
        }
    }
}

impl StepCache {
    pub fn is_off(&self) -> bool {
        matches!(self, Self::Off)
    }

    /// The A1111-style metadata pair (`Cache: deepcache interval 3 branch 0`); `None` when off.
    pub fn infotext(&self) -> Option<(String, String)> {
        match self {
            Self::Off => None,
            Self::DeepCache { interval, branch } => {
                Some(("Cache".into(), format!("deepcache interval {interval} branch {branch}")))
            }
        }
    }

    /// Where DeepCache's `branch` cuts this UNet's up path: level `branch / 3` from the shallowest, layer
    /// `branch % 3` from the end of that level's up block (a layer beyond the block's first means the whole block
    /// stays live, the cut being at its input). Refused when the UNet has fewer levels.
    pub fn split_point(branch: usize, unet: &UNet2DConditionModel) -> Result<SplitPoint> {
        let layers = unet.up_block_layers();
        let (level, layer) = (branch / 3, branch % 3);
        if level >= layers.len() {
            bail!(
                "deepcache branch {branch} is level {level}, but this UNet has {} levels (branches 0..={})",
                layers.len(),
                3 * layers.len() - 1
            );
        }
        let up_block = layers.len() - 1 - level;
        Ok(SplitPoint { up_block, layer: layers[up_block].saturating_sub(1 + layer) })
    }
}

/// One loop's cache: the mode, the split point and the stored deep feature.
pub(crate) struct CacheRun {
    mode: StepCache,
    at: Option<SplitPoint>,
    deep: Option<Tensor>,
    /// Full and shallow evaluations so far.
    pub full: usize,
    pub shallow: usize,
}

impl CacheRun {
    /// Check `mode` against this UNet and what the request adds to it.
    pub fn new(mode: StepCache, unet: &UNet2DConditionModel, has_control: bool) -> Result<Self> {
        let at = match mode {
            StepCache::Off => None,
            StepCache::DeepCache { branch, .. } => {
                if has_control {
                    bail!("--cache deepcache does not combine with ControlNet / T2I-Adapter units: their residuals feed the deep blocks a shallow step skips");
                }
                Some(StepCache::split_point(branch, unet)?)
            }
        };
        Ok(Self { mode, at, deep: None, full: 0, shallow: 0 })
    }

    /// One UNet evaluation at loop position `index` (DeepCache's step index: the position of the timestep in the
    /// loop's schedule, so a sampler that evaluates twice at one timestep decides the same way both times).
    pub fn evaluate(
        &mut self,
        unet: &UNet2DConditionModel,
        index: usize,
        sample: &Tensor,
        timestep: &Tensor,
        hidden: &Tensor,
        inputs: &UNetInputs,
    ) -> Result<Tensor> {
        let (StepCache::DeepCache { interval, .. }, Some(at)) = (self.mode, self.at) else {
            return unet.forward_with(sample, timestep, hidden, inputs);
        };
        match &self.deep {
            Some(deep) if !index.is_multiple_of(interval) => {
                self.shallow += 1;
                unet.forward_shallow(sample, timestep, hidden, inputs, at, deep).context("deepcache shallow step")
            }
            _ => {
                let (out, deep) = unet.forward_capture(sample, timestep, hidden, inputs, at)?;
                self.deep = Some(deep);
                self.full += 1;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = |interval, branch| StepCache::DeepCache { interval, branch };
        assert_eq!("off".parse::<StepCache>().unwrap(), StepCache::Off);
        assert_eq!("deepcache".parse::<StepCache>().unwrap(), d(3, 0));
        assert_eq!("deepcache:interval=2".parse::<StepCache>().unwrap(), d(2, 0));
        assert_eq!("DeepCache:branch=4, interval=5".parse::<StepCache>().unwrap(), d(5, 4));
        for bad in ["deepcache:interval=1", "deepcache:branch=12", "deepcache:depth=1", "deepcache:interval", "fbcache"]
        {
            assert!(bad.parse::<StepCache>().is_err(), "{bad}");
        }
        let c = d(3, 1);
        assert_eq!(c.to_string().parse::<StepCache>().unwrap(), c);
        assert_eq!(c.infotext().unwrap().1, "deepcache interval 3 branch 1");
        assert!(StepCache::Off.infotext().is_none());
    }
}
