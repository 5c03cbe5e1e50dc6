//! IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter"), as diffusers 0.42 loads and
//! runs the original weight files: a picture, encoded by a CLIP vision tower, becomes a few tokens through the
//! adapter's image projection, and every cross-attention layer of the UNet attends to those tokens with its own
//! key/value projections (`to_k_ip`, `to_v_ip`), adding the result, times a scale, to its text attention
//! ("decoupled cross-attention").
//!
//! | module | what |
//! |---|---|
//! | [`convert`] | the original file layout (`image_proj.*`, `ip_adapter.N.to_k_ip/to_v_ip`) → diffusers' names |
//! | [`projection`] | `ImageProjection` (base) and `IPAdapterFullImageProjection` (full-face) |
//! | [`resampler`] | `IPAdapterPlusImageProjection`, the perceiver resampler of "plus" adapters |
//! | [`hook`] | the decoupled cross-attention as a UNet [`crate::attention::AttentionHook`] |

pub mod convert;
pub mod hook;
pub mod projection;
pub mod resampler;

pub use convert::ProjectionKind;
pub use hook::{IpAdapterHook, IpAdapterUnit};

use crate::attention::AttentionSite;
use anyhow::{bail, Context, Result};
use projection::{FullImageProjection, ImageProjection};
use resampler::PlusImageProjection;
use sd_core::limits;
use sd_core::VarBuilder;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The image projection of one adapter.
pub enum ImageProj {
    Base(ImageProjection),
    Full(FullImageProjection),
    Plus(PlusImageProjection),
}

/// One loaded IP-Adapter: its image projection and, per cross-attention layer, the `to_k_ip` / `to_v_ip` weights.
pub struct IpAdapter {
    pub projection: ImageProj,
    /// Original key id → (`to_k_ip`, `to_v_ip`) weights `[layer width, cross]`.
    layers: BTreeMap<usize, (Tensor, Tensor)>,
    /// UNet attention site index → original key id, filled by [`IpAdapter::bind`].
    sites: HashMap<usize, usize>,
}

impl IpAdapter {
    /// Read an original `ip-adapter*.safetensors` (or `.bin`, through the safe pickle reader) file.
    pub fn load(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        let src = crate::convert::source::open(path)?;
        let converted = convert::convert(src.as_ref())?;
        Self::from_converted(converted, &path.display().to_string(), kind, device)
    }

    pub fn from_converted(c: convert::Converted, origin: &str, kind: Kind, device: Device) -> Result<Self> {
        let vb = VarBuilder::from_tensors(c.image_proj, origin, kind, device);
        let projection = match c.kind {
            ProjectionKind::Base => ImageProj::Base(ImageProjection::new(&vb)?),
            ProjectionKind::Full => ImageProj::Full(FullImageProjection::new(&vb)?),
            ProjectionKind::Plus => ImageProj::Plus(PlusImageProjection::new(&vb)?),
        };
        vb.finish("IP-Adapter image projection", &[])?;
        let cross = match &projection {
            ImageProj::Base(p) => p.cross_attention_dim,
            ImageProj::Full(p) => p.cross_attention_dim,
            ImageProj::Plus(p) => p.cross_attention_dim,
        };
        if let ImageProj::Plus(p) = &projection {
            check_tokens(p.num_queries, origin)?;
        }
        let mut layers = BTreeMap::new();
        for (id, (k, v)) in c.layers {
            let (ks, vs) = (k.size(), v.size());
            if ks.len() != 2 || ks != vs || ks[1] != cross {
                bail!(
                    "{origin}: layer {id}'s to_k_ip {ks:?} / to_v_ip {vs:?} must both be [layer width, {cross}] \
                     (the projection makes {cross}-wide tokens)"
                );
            }
            let to = |t: Tensor| t.f_to_kind(kind).and_then(|t| t.f_to_device(device));
            layers.insert(id, (to(k)?, to(v)?));
        }
        Ok(Self { projection, layers, sites: HashMap::new() })
    }

    pub fn kind(&self) -> ProjectionKind {
        match self.projection {
            ImageProj::Base(_) => ProjectionKind::Base,
            ImageProj::Full(_) => ProjectionKind::Full,
            ImageProj::Plus(_) => ProjectionKind::Plus,
        }
    }

