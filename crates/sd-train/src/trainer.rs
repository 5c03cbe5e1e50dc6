//! [`Trainer`]: loads the base model, keeps the frozen parts frozen, and runs optimizer steps.
//!
//! Reproducibility: every random draw comes from a [`TorchGenerator`] derived from `(seed, purpose, index)`, never
//! from a generator that runs across steps. Micro-batch `m` (counting every batch ever drawn) uses stream
//! `(seed, BATCH, m)` for its random crops, VAE posterior samples, noise and timesteps (in that order), and the
//! visiting order of epoch `e` comes from `(seed, SHUFFLE, e)`. A resumed run therefore only needs the step count
//! to continue exactly where it stopped.

use crate::config::TrainConfig;
use crate::dataset::Dataset;
use crate::ema::Ema;
use crate::loss::{diffusion_loss, MinSnr, NoiseSchedule, NoisedBatch};
use crate::optim::{clip_grad_norm, AdamW};
use anyhow::{bail, Context, Result};
use sd_core::model_dir::{find_weights, ModelDir};
use sd_core::weights::VarBuilder;
use sd_core::TorchGenerator;
use sd_models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use sd_models::unet::{UNet2DConditionModel, UNetConfig};
use sd_models::vae::AutoencoderKL;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Kind, Tensor};

const SHUFFLE: u64 = 1;
const BATCH: u64 = 2;

/// splitmix64: decorrelates nearby (seed, purpose, index) triples before they seed mt19937.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of one purpose and index (see the module docs).
pub fn stream(seed: u64, purpose: u64, index: u64) -> TorchGenerator {
    TorchGenerator::new(mix(seed ^ mix(purpose.wrapping_mul(0x1000_0000_01B3) ^ mix(index))))
}

/// The text side: a tokenizer and an encoder that is either frozen or trained.
pub struct TextSide {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
    pub config_json: serde_json::Value,
    pub varstore: Option<Arc<nn::VarStore>>,
}

/// What one optimizer step reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub step: u64,
    /// Mean loss over the accumulated micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient 2-norm before clipping.
    pub grad_norm: f64,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub dataset: Dataset,
    pub schedule: NoiseSchedule,
    pub unet: UNet2DConditionModel,
    pub unet_config_json: serde_json::Value,
    pub unet_vs: Arc<nn::VarStore>,
    pub text: TextSide,
    pub vae: AutoencoderKL,
    pub base: ModelDir,
    pub optim: AdamW,
    pub ema: Option<Ema>,
    /// Optimizer steps completed.
    pub step: u64,
    latent_cache: Vec<Option<(Tensor, Tensor)>>,
    text_cache: Vec<Option<Tensor>>,
    empty_cache: Option<Tensor>,
    order_cache: Option<(u64, Vec<usize>)>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Variables of a var store as (name, tensor), sorted by name so every run lists them in the same order.
fn named_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let sorted: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    sorted.into_iter().collect()
}

