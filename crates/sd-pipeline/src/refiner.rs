//! The SDXL refiner as diffusers' "ensemble of experts": the base model denoises the noisy part of the schedule
//! (`denoising_end = switch`), and its latents, undecoded, go to the refiner's img2img pipeline, which runs the
//! rest of the same schedule (`denoising_start = switch`: same steps, same sampler, no noise added). The refiner
//! encodes the prompts with its own text encoder (OpenCLIP G only) and conditions on an aesthetic score instead of
//! the target size (see `stage::sdxl_time_ids`). Its pass starts a fresh generator from the request's
//! seed, as the hires fix's second pass does.

use crate::family::{Family, ModelInfo};
use crate::generate::{EncodedPrompts, Event, Flow, Generated};
use crate::loader::{LoadOptions, StableDiffusion};
use crate::request::{GenerationRequest, Mode};
use crate::stage::Stage;
use anyhow::{bail, Context, Result};
use sd_core::model_dir::ModelDir;

/// What the refiner added, for the image's parameters (A1111: `Refiner: NAME [hash], Refiner switch at: 0.8`).
#[derive(Clone, Debug, Default)]
pub struct RefinerApplied {
    pub params: Vec<(String, String)>,
}

/// The switch point must leave both models some of the schedule.
pub fn check_switch(switch: f64) -> Result<()> {
    if !(switch.is_finite() && switch > 0.0 && switch < 1.0) {
        bail!("the refiner switch point must be strictly between 0 and 1 (got {switch}): it is the fraction of the denoising the base model does");
    }
    Ok(())
}

/// Whether `refiner` (its folder's configs) can finish what `base` starts; checked before its weights are read.
pub fn check_refiner_folder(base: &StableDiffusion, refiner: &ModelDir) -> Result<()> {
    check_base(base)?;
    let what = refiner.root.display();
    let info = ModelInfo::detect(refiner).with_context(|| format!("reading the refiner {what}"))?;
    if !info.refiner {
        bail!(
            "{what} is not an SDXL refiner (its model_index.json has no `requires_aesthetics_score`, and it has a \
             first text encoder): --refiner takes a StableDiffusionXLImg2ImgPipeline folder such as \
             stable-diffusion-xl-refiner-1.0"
        );
    }
    let channels = |c: &str, k: &str| refiner.component_config(c).ok().and_then(|v| v.get(k).and_then(|x| x.as_i64()));
    let base_latents = base.vae.config().latent_channels;
    if let Some(n) = channels("vae", "latent_channels") {
        if n != base_latents {
            bail!("the refiner {what} works on {n}-channel latents but the base model on {base_latents}: they do not fit together");
        }
    }
    if let Some(n) = channels("unet", "in_channels") {
        if n != base_latents {
            bail!("the refiner {what}'s UNet takes {n} input channels, not the base's {base_latents} latent channels");
        }
    }
    Ok(())
}

fn check_base(base: &StableDiffusion) -> Result<()> {
    if base.info.family != Family::Sdxl || base.info.refiner || base.info.inpainting {
        bail!(
            "{} is not an SDXL base model: the refiner finishes what an SDXL base (StableDiffusionXLPipeline) starts",
            base.name
        );
    }
    Ok(())
}

/// Load a refiner for `base` (folder, hub id or single-file checkpoint), refusing one that does not fit it.
pub fn load_refiner(base: &StableDiffusion, spec: &str, opts: LoadOptions) -> Result<StableDiffusion> {
    if !crate::single_file::is_single_file(spec) {
        check_refiner_folder(base, &ModelDir::open(spec)?)?;
    }
    let refiner = StableDiffusion::load(spec, opts).with_context(|| format!("loading the refiner {spec}"))?;
    check_refiner_folder(base, &refiner.dir)?;
    Ok(refiner)
}

impl StableDiffusion {
    /// The base model's part (up to `switch`), then `refiner` from its latents to the end. `encoded` are the
    /// prompts encoded by this model, `refiner_encoded` the same request's prompts encoded by the refiner.
    /// An interrupt during the base's part returns the base's latents decoded, unrefined.
    pub fn generate_refined_encoded(
        &self,
        req: &GenerationRequest,
        encoded: &EncodedPrompts,
        refiner: &StableDiffusion,
        refiner_encoded: &EncodedPrompts,
        switch: f64,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Generated> {
        check_switch(switch)?;
        check_refiner_folder(self, &refiner.dir)?;
        if matches!(req.mode, Mode::Inpaint { .. }) {
            bail!("the refiner runs after txt2img or img2img, not after inpainting");
        }
        if !req.control.is_empty() {
            bail!("the refiner with a ControlNet is not supported (the refiner has no ControlNet to follow the control image)");
        }
        if !req.ip_adapters.is_empty() {
            bail!("the refiner with an IP-Adapter is not supported (the adapter is loaded for the base model only)");
        }
        let base_stage = Stage { denoising_end: Some(switch), output_latents: true, ..Default::default() };
        let (mut first, latents) = self.generate_stage(req, encoded, &base_stage, on_event)?;
        if first.interrupted {
            self.decode_generated(&mut first, &latents, on_event)?;
            return Ok(first);
        }
        let mut second = req.clone();
        second.mode = Mode::Txt2Img;
        // With --offload, the base's UNet leaves the GPU before the refiner's arrives.
        self.offload.park_all()?;
        let stage = Stage { latents: Some(latents), denoising_start: Some(switch), ..Default::default() };
        let (mut g, _) = refiner.generate_stage(&second, refiner_encoded, &stage, on_event)?;
        refiner.offload.park_all()?;
        g.timings.encode_s += first.timings.encode_s;
        g.timings.denoise_s += first.timings.denoise_s;
        g.unet_calls += first.unet_calls;
        g.shallow_calls += first.shallow_calls;
        g.steps_done += first.steps_done;
        g.sampler_label = first.sampler_label;
        g.schedule_label = first.schedule_label;
        g.embeddings_used = first.embeddings_used;
        let name = match crate::hash_cache::model_hash(refiner) {
            Some(h) => format!("{} [{h}]", refiner.name),
            None => refiner.name.clone(),
        };
        g.refiner = Some(RefinerApplied {
            params: vec![("Refiner".to_string(), name), ("Refiner switch at".to_string(), format!("{switch}"))],
        });
        Ok(g)
    }
}
