//! The pre-LayerNorm transformer shared by CLIP's text and vision towers (transformers `CLIPEncoder`,
//! `CLIPEncoderLayer`, `CLIPAttention`, `CLIPMLP`); weights under `encoder.layers.N.{self_attn,mlp,layer_norm1,2}`.

use crate::nn::{Activation, LayerNorm, Linear};
use anyhow::Result;
use sd_core::VarBuilder;
use tch::Tensor;

/// The sizes every layer of one tower shares.
#[derive(Clone, Copy, Debug)]
pub struct EncoderDims {
    pub hidden: i64,
    pub heads: i64,
    pub intermediate: i64,
    pub layers: i64,
    pub act: Activation,
    pub eps: f64,
}

/// Multi-head self-attention with q/k/v/out projections (all with bias).
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
    head_dim: i64,
}

impl ClipAttention {
    pub fn new(vb: &VarBuilder, d: &EncoderDims) -> Result<Self> {
        Ok(Self {
            q_proj: Linear::new(&(vb / "q_proj"), d.hidden, d.hidden, true)?,
            k_proj: Linear::new(&(vb / "k_proj"), d.hidden, d.hidden, true)?,
            v_proj: Linear::new(&(vb / "v_proj"), d.hidden, d.hidden, true)?,
            out_proj: Linear::new(&(vb / "out_proj"), d.hidden, d.hidden, true)?,
            heads: d.heads,
            head_dim: d.hidden / d.heads,
        })
    }

    /// `x`: batch × tokens × hidden. `causal`: each token sees only itself and earlier tokens (the text tower).
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, t, c) = x.size3().unwrap_or((1, 1, 1));
        let split = |y: Tensor| y.view([b, t, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(x));
        let k = split(self.k_proj.forward(x));
        let v = split(self.v_proj.forward(x));
        let scale = (self.head_dim as f64).powf(-0.5);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, scale, false);
        self.out_proj.forward(&y.transpose(1, 2).reshape([b, t, c]))
    }
}

/// fc1 → activation → fc2.
pub struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipMlp {
    pub fn new(vb: &VarBuilder, d: &EncoderDims) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(&(vb / "fc1"), d.hidden, d.intermediate, true)?,
            fc2: Linear::new(&(vb / "fc2"), d.intermediate, d.hidden, true)?,
            act: d.act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)))
    }
}

/// x + attn(ln1(x)), then x + mlp(ln2(x)).
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    pub fn new(vb: &VarBuilder, d: &EncoderDims) -> Result<Self> {
        Ok(Self {
            self_attn: ClipAttention::new(&(vb / "self_attn"), d)?,
            layer_norm1: LayerNorm::new(&(vb / "layer_norm1"), d.hidden, d.eps)?,
            mlp: ClipMlp::new(&(vb / "mlp"), d)?,
            layer_norm2: LayerNorm::new(&(vb / "layer_norm2"), d.hidden, d.eps)?,
        })
    }

    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x), causal);
        &x + self.mlp.forward(&self.layer_norm2.forward(&x))
    }
}

/// The stack of layers (`encoder.layers.N`).
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    pub fn new(vb: &VarBuilder, d: &EncoderDims) -> Result<Self> {
        let layers_vb = vb / "layers";
        let layers = (0..d.layers).map(|i| ClipEncoderLayer::new(&(&layers_vb / i), d)).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Runs every layer; returns the input followed by each layer's output (transformers' `hidden_states`).
    pub fn forward_all(&self, x: &Tensor, causal: bool) -> Vec<Tensor> {
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        states.push(x.shallow_clone());
        for layer in &self.layers {
            let next = layer.forward(&states[states.len() - 1], causal);
            states.push(next);
        }
        states
    }

    /// Runs every layer and returns only the last output.
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        self.layers.iter().fold(x.shallow_clone(), |h, layer| layer.forward(&h, causal))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
