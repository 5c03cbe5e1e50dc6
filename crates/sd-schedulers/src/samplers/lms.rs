//! Linear multistep (k-diffusion `sample_lms`, order 4) — diffusers `LMSDiscreteScheduler`. The coefficients are
//! integrals of Lagrange basis polynomials over [σ_i, σ_{i+1}]; diffusers integrates them numerically
//! (scipy `quad`), here 8-point Gauss–Legendre integrates the ≤ cubic polynomials exactly.

use crate::choice::Schedule;
use crate::common::{f32, k_denoised};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::ksched;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use std::collections::VecDeque;
use tch::{Device, Tensor};

const ORDER: usize = 4;

pub static CLASS: Class = Class {
    name: "LMSDiscreteScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |_| {},
    unsupported: &[],
};

pub static LMS: Descriptor = Descriptor {
    name: "lms",
    a1111: &["LMS"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "Linear multistep, order 4",
    build: |d, c| boxed(Lms::new(d, c)),
};

pub struct Lms {
    state: SamplerState,
    train: TrainSchedule,
    derivatives: VecDeque<Tensor>,
}

/// ∫_{a}^{b} f with 8-point Gauss–Legendre.
fn gauss8(a: f64, b: f64, f: impl Fn(f64) -> f64) -> f64 {
    const X: [f64; 4] =
        [0.183_434_642_495_649_8, 0.525_532_409_916_329, 0.796_666_477_413_626_7, 0.960_289_856_497_536_3];
    const W: [f64; 4] =
        [0.362_683_783_378_362, 0.313_706_645_877_887_3, 0.222_381_034_453_374_5, 0.101_228_536_290_376_3];
    let (m, h) = ((a + b) / 2.0, (b - a) / 2.0);
    let mut s = 0.0;
    for k in 0..4 {
        s += W[k] * (f(m - h * X[k]) + f(m + h * X[k]));
    }
    s * h
}

impl Lms {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train, derivatives: VecDeque::new() })
    }

    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = &self.state.sigmas;
        let basis = |tau: f64| {
            let mut prod = 1.0;
            for k in 0..order {
                if k != current {
                    prod *= (tau - s[t - k]) / (s[t - current] - s[t - k]);
                }
            }
            prod
        };
        gauss8(s[t], s[t + 1], basis)
    }
}

impl Scheduler for Lms {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        // LMS's Karras conversion ignores config sigma_min/max (it has none)
        let mut c = self.state.cfg.clone();
        c.sigma_min = None;
        c.sigma_max = None;
        let s = ksched::linear_schedule(&c, &self.train, n)?;
        self.state.set_schedule(s.timesteps, s.sigmas);
        self.derivatives.clear();
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let sample = f32(sample)?;
        let sigma = self.state.sigmas[i];
        let x0 = k_denoised(self.state.pred, &sample, &f32(model_output)?, sigma)?;
        let d = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
        self.derivatives.push_back(d);
        if self.derivatives.len() > ORDER {
            self.derivatives.pop_front();
        }
        // as diffusers: the order follows the step index; after an img2img start the history is shorter and the
        // zip with it keeps only the first coefficients
        let order = (i + 1).min(ORDER);
        let mut prev = sample.shallow_clone();
        for (cur, d) in self.derivatives.iter().rev().take(order).enumerate() {
            prev = prev.f_add(&d.f_mul_scalar(self.coefficient(order, i, cur))?)?;
        }
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
