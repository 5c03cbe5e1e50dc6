//! OpenAI's images API (`/v1/images/generations`, `/v1/images/edits`, `/v1/models`), so the official `openai`
//! clients and chat front ends work with `base_url` pointed here. Fields OpenAI's models take that mean nothing for
//! Stable Diffusion (`quality`, `style`, `user`, `moderation`) are accepted; ones that would change the output in a
//! way we cannot (`background: "transparent"`) are refused; `output_format` png/jpeg/webp and `output_compression`
//! (the JPEG and WebP quality) pick the encoding. `negative_prompt`, `seed`,
//! `steps`, `cfg_scale`, `sampler` and `strength` are accepted as extensions.

use crate::error::{ApiError, ApiResult, JsonBody};
use crate::job::{JobKind, JobRequest, JobView};
use crate::{submit_and_wait, validate_job, AppState};
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use sd_provenance::formats::OutputFormat;
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images/generations", post(generations))
        .route("/images/edits", post(edits))
        .route("/models", get(models))
}

/// OpenAI model names clients send by default; they mean "the loaded model".
const OPENAI_MODELS: &[&str] = &["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"];

/// Form fields a multipart edit may have (the rest of the body is files).
const MAX_FORM_FIELDS: usize = 32;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerationBody {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub n: Option<i64>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub quality: Option<String>,
    pub style: Option<String>,
    pub user: Option<String>,
    pub moderation: Option<String>,
    pub background: Option<String>,
    pub output_format: Option<String>,
    pub output_compression: Option<i64>,
    // Extensions (LocalAI and others accept the same names).
    pub negative_prompt: Option<String>,
    pub seed: Option<i64>,
    pub steps: Option<i64>,
    pub cfg_scale: Option<f64>,
    pub sampler: Option<String>,
    pub strength: Option<f64>,
}

fn parse_size(size: Option<&str>, default: (i64, i64)) -> ApiResult<(i64, i64)> {
    match size.map(str::trim) {
        None | Some("") | Some("auto") => Ok(default),
        Some(s) => {
            let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`size` {s:?}: expected \"WIDTHxHEIGHT\" such as \"512x512\", or \"auto\""
                ))
                .with_param("size")
            })?;
            let parse = |v: &str| {
                v.trim().parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("`size` {s:?}: {v:?} is not a whole number")).with_param("size")
                })
            };
            Ok((parse(w)?, parse(h)?))
        }
    }
}

fn model_choice(state: &AppState, model: Option<&str>) -> ApiResult<Option<String>> {
    match model.map(str::trim) {
        None | Some("") => Ok(None),
        Some(m) if OPENAI_MODELS.contains(&m) => Ok(None),
        Some(m) => {
            if state.catalog.find(m).is_some() {
                Ok(Some(m.to_string()))
            } else {
                Err(ApiError::not_found(format!(
                    "the model `{m}` does not exist; available: {}",
                    state.catalog.names().join(", ")
                ))
                .with_param("model"))
            }
        }
    }
}

/// OpenAI's `output_format` and `output_compression` (0–100, the JPEG and WebP quality, as OpenAI uses it for both).
fn output_format(b: &GenerationBody) -> ApiResult<(OutputFormat, Option<u8>)> {
    let format = match b.output_format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("png") => OutputFormat::Png,
        Some("jpeg" | "jpg") => OutputFormat::Jpeg,
        Some("webp") => OutputFormat::Webp,
        Some(f) => {
            return Err(ApiError::bad_request(format!("`output_format` {f:?}: expected \"png\", \"jpeg\" or \"webp\""))
                .with_param("output_format"))
        }
    };
    let quality = match b.output_compression {
        None => None,
        // JPEG and WebP here have no quality 0; OpenAI's 0 (most compressed) becomes 1.
        Some(c @ 0..=100) => Some(c.max(1) as u8),
        Some(c) => {
            return Err(ApiError::bad_request(format!("`output_compression` {c}: expected 0 to 100"))
                .with_param("output_compression"))
        }
    };
    Ok((format, quality))
}

