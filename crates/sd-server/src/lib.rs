//! sd-server: `sd serve`, a resident image server on the engine of `sd-pipeline`. One model stays loaded on a
//! dedicated inference thread fed by a bounded queue; HTTP runs on tokio + axum + tower-http.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`config::ServeConfig`]: address, authentication, CORS, [`config::Limits`] |
//! | [`job`] | the job model every API shares: a serialisable request with an id, its progress and its result |
//! | [`store`] | jobs by id, the bounded queue, interrupt/skip/cancel flags, change notifications |
//! | [`queue`] | [`queue::Queue`]: the in-process store or Redis, behind one interface for the handlers |
//! | [`redis_queue`] | Redis Streams: the front end's side and the `sd worker` loop |
//! | [`engine`] | the inference thread: model (re)loading, LoRA tags, runs a job as `sd generate` would |
//! | [`engine_sd3`] | jobs on Stable Diffusion 3 / 3.5 models, and the job fields SD3 refuses |
//! | [`catalog`] | models of `--model` and `--models-dir`, named as A1111 names checkpoints |
//! | [`a1111`] | `/sdapi/v1/...`: AUTOMATIC1111's API |
//! | [`controlnet`] | the A1111 ControlNet extension's API: ControlNet and IP-Adapter units, `/controlnet/...` |
//! | [`openai`] | `/v1/images/...`, `/v1/models`: OpenAI's images API |
//! | [`jobs_api`] | `/v1/jobs...`: submit, poll, stream (SSE), fetch images, cancel |
//! | [`ops`] | `/health`, `/ready`, `/metrics`, the web page, authentication |
//! | [`images`] | base64 and image decoding with size checks before decoding |
//! | [`error`] | [`error::ApiError`] in OpenAI's and A1111's error shapes; the JSON extractor |
//! | [`metrics`] | Prometheus metrics |

pub mod a1111;
pub mod catalog;
pub mod config;
pub mod controlnet;
pub mod engine;
pub mod engine_sd3;
pub mod error;
pub mod images;
pub mod job;
pub mod jobs_api;
pub mod metrics;
pub mod openai;
pub mod ops;
pub mod queue;
pub mod redis_queue;
pub mod store;

use crate::catalog::Catalog;
use crate::config::ServeConfig;
use crate::engine::{Engine, EngineConfig, EngineStatus, SharedStatus};
use crate::error::{ApiError, ApiResult};
use crate::job::{JobKind, JobRequest, JobStatus, JobView};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::{Store, SubmitError};
use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// What every handler reaches.
#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    /// The in-process store, when this process runs jobs itself (not with `--queue redis://…`).
    pub local: Option<Arc<Store>>,
    pub catalog: Arc<Catalog>,
    pub status: SharedStatus,
    pub metrics: Arc<Metrics>,
    pub cfg: Arc<ServeConfig>,
    pub engine_cfg: Arc<EngineConfig>,
    pub settings: Arc<Mutex<a1111::Settings>>,
}

impl AppState {
    pub fn settings(&self) -> a1111::Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn engine_status(&self) -> EngineStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The loaded model's native size (OpenAI `size: "auto"`), read from the model's configs where this process
    /// loads no model (Redis front end), 512 if neither says.
    pub fn default_size(&self) -> i64 {
        self.engine_status().default_size.or_else(|| self.catalog.entries[0].native_size()).unwrap_or(512)
    }

    /// Catalog index of the model requests use unless they name one (A1111's `sd_model_checkpoint`).
    pub async fn selected_model(&self) -> ApiResult<usize> {
        match &self.queue {
            Queue::Local(_) => Ok(self.engine_status().selected),
            Queue::Redis(r) => {
                let name = r.selected_model().await.map_err(|e| ApiError::internal(format!("Redis: {e}")))?;
                Ok(name.and_then(|n| self.catalog.find(&n)).unwrap_or(0))
            }
        }
    }
}

/// A random seed as A1111 draws one for `-1` (below 2³²).
pub fn random_seed() -> u64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// 429 with `Retry-After` for a full queue, 503 while shutting down.
pub fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull { limit } => {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("the queue is full ({limit} jobs waiting, --max-queue); try again shortly"),
            );
            err.retry_after = Some(5);
            err
        }
        SubmitError::Unavailable(e) => {
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the job queue is unavailable: {e}"));
            err.retry_after = Some(5);
            err
        }
        SubmitError::ShuttingDown => {
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
            err.retry_after = Some(30);
            err
        }
    }
}

