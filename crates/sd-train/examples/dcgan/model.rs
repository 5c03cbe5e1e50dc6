//! The DCGAN of the project's source document, at 32 px: a Generator that turns 100 noise numbers into an image
//! through transposed convolutions 100→256→128→64→3 (4×4, then doubling to 8, 16, 32 pixels; BatchNorm and ReLU
//! between, Tanh at the end), and a Discriminator that mirrors it (convolutions 3→64→128→256→1, BatchNorm and
//! LeakyReLU 0.2, Sigmoid) and says how likely an image is real. Module indices follow the PyTorch `nn.Sequential`
//! of `scripts/fixtures/gen_91_dcgan.py`, so tensor names match its state dict.

use anyhow::Result;
use sd_core::TorchGenerator;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

pub const NZ: i64 = 100;

/// Adam as the DCGAN paper trains it: lr 2e-4, β₁ 0.5 (β₂ 0.999, no weight decay).
pub const LR: f64 = 2e-4;
pub fn adam() -> sd_train::optim::AdamWConfig {
    sd_train::optim::AdamWConfig { beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
}

enum Layer {
    ConvT(nn::ConvTranspose2D),
    Conv(nn::Conv2D),
    Bn(nn::BatchNorm),
    Relu,
    Leaky,
    Tanh,
    Sigmoid,
}

/// A stack of layers named by their index, like `nn.Sequential`.
pub struct Net {
    layers: Vec<Layer>,
    pub vs: nn::VarStore,
}

impl Net {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for l in &self.layers {
            h = match l {
                Layer::ConvT(c) => c.forward_t(&h, train),
                Layer::Conv(c) => c.forward_t(&h, train),
                Layer::Bn(b) => b.forward_t(&h, train),
                Layer::Relu => h.relu(),
                // LeakyReLU(0.2): x for x > 0, 0.2·x otherwise (tch has no slope argument)
                Layer::Leaky => h.relu() - (-&h).relu() * 0.2,
                Layer::Tanh => h.tanh(),
                Layer::Sigmoid => h.sigmoid(),
            };
        }
        h
    }

    /// Every tensor of the state dict (weights and BatchNorm running statistics), named as PyTorch names them.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            match l {
                Layer::ConvT(c) => out.push((format!("{prefix}.{i}.weight"), c.ws.shallow_clone())),
                Layer::Conv(c) => out.push((format!("{prefix}.{i}.weight"), c.ws.shallow_clone())),
                Layer::Bn(b) => {
                    for (n, t) in [("weight", &b.ws), ("bias", &b.bs)] {
                        if let Some(t) = t {
                            out.push((format!("{prefix}.{i}.{n}"), t.shallow_clone()));
                        }
                    }
                    out.push((format!("{prefix}.{i}.running_mean"), b.running_mean.shallow_clone()));
                    out.push((format!("{prefix}.{i}.running_var"), b.running_var.shallow_clone()));
                }
                _ => {}
            }
        }
        out
    }

    /// The trainable tensors, for the optimizer.
    pub fn parameters(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.state(prefix).into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    /// DCGAN initialisation from `gen`, module by module: conv weights N(0, 0.02), BatchNorm weights 1 + N(0, 0.02),
    /// biases 0 — drawn in the order the fixture script draws them.
    pub fn init(&mut self, gen: &mut TorchGenerator) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let dev = self.vs.device();
        for l in &mut self.layers {
            let (w, one) = match l {
                Layer::ConvT(c) => (&mut c.ws, 0.0),
                Layer::Conv(c) => (&mut c.ws, 0.0),
                Layer::Bn(b) => match b.ws.as_mut() {
                    Some(w) => (w, 1.0),
                    None => continue,
                },
                _ => continue,
            };
            let v = gen.try_randn(&w.size(), Kind::Float, dev)?.f_mul_scalar(0.02)?.f_add_scalar(one)?;
            w.f_copy_(&v)?;
            if let Layer::Bn(b) = l {
                if let Some(bs) = b.bs.as_mut() {
                    let _ = bs.f_zero_()?;
                }
            }
        }
        Ok(())
    }
}

fn convt(p: nn::Path, i: i64, o: i64, stride: i64, padding: i64) -> Layer {
    let cfg = nn::ConvTransposeConfig { stride, padding, bias: false, ..Default::default() };
    Layer::ConvT(nn::conv_transpose2d(p, i, o, 4, cfg))
}