impl Trainer {
    /// Load the base model (and the UNet to train) and check the dataset fits it.
    pub fn new(cfg: TrainConfig, dataset: Dataset) -> Result<Self> {
        cfg.validate()?;
        let base = ModelDir::open(&cfg.model.to_string_lossy())?;
        let device = cfg.device;
        let schedule = NoiseSchedule::from_json(&base.component_config("scheduler")?)
            .with_context(|| format!("the scheduler config of {}", base.root.display()))?;

        // UNet: from --unet-config (fresh), from a checkpoint being resumed, or from the base model.
        let (unet_config_json, unet_weights) = match (&cfg.resume, &cfg.unet_config) {
            (Some(dir), _) => {
                let udir = dir.join("unet");
                (read_json(&udir.join("config.json"))?, Some(find_weights(&udir, None)?))
            }
            (None, Some(path)) => (read_json(path)?, None),
            (None, None) => {
                let udir = base.component_dir("unet")?;
                (read_json(&udir.join("config.json"))?, Some(find_weights(&udir, None)?))
            }
        };
        let unet_cfg: UNetConfig = serde_json::from_value(unet_config_json.clone()).context("the UNet config")?;
        if unet_cfg.addition_embed_type.is_some() {
            bail!("training SDXL-style UNets (addition_embed_type = text_time) is not supported yet");
        }
        let unet_vs = Arc::new(nn::VarStore::new(device));
        let vb = match &unet_weights {
            Some(w) => VarBuilder::from_safetensors(std::slice::from_ref(w), cfg.dtype, device)?,
            None => {
                tch::manual_seed(cfg.seed as i64);
                VarBuilder::from_init(cfg.dtype, device)
            }
        };
        let vb = vb.trainable(unet_vs.clone())?;
        let unet = UNet2DConditionModel::from_varbuilder(&vb, &unet_cfg)?;
        vb.finish("UNet2DConditionModel", &[])?;

        let text = load_text(&base, &cfg)?;
        let vae = AutoencoderKL::load(&base.component_dir("vae")?, Kind::Float, device)
            .with_context(|| format!("loading the VAE of {}", base.root.display()))?;

        let cross = match &unet_cfg.cross_attention_dim {
            sd_models::unet::PerBlock::One(v) => *v,
            sd_models::unet::PerBlock::Many(v) => v.first().copied().unwrap_or(0),
        };
        if text.encoder.config().hidden_size != cross {
            bail!(
                "the text encoder of {} outputs {} features but the UNet's cross_attention_dim is {cross}",
                base.root.display(),
                text.encoder.config().hidden_size
            );
        }
        if unet_cfg.in_channels != vae.config().latent_channels {
            bail!(
                "the UNet takes {} channels but the VAE makes {}-channel latents",
                unet_cfg.in_channels,
                vae.config().latent_channels
            );
        }
        let multiple = (vae.scale_factor() << (unet_cfg.block_out_channels.len().saturating_sub(1))) as u32;
        if !dataset.width.is_multiple_of(multiple) || !dataset.height.is_multiple_of(multiple) {
            bail!(
                "training images are {}×{}, but this model needs sides that are multiples of {multiple}; pass --resolution with such a size",
                dataset.width,
                dataset.height
            );
        }

        let mut params = named_vars(&unet_vs);
        if let Some(vs) = &text.varstore {
            params.extend(named_vars(vs).into_iter().map(|(n, t)| (format!("text_encoder.{n}"), t)));
        }
        let optim = AdamW::new(params, cfg.adam.clone())?;
        let ema = match cfg.ema_decay {
            Some(d) => Some(Ema::new(named_vars(&unet_vs), d)?),
            None => None,
        };
        let n = dataset.len();
        let mut trainer = Self {
            cfg,
            dataset,
            schedule,
            unet,
            unet_config_json,
            unet_vs,
            text,
            vae,
            base,
            optim,
            ema,
            step: 0,
            latent_cache: (0..n).map(|_| None).collect(),
            text_cache: (0..n).map(|_| None).collect(),
            empty_cache: None,
            order_cache: None,
        };
        if let Some(dir) = trainer.cfg.resume.clone() {
            trainer.restore(&dir)?;
        }
        Ok(trainer)
    }

    /// Continue from a checkpoint written by [`crate::run::save_checkpoint`].
    fn restore(&mut self, dir: &Path) -> Result<()> {
        let (state, tensors) = crate::checkpoint::read_state(dir)?;
        let cfg = &self.cfg;
        let same = state.seed == cfg.seed
            && state.batch_size == cfg.batch_size
            && state.grad_accum == cfg.grad_accum
            && state.ema == cfg.ema_decay.is_some()
            && state.train_text_encoder == cfg.train_text_encoder;
        if !same {
            bail!(
                "{} was trained with seed {}, batch size {}, gradient accumulation {}, ema {}, train text encoder {}; resume with the same settings",
                dir.display(),
                state.seed,
                state.batch_size,
                state.grad_accum,
                state.ema,
                state.train_text_encoder
            );
        }
        self.optim.load_state(&tensors, state.step)?;
        if let Some(ema) = &mut self.ema {
            ema.load_state(&tensors)?;
        }
        self.step = state.step;
        Ok(())
    }