fn check_format(b: &GenerationBody) -> ApiResult<bool> {
    output_format(b)?;
    if b.background.as_deref() == Some("transparent") {
        return Err(
            ApiError::bad_request("`background`: transparent backgrounds are not supported").with_param("background")
        );
    }
    match b.response_format.as_deref() {
        None | Some("b64_json") => Ok(false),
        Some("url") => Ok(true),
        Some(other) => {
            Err(ApiError::bad_request(format!("`response_format` {other:?}: expected \"b64_json\" or \"url\""))
                .with_param("response_format"))
        }
    }
}

fn to_job(state: &AppState, b: &GenerationBody, kind: JobKind, default_size: (i64, i64)) -> ApiResult<JobRequest> {
    let prompt = b
        .prompt
        .clone()
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("`prompt` is required").with_param("prompt"))?;
    let (width, height) = parse_size(b.size.as_deref(), default_size)?;
    let n = b.n.unwrap_or(1);
    let seed = match b.seed {
        None | Some(-1) => crate::random_seed(),
        Some(s) if s >= 0 => s as u64,
        Some(s) => return Err(ApiError::bad_request(format!("`seed` {s}: expected a seed ≥ 0")).with_param("seed")),
    };
    let steps = b.steps.unwrap_or(20);
    let sampler: sd_schedulers::SamplerChoice = b
        .sampler
        .as_deref()
        .unwrap_or("default")
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`sampler`: {e:#}")).with_param("sampler"))?;
    let settings = state.settings();
    let (format, quality) = output_format(b)?;
    let job = JobRequest {
        kind,
        prompt,
        negative_prompt: b.negative_prompt.clone().unwrap_or_default(),
        steps: usize::try_from(steps).map_err(|_| ApiError::bad_request("`steps` must be ≥ 1").with_param("steps"))?,
        cfg_scale: b.cfg_scale.unwrap_or(7.0),
        sampler: sampler.to_string(),
        schedule: None,
        eta: None,
        seed,
        width,
        height,
        batch_size: n,
        n_iter: 1,
        clip_skip: settings.clip_skip,
        emphasis: settings.emphasis,
        model: model_choice(state, b.model.as_deref())?,
        init_image: None,
        mask: None,
        denoising_strength: 1.0,
        mask_invert: false,
        hires: None,
        format,
        quality,
        lossless: None,
        init_file: None,
        controlnet: Vec::new(),
        ip_adapters: Vec::new(),
        refiner: None,
        cache: settings.step_cache.clone(),
    };
    if !(1..=state.cfg.limits.max_batch_size).contains(&n) {
        return Err(ApiError::bad_request(format!("`n` {n}: expected 1 to {}", state.cfg.limits.max_batch_size))
            .with_param("n"));
    }
    Ok(job)
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

fn response(view: &JobView, url: Option<String>) -> Json<Value> {
    let data: Vec<Value> = view
        .result
        .as_ref()
        .map(|r| {
            r.images
                .iter()
                .enumerate()
                .map(|(i, img)| match &url {
                    Some(base) => {
                        let ext = crate::jobs_api::file_extension(img.format);
                        json!({ "url": format!("{base}/v1/jobs/{}/images/{i}.{ext}", view.id), "revised_prompt": null })
                    }
                    None => json!({ "b64_json": img.data, "revised_prompt": null }),
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "created": view.created as i64, "data": data }))
}

async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<GenerationBody>,
) -> ApiResult<Json<Value>> {
    let url = check_format(&body)?.then(|| base_url(&headers));
    let default = state.default_size();
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || -> ApiResult<JobRequest> {
        let job = to_job(&st, &body, JobKind::Txt2img, (default, default))?;
        validate_job(&st, &job)?;
        Ok(job)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let view = submit_and_wait(&state, job, url.is_some()).await?;
    Ok(response(&view, url))
}

/// OpenAI's mask: transparent pixels (alpha 0) are the area to edit. A mask without alpha is read as sd-rs and
/// A1111 read masks: white = repaint.
fn openai_mask(img: &image::DynamicImage) -> image::GrayImage {
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            image::Luma([if rgba.get_pixel(x, y)[3] == 0 { 255 } else { 0 }])
        })
    } else {
        img.to_luma8()
    }
}

