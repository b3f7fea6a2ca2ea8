//! The HTTP API: one module per resource, each exporting a `router()`, merged here.

use axum::Router;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::AppState;

pub mod admin;
pub mod agents;
pub mod deposits;
pub mod discovery;
pub mod gateway;
pub mod health;
pub mod payments;
pub mod prices;
pub mod rails;
pub mod spend;
pub mod tenant;
pub mod wallets;

/// Every route.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(admin::router())
        .merge(tenant::router())
        .merge(prices::router())
        .merge(rails::router())
        .merge(deposits::router())
        .merge(wallets::router())
        .merge(payments::router())
        .merge(agents::router())
        .merge(spend::router())
        .merge(discovery::router())
        .merge(gateway::router())
        // Both after every route: the 405 fallback applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
}

/// The answer for a path no route serves: 404 problem+json.
async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

/// The answer for a method a route does not serve: 405 problem+json (axum adds `Allow`).
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::method_not_allowed(method.as_str())
}

/// Refuse a request whose body is over [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX) with 413
/// problem+json: at once when its `Content-Length` says so, else when a handler reading it
/// passes the limit (the [`Json`] and [`Body`] extractors answer 413 then).
pub async fn body_limit(request: Request, next: Next) -> Response {
    use axum::response::IntoResponse as _;
    let limit = crate::BODY_BYTES_MAX;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return ApiError::payload_too_large(limit).into_response();
    }
    let request =
        request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
    next.run(request).await
}

/// A whole request body (at most [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX)), whose rejection is
/// problem+json: 413 over the limit, 400 for a body that could not be read.
#[derive(Debug)]
pub struct Body(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|rejection| body_rejection(&rejection))
    }
}

fn body_rejection(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(crate::BODY_BYTES_MAX)
    } else {
        ApiError::invalid(format!(
            "the request body could not be read: {}",
            rejection.body_text()
        ))
    }
}

/// A JSON body whose rejection is a problem+json 400 naming what was wrong.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid-request",
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::BytesRejection(rejection)) => Err(body_rejection(&rejection)),
            Err(rejection) => Err(ApiError::invalid(format!(
                "invalid JSON body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Longest display name (tenants, agents, keys).
pub const NAME_LEN_MAX: usize = 200;

/// A display name: 1 to [`NAME_LEN_MAX`] bytes without control characters.
pub fn is_display_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_LEN_MAX && !name.chars().any(char::is_control)
}

/// Format unix ms as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An optional JSON body: empty means `T::default()`.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid(format!("invalid JSON body: {err}")))
}
