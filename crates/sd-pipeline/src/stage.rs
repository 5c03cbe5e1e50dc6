//! One run of the denoising loop that is only part of a picture's making: it may start from latents another run
//! left (the SDXL refiner after the base, the latent hires fix after its first pass), stop part-way through the
//! schedule, and hand back latents instead of decoding them. [`Stage::default`] is an ordinary request.

use crate::loader::StableDiffusion;
use crate::request::{GenerationRequest, Mode};
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use sd_schedulers::Scheduler;
use tch::{Device, Kind, Tensor};

/// How one loop run is cut and started.
#[derive(Debug, Default)]
pub struct Stage {
    /// Start from these latents (`[1 or batch, channels, h, w]`, already multiplied by the VAE's scaling factor)
    /// instead of noise or an encoded image; only for txt2img requests.
    pub latents: Option<Tensor>,
    /// With `latents` and no `denoising_start`: noise them to this strength first (img2img on latents, as
    /// diffusers' img2img given a 4-channel `image`).
    pub strength: Option<f64>,
    /// diffusers' `denoising_start`: run only the timesteps below the switch point, from `latents` as they are.
    pub denoising_start: Option<f64>,
    /// diffusers' `denoising_end`: stop at the switch point.
    pub denoising_end: Option<f64>,
    /// Return the latents undecoded (diffusers' `output_type="latent"`).
    pub output_latents: bool,
    /// Which pass the prompt schedules count over; `None`: the request's own steps.
    pub pass: Option<crate::prompt::schedule::Pass>,
}

/// diffusers' defaults for the refiner's aesthetic-score conditioning (prompt, negative prompt).
pub const AESTHETIC_SCORE: f64 = 6.0;
pub const NEGATIVE_AESTHETIC_SCORE: f64 = 2.5;

impl Stage {
    /// Where the loop starts and ends in the sampler's timesteps (and the sampler's begin index set), for `req`.
    pub(crate) fn timestep_range(
        &self,
        sched: &mut dyn Scheduler,
        req: &GenerationRequest,
        device: Device,
    ) -> Result<(usize, usize)> {
        if self.latents.is_some() && !matches!(req.mode, Mode::Txt2Img) {
            bail!("a run that starts from latents takes no init image");
        }
        let begin = match (self.denoising_start, req.mode.strength().or(self.strength)) {
            (Some(f), _) => sd_schedulers::split::denoising_start_index(sched, req.steps, f)?,
            (None, None) => {
                sched.set_timesteps(req.steps, device)?;
                0
            }
            (None, Some(strength)) => sd_schedulers::img2img_timesteps(sched, req.steps, strength)?,
        };
        let len = sched.timesteps().len();
        let end = match self.denoising_end {
            Some(f) => begin + sd_schedulers::split::denoising_end_steps(sched, begin, f)?,
            None => len,
        };
        ensure!(begin < end && end <= len, "this stage has no timestep to run ({begin}..{end} of {len})");
        Ok((begin, end))
    }

    /// The starting latents when [`Self::latents`] is set: repeated to the batch, noised to `first_t` unless the
    /// stage continues a schedule (`denoising_start`), which draws nothing from the generator.
    pub(crate) fn start_latents(
        &self,
        sched: &dyn Scheduler,
        gen: &mut TorchGenerator,
        shape: [i64; 4],
        dtype: Kind,
        first_t: f64,
    ) -> Result<Tensor> {
        let Some(z) = &self.latents else { bail!("this stage has no starting latents") };
        let size = z.size();
        if size.len() != 4 || size[1..] != shape[1..] || (size[0] != 1 && size[0] != shape[0]) {
            bail!("the starting latents are {size:?}, but this request needs {shape:?} (or a batch of 1)");
        }
        let device = z.device();
        let z = if size[0] == shape[0] { z.to_kind(dtype) } else { z.to_kind(dtype).repeat([shape[0], 1, 1, 1]) };
        if self.denoising_start.is_some() {
            return Ok(z);
        }
        let noise = gen.randn(&shape, dtype, device);
        sched.add_noise(&z, &noise, first_t)
    }
}

/// SDXL's micro-conditioning ids, unconditional rows first when `cfg`: the base model's six
/// (original size, crop top-left, target size); the refiner's five (original size, crop top-left, aesthetic
/// score), whose unconditional rows carry the negative score and no crop, as diffusers'
/// `requires_aesthetics_score` pipeline builds them.
pub(crate) fn sdxl_time_ids(sd: &StableDiffusion, req: &GenerationRequest, b: i64, cfg: bool) -> Tensor {
    let (oh, ow) = req.original_size.unwrap_or((req.height, req.width));
    let (ct, cl) = req.crop_top_left;
    let (cond, uncond): (Vec<f32>, Vec<f32>) = if sd.info.refiner {
        (
            vec![oh as f32, ow as f32, ct as f32, cl as f32, AESTHETIC_SCORE as f32],
            vec![oh as f32, ow as f32, 0.0, 0.0, NEGATIVE_AESTHETIC_SCORE as f32],
        )
    } else {
        let ids = vec![oh as f32, ow as f32, ct as f32, cl as f32, req.height as f32, req.width as f32];
        (ids.clone(), ids)
    };
    let row = |v: &[f32]| Tensor::from_slice(v).unsqueeze(0).repeat([b, 1]);
    if cfg {
        Tensor::cat(&[row(&uncond), row(&cond)], 0)
    } else {
        row(&cond)
    }
}
