//! What operators and browsers reach outside the two APIs: `/health` (the process answers), `/ready` (a model is
//! loaded and jobs are accepted), `/metrics` (Prometheus), the web page, authentication, CORS, the JSON 404.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
/// The page loads nothing from elsewhere: scripts and styles come from this server only.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], APP_JS)
        .into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let st = state.engine_status();
    let shutting = state.queue.is_shutting_down();
    if let crate::queue::Queue::Redis(r) = &state.queue {
        // A front end is ready when it can reach the queue; the workers own the models.
        let up = r.ping().await;
        let body =
            json!({ "ready": up && !shutting, "queue": r.url, "queue_reachable": up, "shutting_down": shutting });
        let code = if up && !shutting { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return (code, Json(body)).into_response();
    }
    let body = json!({
        "ready": st.loaded.is_some() && !shutting,
        "loading": st.loading,
        "model": st.loaded.map(|i| state.catalog.entries[i].model_name.clone()),
        "load_s": st.load_s,
        "load_error": st.load_error,
        "queue_depth": state.queue.depth().await,
        "shutting_down": shutting,
    });
    let code = if st.loaded.is_some() && !shutting { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.queue_depth.set(state.queue.depth().await as i64);
    let mut text = state.metrics.render();
    if let crate::queue::Queue::Redis(r) = &state.queue {
        match r.stats().await {
            Ok(s) => text = crate::metrics::with_queue_stats(text, &s),
            Err(e) => tracing::warn!("cannot read queue statistics from Redis: {e}"),
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

pub async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

/// Errors produced outside our handlers (axum's 405, a query-string rejection) leave as plain text; give them the
/// same JSON shapes as every other error, so clients can always parse an error body.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let a1111 = req.uri().path().starts_with("/sdapi/");
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = match status {
            StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this path".into(),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        };
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        message = format!("this method is not allowed on this path: {message}");
    }
    let err = ApiError::new(status, message);
    if a1111 {
        err.a1111_response()
    } else {
        err.into_response()
    }
}

/// Count every response by status class.
pub async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.metrics.http_response(resp.status().as_u16());
    resp
}

/// Constant-time comparison, so response timing does not reveal how much of a key was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// `--api-key` (Bearer) and `--api-auth` (Basic). `/health`, `/ready`, the page and its script stay open: they
/// reveal nothing and load balancers and browsers need them. Image files of a job (`/v1/jobs/{id}/images/…`) stay
/// open too: they are what OpenAI's `url` responses point at, which clients fetch without credentials, and the
/// job id in the path is a random UUID that only the submitter learnt, so the URL itself is the capability.
pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &state.cfg;
    let path = req.uri().path();
    let open = matches!(path, "/health" | "/ready" | "/" | "/app.js")
        || (path.starts_with("/v1/jobs/") && path.contains("/images/"));
    if !cfg.auth_enabled() || open {
        return next.run(req).await;
    }
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = if let Some(token) = header.strip_prefix("Bearer ") {
        cfg.api_key.as_deref().is_some_and(|k| same(token.trim().as_bytes(), k.as_bytes()))
    } else if let Some(b64) = header.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        match text.split_once(':') {
            Some((u, p)) => {
                cfg.api_auth.iter().any(|(uu, pp)| same(u.as_bytes(), uu.as_bytes()) & same(p.as_bytes(), pp.as_bytes()))
                    // Clients that only speak Basic can still carry the API key as the password.
                    || cfg.api_key.as_deref().is_some_and(|k| same(p.as_bytes(), k.as_bytes()))
            }
            None => false,
        }
    } else {
        false
    };
    if ok {
        return next.run(req).await;
    }
    let msg = if header.is_empty() {
        "authentication required: send Authorization: Bearer <api key> or HTTP Basic credentials"
    } else {
        "invalid credentials"
    };
    let resp = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
    if req.uri().path().starts_with("/sdapi/") {
        return crate::error::a1111_error_shape(resp).await;
    }
    resp
}

/// CORS only for the origins the operator named (`--cors-origin`); none by default.
pub fn cors_layer(cfg: &crate::config::ServeConfig) -> Option<CorsLayer> {
    if cfg.cors_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = cfg.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let allow = if cfg.cors_origins.iter().any(|o| o == "*") { AllowOrigin::any() } else { AllowOrigin::list(origins) };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_compare() {
        assert!(super::same(b"secret-key", b"secret-key"));
        assert!(!super::same(b"secret-kez", b"secret-key"));
        assert!(!super::same(b"secret", b"secret-key"));
        assert!(!super::same(b"", b"x"));
        assert!(super::same(b"", b""));
    }
}
