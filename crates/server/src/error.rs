//! The HTTP layer's error: every failure leaves as RFC 9457 `application/problem+json` with a
//! stable `type` (`https://turnpike.dev/problems/<code>`). Details never quote a credential,
//! token, key or secret.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use turnpike_store::StoreError;

/// Base of Turnpike's own problem type URIs.
pub const PROBLEM_BASE: &str = "https://turnpike.dev/problems/";

/// An API failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, the last segment of the problem `type`.
    pub code: &'static str,
    /// Human-readable detail (no secrets).
    pub detail: String,
    /// Extra members of the problem body and a `Retry-After`, when any (boxed: most errors
    /// have none, and errors travel in `Result`s everywhere).
    pub extra: Option<Box<Extra>>,
}

/// What an [`ApiError`] may carry beyond its status, code and detail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    /// Extra members of the problem body.
    pub members: serde_json::Map<String, serde_json::Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with a status, a code and a detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
        }
    }

    /// 400 `invalid-request`.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", detail)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 404 `not-found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no such {what}"),
        )
    }

    /// 404 `not-found` for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no resource at {path}"),
        )
    }

    /// 405 `method-not-allowed` (the router adds the `Allow` header).
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed here; the Allow header lists what is"),
        )
    }

    /// 413 `payload-too-large`: a body over `limit_bytes`.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("request bodies are at most {limit_bytes} bytes"),
        )
    }

    /// 409 `conflict`.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 500 `internal` (the cause is logged by the caller, not sent).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; nothing was charged twice and the request may be retried",
        )
    }

    /// 503 `unavailable`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// Add an extension member.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Box::default)
            .members
            .insert(key.to_owned(), value);
        self
    }

    /// Send a `Retry-After` header of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.extra.get_or_insert_with(Box::default).retry_after_s = Some(seconds);
        self
    }

    /// The problem body.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.code),
            "title": title(self.code),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(map), Some(extra)) = (body.as_object_mut(), &self.extra) {
            for (k, v) in &extra.members {
                map.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

fn title(code: &str) -> &'static str {
    match code {
        "invalid-request" => "Invalid request",
        "unauthorized" => "Unauthorized",
        "not-found" => "Not found",
        "conflict" => "Conflict",
        "realm-taken" => "Realm taken",
        "last-api-key" => "Last API key",
        "no-matching-price" => "No price matches this request",
        "insufficient-balance" => "Insufficient balance",
        "policy-denied" => "Denied by the agent's spend policy",
        "approval-required" => "Approval required",
        "approval-invalid" => "Approval not valid for this payment",
        "approval-not-pending" => "Approval not pending",
        "token-widens-parent" => "A child token may only narrow its parent",
        "no-supported-challenge" => "No supported challenge",
        "idempotency-key-in-use" => "Idempotency key in use",
        "upstream-failed" => "Upstream failed",
        "unavailable" => "Service unavailable",
        "payload-too-large" => "Payload too large",
        "method-not-allowed" => "Method not allowed",
        "admin-disabled" => "Operator API disabled",
        "metrics-disabled" => "Metrics disabled",
        "secrets-key-missing" => "No secrets key on this server",
        "deposits-disabled" => "Deposits are not configured",
        "rate-limited" => "Too many requests",
        "request-timeout" => "Request timeout",
        _ => "Internal error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.extra.as_ref().and_then(|e| e.retry_after_s) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "store failed");
        Self::unavailable("the database failed; nothing was changed, retry later")
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
