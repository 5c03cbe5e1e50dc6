//! AUTOMATIC1111's `/sdapi/v1` API: the request bodies its clients send (the `webuiapi` package, Open WebUI, bots),
//! mapped onto a [`JobRequest`], and responses in A1111's shapes (`info` is a JSON *string*, as A1111 returns it).
//!
//! What clients always send with harmless defaults is accepted; a field that asks for something sd-rs does not do
//! (`restore_faces: true`, a script, hires fix) is a 422 naming the field, never a silently different image.
//!
//! Differences from A1111 that a client can see, each deliberate: all images of one batch share one seed (the
//! batch is drawn from one generator, as `sd generate --batch-size` and diffusers do) and batch `b` of `n_iter`
//! uses `seed + b`; `all_seeds` reports exactly that. img2img runs `int(steps × denoising_strength)` steps, the
//! count A1111 runs without its "img2img_fix_steps" option.

use crate::error::{ApiError, ApiResult, JsonBody};
use crate::job::{JobKind, JobRequest, JobView};
use crate::{submit_and_wait, validate_job, AppState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use sd_provenance::formats::OutputFormat;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Routes under `/sdapi/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/txt2img", post(txt2img))
        .route("/img2img", post(img2img))
        .route("/progress", get(progress))
        .route("/interrupt", post(interrupt))
        .route("/skip", post(skip))
        .route("/samplers", get(samplers))
        .route("/schedulers", get(schedulers))
        .route("/sd-models", get(sd_models))
        .route("/loras", get(loras))
        .route("/embeddings", get(embeddings))
        .route("/upscalers", get(upscalers))
        .route("/options", get(get_options).post(set_options))
        .route("/png-info", post(png_info))
        .route("/scripts", get(scripts))
        .route("/script-info", get(empty_list))
        .route("/sd-vae", get(empty_list))
        .route("/hypernetworks", get(empty_list))
        .route("/face-restorers", get(empty_list))
        .route("/prompt-styles", get(empty_list))
        .route("/realesrgan-models", get(empty_list))
        .route("/cmd-flags", get(cmd_flags))
        .route("/memory", get(memory))
        .route("/refresh-checkpoints", post(no_op))
        .route("/refresh-loras", post(no_op))
}

/// A txt2img or img2img body as A1111's `StableDiffusionTxt2ImgProcessingAPI` / `...Img2ImgProcessingAPI` define
/// it. Unknown keys are ignored, as A1111 (pydantic) ignores them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct A1111Request {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub styles: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub subseed: Option<i64>,
    pub subseed_strength: Option<f64>,
    pub seed_resize_from_h: Option<i64>,
    pub seed_resize_from_w: Option<i64>,
    pub sampler_name: Option<String>,
    pub sampler_index: Option<String>,
    pub scheduler: Option<String>,
    pub batch_size: Option<i64>,
    pub n_iter: Option<i64>,
    pub steps: Option<i64>,
    pub cfg_scale: Option<f64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub restore_faces: Option<bool>,
    pub tiling: Option<bool>,
    pub eta: Option<f64>,
    pub denoising_strength: Option<f64>,
    pub s_min_uncond: Option<f64>,
    pub s_churn: Option<f64>,
    pub s_tmax: Option<f64>,
    pub s_tmin: Option<f64>,
    pub s_noise: Option<f64>,
    pub override_settings: Option<Map<String, Value>>,
    pub override_settings_restore_afterwards: Option<bool>,
    pub refiner_checkpoint: Option<String>,
    pub refiner_switch_at: Option<f64>,
    pub disable_extra_networks: Option<bool>,
    pub enable_hr: Option<bool>,
    pub hr_scale: Option<f64>,
    pub hr_upscaler: Option<String>,
    pub hr_second_pass_steps: Option<i64>,
    pub hr_resize_x: Option<i64>,
    pub hr_resize_y: Option<i64>,
    pub hr_sampler_name: Option<String>,
    pub hr_scheduler: Option<String>,
    pub hr_prompt: Option<String>,
    pub hr_negative_prompt: Option<String>,
    pub hr_checkpoint_name: Option<String>,
    pub script_name: Option<String>,
    pub script_args: Option<Vec<Value>>,
    pub send_images: Option<bool>,
    pub save_images: Option<bool>,
    pub alwayson_scripts: Option<Map<String, Value>>,
    // img2img
    pub init_images: Option<Vec<String>>,
    pub resize_mode: Option<i64>,
    pub image_cfg_scale: Option<f64>,
    pub mask: Option<String>,
    pub mask_blur: Option<f64>,
    pub mask_blur_x: Option<f64>,
    pub mask_blur_y: Option<f64>,
    pub inpainting_fill: Option<i64>,
    pub inpaint_full_res: Option<Value>,
    pub inpainting_mask_invert: Option<i64>,
    pub initial_noise_multiplier: Option<f64>,
    pub latent_mask: Option<String>,
    pub include_init_images: Option<bool>,
}

/// Settings that persist across requests (`POST /options`) and that `override_settings` may change for one request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    #[serde(rename = "CLIP_stop_at_last_layers")]
    pub clip_skip: usize,
    /// `None` = A1111's default 0 (deterministic DDIM).
    pub eta_ddim: f64,
    pub emphasis: String,
    /// The format of the images sent back (A1111 encodes its API images in `samples_format` too).
    pub samples_format: OutputFormat,
    /// JPEG and lossy WebP quality. `None` = sd-rs's default (90), at which the dwtDctSvd watermark survives;
    /// A1111's own default is 80.
    pub jpeg_quality: Option<u8>,
    /// `None` = the server's default (lossy unless `sd serve --lossless`), as A1111's `webp_lossless` is false.
    pub webp_lossless: Option<bool>,
    /// sd-rs's step caching (`sd_rs_step_cache`, as `sd generate --cache` takes it); `None` = the server's default.
    pub step_cache: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            clip_skip: 1,
            eta_ddim: 0.0,
            emphasis: "Original".into(),
            samples_format: OutputFormat::Png,
            jpeg_quality: None,
            webp_lossless: None,
            step_cache: None,
        }
    }
}

/// Apply one A1111 option; `Ok(false)` for keys that do not affect generation here (ignored, as A1111 ignores
/// unknown keys), an error for values that would change the image in a way sd-rs cannot.
fn apply_setting(s: &mut Settings, key: &str, v: &Value, field: &str) -> ApiResult<bool> {
    let bad = |msg: String| Err(ApiError::unsupported(field, msg));
    match key {
        "CLIP_stop_at_last_layers" => match v.as_u64() {
            Some(n @ 1..=12) => s.clip_skip = n as usize,
            _ => return bad(format!("`{field}` must be a whole number from 1 to 12, got {v}")),
        },
        "eta_ddim" => match v.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => s.eta_ddim = x,
            _ => return bad(format!("`{field}` must be a number in [0, 1], got {v}")),
        },
        "eta_ancestral" => {
            if v.as_f64() != Some(1.0) {
                return bad(format!("`{field}`: only 1.0 is supported (the ancestral samplers' own noise), got {v}"));
            }
        }
        "emphasis" => {
            let name = v.as_str().unwrap_or_default();
            if name.parse::<sd_pipeline::prompt::Emphasis>().is_err() {
                return bad(format!("`{field}`: expected Original, No norm, Ignore or None, got {v}"));
            }
            s.emphasis = name.to_string();
        }
        "samples_format" => {
            s.samples_format = match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("png") => OutputFormat::Png,
                Some("jpg" | "jpeg") => OutputFormat::Jpeg,
                Some("webp") => OutputFormat::Webp,
                _ => return bad(format!("`{field}`: expected \"png\", \"jpg\" or \"webp\", got {v}")),
            }
        }
        "jpeg_quality" => match v.as_i64() {
            Some(q @ 1..=100) => s.jpeg_quality = Some(q as u8),
            _ => return bad(format!("`{field}` must be a whole number from 1 to 100, got {v}")),
        },
        "webp_lossless" => match v.as_bool() {
            Some(b) => s.webp_lossless = Some(b),
            None => return bad(format!("`{field}` must be true or false, got {v}")),
        },
        "sd_vae" => {
            if !matches!(v.as_str(), Some("Automatic" | "None" | "")) {
                return bad(format!("`{field}`: only the model's own VAE (\"Automatic\") is supported, got {v}"));
            }
        }
        "eta_noise_seed_delta" => {
            if v.as_i64() != Some(0) {
                return bad(format!("`{field}`: only 0 is supported, got {v}"));
            }
        }
        "sd_rs_step_cache" => match v.as_str().map(|c| c.parse::<sd_pipeline::step_cache::StepCache>()) {
            Some(Ok(c)) => s.step_cache = Some(c.to_string()),
            _ => {
                let want = sd_pipeline::step_cache::SYNTAX;
                return bad(format!("`{field}`: expected a string of the form {want}, got {v}"));
            }
        },
        "sd_model_checkpoint" => return Ok(true),
        _ => return Ok(false),
    }
    Ok(true)
}

fn float_default(field: &str, got: Option<f64>, want: f64) -> ApiResult<()> {
    match got {
        Some(x) if (x - want).abs() > 1e-9 => {
            Err(ApiError::unsupported(field, format!("`{field}` = {x} is not supported; only {want} (its default) is")))
        }
        _ => Ok(()),
    }
}

fn must_be_false(field: &str, got: Option<bool>, what: &str) -> ApiResult<()> {
    if got == Some(true) {
        return Err(ApiError::unsupported(field, format!("`{field}`: {what} is not supported by this server")));
    }
    Ok(())
}

/// A1111's hires-fix fields: the second pass may have its own sampler (`hr_sampler_name`, with the first pass's
/// schedule unless its name carries one) and prompts (`hr_prompt`, `hr_negative_prompt`); another scheduler or
/// checkpoint for it is refused rather than ignored.
fn hires_spec(r: &A1111Request, job: &JobRequest) -> ApiResult<crate::job::HiresSpec> {
    if job.kind != JobKind::Txt2img {
        return Err(ApiError::unsupported("enable_hr", "`enable_hr`: the hires fix applies to txt2img"));
    }
    let same_or_empty = |field: &str, v: &Option<String>, same: &str, what: &str| -> ApiResult<()> {
        match v.as_deref() {
            None | Some("") => Ok(()),
            Some(x)
                if x == same || x == "Use same sampler" || x == "Use same checkpoint" || x == "Use same scheduler" =>
            {
                Ok(())
            }
            Some(x) => Err(ApiError::unsupported(
                field,
                format!("`{field}` {x:?}: a hires pass with another {what} is not supported"),
            )),
        }
    };
    same_or_empty("hr_scheduler", &r.hr_scheduler, r.scheduler.as_deref().unwrap_or("Automatic"), "scheduler")?;
    let first = r.sampler_name.as_deref().or(r.sampler_index.as_deref()).unwrap_or("Euler");
    let sampler = match r.hr_sampler_name.as_deref() {
        None | Some("") | Some("Use same sampler") => None,
        Some(x) if x == first => None,
        Some(x) => {
            let choice: sd_schedulers::SamplerChoice = x.parse().map_err(|e| {
                ApiError::bad_request(format!("`hr_sampler_name`: {e:#}")).with_param("hr_sampler_name")
            })?;
            let first_schedule = job.sampler.parse::<sd_schedulers::SamplerChoice>().ok().and_then(|c| c.schedule);
            Some(choice.with_schedule(choice.schedule.or(first_schedule)).to_string())
        }
    };
    let own = |v: &Option<String>| v.clone().filter(|p| !p.is_empty());
    for (field, v) in [("hr_prompt", &r.hr_prompt), ("hr_negative_prompt", &r.hr_negative_prompt)] {
        let n = v.as_deref().map_or(0, |p| p.chars().count() as u64);
        if n > sd_core::limits::PROMPT_MAX_CHARS {
            return Err(ApiError::bad_request(format!(
                "`{field}` has {n} characters; the limit is {}",
                sd_core::limits::PROMPT_MAX_CHARS
            ))
            .with_param(field));
        }
    }
    same_or_empty("hr_checkpoint_name", &r.hr_checkpoint_name, "", "checkpoint")?;
    let upscaler = r.hr_upscaler.clone().unwrap_or_else(|| "Latent".into());
    upscaler
        .parse::<sd_pipeline::hires::Upscaler>()
        .map_err(|e| ApiError::unsupported("hr_upscaler", format!("`hr_upscaler`: {e:#}")))?;
    let resize = match (r.hr_resize_x.unwrap_or(0), r.hr_resize_y.unwrap_or(0)) {
        (0, 0) => None,
        (x, 0) if x > 0 => Some((x, x * job.height / job.width.max(1))),
        (0, y) if y > 0 => Some((y * job.width / job.height.max(1), y)),
        (x, y) => Some((x, y)),
    };
    let steps = match r.hr_second_pass_steps.unwrap_or(0) {
        0 => None,
        s if s > 0 => Some(s as usize),
        s => {
            return Err(ApiError::bad_request(format!(
                "`hr_second_pass_steps` {s}: expected 0 (same as steps) or more"
            ))
            .with_param("hr_second_pass_steps"))
        }
    };
    let spec = crate::job::HiresSpec {
        scale: r.hr_scale.unwrap_or(2.0),
        resize,
        steps,
        strength: r.denoising_strength.unwrap_or(0.7),
        upscaler,
        sampler,
        prompt: own(&r.hr_prompt),
        negative_prompt: own(&r.hr_negative_prompt),
    };
    spec.to_hires()
        .and_then(|h| h.validate())
        .map_err(|e| ApiError::bad_request(format!("hires fix: {e:#}")).with_param("enable_hr"))?;
    Ok(spec)
}

/// Map a body onto a job, refusing what sd-rs would do differently.
pub fn to_job(state: &AppState, r: A1111Request, kind: JobKind) -> ApiResult<JobRequest> {
    must_be_false("restore_faces", r.restore_faces, "face restoration")?;
    must_be_false("tiling", r.tiling, "tiling")?;
    if let Some(s) = r.styles.as_ref().filter(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("styles", format!("`styles` {s:?}: saved prompt styles are not supported")));
    }
    if let Some(name) = r.script_name.as_deref().filter(|s| !s.is_empty() && *s != "None") {
        return Err(ApiError::unsupported("script_name", format!("`script_name` {name:?}: scripts are not supported")));
    }
    // The ControlNet extension is the one always-on script served (see crate::controlnet).
    if let Some(name) =
        r.alwayson_scripts.as_ref().and_then(|m| m.keys().find(|k| !k.eq_ignore_ascii_case("controlnet")))
    {
        return Err(ApiError::unsupported(
            "alwayson_scripts",
            format!("`alwayson_scripts.{name}`: extensions and scripts other than controlnet are not supported"),
        ));
    }
    float_default("subseed_strength", r.subseed_strength, 0.0)?;
    float_default("s_min_uncond", r.s_min_uncond, 0.0)?;
    float_default("s_churn", r.s_churn, 0.0)?;
    float_default("s_tmin", r.s_tmin, 0.0)?;
    float_default("s_noise", r.s_noise, 1.0)?;
    if r.s_tmax.is_some_and(|x| x != 0.0 && x.is_finite()) {
        float_default("s_tmax", r.s_tmax, 0.0)?;
    }
    for (f, v) in [("seed_resize_from_h", r.seed_resize_from_h), ("seed_resize_from_w", r.seed_resize_from_w)] {
        if v.is_some_and(|x| x > 0) {
            return Err(ApiError::unsupported(f, format!("`{f}`: seed resize is not supported")));
        }
    }

    let mut settings = state.settings();
    let mut model = None;
    if let Some(o) = &r.override_settings {
        for (k, v) in o {
            let field = format!("override_settings.{k}");
            apply_setting(&mut settings, k, v, &field)?;
            if k == "sd_model_checkpoint" {
                let name = v.as_str().ok_or_else(|| ApiError::bad_request(format!("`{field}` must be a string")))?;
                model = Some(name.to_string());
            }
        }
    }

    let sampler =
        r.sampler_name.clone().filter(|s| !s.is_empty()).or(r.sampler_index.clone()).unwrap_or("Euler".into());
    let choice: sd_schedulers::SamplerChoice = sampler
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`sampler_name`: {e:#}")).with_param("sampler_name"))?;
    let schedule = match r.scheduler.as_deref() {
        None => None,
        Some(s) => sd_schedulers::Schedule::from_a1111(s)
            .map_err(|e| ApiError::bad_request(format!("`scheduler`: {e:#}")).with_param("scheduler"))?,
    };
    // A1111: DDIM and friends use `eta` (or the eta_ddim setting); ancestral samplers need η = 1 here.
    let takes_eta = match choice.sampler {
        sd_schedulers::Sampler::Named(d) => d.options.contains(&sd_schedulers::descriptor::SamplerOption::Eta),
        sd_schedulers::Sampler::ModelDefault => false,
    };
    let ancestral = match choice.sampler {
        sd_schedulers::Sampler::Named(d) => d.a1111.iter().any(|a| a.ends_with(" a")),
        sd_schedulers::Sampler::ModelDefault => false,
    };
    let eta = if takes_eta {
        Some(r.eta.unwrap_or(settings.eta_ddim))
    } else {
        if ancestral {
            float_default("eta", r.eta, 1.0)?;
        }
        None
    };

    let steps = r.steps.unwrap_or(50);
    let batch_size = r.batch_size.unwrap_or(1);
    let n_iter = r.n_iter.unwrap_or(1);
    let seed = match r.seed {
        None | Some(-1) => crate::random_seed(),
        Some(s) if s >= 0 => s as u64,
        Some(s) => {
            return Err(
                ApiError::bad_request(format!("`seed` {s}: expected -1 (random) or a seed ≥ 0")).with_param("seed")
            )
        }
    };
    let (init_image, mask, strength) = match kind {
        JobKind::Txt2img => (None, None, 1.0),
        JobKind::Img2img => {
            let imgs = r.init_images.clone().unwrap_or_default();
            if imgs.is_empty() {
                return Err(
                    ApiError::bad_request("`init_images` is empty: img2img needs one image").with_param("init_images")
                );
            }
            if imgs.len() > 1 {
                return Err(ApiError::unsupported(
                    "init_images",
                    "`init_images`: give one image (batches of different init images are not supported)",
                ));
            }
            if r.resize_mode.is_some_and(|m| m != 0) {
                return Err(ApiError::unsupported(
                    "resize_mode",
                    "`resize_mode`: only 0 (\"Just resize\") is supported",
                ));
            }
            float_default("initial_noise_multiplier", r.initial_noise_multiplier, 1.0)?;
            let mask = r.mask.clone().filter(|m| !m.is_empty());
            if mask.is_some() {
                if r.inpainting_fill.is_some_and(|f| f != 1) {
                    return Err(ApiError::unsupported(
                        "inpainting_fill",
                        "`inpainting_fill`: only 1 (\"original\") is supported: the masked area starts from the init image",
                    ));
                }
                let full_res = match &r.inpaint_full_res {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(Value::Number(n)) => n.as_i64() != Some(0),
                    Some(_) => true,
                };
                if full_res {
                    return Err(ApiError::unsupported(
                        "inpaint_full_res",
                        "`inpaint_full_res`: \"only masked\" inpainting is not supported; send false (whole picture)",
                    ));
                }
                for (f, v) in
                    [("mask_blur", r.mask_blur), ("mask_blur_x", r.mask_blur_x), ("mask_blur_y", r.mask_blur_y)]
                {
                    if v.is_some_and(|x| x != 0.0) {
                        return Err(ApiError::unsupported(
                            f,
                            format!("`{f}`: mask blurring is not supported; send 0 (the mask is used as given)"),
                        ));
                    }
                }
            }
            if r.latent_mask.as_deref().is_some_and(|m| !m.is_empty()) {
                return Err(ApiError::unsupported("latent_mask", "`latent_mask` is not supported"));
            }
            (imgs.into_iter().next(), mask, r.denoising_strength.unwrap_or(0.75))
        }
    };
    let mask_invert = match r.inpainting_mask_invert {
        None | Some(0) => false,
        Some(1) => true,
        Some(v) => return Err(ApiError::bad_request(format!("`inpainting_mask_invert` {v}: expected 0 or 1"))),
    };
    let job = JobRequest {
        kind,
        prompt: r.prompt.clone().unwrap_or_default(),
        negative_prompt: r.negative_prompt.clone().unwrap_or_default(),
        steps: usize::try_from(steps)
            .map_err(|_| ApiError::bad_request(format!("`steps` {steps} must be ≥ 1")).with_param("steps"))?,
        cfg_scale: r.cfg_scale.unwrap_or(7.0),
        sampler: choice.to_string(),
        schedule: schedule.map(|s| s.name().to_string()),
        eta,
        seed,
        width: r.width.unwrap_or(512),
        height: r.height.unwrap_or(512),
        batch_size,
        n_iter: u32::try_from(n_iter)
            .map_err(|_| ApiError::bad_request(format!("`n_iter` {n_iter} must be ≥ 1")).with_param("n_iter"))?,
        clip_skip: settings.clip_skip,
        emphasis: settings.emphasis.clone(),
        model,
        init_image,
        mask,
        denoising_strength: strength,
        mask_invert,
        hires: None,
        format: settings.samples_format,
        quality: settings.jpeg_quality,
        lossless: settings.webp_lossless,
        init_file: None,
        controlnet: Vec::new(),
        ip_adapters: Vec::new(),
        refiner: None,
        cache: settings.step_cache.clone(),
    };
    let mut job = job;
    let controlnet =
        r.alwayson_scripts.as_ref().and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("controlnet")));
    if let Some((_, script)) = controlnet {
        let units = crate::controlnet::parse(state, script, kind, job.init_image.as_deref())?;
        job.controlnet = units.controlnet;
        job.ip_adapters = units.ip_adapters;
    }
    if r.enable_hr == Some(true) {
        job.hires = Some(hires_spec(&r, &job)?);
    }
    job.refiner = refiner_spec(&r)?;
    validate_job(state, &job)?;
    Ok(job)
}

/// A1111's `refiner_checkpoint` ("None" or empty: no refiner) and `refiner_switch_at` (its default 0.8).
fn refiner_spec(r: &A1111Request) -> ApiResult<Option<crate::job::RefinerSpec>> {
    let Some(model) = r.refiner_checkpoint.as_deref().map(str::trim).filter(|c| !c.is_empty() && *c != "None") else {
        return Ok(None);
    };
    let switch_at = r.refiner_switch_at.unwrap_or(0.8);
    sd_pipeline::refiner::check_switch(switch_at)
        .map_err(|e| ApiError::bad_request(format!("`refiner_switch_at`: {e:#}")).with_param("refiner_switch_at"))?;
    Ok(Some(crate::job::RefinerSpec { model: model.to_string(), switch_at }))
}

async fn generate(state: AppState, body: Value, kind: JobKind) -> ApiResult<Json<Value>> {
    crate::error::expect_object(&body)?;
    let parsed: A1111Request = crate::error::parse_json(body.to_string().as_bytes())?;
    let send_images = parsed.send_images.unwrap_or(true);
    let include_init = parsed.include_init_images.unwrap_or(false);
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || to_job(&st, parsed, kind))
        .await
        .map_err(|e| ApiError::internal(format!("request check failed: {e}")))??;
    let view = submit_and_wait(&state, job, false).await?;
    let mut parameters = body;
    if let Some(obj) = parameters.as_object_mut() {
        if !include_init {
            for k in ["init_images", "mask"] {
                if obj.contains_key(k) {
                    obj.insert(k.into(), Value::Null);
                }
            }
        }
        obj.insert("seed".into(), json!(view.request.seed));
    }
    let images: Vec<String> = match (&view.result, send_images) {
        (Some(r), true) => r.images.iter().map(|i| i.data.clone()).collect(),
        _ => Vec::new(),
    };
    let info = info_json(&state, &view);
    Ok(Json(json!({ "images": images, "parameters": parameters, "info": info.to_string() })))
}

async fn txt2img(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
    generate(state, body, JobKind::Txt2img).await
}

async fn img2img(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
    generate(state, body, JobKind::Img2img).await
}

/// A1111's `processed.js()`: what `json.loads(r["info"])` gives a client, one entry per returned image.
pub fn info_json(state: &AppState, view: &JobView) -> Value {
    let req = &view.request;
    let empty = Default::default();
    let result = view.result.as_ref().unwrap_or(&empty);
    let seeds: Vec<u64> = result.images.iter().map(|i| i.seed).collect();
    let n = result.images.len();
    let sampler: sd_schedulers::SamplerChoice = req.sampler.parse().unwrap_or_default();
    let sampler_name = match sampler.sampler {
        sd_schedulers::Sampler::Named(d) => d.label().to_string(),
        sd_schedulers::Sampler::ModelDefault => req.sampler.clone(),
    };
    let model_name = state
        .catalog
        .entries
        .iter()
        .find(|e| e.matches(&result.model))
        .map(|e| e.model_name.clone())
        .unwrap_or_else(|| result.model.clone());
    json!({
        "prompt": req.prompt,
        "all_prompts": vec![req.prompt.clone(); n],
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": vec![req.negative_prompt.clone(); n],
        "seed": req.seed,
        "all_seeds": seeds,
        "subseed": req.seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": req.width,
        "height": req.height,
        "sampler_name": sampler_name,
        "scheduler": req.schedule.as_deref().and_then(|s| s.parse::<sd_schedulers::Schedule>().ok()).and_then(|s| s.a1111_label()).unwrap_or("Automatic"),
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": if req.kind == JobKind::Img2img { json!(req.denoising_strength) } else { Value::Null },
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": result.images.iter().map(|i| i.infotext.clone()).collect::<Vec<_>>(),
        "styles": [],
        "job_timestamp": result.started,
        "clip_skip": req.clip_skip,
        "is_using_inpainting_conditioning": req.mask.is_some(),
        "version": concat!("sd-rs ", env!("CARGO_PKG_VERSION")),
        "interrupted": result.interrupted,
        "blocked_by_safety_checker": result.blocked,
        // Time on the inference thread (generation and PNG encoding), for measuring what HTTP adds.
        "run_seconds": result.run_s,
    })
}

#[derive(Deserialize)]
struct ProgressQuery {
    #[serde(default)]
    skip_current_image: bool,
}

async fn progress(State(state): State<AppState>, Query(q): Query<ProgressQuery>) -> ApiResult<Json<Value>> {
    let running = state.queue.running().await?;
    let Some(v) = running else {
        return Ok(Json(json!({
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": {
                "skipped": false, "interrupted": false, "stopping_generation": false, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
            },
            "current_image": null,
            "textinfo": null,
            "current_task": null,
        })));
    };
    let p = &v.progress;
    let current = if q.skip_current_image { None } else { p.preview.clone() };
    Ok(Json(json!({
        "progress": p.fraction(),
        "eta_relative": p.eta_s(),
        "state": {
            "skipped": false,
            "interrupted": false,
            "stopping_generation": false,
            "job": format!("job {}", v.id),
            "job_count": p.batches,
            "job_timestamp": "0",
            "job_no": p.batch,
            "sampling_step": p.step,
            "sampling_steps": p.steps,
        },
        "current_image": current,
        "textinfo": null,
        "current_task": v.id.0,
    })))
}

async fn interrupt(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    state.queue.signal_running(false).await?;
    Ok(Json(json!({})))
}

async fn skip(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    state.queue.signal_running(true).await?;
    Ok(Json(json!({})))
}

async fn samplers() -> Json<Value> {
    let list: Vec<Value> = sd_schedulers::SAMPLERS
        .iter()
        .map(|d| {
            let mut aliases: Vec<&str> = d.a1111.iter().skip(1).copied().collect();
            aliases.push(d.name);
            json!({ "name": d.label(), "aliases": aliases, "options": {} })
        })
        .collect();
    Json(Value::Array(list))
}

async fn schedulers() -> Json<Value> {
    let rows = [
        ("automatic", "Automatic"),
        ("karras", "Karras"),
        ("exponential", "Exponential"),
        ("sgm_uniform", "SGM Uniform"),
        ("beta", "Beta"),
        ("align_your_steps", "Align Your Steps"),
    ];
    Json(Value::Array(
        rows.iter()
            .map(|(n, l)| json!({"name": n, "label": l, "aliases": null, "default_rho": -1.0, "need_inner_model": false}))
            .collect(),
    ))
}

async fn sd_models(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let catalog = state.catalog.clone();
    let list = tokio::task::spawn_blocking(move || {
        catalog
            .entries
            .iter()
            .map(|e| {
                json!({
                    "title": e.title(),
                    "model_name": e.model_name,
                    "hash": e.hash(),
                    "sha256": null,
                    "filename": e.spec,
                    "config": null,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(Value::Array(list)))
}

async fn loras(State(state): State<AppState>) -> Json<Value> {
    let Some(dir) = state.engine_cfg.lora_dir.clone() else { return Json(json!([])) };
    let mut out = Vec::new();
    if let Ok(items) = std::fs::read_dir(&dir) {
        for item in items.flatten().take(crate::catalog::MAX_MODELS) {
            let p = item.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_file() && matches!(ext, "safetensors" | "pt" | "ckpt") {
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(json!({"name": name, "alias": name, "path": p, "metadata": {}}));
            }
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(Value::Array(out))
}

async fn embeddings(State(state): State<AppState>) -> Json<Value> {
    let names = state.engine_status().embeddings;
    let loaded: Map<String, Value> = names
        .into_iter()
        .map(|n| (n, json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null, "shape": null, "vectors": null})))
        .collect();
    Json(json!({ "loaded": loaded, "skipped": {} }))
}

async fn upscalers() -> Json<Value> {
    Json(json!([
        {"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 1},
        {"name": "Lanczos", "model_name": null, "model_path": null, "model_url": null, "scale": 4},
    ]))
}

async fn get_options(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let s = state.settings();
    let selected = state.selected_model().await?;
    let catalog = state.catalog.clone();
    let (title, hash) = tokio::task::spawn_blocking(move || {
        let e = &catalog.entries[selected];
        (e.title(), e.hash())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({
        "sd_model_checkpoint": title,
        "sd_checkpoint_hash": hash,
        "CLIP_stop_at_last_layers": s.clip_skip,
        "eta_ddim": s.eta_ddim,
        "eta_ancestral": 1.0,
        "emphasis": s.emphasis,
        "samples_format": crate::jobs_api::file_extension(s.samples_format),
        "jpeg_quality": s.jpeg_quality.unwrap_or(sd_provenance::formats::DEFAULT_JPEG_QUALITY),
        "webp_lossless": s.webp_lossless.unwrap_or(state.engine_cfg.render.lossless),
        "sd_rs_step_cache": s.step_cache.clone().unwrap_or_else(|| state.engine_cfg.cache.to_string()),
        "sd_vae": "Automatic",
        "eta_noise_seed_delta": 0,
    })))
}

async fn set_options(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let mut s = state.settings();
    for (k, v) in &body {
        apply_setting(&mut s, k, v, k)?;
    }
    if let Some(v) = body.get("sd_model_checkpoint") {
        let name =
            v.as_str().ok_or_else(|| ApiError::bad_request("`sd_model_checkpoint` must be a string"))?.to_string();
        let catalog = state.catalog.clone();
        let q = name.clone();
        let known = tokio::task::spawn_blocking(move || catalog.find(&q).is_some())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if !known {
            return Err(ApiError::not_found(format!(
                "unknown sd_model_checkpoint {name:?}; available: {}",
                state.catalog.names().join(", ")
            ))
            .with_param("sd_model_checkpoint"));
        }
        match (&state.queue, &state.local) {
            (crate::queue::Queue::Redis(r), _) => {
                // Workers load models per job; the choice is shared by every front end.
                r.select_model(&name).await.map_err(|e| ApiError::internal(format!("Redis: {e}")))?;
            }
            (_, Some(store)) => {
                let rx = store.submit_load(name).map_err(crate::submit_error)?;
                match rx.await {
                    Ok(Ok(title)) => tracing::info!("model switched to {title}"),
                    Ok(Err(e)) => return Err(ApiError::internal(format!("loading the model failed: {e}"))),
                    Err(_) => return Err(ApiError::internal("the inference thread stopped")),
                }
            }
            _ => return Err(ApiError::internal("no queue")),
        }
    }
    *state.settings.lock().unwrap_or_else(|p| p.into_inner()) = s;
    Ok(Json(Value::Null))
}

#[derive(Deserialize)]
struct PngInfoRequest {
    image: String,
}

async fn png_info(State(state): State<AppState>, JsonBody(body): JsonBody<PngInfoRequest>) -> ApiResult<Json<Value>> {
    let bytes = crate::images::b64_bytes("image", &body.image)?;
    // The header check bounds the work; the report itself does not decode pixels beyond what it needs.
    crate::images::decode("image", &bytes, state.cfg.limits.max_input_pixels)?;
    let report = tokio::task::spawn_blocking(move || sd_provenance::inspect::inspect_bytes("image", &bytes))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("`image`: {e:#}")).with_param("image"))?;
    let mut items = Map::new();
    for t in &report.other_text {
        items.insert(t.keyword.clone(), json!(t.text));
    }
    let mut parameters = Map::new();
    if let Some(p) = &report.parameters {
        parameters.insert("Prompt".into(), json!(p.prompt));
        parameters.insert("Negative prompt".into(), json!(p.negative_prompt));
        for (k, v) in &p.params {
            if k == "Size" {
                if let Some((w, h)) = v.split_once('x') {
                    parameters.insert("Size-1".into(), json!(w));
                    parameters.insert("Size-2".into(), json!(h));
                    continue;
                }
            }
            parameters.insert(k.clone(), json!(v));
        }
    }
    Ok(Json(json!({
        "info": report.parameters_raw.unwrap_or_default(),
        "items": items,
        "parameters": parameters,
    })))
}

async fn scripts() -> Json<Value> {
    Json(json!({ "txt2img": [], "img2img": [] }))
}

async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

async fn cmd_flags(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "api": true,
        "listen": !state.cfg.host.is_loopback(),
        "port": state.cfg.port,
        "lora_dir": state.engine_cfg.lora_dir,
        "embeddings_dir": state.engine_cfg.embeddings_dir,
        "ckpt_dir": state.catalog.models_dir,
    }))
}

/// A1111's `GET /sdapi/v1/memory`, which monitoring scripts poll: this process's RAM and, when jobs run on CUDA, the
/// GPU as the driver sees it and the caching allocator's counters, in bytes, under A1111's keys.
async fn memory(State(state): State<AppState>) -> Json<Value> {
    let device = state.engine_cfg.load.device;
    Json(
        tokio::task::spawn_blocking(move || memory_report(device))
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()})),
    )
}

pub fn memory_report(device: tch::Device) -> Value {
    fn kib_field(text: &str, key: &str) -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    // A1111 reports its own process: used = resident set, free = the machine's total less that.
    let ram = match (kib_field(&status, "VmRSS:"), kib_field(&meminfo, "MemTotal:")) {
        (Some(used), Some(total)) => json!({"free": total - used, "used": used, "total": total}),
        _ => json!({"error": "/proc is not readable"}),
    };
    let cuda = match (sd_core::accel::MemoryStats::of(device), sd_core::accel::device_memory(device)) {
        (Some(s), Some((free, total))) if matches!(device, tch::Device::Cuda(_)) => json!({
            "system": {"free": free, "used": total - free, "total": total},
            "active": {"current": s.active.0, "peak": s.active.1},
            "allocated": {"current": s.allocated.0, "peak": s.allocated.1},
            "reserved": {"current": s.reserved.0, "peak": s.reserved.1},
            "inactive": {"current": s.inactive_split.0, "peak": s.inactive_split.1},
            "events": {"retries": s.alloc_retries, "oom": s.ooms},
        }),
        _ => json!({"error": "unavailable"}),
    };
    json!({"ram": ram, "cuda": cuda})
}

/// The catalog is read at start; refreshing is accepted and changes nothing.
async fn no_op() -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(Value::Null))
}