/// Check a job against the server's limits and the engine's rules before it is queued, so that a bad request is
/// a 4xx in milliseconds rather than a failed job later. Blocking (decodes images, may hash a model).
pub fn validate_job(state: &AppState, job: &JobRequest) -> ApiResult<()> {
    let l = &state.cfg.limits;
    let bad = |param: &str, msg: String| Err(ApiError::bad_request(msg).with_param(param));
    for (f, text) in [("prompt", &job.prompt), ("negative_prompt", &job.negative_prompt)] {
        let n = text.chars().count();
        if n > l.max_prompt_chars {
            return bad(f, format!("`{f}` has {n} characters; this server accepts at most {}", l.max_prompt_chars));
        }
    }
    if job.steps == 0 || job.steps > l.max_steps {
        return bad("steps", format!("`steps` {}: expected 1 to {} (--max-steps)", job.steps, l.max_steps));
    }
    if !(1..=l.max_batch_size).contains(&job.batch_size) {
        return bad(
            "batch_size",
            format!("`batch_size` {}: expected 1 to {} (--max-batch)", job.batch_size, l.max_batch_size),
        );
    }
    if !(1..=l.max_n_iter).contains(&job.n_iter) {
        return bad("n_iter", format!("`n_iter` {}: expected 1 to {}", job.n_iter, l.max_n_iter));
    }
    for (f, v) in [("width", job.width), ("height", job.height)] {
        if v < 8 || v % 8 != 0 {
            return bad(
                f,
                format!(
                    "`{f}` {v} is not a positive multiple of 8 (the latent grid needs it); try {}",
                    (v.max(8) / 8) * 8
                ),
            );
        }
    }
    let pixels = job.width as u64 * job.height as u64;
    if pixels > l.max_pixels {
        return bad(
            "width",
            format!(
                "{}x{} = {pixels} pixels; this server makes at most {} per image (--max-pixels)",
                job.width, job.height, l.max_pixels
            ),
        );
    }
    if let Some(spec) = &job.hires {
        let h = spec.to_hires().map_err(|e| ApiError::unsupported("hr_upscaler", format!("{e:#}")))?;
        h.validate().map_err(|e| ApiError::bad_request(format!("hires fix: {e:#}")).with_param("enable_hr"))?;
        let (w, hh) =
            h.target(job.width, job.height).map_err(|e| ApiError::bad_request(format!("hires fix: {e:#}")))?;
        let px = w as u64 * hh as u64;
        if px > l.max_pixels {
            return bad(
                "hr_scale",
                format!("the hires size {w}x{hh} = {px} pixels is over this server's {} (--max-pixels)", l.max_pixels),
            );
        }
        if h.steps.is_some_and(|s| s > l.max_steps) {
            return bad(
                "hr_second_pass_steps",
                format!("`hr_second_pass_steps`: at most {} (--max-steps)", l.max_steps),
            );
        }
    }
    if !job.cfg_scale.is_finite() || !(0.0..=100.0).contains(&job.cfg_scale) {
        return bad("cfg_scale", format!("`cfg_scale` {}: expected a number from 0 to 100", job.cfg_scale));
    }
    if let Some(e) = job.eta {
        if !e.is_finite() || !(0.0..=10.0).contains(&e) {
            return bad("eta", format!("`eta` {e}: expected a number from 0 to 10"));
        }
    }
    if !(1..=12).contains(&job.clip_skip) {
        return bad("CLIP_stop_at_last_layers", format!("clip skip {}: expected 1 to 12", job.clip_skip));
    }
    let sampler: sd_schedulers::SamplerChoice = job
        .sampler
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`sampler_name`: {e:#}")).with_param("sampler_name"))?;
    if let Some(s) = &job.schedule {
        s.parse::<sd_schedulers::Schedule>()
            .map_err(|e| ApiError::bad_request(format!("`scheduler`: {e:#}")).with_param("scheduler"))?;
    }
    job.emphasis
        .parse::<sd_pipeline::prompt::Emphasis>()
        .map_err(|e| ApiError::bad_request(format!("emphasis: {e:#}")).with_param("emphasis"))?;
    if job.kind == JobKind::Img2img {
        let s = job.denoising_strength;
        if !(s > 0.0 && s <= 1.0) {
            return bad("denoising_strength", format!("`denoising_strength` {s}: expected a number in (0, 1]"));
        }
        let text = job.init_image.as_deref().ok_or_else(|| ApiError::bad_request("img2img needs `init_images`"))?;
        let init_bytes = images::b64_bytes("init_images[0]", text)?;
        let init = images::decode("init_images[0]", &init_bytes, l.max_input_pixels)?;
        // Creators' opt-outs: Content Credentials that reserve AI inference refuse the image (403), as in
        // `sd generate`. The upload itself is read when `init_images` is a re-encoding of it (OpenAI edits).
        let (original, param) = match &job.init_file {
            Some(f) => (images::b64_bytes("image", f)?, "image"),
            None => (init_bytes, "init_images[0]"),
        };
        sd_provenance::credentials::check_inference_allowed(&original, param)
            .map_err(|e| ApiError::new(axum::http::StatusCode::FORBIDDEN, format!("{e:#}")).with_param(param))?;
        if let Some(m) = &job.mask {
            let mask = images::decode("mask", &images::b64_bytes("mask", m)?, l.max_input_pixels)?;
            if (mask.width(), mask.height()) != (init.width(), init.height()) {
                return bad(
                    "mask",
                    format!(
                        "the mask is {}x{} but the init image is {}x{}: the mask must have the image's size (white = repaint)",
                        mask.width(),
                        mask.height(),
                        init.width(),
                        init.height()
                    ),
                );
            }
        }
    }
    if let Some(c) = &job.cache {
        let cache = c
            .parse::<sd_pipeline::step_cache::StepCache>()
            .map_err(|e| ApiError::bad_request(format!("`sd_rs_step_cache`: {e:#}")).with_param("sd_rs_step_cache"))?;
        if !cache.is_off() && !job.controlnet.is_empty() {
            return bad(
                "sd_rs_step_cache",
                format!("step caching ({cache}) does not combine with ControlNet units: their residuals feed the deep blocks a cached step skips"),
            );
        }
    }
    if let Some(spec) = &job.refiner {
        let param = "refiner_checkpoint";
        if state.catalog.find(&spec.model).is_none() {
            return Err(ApiError::not_found(format!(
                "unknown refiner {:?}; available: {}",
                spec.model,
                state.catalog.names().join(", ")
            ))
            .with_param(param));
        }
        if job.mask.is_some() {
            return bad(param, "the refiner finishes txt2img or img2img, not inpainting (`mask`)".into());
        }
        if job.hires.is_some() {
            return bad(
                param,
                "the refiner with the hires fix (`enable_hr`) is not supported: use one or the other".into(),
            );
        }
        if !job.controlnet.is_empty() {
            return bad(param, "the refiner with ControlNet units is not supported".into());
        }
        if !job.ip_adapters.is_empty() {
            return bad(param, "the refiner with IP-Adapter units is not supported".into());
        }
    }
    // the model the job will run on: the one it names (which must exist) or the selected one
    let target = match &job.model {
        Some(m) => state.catalog.find(m).ok_or_else(|| {
            ApiError::not_found(format!("unknown model {m:?}; available: {}", state.catalog.names().join(", ")))
                .with_param("override_settings.sd_model_checkpoint")
        })?,
        None => state.engine_status().selected,
    };
    if let Some(entry) = state.catalog.entries.get(target) {
        if entry.is_sd3() {
            if let Some((param, msg)) = engine_sd3::unsupported(job) {
                return bad(param, msg);
            }
        } else if let sd_schedulers::Sampler::Named(d) = sampler.sampler {
            // a UNet model: a flow-matching (SD3) sampler is a bad request, not a failed job
            sd_schedulers::check_models(d, sd_schedulers::Models::Unet, &entry.model_name)
                .map_err(|e| ApiError::bad_request(format!("`sampler_name`: {e:#}")).with_param("sampler_name"))?;
        }
    }
    engine::lora_tags(&job.prompt, state.engine_cfg.lora_dir.as_deref())
        .map_err(|e| ApiError::bad_request(format!("`prompt`: {e:#}")).with_param("prompt"))?;
    if let Some((source, text)) = &state.engine_cfg.policy {
        sd_pipeline::output::check_policy_terms(text, source, &job.prompt)
            .map_err(|e| ApiError::bad_request(format!("{e:#}")).with_param("prompt"))?;
    }
    Ok(())
}

/// Queue a job. On Redis, a job that names no model gets the selected one, since its worker may have another.
pub async fn submit(state: &AppState, mut job: JobRequest) -> ApiResult<job::JobId> {
    if job.model.is_none() {
        if let Queue::Redis(r) = &state.queue {
            job.model = r.selected_model().await.map_err(|e| ApiError::internal(format!("Redis: {e}")))?;
            if job.model.is_none() {
                job.model = Some(state.catalog.entries[0].model_name.clone());
            }
        }
    }
    let id = state.queue.submit(job).await.map_err(submit_error)?;
    state.metrics.queue_depth.set(state.queue.depth().await as i64);
    Ok(id)
}

/// Queue a job and wait for its end. A failed job is a 400 (its error names the cause), except an internal error.
/// Unless `keep` (a response that points at the job's image files), the finished job is forgotten at once: a
/// synchronous caller has its images in the response, and keeping them would hold memory for nobody.
pub async fn submit_and_wait(state: &AppState, job: JobRequest, keep: bool) -> ApiResult<JobView> {
    let id = submit(state, job).await?;
    let view =
        state.queue.wait(&id).await?.ok_or_else(|| ApiError::internal("the job was forgotten before it ended"))?;
    if !keep {
        state.queue.forget(&id).await;
    }
    match view.status {
        JobStatus::Done => Ok(view),
        JobStatus::Cancelled => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, view.error.unwrap_or_else(|| "cancelled".into())))
        }
        _ => {
            let msg = view.error.unwrap_or_else(|| "the job failed".into());
            if msg.starts_with("internal error") {
                Err(ApiError::internal(msg))
            } else {
                Err(ApiError::bad_request(msg))
            }
        }
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let limit = state.cfg.limits.max_body_bytes;
    let cors = ops::cors_layer(&state.cfg);
    let app = Router::new()
        .nest("/sdapi/v1", a1111::routes().layer(axum::middleware::map_response(error::a1111_error_shape)))
        .nest("/v1", openai::routes().merge(jobs_api::routes()))
        .nest("/controlnet", controlnet::routes())
        .merge(ops::routes())
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), ops::auth))
        .layer(axum::middleware::from_fn(ops::json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), ops::count_responses))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    let app = match cors {
        Some(c) => app.layer(c),
        None => app,
    };
    app.layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Everything `sd serve` runs: the model catalog, the inference thread (or, with `cfg.queue`, a connection to the
/// Redis queue that `sd worker`s drain), the HTTP server until `shutdown` resolves, then a graceful stop (queued
/// jobs cancelled, the running one given `shutdown_timeout` to finish before it is interrupted). `on_listen`
/// receives the bound address (port 0 picks a free one).
pub async fn serve(
    cfg: ServeConfig,
    engine_cfg: EngineConfig,
    model: &str,
    models_dir: Option<&std::path::Path>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    cfg.check()?;
    let catalog = Arc::new(Catalog::scan(model, models_dir)?);
    let metrics = Arc::new(Metrics::default());
    let status: SharedStatus = Arc::new(Mutex::new(EngineStatus::default()));
    let (queue, local, engine) = match &cfg.queue {
        Some(url) => {
            let r = redis_queue::RedisQueue::connect(url, cfg.limits.max_queue, cfg.job_ttl).await?;
            tracing::info!(queue = %url, "front end on a Redis queue: jobs run on `sd worker` processes");
            (Queue::Redis(Arc::new(r)), None, None)
        }
        None => {
            let store = Store::new(cfg.limits.max_queue, cfg.limits.max_finished_jobs, cfg.job_ttl);
            let engine =
                Engine::spawn(engine_cfg.clone(), catalog.clone(), store.clone(), metrics.clone(), status.clone())?;
            (Queue::Local(store.clone()), Some(store), Some(engine))
        }
    };
    let listener =
        tokio::net::TcpListener::bind(cfg.addr()).await.with_context(|| format!("cannot listen on {}", cfg.addr()))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        queue: queue.clone(),
        local: local.clone(),
        catalog,
        status,
        metrics,
        cfg: Arc::new(cfg.clone()),
        engine_cfg: Arc::new(engine_cfg),
        settings: Arc::new(Mutex::new(a1111::Settings::default())),
    };
    on_listen(addr);
    let app = router(state);
    let grace = cfg.shutdown_timeout;
    let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
    let q = queue.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: no new jobs; the running job has {grace:?} to finish");
        q.begin_shutdown();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Queue::Local(s) = &q {
                if s.signal_running(false) {
                    tracing::warn!("the running job did not finish in time and was interrupted");
                }
            }
            // Requests still waiting (on a worker's job, or a stuck client) do not hold the process forever.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let _ = force_tx.send(());
        });
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    tokio::select! {
        r = server => r.context("the HTTP server failed")?,
        _ = force_rx => tracing::warn!("connections still open after the shutdown deadline were closed"),
    }
    if let Some(store) = local {
        store.stop();
    }
    if let Some(engine) = engine {
        let joined = tokio::task::spawn_blocking(move || engine.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the inference thread ended abnormally");
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
