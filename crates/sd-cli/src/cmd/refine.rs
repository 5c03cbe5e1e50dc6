//! `sd generate --refiner DIR --refiner-switch F`: the SDXL refiner after the base model (see
//! `sd_pipeline::refiner`). The flags are checked before any model loads; the refiner is loaded after the base,
//! checked against it, and encodes the prompts with its own text encoder.

use super::{usage, UsageError};
use anyhow::Result;
use sd_pipeline::generate::{EncodedPrompts, Event, Flow};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;

#[derive(clap::Args, Clone, Debug)]
pub struct RefinerArgs {
    /// An SDXL refiner (folder, hub id or checkpoint) that finishes the SDXL base's picture
    #[arg(long, value_name = "MODEL")]
    pub refiner: Option<String>,
    /// Fraction of the denoising the base does before the refiner takes over, strictly between 0 and 1
    #[arg(long, default_value_t = 0.8, value_name = "FRACTION")]
    pub refiner_switch: f64,
}

/// A loaded refiner and the run's prompts encoded by it.
pub struct Refiner {
    pub model: StableDiffusion,
    pub switch: f64,
    pub encoded: Option<EncodedPrompts>,
}

impl RefinerArgs {
    /// Flag checks that need no model: the switch point, and what the refiner cannot follow.
    pub fn check(&self, inpaint: bool, hires: bool, controlnet: bool) -> Result<()> {
        if self.refiner.is_none() {
            if self.refiner_switch != 0.8 {
                usage!("--refiner-switch needs --refiner");
            }
            return Ok(());
        }
        if let Err(e) = sd_pipeline::refiner::check_switch(self.refiner_switch) {
            usage!("--refiner-switch: {e:#}");
        }
        if inpaint {
            usage!("--refiner finishes txt2img or img2img, not inpainting (--mask)");
        }
        if hires {
            usage!("--refiner with the hires fix is not supported: use one or the other");
        }
        if controlnet {
            usage!("--refiner with --controlnet is not supported");
        }
        // A folder's configs are read now, so a wrong path fails before the base model loads.
        if let Some(spec) = &self.refiner {
            if !sd_pipeline::single_file::is_single_file(spec) {
                sd_core::model_dir::ModelDir::open(spec).map_err(|e| UsageError(format!("--refiner: {e:#}")))?;
            }
        }
        Ok(())
    }

    /// Load the refiner for `base` with the base's device and dtype (no LoRAs, ControlNet or safety checker: those
    /// belong to the base).
    pub fn load(&self, base: &StableDiffusion, base_opts: &LoadOptions) -> Result<Option<Refiner>> {
        let Some(spec) = &self.refiner else { return Ok(None) };
        let mut opts = base_opts.clone();
        opts.loras.clear();
        opts.controlnets.clear();
        opts.load_safety_checker = false;
        opts.family = None;
        let model = sd_pipeline::refiner::load_refiner(base, spec, opts)?;
        Ok(Some(Refiner { model, switch: self.refiner_switch, encoded: None }))
    }
}

impl Refiner {
    /// Encode the run's prompts with the refiner's encoder once, then free it.
    pub fn encode(&mut self, req: &GenerationRequest, on_event: &mut dyn FnMut(Event<'_>) -> Flow) -> Result<()> {
        if self.encoded.is_none() {
            self.encoded = Some(self.model.encode_prompts(req, on_event)?);
            self.model.release_text_encoders();
        }
        Ok(())
    }
}
