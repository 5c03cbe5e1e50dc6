//! Errors as each API's clients expect them. One type, [`ApiError`], carries status, message and the offending
//! field; it renders in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) and the `/sdapi` router
//! re-renders it in AUTOMATIC1111's (`{"error", "detail", "body", "errors"}`) through [`a1111_error_shape`].

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`width`, `override_settings.sd_vae`), when there is one.
    pub param: Option<String>,
    /// Seconds a client should wait before trying again (429, 503).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, retry_after: None }
    }

    /// 400: the request is malformed or asks for something impossible.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: well-formed, but a field asks for something this server does not do.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message).with_param(param)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// An engine error (`anyhow`) about a request: the chain of causes, without backtraces.
    pub fn from_engine(e: &anyhow::Error) -> Self {
        Self::bad_request(format!("{e:#}"))
    }

    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn a1111_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "Unauthorized",
            404 => "HTTPException",
            413 => "PayloadTooLarge",
            422 => "ValidationError",
            429 => "TooManyRequests",
            500..=599 => "RuntimeError",
            _ => "BadRequest",
        }
    }

    fn finish(&self, body: serde_json::Value) -> Response {
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"sd-rs\""));
        }
        resp
    }

    /// AUTOMATIC1111's error body: `error` is the exception's class, `errors` its message.
    pub fn a1111_response(&self) -> Response {
        let body = json!({
            "error": self.a1111_type(),
            "detail": self.message,
            "body": self.param.as_deref().unwrap_or(""),
            "errors": self.message,
        });
        self.finish(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.status.as_u16(),
            }
        });
        let mut resp = self.finish(body);
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Response middleware for `/sdapi`: errors leave in AUTOMATIC1111's shape.
pub async fn a1111_error_shape(resp: Response) -> Response {
    match resp.extensions().get::<ApiError>() {
        Some(e) => e.clone().a1111_response(),
        None => resp,
    }
}

/// A JSON body read with the server's size limit, whose errors name the field at fault (`width: invalid type:
/// string "x", expected i64`) instead of axum's plain-text rejection.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The body, or 413 when it exceeds the limit.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this server accepts (see --max-body-mb)",
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// Parse JSON, naming the path of a wrongly typed field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty; expected a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        } else if path.is_empty() || path == "." {
            ApiError::bad_request(format!("unexpected JSON: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}")).with_param(&path)
        }
    })
}

/// Request bodies are JSON objects; an array or a number is refused before field parsing (serde would otherwise read
/// an array positionally into a struct and report a confusing field).
pub fn expect_object(body: &serde_json::Value) -> Result<(), ApiError> {
    if body.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request("the request body must be a JSON object ({\"prompt\": ...})"))
    }
}