fn conv(p: nn::Path, i: i64, o: i64, stride: i64, padding: i64) -> Layer {
    let cfg = nn::ConvConfig { stride, padding, bias: false, ..Default::default() };
    Layer::Conv(nn::conv2d(p, i, o, 4, cfg))
}

fn bn(p: nn::Path, c: i64) -> Layer {
    Layer::Bn(nn::batch_norm2d(p, c, Default::default()))
}

/// Noise `[N, 100, 1, 1]` → image `[N, 3, 32, 32]` in [-1, 1].
pub fn generator(device: tch::Device) -> Net {
    let vs = nn::VarStore::new(device);
    let r = vs.root();
    let layers = vec![
        convt(&r / 0, NZ, 256, 1, 0),
        bn(&r / 1, 256),
        Layer::Relu,
        convt(&r / 3, 256, 128, 2, 1),
        bn(&r / 4, 128),
        Layer::Relu,
        convt(&r / 6, 128, 64, 2, 1),
        bn(&r / 7, 64),
        Layer::Relu,
        convt(&r / 9, 64, 3, 2, 1),
        Layer::Tanh,
    ];
    Net { layers, vs }
}

/// Image `[N, 3, 32, 32]` → probability that it is real, `[N, 1, 1, 1]`.
pub fn discriminator(device: tch::Device) -> Net {
    let vs = nn::VarStore::new(device);
    let r = vs.root();
    let layers = vec![
        conv(&r / 0, 3, 64, 2, 1),
        Layer::Leaky,
        conv(&r / 2, 64, 128, 2, 1),
        bn(&r / 3, 128),
        Layer::Leaky,
        conv(&r / 5, 128, 256, 2, 1),
        bn(&r / 6, 256),
        Layer::Leaky,
        conv(&r / 8, 256, 1, 1, 0),
        Layer::Sigmoid,
    ];
    Net { layers, vs }
}

/// Mean binary cross-entropy of probabilities `p` against a constant label (`nn.BCELoss`).
pub fn bce(p: &Tensor, label: f64) -> Result<Tensor> {
    let target = p.f_full_like(label)?;
    Ok(p.f_binary_cross_entropy::<Tensor>(&target, None, tch::Reduction::Mean)?)
}

/// What one training step reports.
pub struct StepLosses {
    pub err_d_real: f64,
    pub err_d_fake: f64,
    pub err_g: f64,
    pub d_real_mean: f64,
    pub d_fake_mean: f64,
    pub d_fake_after_mean: f64,
    /// The generated batch (compared with PyTorch's by `tests/it/dcgan_step.rs`).
    #[allow(dead_code)]
    pub fake: Tensor,
}

/// One step of the classic recipe: D learns real → 1 and a detached fake batch → 0; then G learns to make the
/// updated D say 1 for the same fake batch.
pub fn train_step(
    g: &Net,
    d: &Net,
    opt_g: &mut sd_train::optim::AdamW,
    opt_d: &mut sd_train::optim::AdamW,
    real: &Tensor,
    z: &Tensor,
) -> Result<StepLosses> {
    opt_d.zero_grad();
    let out_real = d.forward(real, true).f_view([-1i64])?;
    let err_real = bce(&out_real, 1.0)?;
    let fake = g.forward(z, true);
    let out_fake = d.forward(&fake.detach(), true).f_view([-1i64])?;
    let err_fake = bce(&out_fake, 0.0)?;
    err_real.f_add(&err_fake)?.backward();
    opt_d.step(LR)?;

    opt_g.zero_grad();
    let out_g = d.forward(&fake, true).f_view([-1i64])?;
    let err_g = bce(&out_g, 1.0)?;
    err_g.backward();
    opt_g.step(LR)?;
    let scalar = |t: &Tensor| t.f_double_value(&[]);
    Ok(StepLosses {
        err_d_real: scalar(&err_real)?,
        err_d_fake: scalar(&err_fake)?,
        err_g: scalar(&err_g)?,
        d_real_mean: scalar(&out_real.f_mean(Kind::Float)?)?,
        d_fake_mean: scalar(&out_fake.f_mean(Kind::Float)?)?,
        d_fake_after_mean: scalar(&out_g.f_mean(Kind::Float)?)?,
        fake: fake.detach(),
    })
}
