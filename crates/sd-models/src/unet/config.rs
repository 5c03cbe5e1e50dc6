//! `unet/config.json` as diffusers writes it (`UNet2DConditionModel`), plus the per-block values the network is
//! built from. Fields that diffusers accepts as "one value or one per block" are [`PerBlock`]. Every option this
//! crate cannot honour is refused in [`UNetConfig::resolve`] with the field name and value, rather than ignored.

use anyhow::{bail, Result};
use serde::Deserialize;

/// A config value given once for all blocks or once per down block.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> PerBlock<T> {
    /// One value per down block; a list of the wrong length is an error naming `field`.
    pub fn expand(&self, blocks: usize, field: &str) -> Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); blocks]),
            Self::Many(v) if v.len() == blocks => Ok(v.clone()),
            Self::Many(v) => {
                bail!("config field `{field}` has {} entries {v:?}, expected one per down block ({blocks})", v.len())
            }
        }
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct UNetConfig {
    pub sample_size: Option<i64>,
    pub in_channels: i64,
    pub out_channels: i64,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: PerBlock<i64>,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    pub dropout: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<i64>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<i64>,
    pub transformer_layers_per_block: PerBlock<i64>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    pub encoder_hid_dim: Option<i64>,
    pub encoder_hid_dim_type: Option<String>,
    /// Despite its name, diffusers uses this as the number of attention heads (see its issue #2011).
    pub attention_head_dim: PerBlock<i64>,
    pub num_attention_heads: Option<PerBlock<i64>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<i64>,
    pub num_class_embeds: Option<i64>,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<i64>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<i64>,
    pub conv_in_kernel: i64,
    pub conv_out_kernel: i64,
    pub projection_class_embeddings_input_dim: Option<i64>,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
}

impl Default for UNetConfig {
    /// diffusers' constructor defaults (an SD1.x UNet).
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                s("CrossAttnDownBlock2D"),
                s("CrossAttnDownBlock2D"),
                s("CrossAttnDownBlock2D"),
                s("DownBlock2D"),
            ],
            mid_block_type: Some(s("UNetMidBlock2DCrossAttn")),
            up_block_types: vec![
                s("UpBlock2D"),
                s("CrossAttnUpBlock2D"),
                s("CrossAttnUpBlock2D"),
                s("CrossAttnUpBlock2D"),
            ],
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: s("silu"),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: s("default"),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: s("positional"),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: s("default"),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

/// Everything one down block (or, mirrored, one up block) is built from.
#[derive(Clone, Debug)]
pub struct BlockSpec {
    /// Whether the block has transformer (cross-attention) layers.
    pub attention: bool,
    pub channels: i64,
    pub layers: i64,
    pub transformer_layers: i64,
    pub heads: i64,
    pub cross_attention_dim: i64,
    pub only_cross_attention: bool,
}

/// The config reduced to what the network needs, after validation.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub down: Vec<BlockSpec>,
    /// Up blocks in execution order (deepest first).
    pub up: Vec<BlockSpec>,
    pub mid: bool,
    pub groups: i64,
    pub time_embed_dim: i64,
    pub scale_shift: bool,
}

