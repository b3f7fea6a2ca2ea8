//! The HTTP API: one module per resource, each exporting a `router()`, merged here.

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};

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