    /// Whether the projection reads the encoder's penultimate hidden state (full, plus) rather than its
    /// `image_embeds` (base): diffusers' `output_hidden_states = not isinstance(proj, ImageProjection)`.
    pub fn reads_hidden_states(&self) -> bool {
        !matches!(self.projection, ImageProj::Base(_))
    }

    /// Width of the encoder output the projection takes (`projection_dim` or the tower's `hidden_size`).
    pub fn input_dim(&self) -> i64 {
        match &self.projection {
            ImageProj::Base(p) => p.image_embed_dim,
            ImageProj::Full(p) => p.image_embed_dim,
            ImageProj::Plus(p) => p.embed_dims,
        }
    }

    /// Width of the tokens it makes: the UNet's `cross_attention_dim` it was trained for.
    pub fn cross_attention_dim(&self) -> i64 {
        match &self.projection {
            ImageProj::Base(p) => p.cross_attention_dim,
            ImageProj::Full(p) => p.cross_attention_dim,
            ImageProj::Plus(p) => p.cross_attention_dim,
        }
    }

    /// Encoder output (`[B, D]` image embeds or `[B, tokens, D]` hidden states) → tokens `[B, N, cross]`.
    pub fn project(&self, input: &Tensor) -> Result<Tensor> {
        let (size, want) = (input.size(), self.input_dim());
        let rank = if self.reads_hidden_states() { 3 } else { 2 };
        if size.len() != rank || size.last() != Some(&want) {
            bail!("the IP-Adapter's projection takes {rank}-d input {want} wide, found shape {size:?}");
        }
        let tokens = match &self.projection {
            ImageProj::Base(p) => p.forward(input)?,
            ImageProj::Full(p) => p.forward(input)?,
            ImageProj::Plus(p) => p.forward(input)?,
        };
        check_tokens(tokens.size()[1], "the IP-Adapter")?;
        Ok(tokens)
    }

    /// Match the weights to a UNet's attention layers. diffusers numbers the original keys 1, 3, 5, … over the
    /// cross-attention processors in `attn_processors` order; the adapter must have exactly one pair per
    /// cross-attention layer and make tokens as wide as the UNet's text conditioning.
    pub fn bind(&mut self, sites: &[AttentionSite], cross_attention_dim: i64) -> Result<()> {
        if self.cross_attention_dim() != cross_attention_dim {
            bail!(
                "the IP-Adapter makes {}-wide tokens but the UNet's cross_attention_dim is {cross_attention_dim}: \
                 it was made for another base model (SD1.5 adapters are 768 wide, SDXL ones 2048)",
                self.cross_attention_dim()
            );
        }
        let cross: Vec<&AttentionSite> = sites.iter().filter(|s| s.cross).collect();
        if cross.len() != self.layers.len() {
            bail!(
                "the IP-Adapter has weights for {} cross-attention layers but the UNet has {}: it was made for \
                 another base model",
                self.layers.len(),
                cross.len()
            );
        }
        let mut map = HashMap::new();
        for (j, site) in cross.iter().enumerate() {
            let id = 2 * j + 1;
            if !self.layers.contains_key(&id) {
                let ids: Vec<usize> = self.layers.keys().copied().collect();
                bail!("the IP-Adapter has no `ip_adapter.{id}.*` weights for {} (its ids: {ids:?})", site.path);
            }
            map.insert(site.index, id);
        }
        self.sites = map;
        Ok(())
    }

    /// `to_k_ip` / `to_v_ip` of an attention site (after [`IpAdapter::bind`]).
    pub fn weights_at(&self, site: &AttentionSite) -> Result<(&Tensor, &Tensor)> {
        let id = self.sites.get(&site.index).with_context(|| {
            format!("the IP-Adapter is not bound to this UNet's layer {} (call bind after loading)", site.path)
        })?;
        let (k, v) = self.layers.get(id).with_context(|| format!("IP-Adapter layer {id} is missing"))?;
        Ok((k, v))
    }
}

fn check_tokens(n: i64, what: &str) -> Result<()> {
    if n < 1 || n as u64 > limits::IP_ADAPTER_MAX_TOKENS {
        bail!(
            "{what}: {}",
            limits::exceeded(
                format!("{n} image-prompt tokens"),
                "IP-Adapter tokens",
                limits::IP_ADAPTER_MAX_TOKENS,
                "tokens"
            )
        );
    }
    Ok(())
}