/// Strip diffusers' legacy `UNetRes` prefix (`UNetResDownBlock2D` = `DownBlock2D`).
fn block_name(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

fn unsupported(field: &str, value: impl std::fmt::Debug, supported: &str) -> anyhow::Error {
    anyhow::anyhow!("unsupported UNet config: `{field}` = {value:?} (sd-rs supports {supported})")
}

impl UNetConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid UNet2DConditionModel config", path.display()))
    }

    /// Validate and expand per-block values; errors name the offending config field.
    pub fn resolve(&self) -> Result<Resolved> {
        let n = self.down_block_types.len();
        if n == 0 {
            bail!("config field `down_block_types` is empty");
        }
        if self.block_out_channels.len() != n {
            bail!(
                "config field `block_out_channels` has {} entries, but `down_block_types` has {n}",
                self.block_out_channels.len()
            );
        }
        if self.up_block_types.len() != n {
            bail!(
                "config field `up_block_types` has {} entries, but `down_block_types` has {n}",
                self.up_block_types.len()
            );
        }
        let checks: [(&str, bool, String); 12] = [
            ("class_embed_type", self.class_embed_type.is_none(), format!("{:?}", self.class_embed_type)),
            ("num_class_embeds", self.num_class_embeds.is_none(), format!("{:?}", self.num_class_embeds)),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_none(), format!("{:?}", self.encoder_hid_dim_type)),
            ("encoder_hid_dim", self.encoder_hid_dim.is_none(), format!("{:?}", self.encoder_hid_dim)),
            ("dual_cross_attention", !self.dual_cross_attention, "true".into()),
            ("attention_type", self.attention_type == "default", self.attention_type.clone()),
            ("time_embedding_type", self.time_embedding_type == "positional", self.time_embedding_type.clone()),
            ("class_embeddings_concat", !self.class_embeddings_concat, "true".into()),
            ("cross_attention_norm", self.cross_attention_norm.is_none(), format!("{:?}", self.cross_attention_norm)),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_none(),
                format!("{:?}", self.reverse_transformer_layers_per_block),
            ),
            (
                "num_attention_heads",
                self.num_attention_heads.is_none(),
                format!(
                    "{:?} (diffusers refuses it too; heads are given by `attention_head_dim`)",
                    self.num_attention_heads
                ),
            ),
            (
                "conv_in_kernel/conv_out_kernel",
                self.conv_in_kernel % 2 == 1 && self.conv_out_kernel % 2 == 1,
                format!("{}/{}", self.conv_in_kernel, self.conv_out_kernel),
            ),
        ];
        for (field, ok, value) in checks {
            if !ok {
                bail!("unsupported UNet config: `{field}` = {value} (sd-rs supports only the Stable Diffusion UNet options)");
            }
        }
        match self.addition_embed_type.as_deref() {
            Some("text_time")
                if self.addition_time_embed_dim.is_none() || self.projection_class_embeddings_input_dim.is_none() =>
            {
                bail!("config sets `addition_embed_type` = \"text_time\" but not both `addition_time_embed_dim` and `projection_class_embeddings_input_dim`");
            }
            None | Some("text_time") => {}
            Some(other) => return Err(unsupported("addition_embed_type", other, "null or \"text_time\"")),
        }
        let scale_shift = match self.resnet_time_scale_shift.as_str() {
            "default" => false,
            "scale_shift" => true,
            other => return Err(unsupported("resnet_time_scale_shift", other, "\"default\" or \"scale_shift\"")),
        };
        let mid = match self.mid_block_type.as_deref() {
            None => false,
            Some("UNetMidBlock2DCrossAttn") => true,
            Some(other) => return Err(unsupported("mid_block_type", other, "\"UNetMidBlock2DCrossAttn\" or null")),
        };
        let groups = self.norm_num_groups.ok_or_else(|| unsupported("norm_num_groups", "null", "an integer"))?;
        let layers = self.layers_per_block.expand(n, "layers_per_block")?;
        let tlayers = self.transformer_layers_per_block.expand(n, "transformer_layers_per_block")?;
        let heads = self.attention_head_dim.expand(n, "attention_head_dim")?;
        let cross = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let only_cross = self.only_cross_attention.expand(n, "only_cross_attention")?;
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let attention = match block_name(&self.down_block_types[i]) {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => {
                    return Err(unsupported("down_block_types", other, "\"CrossAttnDownBlock2D\" and \"DownBlock2D\""))
                }
            };
            let channels = self.block_out_channels[i];
            if channels % groups != 0 {
                bail!("config field `block_out_channels` entry {channels} is not divisible by `norm_num_groups` = {groups}");
            }
            if attention && (heads[i] <= 0 || channels % heads[i] != 0) {
                bail!("config field `attention_head_dim` entry {} (the number of heads) does not divide block_out_channels {channels}", heads[i]);
            }
            down.push(BlockSpec {
                attention,
                channels,
                layers: layers[i],
                transformer_layers: tlayers[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                only_cross_attention: only_cross[i],
            });
        }
        let mut up = Vec::with_capacity(n);
        for (i, name) in self.up_block_types.iter().enumerate() {
            let attention = match block_name(name) {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return Err(unsupported("up_block_types", other, "\"CrossAttnUpBlock2D\" and \"UpBlock2D\"")),
            };
            let mirror = &down[n - 1 - i];
            up.push(BlockSpec { attention, layers: mirror.layers + 1, ..mirror.clone() });
        }
        let time_embed_dim = self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4);
        Ok(Resolved { down, up, mid, groups, time_embed_dim, scale_shift })
    }
}