    /// Learning rate for the next optimizer step.
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr * crate::lr::lr_factor(self.cfg.lr_schedule, self.step, self.cfg.warmup_steps, self.cfg.max_steps)
    }

    /// Dataset indices of global micro-batch `m`.
    fn batch_indices(&mut self, m: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let bs = self.cfg.batch_size.min(n).max(1);
        let per_epoch = n.div_ceil(bs) as u64;
        let (epoch, k) = (m / per_epoch, (m % per_epoch) as usize);
        if self.order_cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let order = self.dataset.epoch_order(&mut stream(self.cfg.seed, SHUFFLE, epoch));
            self.order_cache = Some((epoch, order));
        }
        let order = self.order_cache.as_ref().map(|(_, o)| o.as_slice()).unwrap_or(&[]);
        order[k * bs..((k + 1) * bs).min(n)].to_vec()
    }

    /// Token ids → text encoder states (no graph unless the text encoder is trained).
    pub fn encode_text(&self, captions: &[&str]) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(captions.len());
        for c in captions {
            ids.push(Tensor::from_slice(&self.text.tokenizer.encode(c)?));
        }
        let ids = Tensor::f_stack(&ids, 0)?.f_to(self.cfg.device)?;
        let _guard = if self.text.varstore.is_none() { Some(tch::no_grad_guard()) } else { None };
        Ok(self.text.encoder.forward(&ids)?.last_hidden_state)
    }

    /// Text states of the batch; `dropped[k]` replaces example `k`'s caption by the empty prompt.
    fn text_states(&mut self, indices: &[usize], dropped: &[bool]) -> Result<Tensor> {
        let caption = |k: usize, i: usize| {
            if dropped.get(k).copied().unwrap_or(false) {
                String::new()
            } else {
                self.dataset.examples[i].caption.clone()
            }
        };
        if self.text.varstore.is_some() {
            let caps: Vec<String> = indices.iter().enumerate().map(|(k, &i)| caption(k, i)).collect();
            return self.encode_text(&caps.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let mut out = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            if dropped.get(k).copied().unwrap_or(false) {
                if self.empty_cache.is_none() {
                    self.empty_cache = Some(self.encode_text(&[""])?);
                }
                out.extend(self.empty_cache.as_ref().map(|t| t.shallow_clone()));
                continue;
            }
            if self.text_cache[i].is_none() {
                let caption = self.dataset.examples[i].caption.clone();
                self.text_cache[i] = Some(self.encode_text(&[caption.as_str()])?);
            }
            out.push(
                self.text_cache[i]
                    .as_ref()
                    .map(|t| t.shallow_clone())
                    .unwrap_or_else(|| Tensor::zeros([1], (Kind::Float, self.cfg.device))),
            );
        }
        Ok(Tensor::f_cat(&out, 0)?)
    }

    /// VAE posterior (mean, logvar) of one example; cached when the example's pixels never change.
    fn posterior(&mut self, idx: usize, gen: &mut TorchGenerator) -> Result<(Tensor, Tensor)> {
        if let Some((m, l)) = &self.latent_cache[idx] {
            return Ok((m.shallow_clone(), l.shallow_clone()));
        }
        let px = self.dataset.pixels(idx, gen, self.cfg.device)?.f_unsqueeze(0)?;
        let post = tch::no_grad(|| self.vae.encode(&px))?;
        if !self.dataset.is_random() {
            self.latent_cache[idx] = Some((post.mean.shallow_clone(), post.logvar.shallow_clone()));
        }
        Ok((post.mean, post.logvar))
    }

    /// Everything random about micro-batch `m`, drawn from its stream.
    pub fn make_batch(&mut self, indices: &[usize], gen: &mut TorchGenerator) -> Result<NoisedBatch> {
        let vcfg = self.vae.config().clone();
        let mut latents = Vec::with_capacity(indices.len());
        for &i in indices {
            let (mean, logvar) = self.posterior(i, gen)?;
            let eps = gen.try_randn(&mean.size(), Kind::Float, self.cfg.device)?;
            let z = mean.f_add(&logvar.f_mul_scalar(0.5)?.f_exp()?.f_mul(&eps)?)?;
            let z = z.f_sub_scalar(vcfg.shift_factor.unwrap_or(0.0))?.f_mul_scalar(vcfg.scaling_factor)?;
            latents.push(z);
        }
        let latents = Tensor::f_cat(&latents, 0)?;
        let noise = gen.try_randn(&latents.size(), Kind::Float, self.cfg.device)?;
        let n = self.schedule.num_train_timesteps() as u32;
        // torch.randint(0, n) on a CPU generator: one 32-bit draw modulo the range.
        let timesteps = indices.iter().map(|_| (gen.next_u32() % n) as i64).collect();
        // Drawn after everything else, and only when enabled, so runs without dropout keep their streams.
        let p = self.cfg.caption_dropout;
        let dropped: Vec<bool> = if p > 0.0 {
            indices.iter().map(|_| (gen.next_u32() as f64) < p * 4_294_967_296.0).collect()
        } else {
            Vec::new()
        };
        let encoder_hidden_states = self.text_states(indices, &dropped)?;
        Ok(NoisedBatch { latents, encoder_hidden_states, noise, timesteps })
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, AdamW, EMA.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let accum = self.cfg.grad_accum.max(1);
        let lr = self.current_lr();
        self.optim.zero_grad();
        let mut total = 0.0;
        for a in 0..accum {
            let m = self.step * accum as u64 + a as u64;
            let indices = self.batch_indices(m);
            let mut gen = stream(self.cfg.seed, BATCH, m);
            let batch = self.make_batch(&indices, &mut gen)?;
            let min_snr =
                self.cfg.snr_gamma.map(|gamma| MinSnr { gamma, keep_high_noise: self.cfg.snr_keep_high_noise });
            let loss = diffusion_loss(&self.unet, &self.schedule, &batch, min_snr)?;
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                bail!("the loss became {value} at step {} (try a lower --lr or --dtype f32)", self.step + 1);
            }
            total += value;
            loss.f_div_scalar(accum as f64)?.f_backward()?;
        }
        let params: Vec<Tensor> = self.optim.params().map(|p| p.shallow_clone()).collect();
        let grad_norm = clip_grad_norm(&params, self.cfg.max_grad_norm)?;
        self.optim.step(lr)?;
        self.step += 1;
        if let Some(ema) = &mut self.ema {
            ema.update(&named_vars(&self.unet_vs), self.step)?;
        }
        Ok(StepReport { step: self.step, loss: total / accum as f64, lr, grad_norm })
    }

    /// Loss of a batch without touching gradients (for evaluation and tests).
    pub fn eval_loss(&self, batch: &NoisedBatch) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        Ok(diffusion_loss(&self.unet, &self.schedule, batch, None)?.double_value(&[]))
    }

    /// UNet weights to save: the EMA shadows when `use_ema` and EMA is on, otherwise the (float32) weights.
    pub fn unet_weights(&self, use_ema: bool) -> Vec<(String, Tensor)> {
        if let (true, Some(ema)) = (use_ema, &self.ema) {
            return ema.weights().iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        }
        self.optim.full_precision_params().into_iter().filter(|(n, _)| !n.starts_with("text_encoder.")).collect()
    }

    /// Trained text-encoder weights (float32), when the text encoder is trained.
    pub fn text_encoder_weights(&self) -> Option<Vec<(String, Tensor)>> {
        self.text.varstore.as_ref()?;
        Some(
            self.optim
                .full_precision_params()
                .into_iter()
                .filter_map(|(n, t)| n.strip_prefix("text_encoder.").map(|s| (s.to_string(), t)))
                .collect(),
        )
    }
}

