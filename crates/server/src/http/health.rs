//! Health, readiness, metrics and the public signing keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::auth::MetricsReader;
use crate::state::AppState;

/// `/healthz`, `/readyz`, `/metrics`, `/.well-known/jwks.json`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(metrics))
}

/// Prometheus text format: the evm hot wallets' gas (the low-gas alert) and the deposit
/// watcher's progress. They name tenants and wallet addresses: only for the metrics or admin
/// token ([`MetricsReader`]).
async fn metrics(_: MetricsReader, State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.gas.metrics() + &state.deposits.metrics(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.store.ping().await.is_ok();
    let ledger = !state.engine.is_stopped();
    if db && ledger {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "database": db, "ledger": ledger})),
        )
    }
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.keys().jwks()),
    )
}