fn png_b64<P: image::PixelWithColorType>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>) -> ApiResult<String>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("cannot encode an image: {e}")))?;
    Ok(crate::images::b64(&out))
}

async fn edits(State(state): State<AppState>, headers: HeaderMap, mut form: Multipart) -> ApiResult<Json<Value>> {
    let mut body = GenerationBody::default();
    let mut image: Option<Vec<u8>> = None;
    let mut mask: Option<Vec<u8>> = None;
    let mut fields = 0usize;
    while let Some(field) =
        form.next_field().await.map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
    {
        fields += 1;
        if fields > MAX_FORM_FIELDS {
            return Err(ApiError::bad_request(format!("the form has more than {MAX_FORM_FIELDS} fields")));
        }
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| {
            ApiError::bad_request(format!("cannot read form field `{name}` (too large or truncated): {e}"))
        })?;
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        let num = |what: &str| -> ApiResult<i64> {
            text()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("`{what}` must be a whole number")).with_param(what))
        };
        let float = |what: &str| -> ApiResult<f64> {
            text().parse().map_err(|_| ApiError::bad_request(format!("`{what}` must be a number")).with_param(what))
        };
        match name.as_str() {
            "image" | "image[]" if image.is_none() => image = Some(bytes.to_vec()),
            "image" | "image[]" => {
                return Err(ApiError::bad_request("give one `image` (several input images are not supported)")
                    .with_param("image"))
            }
            "mask" => mask = Some(bytes.to_vec()),
            "prompt" => body.prompt = Some(text()),
            "negative_prompt" => body.negative_prompt = Some(text()),
            "model" => body.model = Some(text()),
            "n" => body.n = Some(num("n")?),
            "size" => body.size = Some(text()),
            "response_format" => body.response_format = Some(text()),
            "output_format" => body.output_format = Some(text()),
            "output_compression" => body.output_compression = Some(num("output_compression")?),
            "background" => body.background = Some(text()),
            "seed" => body.seed = Some(num("seed")?),
            "steps" => body.steps = Some(num("steps")?),
            "cfg_scale" => body.cfg_scale = Some(float("cfg_scale")?),
            "strength" => body.strength = Some(float("strength")?),
            "sampler" => body.sampler = Some(text()),
            _ => {}
        }
    }
    let url = check_format(&body)?.then(|| base_url(&headers));
    let image = image
        .ok_or_else(|| ApiError::bad_request("`image` is required (a PNG, JPEG or WebP file)").with_param("image"))?;
    let max_input = state.cfg.limits.max_input_pixels;
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || -> ApiResult<JobRequest> {
        let init = crate::images::decode("image", &image, max_input)?;
        let mask_img = match &mask {
            Some(m) => Some(openai_mask(&crate::images::decode("mask", m, max_input)?)),
            // Without a mask, OpenAI edits where the image itself is transparent.
            None if init.color().has_alpha() && init.to_rgba8().pixels().any(|p| p[3] == 0) => Some(openai_mask(&init)),
            None => None,
        };
        let scale = 8;
        let default = ((init.width() / scale * scale) as i64, (init.height() / scale * scale) as i64);
        let mut job = to_job(&st, &body, JobKind::Img2img, default)?;
        job.init_image = Some(png_b64(&init.to_rgb8())?);
        // The upload itself, not the re-encoding, carries the creator's Content Credentials.
        job.init_file = Some(crate::images::b64(&image));
        job.denoising_strength = body.strength.unwrap_or(if mask_img.is_some() { 1.0 } else { 0.75 });
        job.mask = match &mask_img {
            Some(m) => Some(png_b64(m)?),
            None => None,
        };
        validate_job(&st, &job)?;
        Ok(job)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let view = submit_and_wait(&state, job, url.is_some()).await?;
    Ok(response(&view, url))
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .catalog
        .entries
        .iter()
        .map(|e| json!({ "id": e.model_name, "object": "model", "created": 0, "owned_by": "sd-rs" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
