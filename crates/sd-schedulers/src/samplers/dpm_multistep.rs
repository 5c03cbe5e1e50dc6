//! DPM-Solver / DPM-Solver++ multistep (Lu et al., arXiv 2206.00927 and 2211.01095), including the SDE variants
//! (DPM++ 2M SDE) — diffusers `DPMSolverMultistepScheduler`. SDE variants draw one `randn` per step, before the update.
//!
//! With `use_flow_sigmas` (flow-matching models, `flow_dpmpp_2m.rs`) the same solver runs over rectified-flow
//! sigmas: α = 1 − σ instead of the VP reading of the sigma table, the model's velocity turned into x₀ = x − σ·v,
//! sigmas from `flow_sched::dpm_flow_sigmas` and the flow forward process for `add_noise`.

use crate::choice::Schedule;
use crate::common::{f32, lin, step_noise};
use crate::config::{json_name, AlgorithmType, FinalSigmas, Prediction, SchedulerConfig};
use crate::descriptor::{Models, boxed, Class, Descriptor, Lit};
use crate::dpm_math::{convert_model_output, parse_algo, Algo};
use crate::dpm_sched::{self, alpha_sigma, DpmSchedule};
use crate::flow_sched;
use crate::multistep::ModelOutputs;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::Scheduler;
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "DPMSolverMultistepScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "solver_order",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "final_sigmas_type",
        "lambda_min_clipped",
        "variance_type",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
        "use_flow_sigmas",
        "flow_shift",
    ],
    defaults: |_| {},
    unsupported: &[
        ("use_lu_lambdas", Lit::Bool(false)),
        ("use_dynamic_shifting", Lit::Bool(false)),
        ("time_shift_type", Lit::Str("exponential")),
    ],
};

