//! The jobs API for long work: submit and return at once, then poll, stream progress as server-sent events, fetch
//! images, or cancel. A job's body is an A1111 txt2img/img2img body, so one client can use both APIs.

use crate::a1111::{info_json, A1111Request};
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::job::{JobId, JobKind, JobStatus, JobView};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use sd_provenance::formats::OutputFormat;
use serde_json::{json, Value};
use std::convert::Infallible;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(create))
        .route("/jobs/{id}", get(read).delete(cancel))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/images/{file}", get(image))
}

fn parse_id(id: &str) -> ApiResult<JobId> {
    JobId::parse(id).ok_or_else(|| ApiError::not_found(format!("no job {id:?}: job ids are UUIDs")))
}

/// A job as clients see it; `images` and `info` once it is done.
pub fn job_json(state: &AppState, v: &JobView, with_images: bool) -> Value {
    let p = &v.progress;
    let mut out = json!({
        "id": v.id,
        "status": v.status,
        "progress": if v.status == JobStatus::Done { 1.0 } else { p.fraction() },
        "step": p.step,
        "steps": p.steps,
        "batch": p.batch,
        "batches": p.batches,
        "eta_s": p.eta_s(),
        "elapsed_s": p.elapsed_s,
        "queue_position": v.queue_position,
        "created": v.created,
        "preview": p.preview,
        "error": v.error,
        "worker": v.worker,
    });
    if let Some(r) = &v.result {
        out["interrupted"] = json!(r.interrupted);
        out["info"] = json!(info_json(state, v).to_string());
        out["image_count"] = json!(r.images.len());
        if with_images {
            out["images"] = json!(r.images.iter().map(|i| i.data.clone()).collect::<Vec<_>>());
            out["format"] = json!(r.images.first().map(|i| i.format.name()));
        }
    }
    out
}

async fn create(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Response> {
    crate::error::expect_object(&body)?;
    let kind = match body.get("type").and_then(Value::as_str) {
        Some("txt2img") => JobKind::Txt2img,
        Some("img2img") => JobKind::Img2img,
        Some(other) => {
            return Err(ApiError::bad_request(format!("`type` {other:?}: expected \"txt2img\" or \"img2img\""))
                .with_param("type"))
        }
        None if body.get("init_images").is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty())) => {
            JobKind::Img2img
        }
        None => JobKind::Txt2img,
    };
    let parsed: A1111Request = crate::error::parse_json(body.to_string().as_bytes())?;
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || crate::a1111::to_job(&st, parsed, kind))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let id = crate::submit(&state, job).await?;
    let view = state.queue.view(&id).await?.ok_or_else(|| ApiError::internal("the job vanished"))?;
    let mut resp = (StatusCode::ACCEPTED, Json(job_json(&state, &view, false))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn read(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let v = state.queue.view(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!("no job {id} (finished jobs are kept for a while, then forgotten)"))
    })?;
    Ok(Json(job_json(&state, &v, true)))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    state.queue.cancel(&id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let v = state.queue.view(&id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    Ok(Json(job_json(&state, &v, false)))
}

async fn image(State(state): State<AppState>, Path((id, file)): Path<(String, String)>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    // `3.png`, `3.jpg`, `3.webp` or a bare `3`; the extension must be the stored format's.
    let (stem, ext) = file.rsplit_once('.').map_or((file.as_str(), None), |(s, e)| (s, Some(e)));
    let n: usize = stem.parse().map_err(|_| {
        ApiError::not_found(format!("no image {file:?}: images are numbered 0.png, 1.png, … (or .jpg/.webp)"))
    })?;
    let v = state.queue.view(&id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let img = v
        .result
        .as_ref()
        .and_then(|r| r.images.get(n))
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no image {n} (status: {})", v.status.as_str())))?;
    let want = file_extension(img.format);
    if let Some(e) = ext {
        let same = e.eq_ignore_ascii_case(want) || (want == "jpg" && e.eq_ignore_ascii_case("jpeg"));
        if !same {
            return Err(ApiError::not_found(format!(
                "image {n} of job {id} is {}: ask for {n}.{want}",
                img.format.name()
            )));
        }
    }
    let bytes = crate::images::b64_bytes("image", &img.data)?;
    Ok((
        [
            (header::CONTENT_TYPE, img.format.mime().to_string()),
            (header::CONTENT_DISPOSITION, format!("inline; filename=\"{id}-{n}.{want}\"")),
        ],
        bytes,
    )
        .into_response())
}

/// The file extension of an image URL: A1111's spelling `jpg` for JPEG.
pub fn file_extension(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Png => "png",
        OutputFormat::Jpeg => "jpg",
        OutputFormat::Webp => "webp",
    }
}

/// `progress` events while the job waits and runs, then one event named after its final status.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = parse_id(&id)?;
    let watch = state.queue.watch(&id).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    if state.queue.view(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("no job {id}")));
    }
    // State: the change watcher, the last event's data (nothing is sent twice), whether the final one was sent.
    let stream = futures_util::stream::unfold((watch, None::<String>, false), move |(mut watch, last, done)| {
        let state = state.clone();
        let id = id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if last.is_some() {
                    watch.changed().await;
                }
                let view = match state.queue.view(&id).await {
                    Ok(Some(v)) => v,
                    _ => return None,
                };
                let final_ = view.status.is_final();
                let data = job_json(&state, &view, final_).to_string();
                if last.as_deref() == Some(data.as_str()) && !final_ {
                    continue;
                }
                let event =
                    Event::default().event(if final_ { view.status.as_str() } else { "progress" }).data(data.clone());
                return Some((Ok(event), (watch, Some(data), final_)));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
