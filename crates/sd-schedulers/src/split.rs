//! Splitting one schedule between two models (SDXL's "ensemble of experts": the base denoises the noisy part, the
//! refiner the rest), as diffusers' `denoising_end` / `denoising_start` do. Both ends use the same cut-off
//! timestep, `round(T − fraction · T)` with `T = num_train_timesteps`: the first model keeps the timesteps at or above
//! it, the second runs those below it, so the two together run the whole schedule once.

use crate::Scheduler;
use anyhow::{ensure, Result};
use tch::Device;

/// The timestep that separates the two parts for a switch at `fraction` of the denoising (0 < fraction < 1).
pub fn cutoff_timestep(sched: &dyn Scheduler, fraction: f64) -> Result<f64> {
    ensure!(fraction > 0.0 && fraction < 1.0, "the switch point must be strictly between 0 and 1 (got {fraction})");
    let t = sched.config().num_train_timesteps as f64;
    Ok((t - fraction * t).round())
}

/// diffusers' `denoising_end`: how many of the (already set) timesteps from index `from` on the first model runs.
pub fn denoising_end_steps(sched: &dyn Scheduler, from: usize, fraction: f64) -> Result<usize> {
    let cut = cutoff_timestep(sched, fraction)?;
    let n = sched.timesteps().get(from..).unwrap_or_default().iter().filter(|&&t| t >= cut).count();
    ensure!(n > 0, "switching at {fraction} leaves the first model no step; raise the switch point or the steps");
    Ok(n)
}

/// diffusers' `denoising_start` (SDXL img2img `get_timesteps`): sets `num_steps` timesteps, keeps those below the
/// cut-off (one more for a second-order sampler whose count came out even, so no step is split between its two
/// evaluations), sets the begin index and returns it.
pub fn denoising_start_index(sched: &mut dyn Scheduler, num_steps: usize, fraction: f64) -> Result<usize> {
    sched.set_timesteps(num_steps, Device::Cpu)?;
    let cut = cutoff_timestep(sched, fraction)?;
    let mut n = sched.timesteps().iter().filter(|&&t| t < cut).count();
    if sched.order() == 2 && n % 2 == 0 {
        n += 1;
    }
    let len = sched.timesteps().len();
    ensure!(n > 0 && n <= len, "switching at {fraction} with {num_steps} steps leaves the second model no step");
    let start = len - n;
    sched.set_begin_index(start);
    Ok(start)
}