pub fn build(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Box<dyn Scheduler>> {
    boxed(DpmMultistep::new(d, cfg))
}

pub static DPMPP_2M: Descriptor = Descriptor {
    name: "dpmpp-2m",
    a1111: &["DPM++ 2M"],
    class: &CLASS,
    preset: |c| {
        // the VP solver: a config over flow sigmas is flow-dpmpp-2m's
        c.use_flow_sigmas = false;
        c.algorithm_type = AlgorithmType::DpmSolverPlusPlus;
        c.solver_order = 2;
    },
    schedules: &Schedule::ALL,
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver++ second-order multistep",
    build,
};

pub static DPMPP_2M_SDE: Descriptor = Descriptor {
    name: "dpmpp-2m-sde",
    a1111: &["DPM++ 2M SDE"],
    class: &CLASS,
    preset: |c| {
        // the VP solver: a config over flow sigmas is flow-dpmpp-2m's
        c.use_flow_sigmas = false;
        c.algorithm_type = AlgorithmType::SdeDpmSolverPlusPlus;
        c.solver_order = 2;
    },
    schedules: &Schedule::ALL,
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver++ 2M, stochastic (SDE) variant (diffusers' fresh noise every step)",
    build,
};

pub static DPMPP_3M_SDE: Descriptor = Descriptor {
    name: "dpmpp-3m-sde",
    a1111: &["DPM++ 3M SDE"],
    class: &CLASS,
    preset: |c| {
        // the VP solver: a config over flow sigmas is flow-dpmpp-2m's
        c.use_flow_sigmas = false;
        c.algorithm_type = AlgorithmType::SdeDpmSolverPlusPlus;
        c.solver_order = 3;
    },
    schedules: &Schedule::ALL,
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver++ third-order multistep, SDE variant",
    build,
};

pub static DPM_2M: Descriptor = Descriptor {
    name: "dpm-2m",
    a1111: &[],
    class: &CLASS,
    preset: |c| {
        // the VP solver: a config over flow sigmas is flow-dpmpp-2m's
        c.use_flow_sigmas = false;
        c.algorithm_type = AlgorithmType::DpmSolver;
        c.solver_order = 2;
        c.final_sigmas_type = FinalSigmas::SigmaMin;
    },
    schedules: &Schedule::ALL,
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver (noise prediction) second-order multistep",
    build,
};

pub struct DpmMultistep {
    state: SamplerState,
    algo: Algo,
    heun: bool,
    /// `use_flow_sigmas`: α = 1 − σ (rectified flow) instead of α = 1/√(σ² + 1).
    flow: bool,
    train: TrainSchedule,
    outputs: ModelOutputs,
}

impl DpmMultistep {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let flow = cfg.use_flow_sigmas;
        let (algo, heun) = parse_algo(&cfg)?;
        if flow {
            ensure!(
                cfg.prediction_type == Prediction::FlowPrediction,
                "use_flow_sigmas is implemented for prediction_type flow_prediction only (the config has {})",
                json_name(&cfg.prediction_type)
            );
            ensure!(
                matches!(algo, Algo::DpmSolverPP | Algo::SdeDpmSolverPP),
                "use_flow_sigmas needs a data-prediction solver (dpmsolver++ or sde-dpmsolver++)"
            );
            ensure!(
                !(cfg.use_karras_sigmas || cfg.use_exponential_sigmas || cfg.use_beta_sigmas),
                "use_flow_sigmas cannot be combined with Karras / exponential / beta sigmas"
            );
            ensure!(
                cfg.final_sigmas_type == FinalSigmas::Zero,
                "use_flow_sigmas ends at σ = 0: final_sigmas_type must be \"zero\""
            );
        }
        let family = if flow { Family::FlowMatch } else { Family::DpmSolver };
        let state = SamplerState::new(d, cfg, family)?;
        let train = TrainSchedule::new(&state.cfg)?;
        let outputs = ModelOutputs::new(state.cfg.solver_order);
        Ok(Self { state, algo, heun, flow, train, outputs })
    }

    /// diffusers' `_sigma_to_alpha_sigma_t`: (α_t, σ_t) at schedule sigma `sigma`.
    fn alpha_sigma(&self, sigma: f64) -> (f64, f64) {
        if self.flow {
            (1.0 - sigma, sigma)
        } else {
            alpha_sigma(sigma)
        }
    }

    /// log-SNR λ = log α_t − log σ_t.
    fn lambda(&self, sigma: f64) -> f64 {
        let (a, s) = self.alpha_sigma(sigma);
        a.ln() - s.ln()
    }

    fn reset(&mut self, s: DpmSchedule) {
        self.state.set_schedule(s.timesteps, s.sigmas);
        self.outputs.reset();
    }

    /// x0 (DPM-Solver++) or ε (DPM-Solver) from the raw model output.
    fn convert(&self, out: &Tensor, sample: &Tensor, i: usize) -> Result<Tensor> {
        let data_pred = matches!(self.algo, Algo::DpmSolverPP | Algo::SdeDpmSolverPP);
        convert_model_output(&self.state.cfg, self.state.pred, data_pred, out, sample, self.state.sigmas[i])
    }

    fn first_order(&self, m0: &Tensor, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Result<Tensor> {
        let (s_t, s_s) = (self.state.sigmas[i + 1], self.state.sigmas[i]);
        let ((a_t, sg_t), (a_s, sg_s)) = (self.alpha_sigma(s_t), self.alpha_sigma(s_s));
        let h = self.lambda(s_t) - self.lambda(s_s);
        Ok(match self.algo {
            Algo::DpmSolverPP => lin(&[(sg_t / sg_s, sample), (-(a_t * ((-h).exp() - 1.0)), m0)])?,
            Algo::DpmSolver => lin(&[(a_t / a_s, sample), (-(sg_t * (h.exp() - 1.0)), m0)])?,
            Algo::SdeDpmSolverPP => lin(&[
                (sg_t / sg_s * (-h).exp(), sample),
                (a_t * (1.0 - (-2.0 * h).exp()), m0),
                (sg_t * (1.0 - (-2.0 * h).exp()).sqrt(), need(noise)?),
            ])?,
            Algo::SdeDpmSolver => lin(&[
                (a_t / a_s, sample),
                (-2.0 * (sg_t * (h.exp() - 1.0)), m0),
                (sg_t * ((2.0 * h).exp() - 1.0).sqrt(), need(noise)?),
            ])?,
        })
    }

    fn second_order(&self, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Result<Tensor> {
        let (m0, m1) = (self.outputs.get(0)?, self.outputs.get(1)?);
        let s = &self.state.sigmas;
        let (s_t, s0, s1) = (s[i + 1], s[i], s[i - 1]);
        let ((a_t, sg_t), (a0, sg0)) = (self.alpha_sigma(s_t), self.alpha_sigma(s0));
        let (l_t, l0, l1) = (self.lambda(s_t), self.lambda(s0), self.lambda(s1));
        let (h, h0) = (l_t - l0, l0 - l1);
        let r0 = h0 / h;
        let d1 = m0.f_sub(m1)?.f_mul_scalar(1.0 / r0)?;
        let (em, ep) = ((-h).exp(), h.exp());
        Ok(match (self.algo, self.heun) {
            (Algo::DpmSolverPP, false) => {
                lin(&[(sg_t / sg0, sample), (-(a_t * (em - 1.0)), m0), (-0.5 * (a_t * (em - 1.0)), &d1)])?
            }
            (Algo::DpmSolverPP, true) => {
                lin(&[(sg_t / sg0, sample), (-(a_t * (em - 1.0)), m0), (a_t * ((em - 1.0) / h + 1.0), &d1)])?
            }
            (Algo::DpmSolver, false) => {
                lin(&[(a_t / a0, sample), (-(sg_t * (ep - 1.0)), m0), (-0.5 * (sg_t * (ep - 1.0)), &d1)])?
            }
            (Algo::DpmSolver, true) => {
                lin(&[(a_t / a0, sample), (-(sg_t * (ep - 1.0)), m0), (-(sg_t * ((ep - 1.0) / h - 1.0)), &d1)])?
            }
            (Algo::SdeDpmSolverPP, heun) => {
                let e2 = (-2.0 * h).exp();
                let c1 = if heun { a_t * ((1.0 - e2) / (-2.0 * h) + 1.0) } else { 0.5 * (a_t * (1.0 - e2)) };
                lin(&[
                    (sg_t / sg0 * em, sample),
                    (a_t * (1.0 - e2), m0),
                    (c1, &d1),
                    (sg_t * (1.0 - e2).sqrt(), need(noise)?),
                ])?
            }
            (Algo::SdeDpmSolver, heun) => {
                let c1 = if heun { -2.0 * (sg_t * ((ep - 1.0) / h - 1.0)) } else { -(sg_t * (ep - 1.0)) };
                lin(&[
                    (a_t / a0, sample),
                    (-2.0 * (sg_t * (ep - 1.0)), m0),
                    (c1, &d1),
                    (sg_t * ((2.0 * h).exp() - 1.0).sqrt(), need(noise)?),
                ])?
            }
        })
    }

    fn third_order(&self, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Result<Tensor> {
        let (m0, m1, m2) = (self.outputs.get(0)?, self.outputs.get(1)?, self.outputs.get(2)?);
        let s = &self.state.sigmas;
        let ((a_t, sg_t), (a0, sg0)) = (self.alpha_sigma(s[i + 1]), self.alpha_sigma(s[i]));
        let (l_t, l0, l1, l2) = (self.lambda(s[i + 1]), self.lambda(s[i]), self.lambda(s[i - 1]), self.lambda(s[i - 2]));
        let (h, h0, h1) = (l_t - l0, l0 - l1, l1 - l2);
        let (r0, r1) = (h0 / h, h1 / h);
        let d1_0 = m0.f_sub(m1)?.f_mul_scalar(1.0 / r0)?;
        let d1_1 = m1.f_sub(m2)?.f_mul_scalar(1.0 / r1)?;
        let diff = d1_0.f_sub(&d1_1)?;
        let d1 = d1_0.f_add(&diff.f_mul_scalar(r0 / (r0 + r1))?)?;
        let d2 = diff.f_mul_scalar(1.0 / (r0 + r1))?;
        let (em, ep) = ((-h).exp(), h.exp());
        Ok(match self.algo {
            Algo::DpmSolverPP => lin(&[
                (sg_t / sg0, sample),
                (-(a_t * (em - 1.0)), m0),
                (a_t * ((em - 1.0) / h + 1.0), &d1),
                (-(a_t * ((em - 1.0 + h) / (h * h) - 0.5)), &d2),
            ])?,
            Algo::DpmSolver => lin(&[
                (a_t / a0, sample),
                (-(sg_t * (ep - 1.0)), m0),
                (-(sg_t * ((ep - 1.0) / h - 1.0)), &d1),
                (-(sg_t * ((ep - 1.0 - h) / (h * h) - 0.5)), &d2),
            ])?,
            Algo::SdeDpmSolverPP => {
                let e2 = (-2.0 * h).exp();
                lin(&[
                    (sg_t / sg0 * em, sample),
                    (a_t * (1.0 - e2), m0),
                    (a_t * ((1.0 - e2) / (-2.0 * h) + 1.0), &d1),
                    (a_t * ((1.0 - e2 - 2.0 * h) / (2.0 * h).powi(2) - 0.5), &d2),
                    (sg_t * (1.0 - e2).sqrt(), need(noise)?),
                ])?
            }
            Algo::SdeDpmSolver => bail!("third-order sde-dpmsolver is not defined (diffusers returns nothing for it)"),
        })
    }
}

fn need(noise: Option<&Tensor>) -> Result<&Tensor> {
    noise.ok_or_else(|| anyhow::anyhow!("internal: SDE update without noise"))
}

impl Scheduler for DpmMultistep {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let s = if self.flow {
            let (timesteps, mut sigmas) = flow_sched::dpm_flow_sigmas(&self.state.cfg, n)?;
            sigmas.push(0.0);
            DpmSchedule { timesteps, sigmas: sigmas.into_iter().map(|s| s as f32 as f64).collect() }
        } else {
            dpm_sched::spaced(&self.state.cfg, &self.train, n)?
        };
        self.reset(s);
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let len = self.state.timesteps.len();
        let c = &self.state.cfg;
        let lower_final = i == len - 1
            && (c.euler_at_final || (c.lower_order_final && len < 15) || c.final_sigmas_type == FinalSigmas::Zero);
        let lower_second = i + 2 == len && c.lower_order_final && len < 15;
        let order = c.solver_order;
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let m = self.convert(&out, &sample, i)?;
        self.outputs.push(m.shallow_clone());
        let noise = match self.algo {
            // diffusers draws this noise in float32 whatever the model's dtype.
            Algo::SdeDpmSolver | Algo::SdeDpmSolverPP => Some(step_noise(&out, gen)),
            _ => None,
        };
        let lower_order_nums = self.outputs.lower_order_nums();
        let prev = if order == 1 || lower_order_nums < 1 || lower_final {
            self.first_order(&m, &sample, noise.as_ref(), i)?
        } else if order == 2 || lower_order_nums < 2 || lower_second {
            self.second_order(&sample, noise.as_ref(), i)?
        } else {
            self.third_order(&sample, noise.as_ref(), i)?
        };
        self.outputs.count_step();
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn accepts_custom_timesteps(&self) -> bool {
        // integer timesteps index the VP table; the flow sigmas have none
        !self.flow
    }
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        ensure!(!self.flow, "sampler {} takes no custom timesteps over flow sigmas", self.state.descriptor.name);
        let s = dpm_sched::custom(&self.state.cfg, &self.train, timesteps)?;
        self.reset(s);
        Ok(())
    }
}