fn load_text(base: &ModelDir, cfg: &TrainConfig) -> Result<TextSide> {
    if base.root.join("text_encoder_2").is_dir() {
        bail!("{} has two text encoders (SDXL); training SDXL is not supported yet", base.root.display());
    }
    let tokenizer = ClipTokenizer::from_dir(&base.root.join("tokenizer"))
        .with_context(|| format!("loading the tokenizer of {}", base.root.display()))?;
    let dir = base.component_dir("text_encoder")?;
    let config_json = read_json(&dir.join("config.json"))?;
    if !cfg.train_text_encoder {
        let encoder = ClipTextModel::load(&dir, Kind::Float, cfg.device)
            .with_context(|| format!("loading the text encoder of {}", base.root.display()))?;
        return Ok(TextSide { tokenizer, encoder, config_json, varstore: None });
    }
    let tcfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
    let weights = match &cfg.resume {
        Some(r) => find_weights(&r.join("text_encoder"), None)?,
        None => find_weights(&dir, None)?,
    };
    let vs = Arc::new(nn::VarStore::new(cfg.device));
    let vb = VarBuilder::from_safetensors(&[weights], cfg.dtype, cfg.device)?.trainable(vs.clone())?;
    let with_projection = tcfg.declares_projection() || vb.contains("text_projection.weight");
    let encoder = ClipTextModel::from_varbuilder(&vb, &tcfg, with_projection)?;
    vb.finish("CLIP text encoder", &[])?;
    Ok(TextSide { tokenizer, encoder, config_json, varstore: Some(vs) })
}
